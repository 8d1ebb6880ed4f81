"""One access log written by several processes (the ingress workers), each with its own AccessLog.

The writers are real processes running the real module; the checks read only the files.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tee_daemon.web.accesslog import AccessLog

# A writer process: `name` logs /seq/0 ... /seq/<lines-1>, flushing every `batch` lines, from a
# running event loop as in the daemon (so record() only queues). It says "ready" once imported
# and waits for a line on stdin, so that several writers start together.
WRITER = """
import asyncio, sys
from pathlib import Path
from tee_daemon.web.accesslog import AccessLog

path, name, lines, batch, max_bytes, backups = sys.argv[1:]
log = AccessLog(Path(path), max_bytes=int(max_bytes), backups=int(backups))
print("ready", flush=True)
sys.stdin.readline()

async def main():
    for i in range(int(lines)):
        log.record(name, "GET", b"/seq/%d" % i, 200, 0.001)
        if (i + 1) % int(batch) == 0:
            log.flush()
    log.close()

asyncio.run(main())
"""

LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (w\w) GET /seq/(\d+) 200 1\.000ms")


def _start_writers(path: Path, writers: list[tuple[str, int, int]], max_bytes: int, backups: int) -> None:
    """Run one process per (name, lines, batch), released together; fail if any fails."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name, str(lines), str(batch), str(max_bytes), str(backups)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, lines, batch in writers
    ]
    for proc in procs:
        assert proc.stdout.readline() == "ready\n"
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.close()
    for proc in procs:
        assert proc.wait(timeout=120) == 0


def _entries(file: Path) -> list[tuple[str, int]]:
    """(writer, sequence number) of each line of `file`; every line must be whole."""
    out = []
    for line in file.read_text().splitlines(keepends=True):
        match = LINE.fullmatch(line.rstrip("\n"))
        assert match and line.endswith("\n"), f"{file.name}: broken line {line!r}"
        out.append((match[1], int(match[2])))
    return out


def test_three_writers_rotating_keep_every_line_once(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "access.log"
    writers = [("w1", 2000, 1), ("w2", 2000, 7), ("w3", 2000, 25)]
    max_bytes, backups = 4096, 150  # ~80 rotations for 6,000 lines of ~55 bytes; backups to spare
    _start_writers(path, writers, max_bytes, backups)

    files = sorted(tmp_path.joinpath("logs").glob("access.log*"))
    backup_files = [f for f in files if f.name not in ("access.log", "access.log.lock")]
    assert len(backup_files) > 20, "the test must rotate many times"
    assert not path.with_name(f"access.log.{backups}").exists(), "backups must keep every line"

    seen = Counter(entry for f in files if f.name != "access.log.lock" for entry in _entries(f))
    expected = {(name, i) for name, lines, _ in writers for i in range(lines)}
    assert set(seen) == expected
    assert max(seen.values()) == 1
    # Every flush here is far below max_bytes, so rotating before a flush that would pass it
    # keeps each file within max_bytes whichever writer filled it.
    assert max(f.stat().st_size for f in files) <= max_bytes


def test_writer_follows_rotation_by_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    mine = AccessLog(path)  # default max_bytes: this writer never rotates by itself
    mine.record("wa", "GET", b"/seq/0", 200, 0.001)  # no event loop here: written at once
    line = path.stat().st_size

    # Another process, with room for just over two lines, writes two: the second rotates.
    _start_writers(path, [("wb", 2, 1)], max_bytes=line * 5 // 2, backups=3)
    assert _entries(path.with_name("access.log.1")) == [("wa", 0), ("wb", 0)]

    mine.record("wa", "GET", b"/seq/1", 200, 0.001)
    mine.close()
    assert _entries(path) == [("wb", 1), ("wa", 1)]
    assert _entries(path.with_name("access.log.1")) == [("wa", 0), ("wb", 0)]
