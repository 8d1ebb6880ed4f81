"""The HTTP API under /_api (SPEC section 3), as Litestar route handlers.

Public handlers show attested projects only; admin handlers are guarded by the
bearer token. Every refusal is a JSON error with a `detail` that says what was wrong.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import UploadFile
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from tee_daemon.web.auth import bearer_matches
from tee_daemon.daemon import Daemon
from tee_daemon.kernel.errors import NotFound, UserError
from tee_daemon.state.models import NAME_RE, DeployRequest, Project

MiB = 2**20
T = TypeVar("T")


def daemon_of(connection: ASGIConnection) -> Daemon:
    return connection.app.state.daemon


def is_admin(connection: ASGIConnection) -> bool:
    return bearer_matches(connection.headers.get("authorization"), daemon_of(connection).token)


def admin_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    if not is_admin(connection):
        raise NotAuthorizedException(
            "admin token required: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


# What every admin handler declares: the guard, and the bearer scheme in the OpenAPI.
ADMIN: dict[str, Any] = {"guards": [admin_guard], "security": [{"bearer": []}]}


def project_url(request: Request, name: str) -> str:
    """From TEE_DAEMON_PUBLIC_URL (else the listen address) and the base domain, never
    from the request's Host (SPEC section 10)."""
    return daemon_of(request).ingress.origins.project_url(name)  # type: ignore[union-attr]


def visible_project(request: Request, name: str) -> Project:
    """A project as the requester may see it: dev projects only for the admin."""
    project = daemon_of(request).deployer.projects.get(name)  # type: ignore[union-attr]
    if project is None or (project.mode != "attested" and not is_admin(request)):
        raise NotFound(f"no attested project named {name!r}")
    return project


def describe(request: Request, project: Project) -> dict[str, Any]:
    answer = {**project.public_manifest(), "url": project_url(request, project.name)}
    if project.mode == "attested":
        origins = daemon_of(request).ingress.origins  # type: ignore[union-attr]
        answer["verification_url"] = origins.daemon_url(f"/_api/verification/{project.name}")
    return answer


def listing(request: Request, admin: bool) -> dict[str, Any]:
    projects = daemon_of(request).deployer.projects.values()  # type: ignore[union-attr]
    return {
        "projects": [
            describe(request, p) for p in sorted(projects, key=lambda p: p.name) if admin or p.mode == "attested"
        ],
        # Every public answer says whether the TEE behind it is real (SPEC section 2).
        "tee": daemon_of(request).tee_mode,
    }


# -- public --------------------------------------------------------------------------


@get("/_api/health", sync_to_thread=False)
def health(request: Request) -> dict[str, str]:
    return {"status": "ok", "tee": daemon_of(request).tee_mode}


@get("/_api/substrate", sync_to_thread=False)
def substrate(request: Request) -> dict[str, Any]:
    return daemon_of(request).substrate()


@get("/_api/projects/{name:str}", sync_to_thread=False)
def get_project(request: Request, name: str) -> dict[str, Any]:
    answer = {**describe(request, visible_project(request, name)), "tee": daemon_of(request).tee_mode}
    if is_admin(request):
        # The running instance (state, restarts, crash loop) is for the operator only.
        route = daemon_of(request).ingress.routes.get(name)  # type: ignore[union-attr]
        answer["instance"] = route.instance.describe() if route else None
    return answer


# -- admin ---------------------------------------------------------------------------


@contextmanager
def counted(request: Request, name: str, action: str) -> Iterator[None]:
    """Count an admin operation, ok or failed, for /_api/metrics."""
    metrics = daemon_of(request).ingress.metrics  # type: ignore[union-attr]
    label = name if isinstance(name, str) and NAME_RE.fullmatch(name) else "(invalid)"
    try:
        yield
    except BaseException:
        metrics.deploy(label, action, ok=False)
        raise
    metrics.deploy(label, action, ok=True)
    if action == "delete":
        metrics.forget(label)


