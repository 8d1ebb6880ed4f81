"""The ASGI application: Litestar for the API, behind the project router."""

from __future__ import annotations

import logging
from typing import Any

from litestar.di import NamedDependency
from litestar import Litestar, Request, Response, get
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from tee_daemon import __version__

from tee_daemon.web import admin, viewer
from tee_daemon.web.api import CONTROLLERS, DEPENDENCIES, listing
from tee_daemon.web import shapes
from tee_daemon.web.openapi import COMPONENTS, documented
from tee_daemon.web.public import AttestationAPI
from tee_daemon.daemon import Daemon
from tee_daemon.kernel.errors import UserError, error_body
from tee_daemon.web.ingress import Ingress
from tee_daemon.web.schema_page import PlainSchemaPage
from tee_daemon.settings import Settings

log = logging.getLogger("tee_daemon.web.app")
MiB = 2**20


@get("/", sync_to_thread=False, include_in_schema=True, operation_class=documented(answer=shapes.ProjectList))
def root(request: Request, daemon: NamedDependency[Daemon], admin: NamedDependency[bool]) -> Response:
    """The attested projects as JSON (dev ones too for the admin), or the viewer page
    for browsers."""
    if viewer.wants_html(request):
        return viewer.html_response(viewer.viewer_page(daemon))
    return Response(listing(daemon, admin=admin))


BAD_BODY = "the request body is malformed or was cut short (bad chunk size or fewer bytes than announced)"
_BODY_STATE = "tee_daemon.body"  # scope key: the front door's record of the request body


