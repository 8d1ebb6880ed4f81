"""Ingress workers (issue 14): N processes serve the port, one supervisor owns the
routes. Every change the API answers for is seen by every worker; no request fails or
reaches the wrong version during switches; counters and the access log add up across
workers; a worker that dies is replaced with every route, a supervisor that dies takes the
daemon down. Requests go over fresh connections so the kernel spreads them over the
workers (a kept-alive connection stays with one)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter

import httpx
import pytest

from harness import DaemonProcess

from tee_daemon.run.tenancy import remove_leftovers
from test_runtimes import app_files, deploy_ok

WORKERS = 3
MAX_REQUESTS = 4000  # per loop, a bound besides the loop's end


def fresh(url: str, path: str, **kw) -> httpx.Response:
    """One request on a connection of its own."""
    return httpx.get(url + path, headers={"connection": "close", **kw.pop("headers", {})}, timeout=30, **kw)


def metric_lines(daemon, prefix: str) -> dict[str, float]:
    text = daemon.get("/_api/metrics", admin=True).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)}


def worker_pids(daemon) -> set[int]:
    lines = metric_lines(daemon, "tee_daemon_ingress_worker_requests_total{")
    return {int(re.search(r'worker="(\d+)"', key).group(1)) for key in lines}


def served_by_worker(daemon) -> dict[int, float]:
    lines = metric_lines(daemon, "tee_daemon_ingress_worker_requests_total{")
    return {int(re.search(r'worker="(\d+)"', key).group(1)): n for key, n in lines.items()}


@pytest.fixture
def workers_daemon(fresh_daemon):
    daemon = fresh_daemon(extra_args=["--workers", str(WORKERS)])
    deadline = time.monotonic() + 30
    while len(worker_pids(daemon)) < WORKERS:  # each connects to the hub as it starts
        assert time.monotonic() < deadline, "the workers never all connected"
        time.sleep(0.1)
    return daemon


class Loop:
    """Threads sending requests on fresh connections until stopped (or the bound): each
    outcome with the time it was sent."""

    def __init__(self, daemon, path: str, read, threads: int = 4) -> None:
        self.daemon, self.path, self.read = daemon, path, read
        self.stop = threading.Event()
        self.results: list[tuple[float, str]] = []  # (sent at, version or failure)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set() and len(self.results) < MAX_REQUESTS:
            sent = time.monotonic()
            try:
                r = fresh(self.daemon.url, self.path)
                outcome = self.read(r) if r.status_code == 200 else f"status {r.status_code}: {r.text[:100]}"
            except httpx.HTTPError as exc:
                outcome = f"error {type(exc).__name__}"
            with self.lock:
                self.results.append((sent, outcome))

    def __enter__(self) -> "Loop":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


@pytest.mark.parametrize("runtime", ["static", "deno"])
def test_every_worker_has_each_route_change_before_the_api_answers(workers_daemon, name, runtime):
    daemon = workers_daemon
    if runtime == "static":
        files = lambda v: {"index.html": v}  # noqa: E731
        read = lambda r: r.text  # noqa: E731
        deploy = lambda v: deploy_ok(daemon, name, files(v))  # noqa: E731
        path = f"/{name}/"
    else:
        sample = app_files("deno-hello")
        read = lambda r: r.json()["env"]["GREETING"]  # noqa: E731
        deploy = lambda v: deploy_ok(daemon, name, sample, env={"GREETING": v})  # noqa: E731
        path = f"/{name}/ping"
    deploy("v1")
    answered: list[tuple[float, str]] = []  # when the API answered, and what serves from then
    with Loop(daemon, path, read) as loop:
        time.sleep(0.3)
        for version in ("v2", "v3", "v4"):
            deploy(version)
            answered.append((time.monotonic(), version))
            time.sleep(0.5)
        with daemon.client() as c:
            assert c.post(f"/_api/projects/{name}/rollback").status_code == 200
        answered.append((time.monotonic(), "v3"))
        time.sleep(0.3)
    outcomes = Counter(outcome for _, outcome in loop.results)
    assert set(outcomes) <= {"v1", "v2", "v3", "v4"}, outcomes  # zero failed requests
    assert len(loop.results) > 60
    # A request sent after the API answered a change is served by that change (or a later
    # one), whichever worker took it.
    order = ["v1", "v2", "v3", "v4", "v3"]
    for step, (at, version) in enumerate(answered, start=1):
        allowed = set(order[step:])
        late = [outcome for sent, outcome in loop.results if sent > at and outcome not in allowed]
        assert not late, f"after {version} answered, requests still got {Counter(late)}"
    # The requests really were spread over the workers.
    assert sum(1 for n in served_by_worker(daemon).values() if n > 0) >= 2


def test_counters_and_access_log_add_up_across_workers(workers_daemon, name):
    daemon = workers_daemon
    deploy_ok(daemon, name, {"index.html": "counted"})
    sent = 90
    for i in range(sent):
        assert fresh(daemon.url, f"/{name}/?n={i}").status_code == 200
    per_worker = served_by_worker(daemon)
    assert len(per_worker) == WORKERS and sum(1 for n in per_worker.values() if n > 0) >= 2
    total = metric_lines(daemon, f'tee_daemon_requests_total{{project="{name}"')
    assert total == {f'tee_daemon_requests_total{{project="{name}",status="200"}}': sent}
    # Each worker appends its lines to the daemon's one access log (flushed each second).
    log_path = daemon.data_dir / "logs" / "access.log"
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in log_path.read_text().splitlines() if f" {name} GET /?n=" in line]
        if len(lines) >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(int(line.split("?n=")[1].split()[0]) for line in lines) == list(range(sent))


def test_a_delete_is_seen_by_every_worker(workers_daemon, name):
    daemon = workers_daemon
    deploy_ok(daemon, name, {"index.html": "here"})
    assert all(fresh(daemon.url, f"/{name}/").text == "here" for _ in range(12))
    with daemon.client() as c:
        assert c.delete(f"/_api/projects/{name}").status_code in (200, 204)
    answers = Counter(fresh(daemon.url, f"/{name}/").status_code for _ in range(30))
    assert answers == Counter({404: 30})


def test_a_killed_worker_is_replaced_with_every_route(workers_daemon, name):
    daemon = workers_daemon
    deploy_ok(daemon, name, {"index.html": "before"})
    victim = min(worker_pids(daemon))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:  # granian starts a new worker, which takes the hub's snapshot
        pids = worker_pids(daemon)
        if len(pids) == WORKERS and victim not in pids:
            break
        assert time.monotonic() < deadline, f"no replacement worker: {pids}"
        time.sleep(0.2)
    assert all(fresh(daemon.url, f"/{name}/").text == "before" for _ in range(20))
    deploy_ok(daemon, name, {"index.html": "after"})
    assert Counter(fresh(daemon.url, f"/{name}/").text for _ in range(30)) == Counter({"after": 30})


def _supervisor_pid(serve_pid: int) -> int:
    for child in open(f"/proc/{serve_pid}/task/{serve_pid}/children").read().split():
        if b"tee_daemon.cli.serve" in open(f"/proc/{child}/cmdline", "rb").read():
            return int(child)
    raise AssertionError("no supervisor process")


def _processes_of(daemon, name: str) -> set[int]:
    """The pids whose command line runs a version of the project."""
    marker = f"{daemon.data_dir.resolve()}/projects/{name}/versions/".encode()
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in open(f"/proc/{pid}/cmdline", "rb").read():
                found.add(int(pid))
        except OSError:
            pass
    return found


def test_the_daemon_stops_when_its_supervisor_dies(workers_daemon, name):
    daemon = workers_daemon
    deploy_ok(daemon, name, app_files("deno-hello"), env={"GREETING": "v1"})
    project_pids = _processes_of(daemon, name)
    assert project_pids
    os.kill(_supervisor_pid(daemon.proc.pid), signal.SIGKILL)
    assert daemon.proc.wait(30) == 1  # the workers cannot follow routes without it
    assert "the supervisor exited" in daemon.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(daemon.url + "/_api/health", timeout=2)
    try:
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{pid}") for pid in project_pids):
            assert time.monotonic() < deadline, "a project outlived its daemon"
            time.sleep(0.1)
    finally:  # a crashed daemon leaves its projects' volumes mounted (a restart reuses them)
        remove_leftovers(daemon.data_dir.resolve())


def test_a_request_the_supervisor_serves_keeps_the_clients_address(tmp_path):
    """A project only the supervisor serves (an in-process app of a third-party runtime)
    sees the client's own address and scheme, and a client cannot forge the line the
    worker passes them in."""
    from test_plugins import install

    site = install("tee-runtime-probe", tmp_path / "site")
    daemon = DaemonProcess(tmp_path / "data", extra_args=["--workers", "2"], env={"PYTHONPATH": str(site)}).start()
    try:
        assert daemon.deploy_files(name := "probed", {"probe.txt": "x"}).status_code == 201
        forged = {"x-tee-daemon-peer": "https 203.0.113.9 1 evil 443"}
        for _ in range(6):  # over fresh connections: whichever worker takes it
            seen = fresh(daemon.url, f"/{name}/scope", headers=forged).json()
            assert seen["client"][0] == "127.0.0.1" and seen["scheme"] == "http"
            assert "x-tee-daemon-peer" not in seen["headers"]
        assert served_by_worker(daemon) and sum(served_by_worker(daemon).values()) == 0  # all via the supervisor
    finally:
        daemon.stop()


def test_a_slow_request_on_a_replaced_version_holds_up_no_other_change(workers_daemon, name):
    """While a worker waits out a long request on a replaced version (longer than the
    hub waits for an answer), the changes sent meanwhile still reach it at once: the
    request finishes on the old version, and a deploy of another project is answered
    and served."""
    daemon = workers_daemon
    slow = """export default async function handler(req: Request): Promise<Response> {
  if (new URL(req.url).pathname === "/slow") await new Promise((r) => setTimeout(r, 13000));
  return new Response(Deno.env.get("V") ?? "");
}
"""
    deploy_ok(daemon, name, {"server.ts": slow}, env={"V": "old"})
    finished: list[httpx.Response] = []
    request = threading.Thread(target=lambda: finished.append(fresh(daemon.url, f"/{name}/slow")))
    request.start()
    time.sleep(0.5)  # the request is in flight on v1
    deploy_ok(daemon, name, {"server.ts": slow}, env={"V": "new"})  # v1 now drains
    other = f"{name}-other"
    deploy_ok(daemon, other, {"index.html": "other"})
    assert Counter(fresh(daemon.url, f"/{other}/").text for _ in range(15)) == Counter({"other": 15})
    request.join(30)
    assert finished and finished[0].status_code == 200 and finished[0].text == "old"
    assert fresh(daemon.url, f"/{name}/").text == "new"


def test_scale_to_zero_with_workers(fresh_daemon, name):
    """With scale to zero on, the workers serve a running project themselves, and their
    requests count as use (it is not parked under them); once idle it is parked, the next
    request (handed to the supervisor) starts it, and the workers serve it again."""
    daemon = fresh_daemon(extra_args=["--workers", "2"], env={"TEE_DAEMON_IDLE_STOP": "2"})
    deploy_ok(daemon, name, app_files("deno-hello"), env={"GREETING": "v1"})

    def state() -> str:
        return daemon.get(f"/_api/projects/{name}", admin=True).json()["instance"]["state"]

    def by_workers() -> float:
        return sum(served_by_worker(daemon).values())

    before = by_workers()
    deadline = time.monotonic() + 5  # longer than the idle stop
    sent = 0
    while time.monotonic() < deadline:
        assert fresh(daemon.url, f"/{name}/ping").json()["env"]["GREETING"] == "v1"
        sent += 1
        time.sleep(0.05)
    assert state() == "running"  # the workers' requests kept it up
    assert by_workers() - before == sent  # and the workers served every one of them
    deadline = time.monotonic() + 30
    while state() != "idle":
        assert time.monotonic() < deadline, "never parked"
        time.sleep(0.2)
    assert fresh(daemon.url, f"/{name}/ping").status_code == 200  # wakes it
    assert state() == "running"
    deadline = time.monotonic() + 10
    while True:  # the workers take it back once it runs
        before = by_workers()
        assert fresh(daemon.url, f"/{name}/ping").status_code == 200
        if by_workers() == before + 1:
            break
        assert time.monotonic() < deadline, "the workers never served it again"
        time.sleep(0.1)
