"""The command runtime: an ordinary app that listens on `$PORT` (bound to `$HOST`), the
way Heroku, Dokku and piku run apps (SPEC section 11).

The command is the manifest's or project.json's `command`, else the `web:` line of a
`Procfile`, else `package.json`'s `scripts.start` (Heroku's order), else `deno.json`'s
`tasks.start`. A tree with any of them is autodetected right after a Dockerfile, so an
Express, Fastify or Hono app deploys as its tutorial wrote it; a handler project with
such a script sets its runtime (`node`, `deno`) explicitly. Before it runs, the project's
dependencies are installed as its toolchain's runtime installs them: `package.json` with
the pinned npm (cached node_modules linked into a copy of the tree, which becomes the
working directory), `requirements.txt` into a venv of the project's own, `deno.json`'s
imports into the project's own Deno cache. The pinned node, npm, npx, deno, bun and
python are on its PATH (small launchers in the build folder), with the venv's scripts
(gunicorn, uvicorn) and `node_modules/.bin` before them.

It runs in the same sandbox, limits and network as every process runtime. With the
isolated network the daemon reaches a project through a unix socket only; `relay.py`
runs the command inside the sandbox on a TCP port of the project's own namespace and
relays the socket to it once it listens (see there).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from tee_daemon import plugin
from tee_daemon.plugin import (
    BuildContext,
    DeployFailed,
    Detection,
    Instance,
    LaunchPlan,
    RuntimeInfo,
    StartContext,
    hookimpl,
)
from tee_daemon_plugins import toolchain
from tee_daemon_plugins.base_image import BASE_IMAGE
from tee_daemon_plugins.depcache import BUILD_PATH
from tee_daemon_plugins.runtime_deno import deno_report
from tee_daemon_plugins.runtime_node import npm
from tee_daemon_plugins.runtime_python.venv import (
    python_roots,
    python_venv,
    venv_report,
)

HERE = Path(__file__).resolve().parent
NAME = "command"
RELAY = "relay.py"
COMMAND_FILE = "command.txt"  # The command this version runs (written by build).
VENV_POINTER = "venv.txt"
DENO_POINTER = "deno-dir.txt"
MAX_COMMAND = 4096
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.*)$")


@hookimpl
def runtime_describe() -> list[RuntimeInfo]:
    return [
        RuntimeInfo(
            name=NAME,
            default_entry=None,
            detect_priority=55,  # Right after dockerfile (60), before deno (50).
            version=None,
            description="a command that listens on $PORT (manifest `command`, or a Procfile's web: line), "
            "with node, npm, deno, bun and python on its PATH",
        )
    ]


@hookimpl
def runtime_detect(tree: Path) -> Detection | None:
    procfile = tree / "Procfile"
    if procfile.is_file() and not procfile.is_symlink():
        return Detection(runtime=NAME, entry=None)
    if npm_start(tree) is not None or deno_start(tree) is not None:
        return Detection(runtime=NAME, entry=None)
    return None


def _json_object(path: Path) -> dict:
    """A small JSON object file of the tree, or {} (absent, a link, too big, not JSON)."""
    if not path.is_file() or path.is_symlink() or path.stat().st_size > 1024 * 1024:
        return {}
    try:
        value = json.loads(path.read_bytes())
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _script(table: object, key: str) -> str | None:
    value = table.get(key) if isinstance(table, dict) else None
    if isinstance(value, dict):  # Deno 2's long form: {"command": "...", "description": ...}
        value = value.get("command")
    return value.strip() if isinstance(value, str) and value.strip() else None


def npm_start(tree: Path) -> str | None:
    """`scripts.start` of the tree's package.json, or None."""
    return _script(_json_object(tree / "package.json").get("scripts"), "start")


def deno_start(tree: Path) -> str | None:
    """`tasks.start` of the tree's deno.json, or None."""
    return _script(_json_object(tree / "deno.json").get("tasks"), "start")


