"""A project's log files on disk: rotation by copy-and-truncate (the child keeps its
O_APPEND descriptor), checked by one background task for all live instances
(``LOG_MAX_BYTES`` per file, ``LOG_KEEP`` files), the tail a failure shows, and the
daemon's own lines in them."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import weakref
from pathlib import Path

LOG_MAX_BYTES = 5 * 2**20
LOG_KEEP = 3  # app.log, app.log.1, app.log.2
LOG_CHECK_INTERVAL = 5.0


def rotate(path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> bool:
    """Copy-and-truncate `path` into path.1 (shifting older ones) when it is too big."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for index in range(keep - 1, 1, -1):
        older = path.with_name(f"{path.name}.{index - 1}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{index}"))
    if keep > 1:
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as fh:
        fh.truncate(0)
    return True


def log_files(path: Path, keep: int = LOG_KEEP) -> list[Path]:
    """The rotated files of `path`, oldest first, that exist."""
    files = [path.with_name(f"{path.name}.{i}") for i in range(keep - 1, 0, -1)] + [path]
    return [f for f in files if f.exists()]


def tail(path: Path, since: int = 0, lines: int = 30, max_bytes: int = 16384) -> str:
    """The last `lines` lines of `path` written after offset `since`."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(since if since <= size else 0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def log_line(path: Path | None, message: str) -> None:
    """A line from the daemon itself in a project's log (its build or run log): the one
    writer of these lines, for processes, containers and plugins (`plugin.project_log`)."""
    if path is None:
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as fh:
            fh.write(f"[tee-daemon {stamp}] {message}\n".encode())
    except OSError:
        pass  # A full disk must not turn a log line into a failed deploy.


_live: "weakref.WeakSet" = weakref.WeakSet()  # instances with a `log_path`
_rotator: asyncio.Task | None = None


def watch_log(instance) -> None:
    """Rotate `instance.log_path` while the instance lives (and is not `forget_log`ged)."""
    _live.add(instance)
    _ensure_rotator()


def forget_log(instance) -> None:
    _live.discard(instance)


async def _rotate_forever() -> None:
    while True:
        await asyncio.sleep(LOG_CHECK_INTERVAL)
        for path in {inst.log_path for inst in list(_live)}:
            try:
                rotate(path)
            except OSError:
                pass


def _ensure_rotator() -> None:
    global _rotator
    if _rotator is None or _rotator.done():
        _rotator = asyncio.get_running_loop().create_task(_rotate_forever())

