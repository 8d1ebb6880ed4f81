"""A project's stdout/stderr, as kept by the process runtimes in rotating files.

`<logs_dir>/app.log` is the current file, `app.log.1` and `app.log.2` the rotated ones
(copy-and-truncate, see `logfiles.rotate`). `read` returns them oldest first; `follow`
yields what is there and then every new byte until the consumer stops iterating.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from tee_daemon.run.logfiles import log_files

APP_LOG = "app.log"
FOLLOW_POLL = 0.2
CHUNK = 64 * 1024


def read(logs_dir: Path, lines: int | None = None) -> bytes:
    data = b"".join(_read_file(path) for path in log_files(logs_dir / APP_LOG))
    if lines is not None:
        kept = data.splitlines(keepends=True)[-lines:] if lines > 0 else []
        data = b"".join(kept)
    return data


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


async def follow(logs_dir: Path, lines: int | None = None) -> AsyncIterator[bytes]:
    """The log so far (or its last `lines` lines), then new output as it is written."""
    path = logs_dir / APP_LOG
    first = read(logs_dir, lines)
    if first:
        yield first
    offset, inode = size_and_inode(path)
    while True:
        await asyncio.sleep(FOLLOW_POLL)
        size, now_inode = size_and_inode(path)
        if now_inode != inode or size < offset:  # Rotated (truncated) or replaced.
            offset, inode = 0, now_inode
        if size <= offset:
            continue
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                while offset < size:
                    chunk = fh.read(min(CHUNK, size - offset))
                    if not chunk:
                        break
                    offset += len(chunk)
                    yield chunk
        except OSError:
            continue


def size_and_inode(path: Path) -> tuple[int, int | None]:
    try:
        st = os.stat(path)
    except OSError:
        return 0, None
    return st.st_size, st.st_ino


async def follow_new(folder: Path, start: dict[str, tuple[int, int | None]], poll: float) -> AsyncIterator[bytes]:
    """What is written to the files named in `start` (file name -> its `size_and_inode`
    when the caller looked) from then on, as it is written; never ends on its own."""
    # One empty chunk first: the answer's head goes out now, so the client knows the
    # starting offsets are taken and can send its deploy.
    yield b""
    seen = dict(start)
    while True:
        for file, (offset, known) in list(seen.items()):
            path = folder / file
            size, inode = size_and_inode(path)
            if inode != known or size < offset:  # rotated, truncated or made anew
                offset = 0
            if size > offset:
                data = await asyncio.to_thread(_read_range, path, offset, size)
                offset += len(data)
                if data:
                    yield data
            seen[file] = (offset, inode)
        await asyncio.sleep(poll)


def _read_range(path: Path, start: int, end: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            return fh.read(min(CHUNK, end - start))
    except OSError:
        return b""