def procfile_web(tree: Path) -> str | None:
    """The `web:` process of a Procfile (Heroku's format: `name: command` lines)."""
    procfile = tree / "Procfile"
    if not procfile.is_file() or procfile.is_symlink():
        return None
    if procfile.stat().st_size > 64 * 1024:
        raise DeployFailed("Procfile is larger than 64 KiB")
    for line in procfile.read_text(errors="replace").splitlines():
        match = PROCFILE_LINE.match(line.strip())
        if match and match.group(1) == "web":
            return match.group(2).strip() or None
    raise DeployFailed("the Procfile has no `web:` line (the process that serves HTTP)")


def check_command(command: str) -> str:
    if not command.strip():
        raise DeployFailed("the command is empty")
    if len(command) > MAX_COMMAND or "\x00" in command or "\n" in command:
        raise DeployFailed(f"the command must be one line of at most {MAX_COMMAND} characters")
    return command.strip()


def _launcher(bin_dir: Path, name: str, argv: list[str]) -> None:
    """A tiny shell script `name` that runs the pinned tool (argv) with the caller's arguments."""
    path = bin_dir / name
    path.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in argv) + ' "$@"\n')
    path.chmod(0o755)


def _write_launchers(bin_dir: Path, venv: Path | None) -> None:
    """node, npm, npx, deno, bun and python as launchers of the pinned toolchains."""
    bin_dir.mkdir(exist_ok=True)
    node = toolchain.find("node")
    if node is not None:
        _launcher(bin_dir, "node", [str(node)])
        cli = toolchain.npm_cli()
        if cli is not None:
            _launcher(bin_dir, "npm", [str(node), str(cli)])
            npx = cli.parent / "npx-cli.js"
            if npx.is_file():
                _launcher(bin_dir, "npx", [str(node), str(npx)])
    for tool in ("deno", "bun"):
        binary = toolchain.find(tool)
        if binary is not None:
            _launcher(bin_dir, tool, [str(binary)])
    python = str(venv / "bin" / "python") if venv is not None else sys.executable
    for name in ("python", "python3"):
        _launcher(bin_dir, name, [python])


def _deno_cache(ctx: BuildContext) -> Path | None:
    """deno.json's imports cached into the project's own DENO_DIR (read-only at run time).

    Deno writes a deno.lock beside deno.json when there is none, and the deployed tree is
    immutable (its hash is published): the command then runs from a hard-linked copy of
    the tree in the build folder where this install wrote the lockfile, so `deno run`
    finds every import locked and cached and has nothing to write."""
    config_name = next((n for n in ("deno.json", "deno.jsonc") if (ctx.tree / n).is_file()), None)
    deno = toolchain.find("deno")
    if config_name is None or deno is None:
        return None
    deno_dir = plugin.own_folder(ctx.cache_dir / "deno-dir", ctx)
    root, read_write = ctx.tree, [deno_dir]
    if not (ctx.tree / "deno.lock").is_file():
        root = ctx.build_dir / "app"
        if not root.is_dir():  # npm may have made it already (package.json and deno.json)
            shutil.copytree(ctx.tree, root, symlinks=True, copy_function=os.link)
        plugin.own_folder(root, ctx)  # The install writes deno.lock there.
        read_write.append(root)
    plugin.run_build_step(
        ctx,
        "deno install (caching deno.json's imports)",
        [str(deno), "install", "--quiet", "--node-modules-dir=none", "--config", str(root / config_name),
         *(["--frozen"] if root == ctx.tree else [])],
        cwd=root,
        env={"PATH": BUILD_PATH, "HOME": str(deno_dir), "DENO_DIR": str(deno_dir), "NO_COLOR": "1",
             "DENO_NO_UPDATE_CHECK": "1"},
        read_only=[ctx.tree, ctx.build_dir, deno.parent],
        read_write=read_write,
    )  # fmt: skip
    return deno_dir


