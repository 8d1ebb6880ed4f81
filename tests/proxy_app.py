"""A granian app for tests/test_proxy.py and bench: core's Ingress with routes set
from the environment (`PROXY_ROUTES=name=host:port,name2=/path/to.sock`), each served
by `tee_daemon.proxy.forward.proxy_to`, without runtime plugins."""

from __future__ import annotations

import os

from pathlib import Path

from tee_daemon.web.accesslog import AccessLog
from tee_daemon.proxy.forward import proxy_to
from tee_daemon.kernel.routes import Route
from tee_daemon.web.ingress import Ingress
from tee_daemon.web.metrics import Metrics
from tee_daemon.kernel.contract import Instance


class _Nothing(Instance):
    async def ready(self, timeout: float) -> None:
        return None

    async def stop(self) -> None:
        return None


async def _api(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def create_app() -> Ingress:
    access = os.environ.get("PROXY_ACCESS_LOG")
    ingress = Ingress(_api, metrics=Metrics(access_log=AccessLog(Path(access)) if access else None))
    max_body = os.environ.get("PROXY_MAX_BODY")
    for item in filter(None, os.environ.get("PROXY_ROUTES", "").split(",")):
        name, _, target = item.partition("=")
        if target.startswith("/"):
            upstream = target
        else:
            host, _, port = target.rpartition(":")
            upstream = (host, int(port))
        app = proxy_to(upstream, max_body=int(max_body) if max_body else None)
        ingress.routes[name] = Route(app, _Nothing(), "test", 1)
    return ingress
