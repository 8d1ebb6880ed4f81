"""Hostile tenants are bounded (issue 9 item 7, SPEC section 9: per-project limits).

Each test is a project trying to take more than its share: memory, processes, disk (its
data dir and /tmp together), CPU. The daemon runs with small limits so the attacks are
quick; the checks are made from the host (the project's processes in /proc, files on
disk, the project's log and admin view, a neighbour's latency).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

import hostile
from harness import DaemonProcess
from hostile import Findings, admin_view, attack, deploy, dumps

MEMORY_MB = 128
PIDS = 64
DISK_MB = 64
CPUS = 0.5  # Below one core, so the limit shows even on a small machine.
LIMITS = {
    "TEE_DAEMON_PROJECT_MEMORY_MB": str(MEMORY_MB),
    "TEE_DAEMON_PROJECT_PIDS": str(PIDS),
    "TEE_DAEMON_PROJECT_DISK_MB": str(DISK_MB),
    "TEE_DAEMON_PROJECT_CPUS": str(CPUS),
}
FULL = {"ENOSPC", "EDQUOT"}
SPINNERS = 16  # Busy loops of the CPU hog: enough to win most of the machine without a limit.


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    """One daemon with small per-project limits for every test of this module."""
    proc = DaemonProcess(tmp_path_factory.mktemp("limits") / "data", env=LIMITS).start()
    yield proc
    proc.stop()


def _get(daemon, path: str, timeout: float = 30) -> httpx.Response | None:
    try:
        with httpx.Client(base_url=daemon.url, timeout=timeout) as c:
            return c.get(path)
    except httpx.HTTPError:
        return None


def _logs(daemon, name: str) -> str:
    r = daemon.get(f"/_api/projects/{name}/logs", admin=True)
    return r.text if r.status_code == 200 else ""


def test_item7_memory_hog_is_killed_and_the_log_and_admin_view_say_why(daemon, name):
    """The attack: allocate (and touch) three times the memory limit. It must not get it:
    the kernel kills the process, the project's log and its admin view say it ran out of
    memory, and the project is started again."""
    deploy(daemon, name)
    found = Findings(f"item 7 (memory, limit {MEMORY_MB} MiB)")
    want = 3 * MEMORY_MB
    r = _get(daemon, f"/{name}/alloc?mb={want}", timeout=60)
    answer = r.json() if r is not None and r.status_code == 200 else None
    found.expect(not (answer and answer.get("ok")),
                 f"the project allocated {want} MiB under a {MEMORY_MB} MiB limit: {dumps(answer)}")  # fmt: skip
    oom = re.compile(r"out of memory", re.I)
    said = hostile.wait_for(lambda: oom.search(_logs(daemon, name)), timeout=10)
    found.expect(bool(said), f"the project's log does not say it ran out of memory: ...{_logs(daemon, name)[-800:]}")
    view = admin_view(daemon, name)
    instance = view.get("instance") or {}
    reported = oom.search(json.dumps(view)) or any(
        "oom" in key.lower() and isinstance(value, int) and value > 0 for key, value in instance.items()
    )
    found.expect(bool(reported), f"the admin view does not say the project ran out of memory: {dumps(instance)}")
    def serving() -> bool:
        r = _get(daemon, f"/{name}/", timeout=5)
        return r is not None and r.status_code == 200

    back = hostile.wait_for(serving, timeout=20)
    found.expect(bool(back), "the project did not come back after its out-of-memory kill")
    found.check()


def test_item7_fork_bomb_is_bounded_by_the_pids_limit(daemon, name):
    """The attack: fork 200 processes (more than the limit) and hold them.
    Process creation must fail (EAGAIN) before the limit; from the host, the project never
    has more processes than the limit."""
    marker = deploy(daemon, name)
    found = Findings(f"item 7 (pids, limit {PIDS})")
    result: dict = {}

    def bomb():
        result.update(attack(daemon, name, "/fork", n="200", hold="4", timeout=60))

    thread = threading.Thread(target=bomb)
    thread.start()
    most = 0
    deadline = time.monotonic() + 60
    while thread.is_alive() and time.monotonic() < deadline:
        most = max(most, len(hostile.marked_pids(marker)))
        time.sleep(0.2)
    thread.join(60)
    started = result.get("started")
    found.expect(started is not None and started < PIDS, f"the project started {started} processes under a "
                 f"pids limit of {PIDS}: {dumps(result)}")  # fmt: skip
    failure = result.get("failure") or {}
    found.expect(failure.get("errname") == "EAGAIN", f"fork did not fail with EAGAIN at the limit: {dumps(result)}")
    found.expect(most <= PIDS, f"the host saw {most} processes of the project at once (limit {PIDS})")
    r = _get(daemon, f"/{name}/")
    found.expect(r is not None and r.status_code == 200, "the project stopped serving after the fork bomb")
    found.check()


def test_item7_disk_limit_covers_the_data_dir_and_tmp_together(daemon, name):
    """The attack: write past the disk limit into the data dir; then fill the data dir
    halfway and /tmp past the rest. Both writes must fail with ENOSPC or EDQUOT, and
    the project's data dir on the host never holds more than the limit."""
    deploy(daemon, name)
    found = Findings(f"item 7 (disk, limit {DISK_MB} MiB for the data dir and /tmp)")
    data = attack(daemon, name, "/status")["data_dir"]
    host_data = daemon.data_dir / "projects" / name / "data"
    try:
        big = attack(daemon, name, "/fill", path=f"{data}/big", mb=str(DISK_MB + 40), timeout=60)
        found.expect(big.get("errname") in FULL, f"writing {DISK_MB + 40} MiB to the data dir under a "
                     f"{DISK_MB} MiB limit: {dumps(big)}")  # fmt: skip
        on_host = host_data / "big"
        if on_host.exists():
            size = on_host.stat().st_size
            found.expect(size <= DISK_MB * 2**20, f"the data dir holds a {size / 2**20:.0f} MiB file on the host")
        attack(daemon, name, "/rm", path=f"{data}/big")

        half = DISK_MB * 5 // 8
        first = attack(daemon, name, "/fill", path=f"{data}/half", mb=str(half), timeout=60)
        assert first.get("ok"), f"{half} MiB should fit in the data dir under a {DISK_MB} MiB limit: {first}"
        tmp = attack(daemon, name, "/fill", path="/tmp/more", mb=str(half), timeout=60)
        found.expect(tmp.get("errname") in FULL,
                     f"{half} MiB in the data dir and {half} MiB more in /tmp both fit under one {DISK_MB} MiB "
                     f"limit: /tmp is not counted ({dumps(tmp)})")  # fmt: skip
    finally:
        for path in (f"{data}/big", f"{data}/half", "/tmp/more"):
            _get(daemon, f"/{name}/rm?path={path}")
    found.check()