@hookimpl
def runtime_build(runtime: str, ctx: BuildContext) -> plugin.BuildReport:
    command = getattr(ctx, "command", None) or procfile_web(ctx.tree) or npm_start(ctx.tree) or deno_start(ctx.tree)
    if command is None:
        raise DeployFailed(
            "the command runtime needs a command: `command` in the manifest or project.json, "
            "a Procfile with a `web:` line, or a `start` script in package.json or deno.json"
        )
    (ctx.build_dir / COMMAND_FILE).write_text(check_command(command) + "\n")
    reports = []  # what each installer put in place (SPEC 12)
    if (ctx.tree / "package.json").is_file():
        if toolchain.find("node") is None:
            raise DeployFailed("the node runtime is not installed on this daemon (run make install)")
        modules = npm.npm_dependencies(ctx)
        if modules is not None:
            npm.app_dir_with_modules(ctx.tree, ctx.build_dir, modules)
            reports.append(npm.npm_report(ctx, modules))
    venv = python_venv(ctx)
    if venv is not None:
        (ctx.build_dir / VENV_POINTER).write_text(str(venv) + "\n")
        reports.append(venv_report(ctx, venv))
    deno_dir = _deno_cache(ctx)
    if deno_dir is not None:
        (ctx.build_dir / DENO_POINTER).write_text(str(deno_dir) + "\n")
        reports.append(deno_report(ctx, deno_dir))
    _write_launchers(ctx.build_dir / "bin", venv)
    shutil.copyfile(HERE / RELAY, ctx.build_dir / RELAY)
    return _one_report(reports)


def _one_report(reports: list[plugin.BuildReport]) -> plugin.BuildReport:
    """One report for the manifest. The manifest has room for one lockfile and one tree:
    with two installers (package.json and requirements.txt), only the first is
    described, so the project counts as not pinned (the other is not in the evidence)."""
    if not reports:
        return plugin.BuildReport(pinned=True)
    tools = {k: v for r in reports for k, v in r.toolchain.items()}
    first = reports[0]
    return plugin.BuildReport(
        toolchain=tools,
        lock_sha256=first.lock_sha256,
        deps_tree_sha256=first.deps_tree_sha256,
        pinned=len(reports) == 1 and first.pinned,
    )


def _pointer(build_dir: Path, name: str) -> Path | None:
    path = build_dir / name
    return Path(path.read_text().strip()) if path.is_file() else None


@hookimpl
def runtime_start(runtime: str, ctx: StartContext) -> Instance:
    command = (ctx.build_dir / COMMAND_FILE).read_text().strip()
    app = ctx.build_dir / "app"
    cwd = app if app.is_dir() else ctx.tree
    venv = _pointer(ctx.build_dir, VENV_POINTER)
    deno_dir = _pointer(ctx.build_dir, DENO_POINTER)
    read_only = [*python_roots(), *npm.installed_modules(ctx.build_dir)]
    for tool in ("node", "deno", "bun"):
        if (root := toolchain.tool_root(tool)) is not None:
            read_only.append(root)
    path_dirs = []
    if (cwd / "node_modules" / ".bin").is_dir():
        path_dirs.append(cwd / "node_modules" / ".bin")
    if venv is not None:
        read_only.append(venv.parent)
        path_dirs.append(venv / "bin")
    path_dirs.append(ctx.build_dir / "bin")
    env = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "NO_UPDATE_NOTIFIER": "1"}
    env.setdefault("NODE_ENV", ctx.env.get("NODE_ENV", "production"))  # As Heroku's Node buildpack.
    if deno_dir is not None:
        read_only.append(deno_dir)
        env.update(DENO_DIR=str(deno_dir), DENO_NO_UPDATE_CHECK="1")
    if plugin.listen_dir(ctx) is not None:
        # Isolated network: the relay binds the daemon's socket once the command listens.
        argv = [sys.executable, "-I", str(ctx.build_dir / RELAY)]
        env["TEE_COMMAND"] = command
    else:
        argv = ["/bin/sh", "-c", "unset TEE_ENV_KEYS; " + command]  # as the relay does
    return plugin.start(
        ctx,
        LaunchPlan(argv=argv, cwd=cwd, read_only=read_only, extra_env=env, path_dirs=path_dirs,
                   facts={"command": command}, image=BASE_IMAGE),
    )  # fmt: skip


@hookimpl
def runtime_forward(runtime: str, instance: Instance):
    return plugin.forward(instance)


@hookimpl
def runtime_forget(runtime: str, project: str) -> bool:
    plugin.forget(project)
    return True