@get("/_api/metrics", **ADMIN, sync_to_thread=True)
def metrics(request: Request) -> Response:
    ingress = daemon_of(request).ingress
    return Response(
        ingress.metrics.render(dict(ingress.routes)),  # type: ignore[union-attr]
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


@get("/_api/projects", **ADMIN, sync_to_thread=False)
def list_projects(request: Request) -> dict[str, Any]:
    return listing(request, admin=True)


@post("/_api/projects", **ADMIN, status_code=HTTP_201_CREATED)
async def create_project(request: Request) -> dict[str, Any]:
    # The app-wide request_max_body_size (set from max_upload_bytes) bounds the body.
    daemon = daemon_of(request)
    limit = daemon.settings.max_upload_bytes + MiB
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        deploy_request, upload = await _read_multipart(request)
    elif content_type.startswith("application/json") or not content_type:
        body = await _read_body(request, limit)
        deploy_request, upload = _decode_request(body, "request body"), None
    else:
        raise UserError(
            f"unsupported content type {content_type.split(';')[0]!r}: send JSON or multipart/form-data",
            status_code=415,
        )
    with counted(request, deploy_request.name, "deploy"):
        project = await daemon.deployer.deploy(deploy_request, upload)  # type: ignore[union-attr]
    return describe(request, project)


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    version: int | None = None


@post("/_api/projects/{name:str}/promote", **ADMIN, status_code=HTTP_200_OK)
async def promote(request: Request, name: str) -> dict[str, Any]:
    with counted(request, name, "promote"):
        project = await daemon_of(request).deployer.promote(name)  # type: ignore[union-attr]
    return describe(request, project)


@post("/_api/projects/{name:str}/redeploy", **ADMIN, status_code=HTTP_200_OK)
async def redeploy(request: Request, name: str) -> dict[str, Any]:
    with counted(request, name, "redeploy"):
        project, changed = await daemon_of(request).deployer.redeploy(name)  # type: ignore[union-attr]
    return {"changed": changed, **describe(request, project)}


@post("/_api/projects/{name:str}/rollback", **ADMIN, status_code=HTTP_200_OK)
async def rollback(request: Request, name: str) -> dict[str, Any]:
    body = await _read_body(request, 64 * 1024)
    wanted = _decode(body, RollbackRequest, "request body") if body.strip() else RollbackRequest()
    with counted(request, name, "rollback"):
        project = await daemon_of(request).deployer.rollback(name, wanted.version)  # type: ignore[union-attr]
    return describe(request, project)


@delete("/_api/projects/{name:str}", **ADMIN, status_code=HTTP_200_OK)
async def delete_project(request: Request, name: str) -> dict[str, Any]:
    with counted(request, name, "delete"):
        await daemon_of(request).deployer.delete(name)  # type: ignore[union-attr]
    return {"deleted": name}


# -- request bodies ------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it grows past `limit`."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UserError(f"request body larger than {limit} bytes", status_code=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_request(raw: bytes | str, where: str) -> DeployRequest:
    return _decode(raw, DeployRequest, where)


def _decode(raw: bytes | str, kind: type[T], where: str) -> T:
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise UserError(f"invalid {where}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise UserError(f"{where} is not valid JSON: {exc}") from None


async def _read_multipart(request: Request) -> tuple[DeployRequest, io.BufferedIOBase]:
    try:
        form = await request.form()
    except HTTPException:
        raise  # Already a clear answer, such as 413 for a body over the limit.
    except Exception as exc:  # Litestar raises several types for broken framing.
        raise UserError(f"malformed multipart body: {exc}") from None
    manifest = form.get("manifest")
    files = form.get("files")
    if manifest is None:
        raise UserError("multipart deploy needs a 'manifest' part (JSON)")
    if not isinstance(files, UploadFile):
        raise UserError("multipart deploy needs a 'files' part holding a tar or tar.gz file")
    if isinstance(manifest, UploadFile):
        manifest = await manifest.read()
    deploy_request = _decode_request(manifest, "manifest")
    files.file.seek(0)
    return deploy_request, files.file  # type: ignore[return-value]


@get("/_api/projects/{name:str}/logs", **ADMIN)
async def project_logs(request: Request, name: str, follow: bool = False, lines: int | None = None) -> Any:
    """The project's stdout/stderr; `?follow=1` keeps streaming new output."""
    from litestar.response import Stream

    from tee_daemon.run import logs

    daemon = daemon_of(request)
    if name not in daemon.deployer.projects:  # type: ignore[union-attr]
        raise NotFound(f"no project named {name!r}")
    if lines is not None and lines < 0:
        raise UserError("'lines' must be zero or more")
    folder = daemon.store.logs_dir(name)
    headers = {"cache-control": "no-cache", "x-content-type-options": "nosniff"}
    if follow:
        return Stream(logs.follow(folder, lines), media_type="text/plain; charset=utf-8", headers=headers)
    return Response(logs.read(folder, lines), media_type="text/plain; charset=utf-8", headers=headers)


ROUTES = [
    health,
    substrate,
    get_project,
    list_projects,
    create_project,
    promote,
    redeploy,
    rollback,
    delete_project,
    metrics,
    project_logs,
]