def _latencies(daemon, name: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=daemon.url, timeout=10) as c:
        for _ in range(n):
            start = time.perf_counter()
            r = c.get(f"/{name}/")
            out.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
    return out


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def test_item7_a_cpu_hog_gets_its_share_and_does_not_slow_a_neighbour(daemon, name):
    """The attack: many busy loops. From the host, the hog's processes use at most about
    the CPU limit, and a neighbour's median latency stays close to what it was without the
    hog (a generous bound, over a bounded number of requests)."""
    hog, neighbour = f"{name}-h", f"{name}-n"
    marker = deploy(daemon, hog)
    deploy(daemon, neighbour)
    found = Findings(f"item 7 (cpu, limit {CPUS} CPU)")
    _latencies(daemon, neighbour, 10)  # Warm the connection and the neighbour.
    calm = statistics.median(_latencies(daemon, neighbour, 60))

    seconds = 5.0
    main_pids = set(hostile.marked_pids(marker))
    attack(daemon, hog, "/spin", procs=str(SPINNERS), seconds=str(seconds))
    try:
        time.sleep(0.3)
        spinners = [p for p in hostile.marked_pids(marker) if p not in main_pids]
        t0, ticks0 = time.monotonic(), _cpu_ticks(spinners)
        busy = statistics.median(_latencies(daemon, neighbour, 60))
        time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))
        t1, ticks1 = time.monotonic(), _cpu_ticks(spinners)
    finally:
        used = attack(daemon, hog, "/spun", timeout=30)
    cpus = (ticks1 - ticks0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
    found.expect(len(spinners) == SPINNERS, f"the host found {len(spinners)} of the hog's {SPINNERS} busy loops")
    found.expect(cpus <= CPUS * 1.15, f"the hog used {cpus:.2f} CPUs under a limit of {CPUS} "
                 f"(its busy loops report {used.get('cpu_seconds', 0):.1f} CPU-seconds in {seconds:g}s)")  # fmt: skip
    bound = 3 * calm + 0.003  # Generous: other work on this machine adds noise.
    found.expect(busy <= bound, f"the neighbour's median latency went from {calm * 1000:.2f} ms to "
                 f"{busy * 1000:.2f} ms with the hog running (bound {bound * 1000:.2f} ms)")  # fmt: skip
    found.check()
