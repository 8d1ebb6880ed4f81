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

from litestar import Request, Response, get

from tee_daemon.web.api import daemon_of, describe
from tee_daemon.kernel.errors import NotFound, UserError
from tee_daemon.state.journal import Journal, Unavailable
from tee_daemon.state.models import Project


def _journal(request: Request) -> Journal:
    journal = daemon_of(request).journal
    if journal is None:
        raise Unavailable("the daemon is still starting: attestation is not ready yet")
    return journal


def attested_project(request: Request, name: str) -> Project:
    """Attested projects only; the admin token changes nothing here."""
    project = daemon_of(request).deployer.projects.get(name)  # type: ignore[union-attr]
    if project is None or project.mode != "attested":
        raise NotFound(f"no attested project named {name!r}")
    return project


def _int_param(request: Request, key: str, default: int | None) -> int | None:
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return default
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


# -- per project -----------------------------------------------------------------------


@get("/_api/projects/{name:str}/audit", sync_to_thread=False)
def audit(request: Request, name: str) -> dict[str, Any]:
    """The project's log entries with inclusion proofs, and the signed checkpoint."""
    attested_project(request, name)
    return _journal(request).audit(name)


@get("/_api/attest/{name:str}")
async def attest(request: Request, name: str) -> dict[str, Any]:
    """`{quote, event_log, report_data_preimage, tee, checkpoint}`; `?nonce=HEX` for a fresh quote."""
    project = attested_project(request, name)
    return await _journal(request).attestation(project, _nonce(request))


async def verification_json(request: Request, name: str) -> dict[str, Any]:
    """Manifest, attestation and audit from one log size, so they agree with each other."""
    daemon = daemon_of(request)
    project = attested_project(request, name)
    journal = _journal(request)
    nonce = _nonce(request)
    size = journal.snapshot_size()  # read after the project: its live entry is inside
    attestation = await journal.attestation(project, nonce, size)
    return {
        "name": name,
        "tee": daemon.tee_mode,
        "manifest": {**describe(request, project), "tee": daemon.tee_mode},
        "attestation": attestation,
        "audit": journal.audit(name, size),
    }


@get("/_api/verification/{name:str}")
async def verification(request: Request, name: str) -> Response:
    """Everything a verifier needs in one answer; `Accept: text/html` gives the human page."""
    if _wants_html(request):
        attested_project(request, name)
        from tee_daemon.web import viewer

        page = getattr(viewer, "verification_page", None)
        if page is not None:
            html = page(daemon_of(request), name)
            if inspect.isawaitable(html):
                html = await html
            return viewer.html_response(html)  # CSP, nosniff, no framing, Vary: Accept
    # One URL, two representations: a shared cache must key on Accept.
    return Response(await verification_json(request, name), headers={"Vary": "Accept"})


# -- the whole log ---------------------------------------------------------------------


@get("/_api/log/checkpoint", sync_to_thread=False)
def log_checkpoint(request: Request) -> dict[str, Any]:
    """The current signed checkpoint of the whole log."""
    return _journal(request).checkpoint()


@get("/_api/log/consistency", sync_to_thread=False)
def log_consistency(request: Request) -> dict[str, Any]:
    """An RFC 6962 consistency proof between log sizes `from` and `to` (default: now)."""
    journal = _journal(request)
    m = _int_param(request, "from", None)
    if m is None:
        raise UserError("query parameter 'from' is required")
    n = _int_param(request, "to", journal.snapshot_size())
    return journal.consistency(m, n)  # type: ignore[arg-type]


@get("/_api/log/entries", sync_to_thread=False)
def log_entries(request: Request) -> dict[str, Any]:
    """The log's leaves in index order, `start` (default 0) to `end` (exclusive), ≤ 1000."""
    journal = _journal(request)
    return journal.entries(_int_param(request, "start", 0), _int_param(request, "end", None))  # type: ignore[arg-type]


ATTEST_ROUTES = [audit, attest, verification, log_checkpoint, log_consistency, log_entries]
