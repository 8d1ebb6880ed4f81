"""The Journal of deploy.py over the transparency log, plus what is built on the log:
signed checkpoints, audits of one project and quotes bound to the log head (SPEC 6, 7).

One instance per daemon. Writes come from the deployer (under its per-name lock, on the
event loop); reads come from the public handlers. The TransparencyLog serializes appends
and every read takes one `size` first and builds everything (checkpoint, proofs,
preimage) against that size, so an answer is always self-consistent.

Nothing here ever rewrites the log. A damaged log (see translog) keeps the daemon up:
it is reported in /_api/substrate, attestation answers are refused with 503, and changes
to attested projects are refused by `check_writable`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from tee_daemon.trust.binding import normalize_nonce, report_data, report_data_preimage
from tee_daemon.trust.checkpoint import public_key_hex, sign_checkpoint
from tee_daemon.kernel.errors import UserError
from tee_daemon.trust.translog import LEAF_FIELDS, LogDamaged, TransparencyLog

if TYPE_CHECKING:
    from tee_daemon.state.models import Project
    from tee_daemon.trust.tee import Tee

log = logging.getLogger("tee_daemon.state.journal")

LOG_FILE = Path("translog") / "log.jsonl"
ORIGIN_PREFIX = "tee-daemon/log/"
MAX_ENTRIES = 1000
QUOTE_CONCURRENCY = 4  # fresh quotes in flight at once (nonce requests are public)


class Unavailable(UserError):
    """Attestation cannot be answered: damaged log or no TEE. Always a 503."""

    status_code = 503


def leaf_event(action: str, project: Project) -> dict[str, Any]:
    """The log event (SPEC 6) for `project`'s live version, without index and time."""
    live = project.live
    fields = live.attested_fields(project.name)
    event = {k: fields[k] for k in LEAF_FIELDS if k in fields}
    event.update(
        project=project.name,
        action=action,
        version=live.version,
        manifest_sha256=live.manifest_sha256(project.name),
    )
    return event


