"""The base image the deno, bun, node and python runtimes run on under ``--backend docker``.

The host's runtime binary (and, for python, the daemon's interpreter and venvs) is bound
in read-only at its own path, so the image only has to provide glibc and the shared
libraries those binaries link (libstdc++, libgcc; for python also libssl3, libffi8,
libsqlite3, zlib...). Pinned by digest; nothing ever pulls it: the operator pulls (or
imports) it into the engine, or names another one the engine has with
TEE_DAEMON_DOCKER_IMAGE_<RUNTIME> (core applies that over the plan's `image`).
"""

from __future__ import annotations

BASE_IMAGE = "debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251"
