"""Scale to zero (TEE_DAEMON_IDLE_STOP): idle process projects stop, the next request
cold-starts them. Against the real daemon over HTTP."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from test_runtimes import app_files, deploy_ok

IDLE = {"TEE_DAEMON_IDLE_STOP": "1"}

# Deno: fails at start while $DATA_DIR/fail exists; /stream sends 8 events 0.4 s apart.
FLAKY_DENO = """
const dir = Deno.env.get("DATA_DIR")!;
let armed = false;
try { Deno.statSync(`${dir}/fail`); armed = true; } catch { /* not armed */ }
if (armed) throw new Error("armed to fail at start");

export default async function handler(req: Request) {
  const url = new URL(req.url);
  if (url.pathname === "/arm") {
    await Deno.writeTextFile(`${dir}/fail`, "1");
    return new Response("armed");
  }
  if (url.pathname === "/stream") {
    let i = 0;
    const body = new ReadableStream({
      async pull(controller) {
        await new Promise((r) => setTimeout(r, 400));
        controller.enqueue(new TextEncoder().encode(`data: ${i}\\n\\n`));
        if (++i === 8) controller.close();
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  }
  return new Response("ok");
}
"""


def runtime_pids(daemon, name: str) -> list[int]:
    """The project's runtime processes (not bwrap): those running inside its folder."""
    root = str(daemon.data_dir / "projects" / name) + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if (cwd + "/").startswith(root) and comm != "bwrap":
            found.append(int(entry))
    return found


def wait_parked(daemon, name: str, timeout: float = 10) -> float:
    """Wait until the project has no process; returns how long that took."""
    start = time.monotonic()
    while runtime_pids(daemon, name):
        assert time.monotonic() - start < timeout, f"{name} still runs after {timeout}s"
        time.sleep(0.1)
    return time.monotonic() - start


def memory_gauge(daemon, name: str) -> str | None:
    text = daemon.get("/_api/metrics", admin=True).text
    key = f'tee_daemon_project_memory_rss_bytes{{project="{name}"}}'
    return next((line for line in text.splitlines() if line.startswith(key)), None)


def test_idle_project_stops_and_the_next_request_starts_it(fresh_daemon, name):
    daemon = fresh_daemon(env=IDLE)
    deploy_ok(daemon, name, app_files("deno-hello"))
    assert daemon.get(f"/{name}/count").json() == {"count": 1}
    assert len(runtime_pids(daemon, name)) == 1
    assert memory_gauge(daemon, name) is not None

    wait_parked(daemon, name)
    assert memory_gauge(daemon, name) is None  # No process, no resident memory.
    assert daemon.get(f"/_api/projects/{name}", admin=True).json()["instance"]["state"] == "idle"
    up = f'tee_daemon_project_up{{project="{name}",runtime="deno",state="idle"}} 0'
    assert up in daemon.get("/_api/metrics", admin=True).text.splitlines()
    log = (daemon.data_dir / "projects" / name / "logs" / "app.log").read_text()
    assert "without requests" in log and "exited with" not in log  # Idle, not a crash.
    time.sleep(1.5)
    assert runtime_pids(daemon, name) == []  # The crash supervisor did not restart it.

    r = daemon.get(f"/{name}/count")  # Cold start: the request waits for the process.
    assert r.status_code == 200 and r.json() == {"count": 2}  # Data dir intact.
    assert len(runtime_pids(daemon, name)) == 1
    r = daemon.get(f"/{name}/x?y=1")
    assert r.json()["path"] == "/x" and r.json()["query"] == "?y=1"


def test_concurrent_first_requests_share_one_start(fresh_daemon, name):
    daemon = fresh_daemon(env=IDLE)
    deploy_ok(daemon, name, app_files("deno-hello"))
    wait_parked(daemon, name)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: daemon.get(f"/{name}/p{i}"), range(12)))
    assert [r.status_code for r in answers] == [200] * 12
    assert [r.json()["path"] for r in answers] == [f"/p{i}" for i in range(12)]
    assert len(runtime_pids(daemon, name)) == 1


def test_streaming_request_keeps_the_instance_alive(fresh_daemon, name):
    daemon = fresh_daemon(env=IDLE)
    deploy_ok(daemon, name, {"server.ts": FLAKY_DENO})
    assert daemon.get(f"/{name}/").text == "ok"
    [pid] = runtime_pids(daemon, name)
    events = []
    with httpx.Client(base_url=daemon.url, timeout=30) as c, c.stream("GET", f"/{name}/stream") as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(int(line[6:]))
    assert events == list(range(8))  # 3.2 s of streaming, past the 1 s idle time.
    assert runtime_pids(daemon, name) == [pid]  # Same process throughout.
    wait_parked(daemon, name)  # And it does stop once the stream is over.


def test_failed_cold_start_is_503_and_the_next_request_retries(fresh_daemon, name):
    daemon = fresh_daemon(env=IDLE)
    deploy_ok(daemon, name, {"server.ts": FLAKY_DENO})
    assert daemon.get(f"/{name}/arm").text == "armed"  # The next start throws at import.
    wait_parked(daemon, name)

    r = daemon.get(f"/{name}/")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert detail.startswith("project could not be started:") and "before serving" in detail
    assert "Traceback" not in r.text and "armed to fail" not in r.text  # No project output leaks.
    assert runtime_pids(daemon, name) == []

    (daemon.data_dir / "projects" / name / "volume" / "data" / "fail").unlink()
    r = daemon.get(f"/{name}/")
    assert r.status_code == 200 and r.text == "ok"


COLD = {"deno": "deno-hello", "bun": "bun-hello", "node": "node-cjs", "python": "python-asgi"}


@pytest.mark.parametrize("runtime", sorted(COLD))
def test_cold_start_per_runtime(fresh_daemon, name, runtime):
    """Each process runtime wakes; prints its cold-start time (first request after idle)."""
    daemon = fresh_daemon(env=IDLE)
    deploy_ok(daemon, name, app_files(COLD[runtime]))
    with daemon.client(admin=False) as c:
        assert c.get(f"/{name}/count").json() == {"count": 1}
        timings = []
        for _ in range(3):
            wait_parked(daemon, name)
            start = time.perf_counter()
            r = c.get(f"/{name}/count")
            timings.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
        warm_start = time.perf_counter()
        c.get(f"/{name}/count")
        warm = time.perf_counter() - warm_start
    assert r.json() == {"count": 4}
    timings.sort()
    print(f"\ncold start {runtime}: median {timings[1] * 1000:.0f} ms "
          f"(min {timings[0] * 1000:.0f}, max {timings[2] * 1000:.0f}); warm {warm * 1000:.1f} ms")  # fmt: skip


# -- ProcessInstance on its own -------------------------------------------------------

SLOW_SERVER = """
import os, socket, time
time.sleep(float(os.environ.get("DELAY", "0")))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen()
time.sleep(3600)
"""


def test_stop_during_a_cold_start_answers_503_and_leaves_no_process(tmp_path, monkeypatch):
    import asyncio
    import sys

    from tee_daemon.run import process
    from tee_daemon.run.identity import Identity
    from tee_daemon_plugins.runtime_python.venv import python_roots  # what a sandboxed python reads

    settings = process.ProcessSettings(idle_stop=0.2, wake_timeout=20.0)
    port = process.free_port()
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 299_002, 299_002)
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def main():
        inst = process.ProcessInstance(
            identity=Identity(uid=299_002, gid=299_002), label="idle-test", argv=[sys.executable, "-c", SLOW_SERVER],
            env=process.base_env({}, data_dir=data, port=port), cwd=tmp_path,
            log_path=tmp_path / "logs" / "app.log", port=port,
            read_only=python_roots(), read_write=[data], settings=settings,
        )  # fmt: skip
        await inst.ready(20)
        gate = process.forward_app(inst)
        assert isinstance(gate, process.IdleGate)
        first = inst.proc
        for _ in range(100):
            if inst.parked and first.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert inst.describe()["state"] == "idle" and inst.describe()["pid"] is None
        inst.env["DELAY"] = "3"  # The next start is slow: stop it halfway.
        request = asyncio.create_task(gate({"type": "http"}, None, send))
        await asyncio.sleep(0.5)
        second = inst.proc
        assert second is not first and second.poll() is None
        await inst.stop()
        await asyncio.wait_for(request, 5)
        assert second.poll() is not None

    asyncio.run(main())
    assert sent[0]["status"] == 503
    assert b"was stopped while starting" in sent[1]["body"]
