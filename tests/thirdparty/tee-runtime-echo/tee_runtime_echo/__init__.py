"""tee-runtime-echo: the worked example of a third-party runtime (docs/PLUGINS.md).

A project holding an ``echo.txt`` is served by the ``echo`` runtime: every request is
answered with ``<GREETING>: <the file's text> at <the path asked for>``, where GREETING
comes from the project's env. It runs no process, so it implements every hook in a few
lines: a runtime that runs a program does the same with `LaunchPlan` and `start`.

It imports only `tee_daemon.plugin`, the one module of the daemon's that is a contract
(everything else in core may move between releases).
"""

from __future__ import annotations

import threading
from pathlib import Path

from tee_daemon.plugin import (
    BuildContext,
    DeployFailed,
    Detection,
    Instance,
    Receive,
    RuntimeInfo,
    Scope,
    Send,
    StartContext,
    hookimpl,
    project_log,
)

RUNTIME = "echo"
ENTRY = "echo.txt"
MAX_TEXT = 4096  # bytes of echo.txt; more is the author's mistake, refused at build
BUILT = "echo.body"  # what the build leaves in the version's build folder

# Hooks that run in worker threads (build, start, stop, forget) share this state with
# requests on the event loop, hence the lock.
_lock = threading.Lock()
_running: set[EchoInstance] = set()  # started and not yet stopped: for runtime_substrate
_served: dict[str, int] = {}  # requests per project, kept across its versions until forgotten


class EchoInstance(Instance):
    """One running version: the text is in memory, so it is ready as soon as it exists."""

    def __init__(self, project: str, version: int, text: str, greeting: str) -> None:
        self.project, self.version = project, version
        self.body = f"{greeting}: {text}".encode()
        self.stopped = False

    async def ready(self, timeout: float) -> None:
        return None  # nothing to wait for; a process runtime waits for its socket here

    async def stop(self) -> None:
        self.stopped = True  # idempotent, as core may call it more than once

    def describe(self) -> dict:
        return {"version": self.version}  # shown to the admin; never put secrets here

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The instance is its own ASGI app (see runtime_forward). scope["path"] is the
        # path inside the project: core has already taken /<name> off it.
        if scope["type"] != "http":
            return
        with _lock:
            _served[self.project] = count = _served.get(self.project, 0) + 1
        body = self.body + b" at " + scope["path"].encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"x-echo-request", str(count).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@hookimpl
def runtime_describe() -> list[RuntimeInfo]:
    # Priority 45: tried after deno (50), before bun (40) and the rest.
    return [
        RuntimeInfo(
            name=RUNTIME,
            default_entry=ENTRY,
            detect_priority=45,
            version="1.0.0",
            description="answers every request with the text of echo.txt",
        )
    ]


@hookimpl
def runtime_detect(tree: Path) -> Detection | None:
    # Look, never run: the tree is untrusted until built in the sandbox.
    return Detection(runtime=RUNTIME, entry=ENTRY) if (tree / ENTRY).is_file() else None


@hookimpl
def runtime_build(runtime: str, ctx: BuildContext) -> bool:
    # Everything the author can get wrong is a DeployFailed: a 422 JSON answer with
    # this message, and the previous version keeps serving.
    source = ctx.tree / (ctx.entry or ENTRY)
    if not source.is_file():
        raise DeployFailed(f"{ctx.entry or ENTRY} not found: the echo runtime serves its text")
    data = source.read_bytes()
    if len(data) > MAX_TEXT:
        raise DeployFailed(f"{source.name} is {len(data)} bytes; the echo runtime takes at most {MAX_TEXT}")
    try:
        text = data.decode().strip()
    except UnicodeDecodeError:
        raise DeployFailed(f"{source.name} is not UTF-8 text") from None
    # Write only under build_dir (this version's) or cache_dir (the project's).
    (ctx.build_dir / BUILT).write_text(text)
    project_log(ctx, f"echo: built {len(text)} characters for version {ctx.version}")
    return True


@hookimpl
def runtime_start(runtime: str, ctx: StartContext) -> Instance:
    # Start from what the build left, not from the tree. ctx.env is the project's env
    # (secrets included): use it for the project only, never log it.
    text = (ctx.build_dir / BUILT).read_text()
    instance = EchoInstance(ctx.project, ctx.version, text, ctx.env.get("GREETING", "echo"))
    with _lock:
        _running.add(instance)
    return instance


@hookimpl
def runtime_forward(runtime: str, instance: EchoInstance) -> EchoInstance:
    # A process runtime returns `forward(instance)` (a proxy to its socket) instead.
    return instance


@hookimpl
def runtime_stop(runtime: str, instance: EchoInstance) -> bool:
    # Core has awaited instance.stop(); what is left is the runtime's own bookkeeping.
    with _lock:
        _running.discard(instance)
    return True


@hookimpl
def runtime_forget(runtime: str, project: str) -> bool:
    # The project was deleted: drop what this runtime kept for it across versions.
    with _lock:
        _served.pop(project, None)
    return True


@hookimpl
def runtime_substrate() -> dict:
    # Public facts only: counts, versions, modes; never project names or secrets.
    with _lock:
        return {"running": len(_running)}
