"""The front-door rows of `make bench` (SPEC section 10, issue 10's goals).

* silent connections: how many TCP connections that send nothing the daemon holds while
  `/_api/health` (a new connection per request) keeps its p99 under 50 ms; goal 10,000.
* slow readers: the daemon worker's memory (RSS growth) per client that requests a
  streamed project response and never reads it; goal under 256 KiB.

Loopback only, bounded in count and time, every socket closed at the end. Run alone with
`.venv/bin/python bench/run.py --only-connections`.
"""

from __future__ import annotations

import resource
import socket
import statistics
import time

GOAL_SILENT = 10_000
GOAL_P99_MS = 50.0
GOAL_SLOW_KIB = 256
STEPS = (1_000, 2_000, 5_000, 10_000)
SLOW_READERS = 100
# The guard would close the silent connections after the header timeout; give the
# measurement room (the rows are about holding them, the tests about closing them).
ENV = {"TEE_DAEMON_HEADER_TIMEOUT": "120"}

STREAM_APP = b'''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
    if scope["path"] != "/big":
        await send({"type": "http.response.body", "body": b"ok"})
        return
    chunk = b"x" * 65536
    for _ in range(1024):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
'''


def _nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _health_ms(port: int) -> float | None:
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /_api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            got = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
    except OSError:
        return None
    if not got.startswith(b"HTTP/1.1 200"):
        return None
    return (time.perf_counter() - start) * 1000


def _p99(port: int, samples: int = 200) -> tuple[float, int]:
    times, failed = [], 0
    for _ in range(samples):
        ms = _health_ms(port)
        if ms is None:
            failed += 1
            ms = 2000.0
        times.append(ms)
    return statistics.quantiles(times, n=100)[98], failed


def _still_open(socks: list[socket.socket]) -> int:
    open_ = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                open_ += 1
        except BlockingIOError:
            open_ += 1
        except OSError:
            pass
    return open_


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _worker(daemon) -> int:
    pid = daemon.proc.pid
    return int(open(f"/proc/{pid}/task/{pid}/children").read().split()[0])


def silent_rows(daemon) -> dict:
    limit = _nofile()
    daemon_limit = None
    try:
        for line in open(f"/proc/{_worker(daemon)}/limits"):
            if line.startswith("Max open files"):
                daemon_limit = int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    cap = min(GOAL_SILENT, limit - 200, (daemon_limit or limit) - 2048)
    steps = [n for n in STEPS if n <= cap] or [cap]
    socks: list[socket.socket] = []
    found = {"held": 0, "steps": [], "limit": limit, "daemon_limit": daemon_limit, "cap": cap}
    try:
        for n in steps:
            while len(socks) < n:
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.connect(("127.0.0.1", daemon.port))
                except BlockingIOError:
                    pass
                socks.append(s)
            time.sleep(1.0)
            p99, failed = _p99(daemon.port)
            held = _still_open(socks)
            found["steps"].append({"silent": n, "open": held, "p99": p99, "failed": failed})
            if p99 >= GOAL_P99_MS or failed:
                break
            found["held"] = held
    finally:
        for s in socks:
            s.close()
    return found


def slow_rows(daemon) -> dict:
    r = daemon.deploy("slowread", {"app.py": STREAM_APP}, runtime="python")
    if r.status_code != 201:
        return {"error": f"deploy failed {r.status_code}: {r.text[:200]}"}
    for _ in range(3):
        daemon.client.get("/slowread/")
    worker = _worker(daemon)
    base = _rss_kib(worker)
    socks = []
    peak = 0
    try:
        for _ in range(SLOW_READERS):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", daemon.port))
            s.sendall(b"GET /slowread/big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            socks.append(s)
        for _ in range(6):
            time.sleep(1)
            peak = max(peak, _rss_kib(worker) - base)
    finally:
        for s in socks:
            s.close()
    time.sleep(5)
    return {"clients": SLOW_READERS, "peak_kib": peak, "per_client_kib": peak / SLOW_READERS,
            "held_after_kib": _rss_kib(worker) - base}  # fmt: skip


def run(daemon_cls, workdir) -> dict:
    daemon = daemon_cls(workdir, "connections-daemon", ENV)
    try:
        return {"silent": silent_rows(daemon), "slow": slow_rows(daemon)}
    finally:
        daemon.stop()


def print_rows(found: dict) -> None:
    print()
    print("CONNECTIONS rows (SPEC 10): one daemon, default mode, TEE_DAEMON_HEADER_TIMEOUT=120 for the silent row")
    silent = found["silent"]
    for step in silent["steps"]:
        print(
            f"  {step['silent']:>6} silent connections ({step['open']} still open): /_api/health p99 "
            f"{step['p99']:.1f} ms (new connection each), {step['failed']} failed"
        )
    ok = "ok" if silent["held"] >= GOAL_SILENT else "below goal"
    print(
        f"silent connections held with /_api/health p99 < {GOAL_P99_MS:g} ms: {silent['held']}  "
        f"(goal {GOAL_SILENT}: {ok}; tried up to {silent['cap']}: bench fd limit {silent['limit']}, "
        f"daemon fd limit {silent['daemon_limit']} minus 2048 kept back)"
    )
    slow = found["slow"]
    if "error" in slow:
        print("slow readers:", slow["error"])
        return
    ok = "ok" if slow["per_client_kib"] < GOAL_SLOW_KIB else "above goal"
    print(
        f"daemon memory per client that does not read a streamed response: {slow['per_client_kib']:.0f} KiB "
        f"({slow['clients']} clients, +{slow['peak_kib'] / 1024:.0f} MiB worker RSS; goal < {GOAL_SLOW_KIB} KiB: {ok}); "
        f"worker RSS 5 s after they closed: {slow['held_after_kib'] / 1024:+.0f} MiB against before"
    )
