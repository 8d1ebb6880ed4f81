"""The shapes of the HTTP API's bodies (SPEC section 3), as msgspec structs.

The handlers build their answers as plain dicts (the manifest is computed); these
structs are what `/_api/schema` documents for each operation (see `web/openapi.py`),
and what a test decodes real answers into, so the document cannot drift from them.
"""

from __future__ import annotations

from typing import Any

import msgspec


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every refusal: the HTTP status and a `detail` saying what was wrong. A failed
    deploy adds `log` (the project's last log lines)."""

    status_code: int
    detail: str
    log: str | None = None


class Health(msgspec.Struct, kw_only=True):
    status: str
    tee: str


class ProjectInfo(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A project's public manifest (SPEC section 5) and where it is served."""

    name: str
    runtime: str
    entry: str | None
    env: dict[str, str]
    secret_names: list[str]  # names only: values are never shown
    source: str
    ref: str | None
    commit: str | None
    tree_sha1: str
    tree_sha256: str
    # SPEC 11: the command runtime's command, the image runtime's image and port.
    command: str | None = None
    image: str | None = None
    port: int | None = None
    # SPEC 12: what the build installed and ran it with.
    toolchain: dict[str, str] = {}
    lock_sha256: str | None = None
    deps_tree_sha256: str | None = None
    pinned: bool = False
    version: int
    mode: str  # "dev" or "attested"
    promoted_at: str | None
    last_changed_at: str | None
    manifest_sha256: str
    url: str
    verification_url: str | None = None  # attested projects only
    tee: str | None = None  # GET /_api/projects/{name}
    instance: dict[str, Any] | None = None  # GET /_api/projects/{name}, admin only
    changed: bool | None = None  # redeploy: whether the source moved


class ProjectList(msgspec.Struct, kw_only=True):
    projects: list[ProjectInfo]
    tee: str


class KeptVersion(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    version: int
    serving: bool  # the one the project's URL serves
    created_at: str | None
    runtime: str
    entry: str | None
    source: str
    ref: str | None
    commit: str | None
    tree_sha1: str
    tree_sha256: str
    manifest_sha256: str


class Versions(msgspec.Struct, kw_only=True):
    """A project's kept versions, newest first."""

    name: str
    current: int
    versions: list[KeptVersion]


class Deleted(msgspec.Struct, kw_only=True):
    deleted: str


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Which kept version to serve again; none: the one before the current."""

    version: int | None = None


class Substrate(msgspec.Struct, kw_only=True):
    """What the daemon runs on: its version, backend, runtimes, TEE, isolation and log."""

    daemon: str
    version: str
    backend: str
    runtimes: dict[str, dict[str, Any]]
    tee: str
    tee_info: dict[str, Any]
    # The app-compose document the daemon runs under; its SHA-256 is the event log's
    # compose-hash (SPEC 12). Null when the TEE does not say.
    app_compose: str | None = None
    transparency_log: dict[str, Any]


class Checkpoint(msgspec.Struct, kw_only=True):
    """A signed checkpoint of the transparency log (SPEC section 6)."""

    origin: str
    size: int
    root: str
    note: str
    signature: str
    public_key: str
    key_signature_chain: list[str]
    tee: str


class AuditEntry(msgspec.Struct, kw_only=True):
    index: int
    leaf: str
    inclusion_proof: list[str]


class Audit(msgspec.Struct, kw_only=True):
    checkpoint: Checkpoint
    entries: list[AuditEntry]
    tee: str


class Attestation(msgspec.Struct, kw_only=True):
    quote: str
    event_log: Any
    report_data_preimage: str  # the canonical JSON whose SHA-512 is the quote's report data
    tee: str
    checkpoint: Checkpoint


class Verification(msgspec.Struct, kw_only=True):
    name: str
    tee: str
    manifest: ProjectInfo
    attestation: Attestation
    audit: Audit


class Consistency(msgspec.Struct, kw_only=True, rename={"from_": "from"}):
    from_: int
    to: int
    proof: list[str]
    tee: str


class LogEntry(msgspec.Struct, kw_only=True):
    index: int
    leaf: str


class LogEntries(msgspec.Struct, kw_only=True):
    entries: list[LogEntry]
    size: int
    tee: str
    damaged: str | None = None
