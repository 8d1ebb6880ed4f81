"""The project network (SPEC 9): `isolated` (the default) runs each process project in a
network namespace of its own, served over a unix socket; it cannot reach another
project, the daemon or the host (and with egress denied, nothing at all). `shared` is
the opt-in loopback mode. Against the real daemon over HTTP."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tee_daemon.run import process
from test_runtimes import ENV, SAMPLES, app_files, deploy_ok

ISOLATED = {"TEE_DAEMON_PROJECT_NETWORK": "isolated"}
# Without egress no packet can leave the namespace: the "no route" check below sends nothing.
NO_EGRESS = {**ISOLATED, "TEE_DAEMON_PROJECT_EGRESS": "deny"}
SHARED = {"TEE_DAEMON_PROJECT_NETWORK": "shared"}

if not process.bwrap_isolates_network():
    # On a developer's machine without user namespaces this is a skip; in CI, which runs
    # on a machine where they work, a silent skip would hide a broken sandbox.
    if os.environ.get("CI"):
        raise RuntimeError("bubblewrap cannot create a network namespace on this CI machine")
    pytestmark = pytest.mark.skip(reason="bubblewrap cannot create a network namespace here")

# /probe?port=N: a TCP connect to 127.0.0.1:N; /probe?host=H&port=N: to H:N;
# /probe?path=P: a connect to the unix socket P. Answers what happened.
PROBE = """
import json, socket
from urllib.parse import parse_qs


def attempt(query):
    try:
        if "path" in query:
            conn = socket.socket(socket.AF_UNIX)
            conn.settimeout(3)
            conn.connect(query["path"][0])
        else:
            conn = socket.create_connection((query.get("host", ["127.0.0.1"])[0], int(query["port"][0])), timeout=3)
    except OSError as exc:
        return {"connected": False, "error": type(exc).__name__, "errno": exc.errno}
    conn.close()
    return {"connected": True}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    query = parse_qs(scope["query_string"].decode())
    body = json.dumps(attempt(query) if scope["path"] == "/probe" else {"ok": True}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


def probe(daemon, name: str, **query) -> dict:
    r = daemon.get(f"/{name}/probe", params=query)
    assert r.status_code == 200, r.text
    return r.json()


def test_samples_serve_through_the_daemon(fresh_daemon, name):
    daemon = fresh_daemon(env=ISOLATED)
    for sample in ("deno-hello", "bun-hello", "node-cjs", "node-esm", "python-asgi", "python-handle"):
        project = f"{name}-{sample}"[:60]
        deploy_ok(daemon, project, app_files(sample), env=ENV)
        r = daemon.get(f"/{project}/some/path?q=1")
        assert r.status_code == 200, (sample, r.text)
        body = r.json()
        assert body["runtime"] == SAMPLES[sample]
        assert body["path"] == "/some/path"
        assert body["env"]["GREETING"] == "hi there"
        assert "PORT" not in body["environ"]
        # The data dir is writable; the instance shows where it listens.
        assert daemon.get(f"/{project}/count").json() == {"count": 1}
        instance = daemon.get(f"/_api/projects/{project}", admin=True).json()["instance"]
        assert instance["network"] == "isolated"
        assert instance["address"].startswith("unix:/") and instance["address"].endswith("/app.sock")
        assert len(instance["address"].encode()) - len("unix:") < 108


def test_isolated_project_reaches_nothing_outside(fresh_daemon, name, loopback_listener):
    daemon = fresh_daemon(env=NO_EGRESS)
    deploy_ok(daemon, name, {"app.py": PROBE})
    other = f"{name}-other"
    deploy_ok(daemon, other, app_files("python-asgi"))

    assert probe(daemon, name, port=daemon.port) == {"connected": False, "error": "ConnectionRefusedError", "errno": 111}
    assert probe(daemon, name, port=loopback_listener)["connected"] is False
    # Another project's socket is not even visible in the sandbox.
    address = daemon.get(f"/_api/projects/{other}", admin=True).json()["instance"]["address"]
    assert daemon.get(f"/{other}/").status_code == 200
    assert probe(daemon, name, path=address.removeprefix("unix:"))["connected"] is False
    # No route out: an address beyond loopback is unreachable at once.
    assert probe(daemon, name, host="192.0.2.1", port=80)["errno"] == 101  # ENETUNREACH

    facts = daemon.get("/_api/substrate").json()["isolation"]
    assert facts["network_mode"] == "isolated"
    assert facts["network"].startswith("isolated")


def test_shared_project_reaches_the_daemon(fresh_daemon, name, loopback_listener):
    """The same probe with the (opt-in) shared network connects: the isolated test can fail."""
    daemon = fresh_daemon(env=SHARED)
    deploy_ok(daemon, name, {"app.py": PROBE})
    assert probe(daemon, name, port=daemon.port) == {"connected": True}
    assert probe(daemon, name, port=loopback_listener) == {"connected": True}
    instance = daemon.get(f"/_api/projects/{name}", admin=True).json()["instance"]
    assert instance["network"] == "shared"
    assert instance["address"].startswith("127.0.0.1:")
    facts = daemon.get("/_api/substrate").json()["isolation"]
    assert facts["network_mode"] == "shared"


def test_isolated_project_restarts_on_its_socket(fresh_daemon, name):
    """A crashed process comes back on the same socket (the stale file is replaced)."""
    import time

    daemon = fresh_daemon(env=ISOLATED)
    deploy_ok(daemon, name, app_files("python-asgi"))
    try:
        daemon.get(f"/{name}/crash")
    except Exception:
        pass
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if daemon.get(f"/{name}/").status_code == 200:
                break
        except Exception:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError("the project did not come back after a crash")
    assert daemon.get(f"/_api/projects/{name}", admin=True).json()["instance"]["restarts"] >= 1


def test_isolated_project_parks_and_wakes(fresh_daemon, name):
    """Scale to zero works over the socket: a parked project cold-starts on its socket."""
    import time

    daemon = fresh_daemon(env={**ISOLATED, "TEE_DAEMON_IDLE_STOP": "1"})
    deploy_ok(daemon, name, app_files("node-esm"))
    assert daemon.get(f"/{name}/").status_code == 200
    deadline = time.monotonic() + 15
    while daemon.get(f"/_api/projects/{name}", admin=True).json()["instance"]["state"] != "idle":
        assert time.monotonic() < deadline, "the project was not parked"
        time.sleep(0.2)
    assert daemon.get(f"/{name}/").status_code == 200
    instance = daemon.get(f"/_api/projects/{name}", admin=True).json()["instance"]
    assert instance["cold_starts"] == 1 and instance["state"] == "running"


def test_socket_folders_of_a_killed_daemon_are_removed_at_start(fresh_daemon, name):
    daemon = fresh_daemon(env=ISOLATED)
    deploy_ok(daemon, name, app_files("deno-hello"))
    run_root = daemon.data_dir / "run"
    prefix = process._socket_prefix(run_root)
    assert list(Path("/tmp").glob(prefix + "*")), "pytest's long paths put the socket under /tmp"
    daemon.kill()
    assert list(Path("/tmp").glob(prefix + "*"))  # A SIGKILL leaves it behind...
    again = fresh_daemon(env=ISOLATED)
    assert again.get(f"/{name}/ping").status_code == 200
    left = list(Path("/tmp").glob(prefix + "*"))
    assert len(left) == 1 and (left[0] / "app.sock").exists()  # ...and the next start clears it.
