"""The HTTP API under /_api (SPEC section 3), as two Litestar controllers.

`DaemonAPI` (health, substrate, metrics) and `ProjectsAPI` (the projects). Public
handlers show attested projects only (dev ones to the admin); admin handlers are behind
the `admin_guard` (the bearer token). Handlers get the daemon's parts by dependency
injection (`DEPENDENCIES`, provided by `web/app.py`), and each names its request and
answer shapes for `/_api/schema` (`web/openapi.py`). Every refusal is a JSON error with
a `detail` that says what was wrong.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar import Controller, Request, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import UploadFile
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.response import Stream
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from tee_daemon.daemon import Daemon
from tee_daemon.kernel.errors import NotFound, UserError
from tee_daemon.run import logs
from tee_daemon.state.models import NAME_RE, DeployRequest, Project
from tee_daemon.web import shapes
from tee_daemon.web.auth import bearer_matches
from tee_daemon.web.openapi import ADMIN_REFUSALS, DEPLOY_EXAMPLES, DEPLOYED_EXAMPLE, NAMED_REFUSALS, documented

MiB = 2**20
T = TypeVar("T")


# -- the daemon's parts, and who is asking ----------------------------------------------


def daemon_of(connection: ASGIConnection) -> Daemon:
    """The daemon behind this app (for guards and pages; handlers get it injected)."""
    return connection.app.state.daemon


def is_admin(connection: ASGIConnection) -> bool:
    return bearer_matches(connection.headers.get("authorization"), daemon_of(connection).token)


def admin_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    if not is_admin(connection):
        raise NotAuthorizedException(
            "admin token required: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


# What every admin handler declares (here, in admin.py): the guard, and the bearer scheme.
ADMIN: dict[str, Any] = {"guards": [admin_guard], "security": [{"bearer": []}]}


def _provide_daemon(request: Request) -> Daemon:
    return daemon_of(request)


def _provide_admin(request: Request) -> bool:
    return is_admin(request)


# App-wide dependencies: `daemon` (every part), `admin` (the request carries the token).
DEPENDENCIES = {
    "daemon": Provide(_provide_daemon, sync_to_thread=False),
    "admin": Provide(_provide_admin, sync_to_thread=False),
}


def describe(daemon: Daemon, project: Project) -> dict[str, Any]:
    """The public manifest and the project's URL: from TEE_DAEMON_PUBLIC_URL (else the
    listen address) and the base domain, never from the request's Host (SPEC 10)."""
    answer = {**project.public_manifest(), "url": daemon.origins.project_url(project.name)}
    if project.mode == "attested":
        answer["verification_url"] = daemon.origins.daemon_url(f"/_api/verification/{project.name}")
    return answer


def listing(daemon: Daemon, admin: bool) -> dict[str, Any]:
    projects = daemon.deployer.projects.values()
    return {
        "projects": [
            describe(daemon, p) for p in sorted(projects, key=lambda p: p.name) if admin or p.mode == "attested"
        ],
        # Every public answer says whether the TEE behind it is real (SPEC section 2).
        "tee": daemon.tee_mode,
    }


def visible_project(daemon: Daemon, name: str, admin: bool) -> Project:
    """A project as the requester may see it: dev projects only for the admin."""
    project = daemon.deployer.projects.get(name)
    if project is None or (project.mode != "attested" and not admin):
        raise NotFound(f"no attested project named {name!r}")
    return project


@contextmanager
def counted(daemon: Daemon, name: str, action: str) -> Iterator[None]:
    """Count an admin operation, ok or failed, for /_api/metrics."""
    metrics = daemon.metrics
    label = name if isinstance(name, str) and NAME_RE.fullmatch(name) else "(invalid)"
    try:
        yield
    except BaseException:
        metrics.deploy(label, action, ok=False)
        raise
    metrics.deploy(label, action, ok=True)
    if action == "delete":
        metrics.forget(label)


# -- public --------------------------------------------------------------------------


