"""Per-project host identities: every project runs (and builds) as a uid and gid of its
own, never 0 and never shared with another project (SPEC section 9).

The daemon allocates them from a range of its own, records them in
``<data-dir>/identities.json`` (atomically, before any process uses them) and keeps
them across restarts. A number is never handed out twice, even after a delete: files a
deleted project left behind anywhere can never become another project's.
"""

from __future__ import annotations

import hashlib

import threading
from pathlib import Path

import msgspec

from tee_daemon.kernel.contract import Identity  # the type is the kernel's; re-exported for run/
from tee_daemon.state.store import atomic_write

FIRST_ID = 200_000  # Far above the ids a distribution gives to users and services.
LAST_ID = 2**31 - 2
FILE = "identities.json"


class _Records(msgspec.Struct):
    next_id: int = FIRST_ID
    projects: dict[str, int] = {}


class Identities:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE
        self._lock = threading.Lock()
        if self.path.exists():
            self._records = msgspec.json.decode(self.path.read_bytes(), type=_Records)
        else:
            self._records = _Records()

    def of(self, project: str) -> Identity:
        """The project's identity, allocated (and recorded) on first use."""
        with self._lock:
            number = self._records.projects.get(project)
            if number is None:
                number = self._records.next_id
                if number > LAST_ID:
                    raise RuntimeError("the daemon has used up its range of project identities")
                self._records.projects[project] = number
                self._records.next_id = number + 1
                atomic_write(self.path, msgspec.json.encode(self._records), mode=0o600)
            return Identity(uid=number, gid=number)

    def forget(self, project: str) -> None:
        """Drop a deleted project's entry; its number stays used (never reassigned)."""
        with self._lock:
            if self._records.projects.pop(project, None) is not None:
                atomic_write(self.path, msgspec.json.encode(self._records), mode=0o600)


def daemon_id_of(projects_dir: Path, override: str | None) -> str:
    """A short id of this daemon, stable across restarts: the operator's
    TEE_DAEMON_DOCKER_ID (several daemons on one container engine), else a hash of the
    projects folder. Deploy contexts and the container executor's labels both use it."""
    chosen = (override or "").strip().lower()
    if chosen:
        return "".join(c for c in chosen if c.isalnum())[:16] or "x"
    return hashlib.sha256(str(projects_dir.resolve()).encode()).hexdigest()[:10]
