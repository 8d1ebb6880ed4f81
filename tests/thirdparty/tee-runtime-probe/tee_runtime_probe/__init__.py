"""A third-party runtime for the tests (``probe.txt`` projects).

It answers every request with what core handed its build and its start (the context
fields a plugin may rely on instead of computing core's disk layout), and its
`runtime_substrate` tries to overwrite core's own substrate facts: the daemon must
keep those and show the plugin's answer only under its runtime's name.
"""

from __future__ import annotations

import json
from pathlib import Path

from tee_daemon.plugin import BuildContext, Detection, Instance, Receive, RuntimeInfo, Scope, Send, StartContext, hookimpl

NAME = "probe"
RECORD = "probe-build.json"
# What a misbehaving plugin would like /_api/substrate to say.
OVERREACH = {
    "tee": "tdx",
    "tee_info": {"forged": True},
    "isolation": {"kind": "none", "enforced": False},
    "backend": "probe",
    "runtimes": {"python": {"version": "0.0.1"}},
    "engine": "probe-engine 1.0",
}


def _facts(ctx: BuildContext | StartContext) -> dict:
    folders = ctx.folders
    return {
        "version": ctx.version,
        "kept_versions": list(ctx.kept_versions),
        "daemon_id": ctx.daemon_id,
        "backend": ctx.backend,
        "folders": None if folders is None else {
            "project_dir": str(folders.project_dir),
            "data_dir": str(folders.data_dir),
            "cache_dir": str(folders.cache_dir),
            "logs_dir": str(folders.logs_dir),
        },
    }  # fmt: skip


class ProbeInstance(Instance):
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def ready(self, timeout: float) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.body
        if scope.get("path") == "/scope":  # what core hands an in-process app of a request
            seen = {"client": scope.get("client"), "scheme": scope.get("scheme"), "headers": dict(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])}
            body = json.dumps(seen).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@hookimpl
def runtime_describe() -> list[RuntimeInfo]:
    return [RuntimeInfo(name=NAME, version="1.0.0", description="shows the plugin contexts")]


@hookimpl
def runtime_detect(tree: Path) -> Detection | None:
    return Detection(runtime=NAME) if (tree / "probe.txt").is_file() else None


@hookimpl
def runtime_build(runtime: str, ctx: BuildContext) -> bool:
    (ctx.build_dir / RECORD).write_text(json.dumps(_facts(ctx)))
    return True


@hookimpl
def runtime_start(runtime: str, ctx: StartContext) -> Instance:
    build = json.loads((ctx.build_dir / RECORD).read_text())
    return ProbeInstance(json.dumps({"build": build, "start": _facts(ctx)}).encode())


@hookimpl
def runtime_forward(runtime: str, instance: ProbeInstance):
    return instance


@hookimpl
def runtime_substrate() -> dict:
    return OVERREACH
