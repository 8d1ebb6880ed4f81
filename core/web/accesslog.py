"""The access log: one line per request served to a project.

    2026-11-25T01:29:43.123Z hello GET /path?q=1 200 0.412ms

Requests are queued as tuples and formatted and written at most once a second (or
every 512 lines), so the hot path pays one list append. The file rotates by size
(`access.log`, `access.log.1`, ... `access.log.<backups>`). The path logged is the raw,
still percent-encoded request target below `/<name>`, so a line never holds spaces or
newlines from the client.

Several processes (the ingress workers) may write one path, each with an AccessLog of its
own (made after any fork: an inherited lock descriptor shares its flock with the parent).
The multi-writer rule: a flush takes an flock on `access.log.lock` beside the log, and
under it reopens the path if another writer rotated it away, takes the size from the file
(not from a count of its own), rotates if this flush would pass max_bytes, and appends its
whole lines with one write() to the file opened O_APPEND. So lines never interleave or land
in a rotated file, and one writer rotates at a time. Only the flush pays for the lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("tee_daemon.web.accesslog")

FLUSH_SECONDS = 1.0
FLUSH_LINES = 512
MAX_BYTES = 64 * 2**20
BACKUPS = 3
MAX_TARGET = 2048


class AccessLog:
    __slots__ = ("path", "max_bytes", "backups", "_lines", "_fd", "_lock_fd", "_scheduled", "_sec", "_prefix")

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lines: list[tuple] = []
        self._fd: int | None = None  # access.log, opened O_APPEND
        self._lock_fd: int | None = None  # access.log.lock, flocked around each flush
        self._scheduled = False
        self._sec = -1
        self._prefix = ""

    def record(self, project: str, method: str, target: bytes | str, status: int, seconds: float) -> None:
        """Queue one line: a tuple append here; formatting happens at flush time."""
        lines = self._lines
        lines.append((time.time(), project, method, target, status, seconds))
        if len(lines) >= FLUSH_LINES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (tests calling directly): write now
                self.flush()

    def _format(self) -> bytes:
        out: list[str] = []
        append = out.append
        last, prefix = self._sec, self._prefix
        for now, project, method, target, status, seconds in self._lines:
            ms = int(now * 1000)
            sec = ms // 1000
            if sec != last:
                last, prefix = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            if type(target) is bytes:
                target = target[:MAX_TARGET].decode("latin-1")
            us = int(seconds * 1e6)
            append(
                "%s.%03dZ %s %s %s %d %d.%03dms\n"
                % (prefix, ms % 1000, project, method, target, status, us // 1000, us % 1000)
            )
        self._sec, self._prefix = last, prefix
        self._lines.clear()
        return "".join(out).encode("utf-8", "replace")

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        data = self._format()
        try:
            if self._lock_fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(f"{self.path}.lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._append(data)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        except OSError as exc:  # a full disk must not break serving
            log.warning("access log write failed: %s", exc)
            self._close_files()

    def close(self) -> None:
        self.flush()
        self._close_files()

    def _append(self, data: bytes) -> None:
        """Write whole lines to the file the path names now; the caller holds the lock."""
        size = self._current_size()
        if size and size + len(data) > self.max_bytes:
            self._rotate()
        view = memoryview(data)
        while view:  # one write() in practice; a second only after a short one (disk full)
            view = view[os.write(self._fd, view) :]  # type: ignore[arg-type]

    def _current_size(self) -> int:
        """Size of the file the path names now, reopening it first if another writer
        rotated it away (the path's inode is no longer the one this writer has open)."""
        if self._fd is not None:
            mine = os.fstat(self._fd)
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
                return mine.st_size
        self._reopen()
        return os.fstat(self._fd).st_size  # type: ignore[arg-type]

    def _reopen(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None  # not a closed descriptor, should the open below fail
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _rotate(self) -> None:
        """access.log -> access.log.1 -> ... -> access.log.<backups>; the caller holds the lock."""
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._reopen()

    def _close_files(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._lock_fd = None
