"""The daemon's append-only transparency log on disk (SPEC section 6).

Two files:

- `<path>`: one leaf per line, each line exactly the canonical JSON of an event (the bytes
  that are leaf-hashed), newline-terminated. This is the log; `/_api/log/entries` serves it.
- `<path>.roots`: one line per leaf, the hex Merkle root of the log after that leaf
  (65 bytes a line). The leaves cannot carry a checksum of their own (their fields are
  fixed by the SPEC), so this chain is what catches an edited line whose JSON stays
  valid; a deleted last line shows up as roots outliving the leaves.

`open()` re-reads both and refuses (marks `damaged`, never rewrites) on anything but the
two tails a crash mid-`append` can leave; see `_recover` for why those are safe to repair.
Appends are serialized by a lock and return only after both files are fsynced, so an
acknowledged entry always survives a crash.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tee_daemon.trust.canonical import canonical_json
from tee_daemon.trust.merkle import MerkleTree, leaf_hash

LEAF_FIELDS = (
    "index", "time", "project", "action", "version", "source", "ref", "commit",
    "tree_sha1", "tree_sha256", "runtime", "manifest_sha256", "secret_names",
    # What runs beyond the tree (SPEC 11, 12): the command or image and its port, the
    # toolchain versions, the lockfile, the installed tree.
    "command", "image", "port", "toolchain", "lock_sha256", "deps_tree_sha256", "pinned",
)
# The leaf fields of earlier releases: lines they wrote stay valid (a log is never
# rewritten), new lines always carry every field of LEAF_FIELDS.
EARLIER_LEAF_FIELDS = (
    frozenset(LEAF_FIELDS[:13]),
    frozenset(LEAF_FIELDS[:13] + ("toolchain", "lock_sha256", "deps_tree_sha256", "pinned")),
)
ACTIONS = frozenset({"promote", "deploy", "rollback", "delete"})
_ROOT_LINE = 65  # 64 hex characters + "\n"


class LogDamaged(RuntimeError):
    """The log on disk failed its start-up check; it is served read-only, never rewritten."""


@dataclass(frozen=True)
class LogEntry:
    index: int
    leaf: str  # the canonical JSON string that is hashed as the leaf
    leaf_hash: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.leaf)


def make_leaf(event: dict[str, Any], *, earlier: bool = False) -> bytes:
    """Canonical JSON of exactly the SPEC's event fields; ValueError on anything else.

    `earlier`: also accept the field set of an earlier release (reading the log back)."""
    keys = set(event)
    if keys != set(LEAF_FIELDS) and not (earlier and keys in EARLIER_LEAF_FIELDS):
        missing = sorted(set(LEAF_FIELDS) - keys)
        extra = sorted(keys - set(LEAF_FIELDS))
        raise ValueError(f"log event fields wrong: missing {missing}, unexpected {extra}")
    if event["action"] not in ACTIONS:
        raise ValueError(f"log event action must be one of {sorted(ACTIONS)}")
    if type(event["index"]) is not int or event["index"] < 0:
        raise ValueError("log event index must be a non-negative integer")
    return canonical_json(event)


def _fsync_dir(path: Path) -> None:
    # A newly created file's directory entry is only durable once the directory is synced.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TransparencyLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.roots_path = self.path.with_name(self.path.name + ".roots")
        self.damaged: str | None = None  # the reason, when the start-up check failed
        self.recovered: str | None = None  # what open() repaired, for the daemon's log
        self._lock = threading.Lock()
        self._leaves: list[str] = []
        self._tree = MerkleTree()
        self._opened = False

    # -- start-up check -------------------------------------------------------------

    def open(self) -> TransparencyLog:
        """Read and check the files. Never raises for damage: sets `damaged` instead."""
        with self._lock:
            if self._opened:
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for p in (self.path, self.roots_path):
                if not p.exists():
                    p.touch()
                    _fsync_dir(p.parent)
            try:
                self._load()
            except LogDamaged as e:
                self.damaged = str(e)
                # Whatever parsed before the damage stays readable for auditors.
            self._opened = True
        return self

    def _load(self) -> None:
        data = self.path.read_bytes()
        roots = self.roots_path.read_bytes()
        torn = len(data) - (data.rfind(b"\n") + 1)
        lines = data[: len(data) - torn].split(b"\n")[:-1]
        for i, raw in enumerate(lines):
            try:
                text = raw.decode("utf-8")
                event = json.loads(text)
            except (UnicodeDecodeError, ValueError):
                raise LogDamaged(f"line {i + 1} of {self.path.name} is not valid JSON") from None
            if not isinstance(event, dict):
                raise LogDamaged(f"line {i + 1} of {self.path.name} is not a JSON object")
            if event.get("index") != i:
                raise LogDamaged(
                    f"line {i + 1} of {self.path.name} has index {event.get('index')!r}, expected {i}"
                    " (a line was deleted, duplicated or reordered)"
                )
            try:
                canonical = make_leaf(event, earlier=True)
            except ValueError as e:
                raise LogDamaged(f"line {i + 1} of {self.path.name}: {e}") from None
            if canonical != raw:
                raise LogDamaged(f"line {i + 1} of {self.path.name} is not canonical JSON")
            self._leaves.append(text)
            self._tree.append(leaf_hash(raw))
        self._check_roots(roots, torn)

    def _check_roots(self, roots: bytes, torn: int) -> None:
        n = len(self._leaves)
        whole = len(roots) // _ROOT_LINE
        torn_roots = len(roots) - whole * _ROOT_LINE
        for i in range(min(whole, n)):
            line = roots[i * _ROOT_LINE : (i + 1) * _ROOT_LINE]
            if line != self._tree.root(i + 1).hex().encode() + b"\n":
                raise LogDamaged(
                    f"the stored root after entry {i} does not match the leaves: "
                    f"line {i + 1} of {self.path.name} (or of {self.roots_path.name}) was altered"
                )
        if whole > n:
            raise LogDamaged(
                f"{self.roots_path.name} records {whole} entries but {self.path.name} holds {n}: "
                "entries were removed from the end of the log"
            )
        if whole < n - 1 or (whole == n - 1 and torn):
            raise LogDamaged(f"{self.roots_path.name} is missing roots for entries {whole}..{n - 1}")
        self._recover(torn=torn, roots_missing=n - whole, torn_roots=torn_roots)

    def _recover(self, torn: int, roots_missing: int, torn_roots: int) -> None:
        """Repair only what a crash inside `append` leaves behind.

        `append` writes the leaf line, fsyncs, writes the root line, fsyncs, and only then
        returns the entry. So:
        - a leaf line without its newline (torn tail) was never fsynced and never
          acknowledged: no caller, checkpoint or quote has seen it. Dropping it loses
          nothing anyone relied on; it cannot be kept, since it is incomplete.
        - a torn root line likewise was never acknowledged; it is dropped and recomputed.
        - a complete, valid last leaf without its root (crash between the two fsyncs) was
          not acknowledged either, but it is whole and durable: its root is recomputed
          from the leaves rather than discarding a durable line.
        Anything else (a bad line in the middle, a root that disagrees) is damage.
        """
        notes = []
        if torn:
            with open(self.path, "r+b") as f:
                f.truncate(f.seek(0, os.SEEK_END) - torn)
                os.fsync(f.fileno())
            notes.append(f"dropped a torn, unacknowledged last line ({torn} bytes)")
        if torn_roots:
            with open(self.roots_path, "r+b") as f:
                f.truncate(f.seek(0, os.SEEK_END) - torn_roots)
                os.fsync(f.fileno())
            notes.append("dropped a torn root line")
        if roots_missing:
            n = len(self._leaves)
            self._write_roots([self._tree.root(n).hex()])
            notes.append(f"recomputed the root after entry {n - 1}")
        self.recovered = "; ".join(notes) or None

    # -- writing ---------------------------------------------------------------------

    def _write_roots(self, roots_hex: list[str]) -> None:
        with open(self.roots_path, "ab") as f:
            f.write("".join(r + "\n" for r in roots_hex).encode())
            f.flush()
            os.fsync(f.fileno())

    def append(self, event: dict[str, Any]) -> LogEntry:
        """Assign the next index, write and fsync the leaf, return the acknowledged entry.

        `event` carries the SPEC fields except `index`; `time` defaults to now (epoch s).
        Raises LogDamaged on a damaged log and ValueError on a malformed event.
        """
        with self._lock:
            if not self._opened:
                raise RuntimeError("TransparencyLog.open() was not called")
            if self.damaged:
                raise LogDamaged(f"the transparency log is damaged: {self.damaged}")
            if "index" in event:
                raise ValueError("the log assigns `index`; do not pass one")
            fields = {"time": int(time.time()), **event, "index": len(self._leaves)}
            raw = make_leaf(fields)
            h = leaf_hash(raw)
            try:
                with open(self.path, "ab") as f:
                    f.write(raw + b"\n")
                    f.flush()
                    os.fsync(f.fileno())
                self._tree.append(h)
                self._leaves.append(raw.decode("utf-8"))
                self._write_roots([self._tree.root().hex()])
            except OSError as e:
                # A half-written line (disk full, I/O error) must not get later lines
                # appended after it: stop here; the next start-up check sorts it out.
                self.damaged = f"an append failed and was not acknowledged: {e}"
                raise LogDamaged(self.damaged) from e
            return LogEntry(index=fields["index"], leaf=self._leaves[-1], leaf_hash=h)

    # -- reading ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self._leaves)

    def root(self, size: int | None = None) -> bytes:
        with self._lock:
            return self._tree.root(size)

    def leaves(self, start: int = 0, end: int | None = None) -> list[str]:
        with self._lock:
            return self._leaves[start:end]

    def entry(self, index: int) -> LogEntry:
        with self._lock:
            leaf = self._leaves[index]
            return LogEntry(index=index, leaf=leaf, leaf_hash=self._tree.leaf(index))

    def entries(self, start: int = 0, end: int | None = None) -> list[LogEntry]:
        with self._lock:
            end = len(self._leaves) if end is None else min(end, len(self._leaves))
            return [
                LogEntry(index=i, leaf=self._leaves[i], leaf_hash=self._tree.leaf(i))
                for i in range(max(start, 0), end)
            ]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        with self._lock:
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, m: int, n: int | None = None) -> list[bytes]:
        with self._lock:
            return self._tree.consistency_proof(m, n)
