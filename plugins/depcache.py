"""Dependency installs of the built-in runtimes, cached by a hash of the dependency files.

An install lands in ``<cache_dir>/deps/<hash>/`` (the project's own cache for the
runtime) and is reused by every later build whose dependency files hash the same (a
code-only redeploy installs nothing). Installs run through `run_build_step`, sandboxed
like the projects themselves (they may execute package code), with a clean
environment, so they see neither the daemon's secrets nor other projects' data. The
build log says which happened: "installing dependencies" or "dependencies from cache".
The npm installs are in `runtime_node/npm.py`, the venvs in `runtime_python/venv.py`.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from tee_daemon.plugin import BuildContext, own_folder, project_log

COMPLETE = ".complete"
# The PATH of a build step: system folders only (a step adds its own tool's folder).
BUILD_PATH = "/usr/local/bin:/usr/bin:/bin"


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:40]


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_install(ctx: BuildContext, key: str, label: str, install) -> Path:
    """`install(dest)` once per key in the project's own cache; later calls return the
    finished folder. The marker of a finished install is written by the daemon in a
    folder the project cannot write, never inside the install."""
    cache_dir, log_path = ctx.cache_dir, ctx.log_path
    dest = cache_dir / "deps" / key
    with _locked(cache_dir / "deps" / f"{key}.lock"):
        if (cache_dir / "deps" / f"{key}{COMPLETE}").exists() and dest.is_dir() and not dest.is_symlink():
            project_log(log_path, f"{label}: dependencies from cache {key}")
            return dest
        shutil.rmtree(dest, ignore_errors=True)  # A half-finished earlier attempt.
        own_folder(dest, ctx)
        project_log(log_path, f"{label}: installing dependencies into cache {key}")
        try:
            install(dest)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        (cache_dir / "deps" / f"{key}{COMPLETE}").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        return dest