class Journal:
    def __init__(self, data_dir: Path) -> None:
        self.tee: Tee | None = None  # set by `open`
        self.tee_mode = "unavailable"
        self.log = TransparencyLog(Path(data_dir) / LOG_FILE)
        self.problem: str | None = None  # damage found by the journal itself (see reconcile)
        self._tee_error: str | None = "the daemon is still starting"
        self._key = None
        self.public_key: str | None = None
        self.key_signature_chain: list[str] = []
        self.origin = ORIGIN_PREFIX + "unavailable"
        self._lock = threading.Lock()
        self._by_project: dict[str, list[int]] = {}
        self._checkpoints: dict[int, dict[str, Any]] = {}
        self._quotes: dict[str, tuple[tuple, dict[str, Any]]] = {}
        self._quote_slots = asyncio.Semaphore(QUOTE_CONCURRENCY)

    # -- start-up ---------------------------------------------------------------------

    def open(self, tee: Tee | None, tee_error: str | None = None) -> Journal:
        """Check the log on disk and derive the signing key from `tee` (None: there is
        none, `tee_error` says why). Blocking: run in a thread."""
        self.tee, self._tee_error = tee, tee_error
        self.tee_mode = tee.mode if tee is not None else "unavailable"
        self.log.open()
        if self.log.recovered:
            log.warning("transparency log: %s", self.log.recovered)
        if self.log.damaged:
            log.error("transparency log DAMAGED, attestation refused: %s", self.log.damaged)
        for entry in self.log.entries():
            self._index(entry.index, entry.event)
        if self.tee is not None:
            try:
                self._key, chain = self.tee.derive_signing_key()
                self.public_key = public_key_hex(self._key)
                self.key_signature_chain = list(chain)
                self.origin = ORIGIN_PREFIX + self.public_key[:32]
            except Exception as exc:
                self._tee_error = f"the TEE did not derive the log signing key: {exc}"
                log.error("%s", self._tee_error)
        return self

    def _index(self, index: int, event: dict[str, Any]) -> None:
        self._by_project.setdefault(str(event.get("project")), []).append(index)

    def reconcile(self, projects: Iterable[Project]) -> list[str]:
        """Bring the log in line with the stored projects after a crash.

        The deployer appends before it saves the record, so a crash in between leaves the
        log one change ahead of the record: the project serves what its record says, and a
        corrective entry says so too. An attested project with no entry at all cannot come
        from a crash (promote is logged first): the log was removed or replaced; that is
        damage, reported and never papered over.
        """
        notes: list[str] = []
        if self.damaged:
            return notes
        for project in sorted(projects, key=lambda p: p.name):
            if project.mode != "attested":
                continue
            indices = self._by_project.get(project.name)
            if not indices:
                self.problem = (
                    f"attested project {project.name!r} has no entry in the transparency log: "
                    "the log was removed or replaced"
                )
                log.error("transparency log DAMAGED: %s", self.problem)
                return notes
            last = self.log.entry(indices[-1]).event
            live = project.live
            if (
                last["action"] != "delete"
                and last["version"] == live.version
                and last["manifest_sha256"] == live.manifest_sha256(project.name)
            ):
                continue
            action = "rollback" if last["action"] != "delete" and live.version < last["version"] else "deploy"
            entry = self._append(action, project)
            note = (
                f"{project.name}: the log's last entry (#{last['index']}, {last['action']} of "
                f"v{last['version']}) did not match the version serving (v{live.version}); "
                f"appended corrective entry #{entry}"
            )
            log.warning("transparency log reconcile: %s", note)
            notes.append(note)
        return notes

    # -- the Journal protocol of deploy.py --------------------------------------------

    @property
    def damaged(self) -> str | None:
        return self.log.damaged or self.problem

    def unavailable(self) -> str | None:
        """Why attestation cannot be answered now, or None."""
        if self.damaged:
            return f"the transparency log is damaged: {self.damaged}"
        if self._key is None:
            return f"the TEE is unavailable: {self._tee_error or 'no signing key'}"
        return None

    def check_writable(self) -> None:
        reason = self.unavailable()
        if reason:
            raise Unavailable(
                f"changes to attested projects are refused: {reason}. The log is never "
                "rewritten; an operator must restore it from a good copy."
            )

    def record(self, action: str, project: Project) -> None:
        self.check_writable()
        self._append(action, project)

    def _append(self, action: str, project: Project) -> int:
        try:
            entry = self.log.append(leaf_event(action, project))
        except LogDamaged as exc:
            raise Unavailable(f"the change was not recorded: {exc}") from None
        with self._lock:
            self._index(entry.index, entry.event)
        return entry.index

    # -- reads ------------------------------------------------------------------------

    def _require(self) -> None:
        reason = self.unavailable()
        if reason:
            raise Unavailable(reason, log_damaged=self.damaged)

    def snapshot_size(self) -> int:
        return self.log.size

    def checkpoint(self, size: int | None = None) -> dict[str, Any]:
        self._require()
        n = self.log.size if size is None else size
        with self._lock:
            cp = self._checkpoints.get(n)
        if cp is None:
            cp = sign_checkpoint(
                self.origin, n, self.log.root(n), self._key, self.key_signature_chain, self.tee_mode
            )
            with self._lock:
                if len(self._checkpoints) > 64:
                    self._checkpoints.clear()
                self._checkpoints[n] = cp
        return cp

    def audit(self, name: str, size: int | None = None) -> dict[str, Any]:
        self._require()
        n = self.log.size if size is None else size
        with self._lock:
            indices = [i for i in self._by_project.get(name, []) if i < n]
        entries = [
            {
                "index": i,
                "leaf": self.log.entry(i).leaf,
                "inclusion_proof": [h.hex() for h in self.log.inclusion_proof(i, n)],
            }
            for i in indices
        ]
        return {"checkpoint": self.checkpoint(n), "entries": entries, "tee": self.tee_mode}

    def consistency(self, m: int, n: int) -> dict[str, Any]:
        self._require()
        size = self.log.size
        if not 0 <= m <= n <= size:
            raise UserError(f"need 0 <= from <= to <= {size} (the log size); got from={m}, to={n}")
        proof = [h.hex() for h in self.log.consistency_proof(m, n)]
        return {"from": m, "to": n, "proof": proof, "tee": self.tee_mode}

    def entries(self, start: int, end: int | None) -> dict[str, Any]:
        # Served even from a damaged log: what parsed is what auditors need to see.
        size = self.log.size
        end = size if end is None else end
        if start < 0 or end < start or start > size:
            raise UserError(f"need 0 <= start <= end and start <= {size} (the log size)")
        end = min(end, size, start + MAX_ENTRIES)
        answer: dict[str, Any] = {
            "entries": [{"index": e.index, "leaf": e.leaf} for e in self.log.entries(start, end)],
            "size": size,
            "tee": self.tee_mode,
        }
        if self.damaged:
            answer["damaged"] = self.damaged
        return answer

    async def attestation(
        self, project: Project, nonce: str | None, size: int | None = None
    ) -> dict[str, Any]:
        """{quote, event_log, report_data_preimage, tee, checkpoint} for `project`.

        Without a nonce the quote is cached per project, log size and live manifest;
        with one it is always fresh. `nonce` is validated here (ValueError → 400).
        """
        try:
            nonce = normalize_nonce(nonce)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self._require()
        n = self.log.size if size is None else size
        live = project.live
        manifest_sha256 = live.manifest_sha256(project.name)
        checkpoint = self.checkpoint(n)
        key = (n, live.version, manifest_sha256)
        if nonce is None:
            with self._lock:
                cached = self._quotes.get(project.name)
            if cached is not None and cached[0] == key:
                return {**cached[1], "checkpoint": checkpoint}
        preimage = report_data_preimage(
            project.name, live.tree_sha256, manifest_sha256, n, checkpoint["root"],
            self.public_key, nonce,
        )  # fmt: skip
        async with self._quote_slots:
            quote, event_log = await asyncio.to_thread(self.tee.get_quote, report_data(preimage))
        answer = {
            "quote": quote,
            "event_log": event_log,
            "report_data_preimage": preimage,
            "tee": self.tee_mode,
        }
        if nonce is None:
            with self._lock:
                self._quotes[project.name] = (key, answer)
        return {**answer, "checkpoint": checkpoint}

    def forget(self, name: str) -> None:
        with self._lock:
            self._quotes.pop(name, None)

    def status(self) -> dict[str, Any]:
        """For /_api/substrate: public facts about the log."""
        return {
            "size": self.log.size,
            "origin": self.origin,
            "public_key": self.public_key,
            "damaged": self.damaged,
            "recovered": self.log.recovered,
            "attestation": "refused: " + r if (r := self.unavailable()) else "available",
        }
