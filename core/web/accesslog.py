"""The access log: one line per request served to a project.

    2026-11-25T01:29:43.123Z hello GET /path?q=1 200 0.412ms

Requests are queued as tuples and formatted and written at most once a second (or
every 512 lines), so the hot path pays one list append. The file rotates by size
(`access.log`, `access.log.1`, ... `access.log.<backups>`). The path logged is the raw,
still percent-encoded request target below `/<name>`, so a line never holds spaces or
newlines from the client.
"""

from __future__ import annotations

import asyncio
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
    __slots__ = ("path", "max_bytes", "backups", "_lines", "_file", "_size", "_scheduled", "_sec", "_prefix")

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lines: list[tuple] = []
        self._file = None
        self._size = 0
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
            if self._file is None:
                self._open()
            if self._size + len(data) > self.max_bytes and self._size:
                self._rotate()
            self._file.write(data)  # type: ignore[union-attr]
            self._file.flush()  # type: ignore[union-attr]
            self._size += len(data)
        except OSError as exc:  # a full disk must not break serving
            log.warning("access log write failed: %s", exc)
            self._file = None

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        self._size = self._file.tell()

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()