class DaemonAPI(Controller):
    """The daemon itself: health and substrate (public), metrics (admin)."""

    path = "/_api"
    tags = ["daemon"]

    @get("/health", sync_to_thread=False, operation_class=documented(answer=shapes.Health))
    def health(self, daemon: NamedDependency[Daemon]) -> dict[str, str]:
        """The daemon is up; `tee` says whether the TEE behind it is real."""
        return {"status": "ok", "tee": daemon.tee_mode}

    @get("/substrate", sync_to_thread=False, operation_class=documented(answer=shapes.Substrate))
    def substrate(self, daemon: NamedDependency[Daemon]) -> dict[str, Any]:
        """What the daemon runs on: version, backend, runtimes, TEE, isolation, log."""
        return daemon.substrate()

    @get(
        "/metrics",
        **ADMIN,
        operation_class=documented(text="text/plain", refusals=ADMIN_REFUSALS),
    )
    async def metrics(self, daemon: NamedDependency[Daemon]) -> Response:
        """Prometheus metrics: requests, latencies, deploys, restarts, memory per project."""
        workers = await daemon.hub.collect()  # the ingress workers' counters, added up here
        active: dict[str, int] = {}
        for worker in workers:
            for name, n in worker["active"].items():
                active[name] = active.get(name, 0) + n
        total = daemon.metrics.merged(workers)
        text = await asyncio.to_thread(total.render, dict(daemon.routes), _worker_lines(workers), active)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


