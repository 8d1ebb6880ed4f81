"""The public attestation endpoints (SPEC sections 3, 6, 7): audit, attest, verification,
and the log's checkpoint, consistency proofs and entries.

All public, no auth, CORS from the app. The project endpoints answer only for attested
projects: dev and unknown names are 404 whether or not the admin token is sent. Nothing
here can carry a secret value: manifests list secret names only, and leaves are built
from the same public fields.
"""

from __future__ import annotations

import inspect
from typing import Any

from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar import Controller, Request, Response, get

from tee_daemon.daemon import Daemon
from tee_daemon.kernel.errors import NotFound, UserError
from tee_daemon.state.models import Project
from tee_daemon.web import shapes
from tee_daemon.web.api import describe
from tee_daemon.web.openapi import documented

NONCE = {"nonce": ("string", "hex, up to 64 bytes: a fresh quote binding it (else a cached one)")}
NAMED = {404: "no attested project of that name", 503: "the log is damaged or the TEE unavailable"}
LOG = {503: "the log is damaged or the TEE unavailable"}


def attested_project(daemon: Daemon, name: str) -> Project:
    """Attested projects only; the admin token changes nothing here."""
    project = daemon.deployer.projects.get(name)
    if project is None or project.mode != "attested":
        raise NotFound(f"no attested project named {name!r}")
    return project


def _int_param(request: Request, key: str) -> int | None:
    """A non-negative integer query parameter; None when absent or empty."""
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw, 10)
    except ValueError:
        raise UserError(f"query parameter {key!r} must be a non-negative integer") from None
    if value < 0:
        raise UserError(f"query parameter {key!r} must be a non-negative integer")
    return value


def _nonce(request: Request) -> str | None:
    # Present-but-empty is a bad nonce (400), not "no nonce".
    return request.query_params.get("nonce")


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept


async def verification_json(daemon: Daemon, request: Request, name: str) -> dict[str, Any]:
    """Manifest, attestation and audit from one log size, so they agree with each other."""
    project = attested_project(daemon, name)
    journal = daemon.journal
    nonce = _nonce(request)
    size = journal.snapshot_size()  # read after the project: its live entry is inside
    attestation = await journal.attestation(project, nonce, size)
    return {
        "name": name,
        "tee": daemon.tee_mode,
        "manifest": {**describe(daemon, project), "tee": daemon.tee_mode},
        "attestation": attestation,
        "audit": journal.audit(name, size),
    }


class AttestationAPI(Controller):
    path = "/_api"
    tags = ["attestation"]

    # -- per project -------------------------------------------------------------------

    @get("/projects/{name:str}/audit", sync_to_thread=False, operation_class=documented(answer=shapes.Audit, refusals=NAMED))
    def audit(self, daemon: NamedDependency[Daemon], name: FromPath[str]) -> dict[str, Any]:
        """The project's log entries with inclusion proofs, and the signed checkpoint."""
        attested_project(daemon, name)
        return daemon.journal.audit(name)

    @get(
        "/attest/{name:str}",
        operation_class=documented(answer=shapes.Attestation, refusals={**NAMED, 400: "the nonce is not hex"}, query=NONCE),
    )
    async def attest(self, daemon: NamedDependency[Daemon], request: Request, name: FromPath[str]) -> dict[str, Any]:
        """`{quote, event_log, report_data_preimage, tee, checkpoint}`; `?nonce=HEX` for a fresh quote."""
        project = attested_project(daemon, name)
        return await daemon.journal.attestation(project, _nonce(request))

    @get(
        "/verification/{name:str}",
        operation_class=documented(answer=shapes.Verification, refusals={**NAMED, 400: "the nonce is not hex"}, query=NONCE),
    )
    async def verification(self, daemon: NamedDependency[Daemon], request: Request, name: FromPath[str]) -> Response:
        """Everything a verifier needs in one answer; `Accept: text/html` gives the human page."""
        if _wants_html(request):
            attested_project(daemon, name)
            from tee_daemon.web import viewer

            page = getattr(viewer, "verification_page", None)
            if page is not None:
                html = page(daemon, name)
                if inspect.isawaitable(html):
                    html = await html
                return viewer.html_response(html)  # CSP, nosniff, no framing, Vary: Accept
        # One URL, two representations: a shared cache must key on Accept.
        return Response(await verification_json(daemon, request, name), headers={"Vary": "Accept"})

    # -- the whole log -----------------------------------------------------------------

    @get("/log/checkpoint", sync_to_thread=False, operation_class=documented(answer=shapes.Checkpoint, refusals=LOG))
    def log_checkpoint(self, daemon: NamedDependency[Daemon]) -> dict[str, Any]:
        """The current signed checkpoint of the whole log."""
        return daemon.journal.checkpoint()

    @get(
        "/log/consistency",
        sync_to_thread=False,
        operation_class=documented(
            answer=shapes.Consistency,
            refusals={**LOG, 400: "'from' missing or sizes out of range"},
            query={"from": ("integer", "the older log size (required)"), "to": ("integer", "the newer size (default: now)")},
        ),
    )
    def log_consistency(self, daemon: NamedDependency[Daemon], request: Request) -> dict[str, Any]:
        """An RFC 6962 consistency proof between log sizes `from` and `to` (default: now)."""
        journal = daemon.journal
        m = _int_param(request, "from")
        if m is None:
            raise UserError("query parameter 'from' is required")
        n = _int_param(request, "to")
        return journal.consistency(m, journal.snapshot_size() if n is None else n)

    @get(
        "/log/entries",
        sync_to_thread=False,
        operation_class=documented(
            answer=shapes.LogEntries,
            refusals={400: "start and end out of range"},
            query={"start": ("integer", "the first index (default 0)"), "end": ("integer", "past the last (at most 1000)")},
        ),
    )
    def log_entries(self, daemon: NamedDependency[Daemon], request: Request) -> dict[str, Any]:
        """The log's leaves in index order, `start` (default 0) to `end` (exclusive), ≤ 1000."""
        return daemon.journal.entries(_int_param(request, "start") or 0, _int_param(request, "end"))
