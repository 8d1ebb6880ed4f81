"""State on disk: restarts, crashes, concurrent deploys and the admin token."""

from __future__ import annotations

import json
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from harness import DaemonProcess, make_tar


def test_projects_serve_again_after_restart(fresh_daemon):
    first = fresh_daemon()
    for i in range(3):
        assert first.deploy_files(f"p{i}", {"index.html": f"site {i}"}).status_code == 201
    first.deploy_files("p0", {"index.html": "site 0 v2"})
    first.stop()
    second = fresh_daemon()
    assert [second.get(f"/p{i}/").text for i in range(3)] == ["site 0 v2", "site 1", "site 2"]
    listed = {p["name"]: p["version"] for p in second.get("/_api/projects", admin=True).json()["projects"]}
    assert listed == {"p0": 2, "p1": 1, "p2": 1}
    with second.client() as c:  # Rollback history survives too.
        assert c.post("/_api/projects/p0/rollback").json()["version"] == 1


def test_concurrent_deploys_to_one_name_are_serialized(daemon, name):
    def deploy(i: int) -> httpx.Response:
        return daemon.deploy_files(name, {"index.html": f"v{i}"})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(deploy, range(8)))
    assert all(r.status_code == 201 for r in answers), [r.text for r in answers]
    assert sorted(r.json()["version"] for r in answers) == list(range(1, 9))
    final = daemon.get(f"/_api/projects/{name}", admin=True).json()
    assert final["version"] == 8
    served = daemon.get(f"/{name}/").text
    assert served == next(f"v{i}" for i, r in enumerate(answers) if r.json()["version"] == 8)


def test_crash_during_deploys_leaves_consistent_state(tmp_path):
    data = tmp_path / "data"
    proc = DaemonProcess(data).start()
    stop = threading.Event()
    acknowledged: dict[str, str] = {}

    def keep_deploying(worker: int) -> None:
        i = 0
        while not stop.is_set():
            name, body = f"crash-{worker}", f"w{worker} v{i}"
            try:
                r = proc.deploy_tar(name, make_tar({"index.html": body, "pad.bin": bytes(200_000)}))
            except httpx.HTTPError:
                return
            if r.status_code == 201:
                acknowledged[name] = body
            i += 1

    threads = [threading.Thread(target=keep_deploying, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.5)
    proc.kill()
    stop.set()
    for t in threads:
        t.join()
    assert acknowledged, "no deploy finished before the crash"

    again = DaemonProcess(data).start()
    try:
        for name, body in acknowledged.items():
            served = again.get(f"/{name}/").text
            # The last acknowledged version, or one the crash caught after it committed.
            assert served.startswith(body.split(" ")[0] + " v"), served
            assert int(served.split("v")[-1]) >= int(body.split("v")[-1])
        assert not list((data / "scratch").iterdir())
        for record in data.glob("projects/*/project.json"):
            project = json.loads(record.read_bytes())
            kept = {str(v["version"]) for v in project["versions"]}
            on_disk = {p.name for p in (record.parent / "versions").iterdir()}
            assert on_disk == kept
    finally:
        again.stop()


def test_generated_token_is_private_and_required(tmp_path):
    proc = DaemonProcess(tmp_path / "data", token=None).start()
    try:
        path = tmp_path / "data" / "admin-token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        assert len(token) >= 32
        assert httpx.get(proc.url + "/_api/projects").status_code == 401
        ok = httpx.get(proc.url + "/_api/projects", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert token not in proc.output()
    finally:
        proc.stop()


def test_empty_token_never_disables_auth(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin-token").write_text("\n")
    proc = DaemonProcess(tmp_path / "data", token=None, env={"TEE_DAEMON_TOKEN": ""}).start()
    try:
        assert httpx.get(proc.url + "/_api/projects").status_code == 401
        assert httpx.get(proc.url + "/_api/projects", headers={"Authorization": "Bearer"}).status_code == 401
        assert (tmp_path / "data" / "admin-token").read_text().strip()
    finally:
        proc.stop()


def test_one_daemon_per_data_dir(fresh_daemon):
    first = fresh_daemon()
    second = DaemonProcess(first.data_dir)
    try:
        second.start(timeout=20)
        raise AssertionError("a second daemon started on the same data dir")
    except RuntimeError as failure:
        assert "another daemon is already using" in str(failure)
    assert first.get("/_api/health").status_code == 200