class ProjectsAPI(Controller):
    """Projects: one attested project's manifest is public; everything else is admin.
    (Litestar wants one controller per path, so the guard is per handler.)"""

    path = "/_api/projects"
    tags = ["projects"]

    @get(
        "/{name:str}",
        sync_to_thread=False,
        operation_class=documented(answer=shapes.ProjectInfo, refusals={404: "no attested project of that name"}),
    )
    def get_project(self, daemon: NamedDependency[Daemon], admin: NamedDependency[bool], name: FromPath[str]) -> dict[str, Any]:
        """One attested project's manifest (dev ones too with the admin token)."""
        answer = {**describe(daemon, visible_project(daemon, name, admin)), "tee": daemon.tee_mode}
        if admin:
            # The running instance (state, restarts, crash loop) is for the operator only.
            route = daemon.routes.get(name)
            answer["instance"] = route.instance.describe() if route else None
        return answer


    @get("/", **ADMIN, sync_to_thread=False, operation_class=documented(answer=shapes.ProjectList, refusals=ADMIN_REFUSALS))
    def list_projects(self, daemon: NamedDependency[Daemon]) -> dict[str, Any]:
        """Every project, dev and attested."""
        return listing(daemon, admin=True)

    @post(
        "/",
        **ADMIN,
        status_code=HTTP_201_CREATED,
        operation_class=documented(
            answer=shapes.ProjectInfo,
            status=201,
            body=DeployRequest,
            multipart=True,
            body_examples=DEPLOY_EXAMPLES,
            answer_examples=DEPLOYED_EXAMPLE,
            refusals={
                **ADMIN_REFUSALS,
                400: "the request or its source is invalid",
                409: "the project is attested: only promote changes it",
                413: "the upload is larger than TEE_DAEMON_MAX_UPLOAD_BYTES",
                415: "neither JSON nor multipart/form-data",
                422: "the new version did not build or start; the previous one keeps serving",
            },
        ),
    )
    async def create_project(self, daemon: NamedDependency[Daemon], request: Request) -> dict[str, Any]:
        """Deploy a new version from a git source (JSON) or a tarball (multipart); answers
        once it serves."""
        # The app-wide request_max_body_size (set from max_upload_bytes) bounds the body.
        limit = daemon.settings.max_upload_bytes + MiB
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            deploy_request, upload = await _read_multipart(request)
        elif content_type.startswith("application/json") or not content_type:
            body = await _read_body(request, limit)
            deploy_request, upload = _decode(body, DeployRequest, "request body"), None
        else:
            raise UserError(
                f"unsupported content type {content_type.split(';')[0]!r}: send JSON or multipart/form-data",
                status_code=415,
            )
        with counted(daemon, deploy_request.name, "deploy"):
            project = await daemon.deployer.deploy(deploy_request, upload)
        return describe(daemon, project)

    @post(
        "/{name:str}/promote",
        **ADMIN,
        status_code=HTTP_200_OK,
        operation_class=documented(answer=shapes.ProjectInfo, refusals={**NAMED_REFUSALS, 503: "the log cannot record it"}),
    )
    async def promote(self, daemon: NamedDependency[Daemon], name: FromPath[str]) -> dict[str, Any]:
        """Make the project attested: its versions are logged from now on."""
        with counted(daemon, name, "promote"):
            project = await daemon.deployer.promote(name)
        return describe(daemon, project)

    @post(
        "/{name:str}/redeploy",
        **ADMIN,
        status_code=HTTP_200_OK,
        operation_class=documented(answer=shapes.ProjectInfo, refusals={**NAMED_REFUSALS, 422: "the build failed"}),
    )
    async def redeploy(self, daemon: NamedDependency[Daemon], name: FromPath[str]) -> dict[str, Any]:
        """Fetch the project's source again; a new version only if it changed (`changed`)."""
        with counted(daemon, name, "redeploy"):
            project, changed = await daemon.deployer.redeploy(name)
        return {"changed": changed, **describe(daemon, project)}

    @post(
        "/{name:str}/rollback",
        **ADMIN,
        status_code=HTTP_200_OK,
        operation_class=documented(
            answer=shapes.ProjectInfo,
            body=shapes.RollbackRequest,
            body_required=False,
            body_examples={"previous": {}, "a kept version": {"version": 2}},
            refusals={**NAMED_REFUSALS, 400: "no such kept version", 422: "it did not start"},
        ),
    )
    async def rollback(self, daemon: NamedDependency[Daemon], request: Request, name: FromPath[str]) -> dict[str, Any]:
        """Serve a kept version again (default: the one before the current)."""
        body = await _read_body(request, 64 * 1024)
        wanted = _decode(body, shapes.RollbackRequest, "request body") if body.strip() else shapes.RollbackRequest()
        with counted(daemon, name, "rollback"):
            project = await daemon.deployer.rollback(name, wanted.version)
        return describe(daemon, project)

    @delete("/{name:str}", **ADMIN, status_code=HTTP_200_OK, operation_class=documented(answer=shapes.Deleted, refusals=NAMED_REFUSALS))
    async def delete_project(self, daemon: NamedDependency[Daemon], name: FromPath[str]) -> dict[str, Any]:
        """Stop the project and remove its versions and data."""
        with counted(daemon, name, "delete"):
            await daemon.deployer.delete(name)
        return {"deleted": name}

    @get(
        "/{name:str}/logs",
        **ADMIN,
        operation_class=documented(text="text/plain", refusals={**NAMED_REFUSALS, 400: "'lines' below zero"}),
    )
    async def project_logs(self, daemon: NamedDependency[Daemon], name: FromPath[str], follow: FromQuery[bool] = False, lines: FromQuery[int | None] = None) -> Any:
        """The project's stdout/stderr; `?follow=1` keeps streaming new output."""
        if name not in daemon.deployer.projects:
            raise NotFound(f"no project named {name!r}")
        if lines is not None and lines < 0:
            raise UserError("'lines' must be zero or more")
        folder = daemon.store.logs_dir(name)
        headers = {"cache-control": "no-cache", "x-content-type-options": "nosniff"}
        if follow:
            return Stream(logs.follow(folder, lines), media_type="text/plain; charset=utf-8", headers=headers)
        return Response(logs.read(folder, lines), media_type="text/plain; charset=utf-8", headers=headers)


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


def _worker_lines(workers: list[dict[str, Any]]) -> list[str]:
    """Per ingress worker: how many project requests it served (its pid is the label)."""
    lines = [
        "# HELP tee_daemon_ingress_workers Ingress worker processes connected to the supervisor.",
        "# TYPE tee_daemon_ingress_workers gauge",
        f"tee_daemon_ingress_workers {len(workers)}",
        "# HELP tee_daemon_ingress_worker_requests_total Project requests an ingress worker served itself.",
        "# TYPE tee_daemon_ingress_worker_requests_total counter",
    ]
    for worker in sorted(workers, key=lambda w: w["pid"]):
        lines.append(f'tee_daemon_ingress_worker_requests_total{{worker="{worker["pid"]}"}} {worker["served"]}')
    return lines


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
    deploy_request = _decode(manifest, DeployRequest, "manifest")
    files.file.seek(0)
    return deploy_request, files.file  # type: ignore[return-value]


CONTROLLERS = [DaemonAPI, ProjectsAPI]
