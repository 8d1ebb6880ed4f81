"""The Python runtime: `app.py` with an ASGI `app`, or `async def handle(method, path,
headers, body, env) -> (status, headers, body)`.

Server: granian (a daemon dependency, Rust HTTP and WebSockets, much faster than a
pure-Python server), embedded in the project's single process by a small shim.
Dependencies: `requirements.txt` goes into a virtual environment of the project's own,
cached by the file's hash in the project's own cache; the shim appends the daemon's
site-packages (granian) after the venv's own, so the project's packages win. Without a requirements.txt the
project runs on the daemon's interpreter (nothing to install).
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

from tee_daemon import plugin
from tee_daemon.plugin import BuildContext, BuildReport, DeployFailed, Detection, Instance, LaunchPlan, RuntimeInfo, StartContext, hookimpl

from tee_daemon_plugins import toolchain
from tee_daemon_plugins.base_image import BASE_IMAGE

from .venv import python_roots, python_venv, venv_report

HERE = Path(__file__).resolve().parent
NAME = "python"
SHIM = "shim.py"
VENV_POINTER = "venv.txt"


@hookimpl
def runtime_describe() -> list[RuntimeInfo]:
    return [
        RuntimeInfo(
            name=NAME,
            default_entry="app.py",
            detect_priority=20,
            version=toolchain.version(NAME),
            description="Python: ASGI `app` or `async def handle(method, path, headers, body, env)`, served by granian",
        )
    ]


@hookimpl
def runtime_detect(tree: Path) -> Detection | None:
    # app.py is the handler contract's file; main.py is where FastAPI's tutorial puts `app`.
    for entry in ("app.py", "main.py"):
        if (tree / entry).is_file():
            return Detection(runtime=NAME, entry=entry)
    return None


@hookimpl
def runtime_build(runtime: str, ctx: BuildContext) -> BuildReport:
    entry = ctx.entry or "app.py"
    if not (ctx.tree / entry).is_file():
        raise DeployFailed(f"entry file {entry!r} is not in the project")
    venv = python_venv(ctx)
    if venv is not None:
        (ctx.build_dir / VENV_POINTER).write_text(str(venv) + "\n")
    shutil.copyfile(HERE / SHIM, ctx.build_dir / SHIM)
    return venv_report(ctx, venv)


@hookimpl
def runtime_start(runtime: str, ctx: StartContext) -> Instance:
    pointer = ctx.build_dir / VENV_POINTER
    read_only = list(python_roots())
    if pointer.is_file():
        venv = Path(pointer.read_text().strip())
        python = venv / "bin" / "python"
        read_only.append(venv.parent)
    else:
        python = Path(sys.executable)
    return plugin.start(
        ctx,
        LaunchPlan(
            argv=[str(python), "-u", str(ctx.build_dir / SHIM)],
            cwd=ctx.tree,
            read_only=read_only,
            extra_env={
                "TEE_ENTRY": str(ctx.tree / (ctx.entry or "app.py")),
                "TEE_DAEMON_SITE": sysconfig.get_path("purelib"),
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONUNBUFFERED": "1",
            },
            image=BASE_IMAGE,
        ),
    )


@hookimpl
def runtime_forward(runtime: str, instance: Instance):
    return plugin.forward(instance)


@hookimpl
def runtime_forget(runtime: str, project: str) -> bool:
    plugin.forget(project)
    return True