def _error(
    request: Request, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """An error as the SPEC's JSON body, or as a small HTML page for a browser's
    navigation. Public answers (a dev or unknown project's 404 included) are readable
    from any origin."""
    headers = {**(headers or {}), "Access-Control-Allow-Origin": "*"}
    if viewer.wants_html(request):
        return viewer.html_response(viewer.error_page(status, detail), status, headers)
    return Response(error_body(status, detail, **extra), status_code=status, headers=headers)


def _body_broken(request: Request) -> bool:
    state = request.scope.get(_BODY_STATE)  # type: ignore[call-overload]
    return bool(state and state.broken)


def user_error_handler(request: Request, exc: UserError) -> Response:
    return _error(request, exc.status_code, exc.detail, **exc.extra)


def http_error_handler(request: Request, exc: HTTPException) -> Response:
    if exc.status_code >= 500 and _body_broken(request):
        # Litestar reads a malformed or truncated body (granian reports it as a
        # disconnect) as "client disconnected prematurely", a 500: it is the client's.
        return _error(request, 400, BAD_BODY)
    extra = {"extra": exc.extra} if exc.extra else {}
    return _error(request, exc.status_code, exc.detail, exc.headers, **extra)


def internal_error_handler(request: Request, exc: Exception) -> Response:
    if _body_broken(request):
        return _error(request, 400, BAD_BODY)
    # Log the cause for the operator; answer without a trace (it could hold secrets).
    log.exception("internal error on %s %s", request.method, request.url.path)
    return _error(request, HTTP_500_INTERNAL_SERVER_ERROR, "internal error; the daemon log has the cause")


class _Body:
    __slots__ = ("done", "broken", "started")

    def __init__(self, done: bool) -> None:
        self.done = done  # the whole body was received (or none was announced)
        self.broken = False  # the server reported a disconnect before the body's end
        self.started = False  # the response head was sent


def _announces_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


_HTML_CSP = viewer.CSP.encode()
_ALWAYS = [(k.lower().encode(), v.encode()) for k, v in viewer.FRAMING_HEADERS.items()] + [
    (b"access-control-allow-origin", b"*")
]


def _front_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The daemon's own answers: never framed, never scriptable from a window a project
    page opened, public to any origin, one charset; HTML under the viewer's CSP."""
    out: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    html = False
    for name, value in headers:
        name = name.lower() if isinstance(name, bytes) else name.encode("latin-1").lower()
        value = value if isinstance(value, bytes) else value.encode("latin-1")
        if name == b"content-type":
            parts = [p.strip() for p in value.split(b";")]
            html = parts[0].lower() == b"text/html"
            kept: list[bytes] = []
            for part in parts:  # one charset, whoever added it
                if part.lower().startswith(b"charset=") and any(k.lower().startswith(b"charset=") for k in kept):
                    continue
                kept.append(part)
            value = b"; ".join(kept)
        elif name == b"allow" and b"GET" in value and b"HEAD" not in value:
            value += b", HEAD"  # HEAD is answered wherever GET is
        seen.add(name)
        out.append((name, value))
    for name, value in _ALWAYS:
        if name not in seen:
            out.append((name, value))
    if html:
        if b"content-security-policy" not in seen:
            out.append((b"content-security-policy", _HTML_CSP))
        if b"referrer-policy" not in seen:
            out.append((b"referrer-policy", b"no-referrer"))
    return out


class FrontDoor:
    """Litestar behind the daemon's own rules for every answer it gives:

    - `HEAD` is answered as `GET` without the body, wherever `GET` is;
    - a body the server reports as broken (a bad chunk size, fewer bytes than announced:
      granian hands the application a disconnect) becomes a 400, not Litestar's 500;
    - the headers of `_front_headers`.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:  # state, routes...: the Litestar app's
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope = dict(scope, method="GET")
        state = _Body(done=not _announces_body(scope["headers"]))
        scope[_BODY_STATE] = state

        async def guarded_receive() -> Any:
            message = await receive()
            kind = message["type"]
            if kind == "http.request":
                if not message.get("more_body", False):
                    state.done = True
            elif kind == "http.disconnect" and not state.done and not state.started:
                state.broken = True
            return message

        async def guarded_send(message: Any) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                state.started = True
                await send({**message, "headers": _front_headers(list(message.get("headers") or []))})
                if head:
                    await send({"type": "http.response.body", "body": b""})
                return
            if head and kind == "http.response.body":
                return  # the head is all a HEAD gets (sent above)
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)


def build_app(daemon: Daemon) -> Ingress:
    """The daemon's front door: the router (its routes, metrics and origins) in front of
    the Litestar API, whose handlers get the daemon's parts injected."""
    api = Litestar(
        route_handlers=[root, *CONTROLLERS, AttestationAPI, *viewer.ROUTES, *admin.ROUTES],
        dependencies=DEPENDENCIES,
        on_startup=[daemon.start],  # bound coroutine functions: Litestar awaits them
        on_shutdown=[daemon.stop],
        exception_handlers={
            UserError: user_error_handler,
            HTTPException: http_error_handler,
            Exception: internal_error_handler,
        },
        cors_config=CORSConfig(allow_origins=["*"], allow_headers=["*"], allow_methods=["*"]),
        openapi_config=OpenAPIConfig(
            title="tee-daemon",
            version=__version__,
            path="/_api/schema",
            render_plugins=[PlainSchemaPage()],
            use_handler_docstrings=True,
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="the admin token")},
            ),
        ),
        request_max_body_size=daemon.settings.max_upload_bytes + MiB,
        debug=False,
    )
    api.state.daemon = daemon  # for the admin guard and the pages
    # The shapes the operations name (web/openapi.py): Litestar fills the components
    # from what it saw itself, so msgspec's JSON Schemas are added to the built document.
    document = api.openapi_schema.components
    document.schemas = {**(document.schemas or {}), **COMPONENTS}  # type: ignore[dict-item]
    return Ingress(
        FrontDoor(api),
        routes=daemon.routes,
        metrics=daemon.metrics,
        origins=daemon.origins,
        proxy_limits=daemon.proxy_limits,
    )


def create_app(settings: Settings) -> Ingress:
    """The daemon's app for `settings`, in this process."""
    return build_app(Daemon(settings))

