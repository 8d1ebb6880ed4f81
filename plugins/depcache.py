"""Dependency installs for the process runtimes, cached by a hash of the dependency files.

* ``package.json`` → ``npm ci`` when a lockfile is there, else ``npm install``, with
  ``--ignore-scripts`` unless the operator allows lifecycle scripts; npm is the pinned
  node wheel's own.
* ``requirements.txt`` → a virtual environment of the project's own (pip from the
  daemon's environment, targeting the new venv's interpreter).

An install lands in ``<cache_dir>/deps/<hash>/`` and is reused by every later build
whose dependency files hash the same (a code-only redeploy installs nothing). Installs
run in the sandbox like the projects themselves (they may execute package code), with a
clean environment, so they see neither the daemon's secrets nor other projects' data.
The build log says which happened: "installing dependencies" or "dependencies from cache".
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tee_daemon.run import toolchain
from tee_daemon.kernel.errors import DeployFailed
from tee_daemon.run import sandbox
from tee_daemon.run.process import MINIMAL_PATH, python_roots, tail
from tee_daemon.kernel.contract import BuildContext

COMPLETE = ".complete"
MODULES_RECORD = "deps.txt"
NPM_LOCKFILES = ("package-lock.json", "npm-shrinkwrap.json")


# Operator network settings a package install may need (proxies, extra CA bundles,
# package indexes and mirrors). They go to build steps only, never to a project, and
# nothing else of the daemon's environment does (above all no TEE_DAEMON_* value).
NETWORK_ENV = tuple(
    [v for p in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY") for v in (p, p.lower())]
    + ["SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"]
    + ["PIP_CERT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST"]
    + ["PIP_DEFAULT_TIMEOUT", "PIP_NO_INDEX"]
    + [v for p in ("NPM_CONFIG_REGISTRY", "NPM_CONFIG_CAFILE", "NPM_CONFIG_STRICT_SSL") for v in (p, p.lower())]
    + ["DENO_CERT", "DENO_TLS_CA_STORE"]
)


def network_env() -> dict[str, str]:
    return {k: v for k in NETWORK_ENV if (v := os.environ.get(k)) and not k.startswith("TEE_DAEMON_")}


def network_paths(env: dict[str, str]) -> list[Path]:
    """Local files and folders named by the network settings (CA bundles, wheel dirs)."""
    paths = []
    for value in env.values():
        for token in value.replace(",", " ").split():
            token = token.removeprefix("file://")
            if token.startswith("/") and os.path.exists(token):
                paths.append(Path(token))
    return paths


def build_log(log_path: Path | None, message: str) -> None:
    if log_path is None:
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(log_path, "ab") as fh:
        fh.write(f"[tee-daemon {stamp}] {message}\n".encode())


def run_step(
    what: str,
    argv: list[str],
    *,
    ctx: BuildContext,
    cwd: Path,
    env: dict[str, str],
    read_only: list[Path],
    read_write: list[Path],
) -> None:
    """Run one build command sandboxed as the project (its uid, its limits, a network
    namespace of its own with outbound access, the build timeout); DeployFailed with
    its output when it fails."""
    net = network_env()
    env = {**net, **env}
    read_only = [*read_only, *network_paths(net)]
    log_path = ctx.log_path or cwd / ".build.log"
    if sandbox.bwrap() is None:  # The operator accepted unsandboxed projects.
        _run_unsandboxed(what, argv, cwd=cwd, env=env, log_path=log_path, timeout=ctx.build_timeout)
        return
    plan = sandbox.Plan(
        argv=argv,
        env=env,
        cwd=cwd,
        identity=ctx.identity,
        read_only=read_only,
        read_write=read_write,
        network="own" if sandbox.has_egress() else "host",
        egress=sandbox.has_egress(),
        project=ctx.project,
        unit="build",
    )
    sandbox.run(plan, what=what, log_path=log_path, timeout=ctx.build_timeout)


def _run_unsandboxed(what: str, argv: list[str], *, cwd: Path, env: dict, log_path: Path, timeout: float) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as out:
        try:
            result = subprocess.run(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise DeployFailed(f"{what} took longer than {timeout:g}s", log=tail(log_path, start)) from None
        except OSError as exc:
            raise DeployFailed(f"{what} could not run: {exc}") from None
    if result.returncode != 0:
        output = tail(log_path, start)
        raise DeployFailed(f"{what} failed (exit code {result.returncode}):\n{output}", log=output)


def own_folder(path: Path, ctx: BuildContext) -> Path:
    """`path` made (if needed) and handed to the project's identity, for a build to write."""
    path.mkdir(parents=True, exist_ok=True)
    if ctx.identity is not None:
        os.chown(path, ctx.identity.uid, ctx.identity.gid)
    return path


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


def _cached_install(ctx: BuildContext, key: str, label: str, install) -> Path:
    """`install(dest)` once per key in the project's own cache; later calls return the
    finished folder. The marker of a finished install is written by the daemon in a
    folder the project cannot write, never inside the install."""
    cache_dir, log_path = ctx.cache_dir, ctx.log_path
    dest = cache_dir / "deps" / key
    with _locked(cache_dir / "deps" / f"{key}.lock"):
        if (cache_dir / "deps" / f"{key}{COMPLETE}").exists() and dest.is_dir() and not dest.is_symlink():
            build_log(log_path, f"{label}: dependencies from cache {key}")
            return dest
        shutil.rmtree(dest, ignore_errors=True)  # A half-finished earlier attempt.
        own_folder(dest, ctx)
        build_log(log_path, f"{label}: installing dependencies into cache {key}")
        try:
            install(dest)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        (cache_dir / "deps" / f"{key}{COMPLETE}").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        return dest


