"""A tiny third-party runtime: answers every request with the entry file's text."""

from pathlib import Path

from tee_daemon.kernel.hookspecs import hookimpl
from tee_daemon.kernel.contract import Detection, Instance, RuntimeInfo


class EchoInstance(Instance):
    def __init__(self, text: str, greeting: str) -> None:
        self.body = f"{greeting}: {text}".encode()

    async def ready(self, timeout: float) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def __call__(self, scope, receive, send):
        body = self.body + b" at " + scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})


@hookimpl
def runtime_describe():
    return [RuntimeInfo(name="echo", default_entry="echo.txt", detect_priority=45, version="1.0.0")]


@hookimpl
def runtime_detect(tree: Path):
    return Detection(runtime="echo", entry="echo.txt") if (tree / "echo.txt").is_file() else None


@hookimpl
def runtime_build(runtime, ctx):
    return (ctx.tree / ctx.entry).is_file()


@hookimpl
def runtime_start(runtime, ctx):
    return EchoInstance((ctx.tree / ctx.entry).read_text().strip(), ctx.env.get("GREETING", "echo"))


@hookimpl
def runtime_forward(runtime, instance):
    return instance
