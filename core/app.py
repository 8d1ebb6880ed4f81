"""The ASGI application: Litestar for the API, behind the project router."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from . import __version__, viewer
from .api import ROUTES, daemon_of, is_admin, listing
from .attest_api import ATTEST_ROUTES
from .daemon import Daemon
from .errors import UserError
from .routing import Ingress
from .schema_page import PlainSchemaPage
from .settings import Settings, load_settings

log = logging.getLogger("tee_daemon.app")
MiB = 2**20


@get("/", sync_to_thread=False, include_in_schema=True)
def root(request: Request) -> Response:
    """The attested projects as JSON, or the viewer page for browsers."""
    if viewer.wants_html(request):
        return viewer.html_response(viewer.viewer_page(daemon_of(request)))
    return Response(listing(request, admin=is_admin(request)))


def user_error_handler(_: Request, exc: UserError) -> Response:
    return Response({"status_code": exc.status_code, "detail": exc.detail, **exc.extra}, status_code=exc.status_code)


def http_error_handler(_: Request, exc: HTTPException) -> Response:
    body: dict[str, Any] = {"status_code": exc.status_code, "detail": exc.detail}
    if exc.extra:
        body["extra"] = exc.extra
    return Response(body, status_code=exc.status_code, headers=exc.headers)


def internal_error_handler(request: Request, exc: Exception) -> Response:
    # Log the cause for the operator; answer without a trace (it could hold secrets).
    log.exception("internal error on %s %s", request.method, request.url.path)
    return Response(
        {"status_code": 500, "detail": "internal error; the daemon log has the cause"},
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


def build_app(daemon: Daemon) -> Ingress:
    api = Litestar(
        route_handlers=[root, *ROUTES, *viewer.ROUTES, *ATTEST_ROUTES],
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
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="the admin token")}
            ),
        ),
        request_max_body_size=daemon.settings.max_upload_bytes + MiB,
        debug=False,
    )
    api.state.daemon = daemon
    return daemon.attach(api)


def create_app(settings: Settings | None = None) -> Ingress:
    """The factory granian's workers call; settings come from the environment."""
    return build_app(Daemon(settings or load_settings()))
