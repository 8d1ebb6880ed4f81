"""The front door: every request is either the core API or a project's traffic.

`/`, `/_api/...` and the admin dashboard `/_admin/...` go to the Litestar app; `/<name>/...` goes, with the prefix
stripped, to the ASGI callable of the project's live instance. With a base domain `D`,
a request for the host `<name>.D` goes whole to that project, and `/<name>/...` on the
daemon's host answers 308 there. A request for a host that is not the daemon's gets
421 (core/web/origins.py). This is the hot path, so it does a header scan, a cached host
lookup, a dict lookup and a scope copy and nothing else.
"""

from __future__ import annotations

from tee_daemon.kernel.errors import error_answer
from tee_daemon.proxy.forward import SCOPE_KEY, ProxyLimits
from tee_daemon.web.metrics import Metrics
from tee_daemon.web.origins import DAEMON, OTHER, PROJECT, Origins
from tee_daemon.settings import Settings
from tee_daemon.kernel.contract import ASGIApp, Receive, Scope, Send
from tee_daemon.kernel.routes import Route

# The daemon's own paths (no project name starts with "_").
_DAEMON_PREFIXES = ("/_api/", "/_admin/")
_DAEMON_PATHS = ("/_api", "/_admin")


class Ingress:
    """The daemon's ASGI entry: its parts (the live routes the deployer switches, the
    metrics, the origins, the proxy limits) are the daemon's, handed in."""

    def __init__(
        self,
        api: ASGIApp,
        *,
        routes: dict[str, Route] | None = None,
        metrics: Metrics | None = None,
        origins: Origins | None = None,
        proxy_limits: ProxyLimits | None = None,
        defer: ASGIApp | None = None,
    ) -> None:
        self.api = api
        # In an ingress worker: where a request for a name without a route here goes,
        # whole (the supervisor, which has every route; web/worker.py).
        self.defer = defer
        self.routes: dict[str, Route] = routes if routes is not None else {}
        self.metrics = metrics or Metrics()
        self.origins = origins or Origins(Settings())
        self.proxy_limits = proxy_limits or ProxyLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.api(scope, receive, send)
            return
        scope[SCOPE_KEY] = self.proxy_limits  # what any proxy behind us forwards under
        origins = self.origins
        raw_host = origins.request_host(scope)
        kind, host_project = origins.classify(raw_host)
        if kind != DAEMON:
            if kind == PROJECT:
                await self._serve_host(host_project, scope, receive, send)  # type: ignore[arg-type]
                return
            if kind == OTHER:
                self.metrics.unrouted += 1
                await _json_error(send, scope, 404, f"no project at the host {raw_host.decode('latin-1')!r}")  # type: ignore[union-attr]
                return
            await _json_error(send, scope, 421, origins.refusal(raw_host))
            return
        path: str = scope["path"]
        if path == "/" or path.startswith(_DAEMON_PREFIXES) or path in _DAEMON_PATHS:
            await self.api(scope, receive, send)
            return
        name, slash, rest = path[1:].partition("/")
        route = self.routes.get(name)
        if route is None:
            if self.defer is not None:
                await self.defer(scope, receive, send)
                return
            self.metrics.unrouted += 1
            await _json_error(send, scope, 404, f"no project named {name!r}")
            return
        if origins.base_domain:
            # No project content on the daemon's origin: send the client to the project's.
            if scope["type"] != "http":
                await _json_error(send, scope, 404, "")
                return
            target = origins.project_url(name) + _raw_rest(scope, name, rest)
            query = scope.get("query_string") or b""
            await _redirect(send, target + ("?" + query.decode("latin-1") if query else ""))
            return
        if not slash and scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            # `/<name>` → `/<name>/`, so relative links in the project resolve inside it.
            query = scope.get("query_string") or b""
            await _redirect(send, f"/{name}/" + ("?" + query.decode("latin-1") if query else ""))
            return
        child = dict(scope)
        child["path"] = "/" + rest
        raw = scope.get("raw_path")
        if raw is not None:
            raw_name, _, raw_rest = raw[1:].partition(b"/")
            # A name sent percent-encoded leaves no clean raw prefix to cut: let the
            # project's path be re-encoded from the decoded one instead.
            child["raw_path"] = b"/" + raw_rest if raw_name == name.encode() else None
        child["root_path"] = scope.get("root_path", "") + "/" + name
        route.active += 1
        try:
            await self.metrics.serve(route.app, name, child, receive, send)
        finally:
            route.done()

    async def _serve_host(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        """A request for `<name>.D`: the whole path is the project's, `/_api/...` too."""
        route = self.routes.get(name)
        if route is None:
            if self.defer is not None:
                await self.defer(scope, receive, send)
                return
            self.metrics.unrouted += 1
            await _json_error(send, scope, 404, f"no project named {name!r}")
            return
        route.active += 1
        try:
            await self.metrics.serve(route.app, name, scope, receive, send)
        finally:
            route.done()


def _raw_rest(scope: Scope, name: str, rest: str) -> str:
    """The path after `/<name>/`, as the client encoded it where possible."""
    raw = scope.get("raw_path")
    if raw:
        raw = raw.split(b"?", 1)[0]
        raw_name, _, raw_rest = raw[1:].partition(b"/")
        if raw_name == name.encode():
            return raw_rest.decode("latin-1")
    from urllib.parse import quote

    return quote(rest)


async def _redirect(send: Send, location: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 308,
            "headers": [(b"location", location.encode("latin-1", "replace")), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _json_error(send: Send, scope: Scope, status: int, detail: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4404})
        return
    headers, body = error_answer(scope, status, detail)  # JSON, or HTML for a browser
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