# -- npm ---------------------------------------------------------------------------------


def npm_dependencies(ctx: BuildContext) -> Path | None:
    """The cached folder holding `node_modules` for the tree's package.json, or None."""
    tree, cache_dir, allow_scripts = ctx.tree, ctx.cache_dir, ctx.allow_lifecycle_scripts
    package = tree / "package.json"
    if not package.is_file() or package.is_symlink():
        return None
    lock = next((tree / n for n in NPM_LOCKFILES if (tree / n).is_file() and not (tree / n).is_symlink()), None)
    npm = toolchain.npm_argv()
    if npm is None:
        raise DeployFailed("package.json needs npm, but no node/npm is provisioned (run make install)")
    key = digest(
        b"npm/1",
        (toolchain.version("node") or "").encode(),
        package.read_bytes(),
        lock.name.encode() if lock else b"",
        lock.read_bytes() if lock else b"",
        b"scripts" if allow_scripts else b"no-scripts",
    )

    def install(dest: Path) -> None:
        shutil.copyfile(package, dest / "package.json")
        if lock is not None:
            shutil.copyfile(lock, dest / lock.name)
        npm_cache = own_folder(cache_dir / "npm-cache", ctx)  # The project's own: never shared.
        command = "ci" if lock is not None else "install"
        argv = [*npm, command, "--no-audit", "--no-fund", "--omit=dev", "--loglevel=warn", "--no-update-notifier"]
        if not allow_scripts:
            argv.append("--ignore-scripts")
        node_root = toolchain.tool_root("node")
        env = {
            "PATH": f"{Path(npm[0]).parent}:{MINIMAL_PATH}",
            "HOME": str(dest),
            "npm_config_cache": str(npm_cache),
            "npm_config_update_notifier": "false",
            "LANG": "C.UTF-8",
        }
        run_step(
            f"npm {command}",
            argv,
            ctx=ctx,
            cwd=dest,
            env=env,
            read_only=[ctx.tree, *(p for p in (node_root,) if p is not None)],  # local packages of its own
            read_write=[dest, npm_cache],
        )
        modules = dest / "node_modules"  # Written by the build (the project's code): check, never follow.
        if modules.is_symlink() or (modules.exists() and not modules.is_dir()):
            raise DeployFailed("npm left node_modules as something other than a folder")
        modules.mkdir(exist_ok=True)

    return _cached_install(ctx, key, "npm", install)


def app_dir_with_modules(tree: Path, build_dir: Path, deps: Path) -> Path:
    """A copy of the tree (hard links when possible) with `node_modules` linked in.

    Node resolves packages from the importing file's folder upwards, so the modules
    must sit beside the entry; the deployed tree itself is never modified.
    """
    app = build_dir / "app"
    shutil.rmtree(app, ignore_errors=True)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(tree, app, symlinks=True, copy_function=link_or_copy)
    target = app / "node_modules"
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    target.symlink_to(deps / "node_modules", target_is_directory=True)
    # The start reads where the modules are from this record of the daemon's, never by
    # following the link (SPEC 9: what a project sees comes from the daemon's records).
    (build_dir / MODULES_RECORD).write_text(str(deps) + "\n")
    return app


def installed_modules(build_dir: Path) -> list[Path]:
    """The dependency folder recorded by `app_dir_with_modules` for this build, if any."""
    record = build_dir / MODULES_RECORD
    return [Path(record.read_text().strip())] if record.is_file() else []


# -- python --------------------------------------------------------------------------------


def python_venv(ctx: BuildContext) -> Path | None:
    """The project's own venv with requirements.txt installed (cached), or None."""
    tree = ctx.tree
    requirements = tree / "requirements.txt"
    if not requirements.is_file() or requirements.is_symlink():
        return None
    key = digest(b"pip/1", sys.version.encode(), requirements.read_bytes())

    def install(dest: Path) -> None:
        venv = dest / "venv"
        shutil.copyfile(requirements, dest / "requirements.txt")
        # No pip cache: a package's build backend runs the requester's code, and a cache
        # shared between projects would let it plant wheels that another project's
        # install then trusts. The build may write its own install folder only.
        env = {"PATH": MINIMAL_PATH, "HOME": str(dest), "LANG": "C.UTF-8", "PIP_NO_CACHE_DIR": "1"}
        roots = python_roots()
        run_step(
            "creating the virtual environment",
            [sys.executable, "-m", "venv", "--without-pip", str(venv)],
            ctx=ctx, cwd=dest, env=env, read_only=[*roots, ctx.tree], read_write=[dest],
        )  # fmt: skip
        run_step(
            "pip install -r requirements.txt",
            [
                sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                "--no-input", "--disable-pip-version-check", "--progress-bar", "off",
                "-r", str(dest / "requirements.txt"),
            ],
            ctx=ctx, cwd=dest, env=env, read_only=[*roots, ctx.tree], read_write=[dest],
        )  # fmt: skip
        # The shim finds its server (granian) in the daemon's environment through
        # TEE_DAEMON_SITE: the daemon never writes into a folder the build wrote.

    dest = _cached_install(ctx, key, "pip", install)
    return dest / "venv"
