"""The Dockerfile runtime against a real, private Docker engine (tests/docker_engine.py).

Never skipped: if the engine cannot start here these tests fail loudly (CI runs them).
Nothing is pulled: the projects build FROM the busybox image imported locally.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import docker
import httpx
import pytest

from docker_engine import BUSYBOX_IMAGE, run_container
from dockertest import PROJECT_LABEL, running_engine, app_files, containers, deploy_ok, only_container, wait_for
from harness import DaemonProcess

LIMITS = {"TEE_DAEMON_DOCKER_MEMORY": "96m", "TEE_DAEMON_DOCKER_CPUS": "0.5", "TEE_DAEMON_DOCKER_PIDS": "48"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, docker.DockerClient]]:
    yield from running_engine(tmp_path_factory.mktemp("docker"), ("busybox",))


@pytest.fixture(scope="module")
def ddaemon(engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    host, _ = engine
    proc = DaemonProcess(tmp_path_factory.mktemp("ddaemon") / "data", env={"DOCKER_HOST": host, **LIMITS}).start()
    yield proc
    proc.stop()


def test_build_serve_env_data_limits_logs(ddaemon: DaemonProcess, engine, name: str) -> None:
    _, client = engine
    project = deploy_ok(ddaemon, name, app_files("dockerfile-hello"), env={"GREETING": "hi"}, secrets={"API_KEY": "s3"})
    assert project["runtime"] == "dockerfile"
    r = ddaemon.get(f"/{name}/")
    assert r.status_code == 200 and r.text == "hello from a Dockerfile project\n"
    r = ddaemon.get(f"/{name}/cgi-bin/env?q=3")
    assert r.status_code == 200, r.text
    for line in ("GREETING=hi", "SECRET_SET=yes", "PORT=8080", "DATA_DIR=/data", "HITS=1", "QUERY=q=3"):
        assert line in r.text, r.text
    assert "HITS=2" in ddaemon.get(f"/{name}/cgi-bin/env").text  # /data is writable and kept

    ctr = only_container(client, name)
    hc = ctr.attrs["HostConfig"]
    assert hc["Memory"] == 96 << 20
    assert hc["NanoCpus"] == 500_000_000
    assert hc["PidsLimit"] == 48
    assert hc["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in hc["SecurityOpt"]
    assert hc["ReadonlyRootfs"] is True
    assert hc["RestartPolicy"]["Name"] == "on-failure"
    bindings = [b for bs in hc["PortBindings"].values() for b in bs]
    assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings)
    assert ctr.labels["tee-daemon.version"] == "1"
    mounts = {m["Destination"]: m for m in ctr.attrs["Mounts"]}
    assert mounts["/data"]["Type"] == "volume"
    networks = list(ctr.attrs["NetworkSettings"]["Networks"])
    assert networks == [f"tee-{ctr.labels['tee-daemon.daemon']}-{name}"]
    assert "s3" not in str(ddaemon.get(f"/_api/projects/{name}", admin=True).json())

    # The container's output reaches the logs endpoint (httpd -vv logs each request).
    def logged() -> bool:
        text = ddaemon.get(f"/_api/projects/{name}/logs", admin=True).text
        return "cgi-bin/env" in text
    wait_for(logged, what="container output in the logs endpoint")

    sub = ddaemon.get("/_api/substrate").json()["runtimes"]["dockerfile"]["facts"]
    assert sub["available"] is True and sub["engine"].startswith("docker ")
    assert sub["oci_runtime"] == "runc"


def test_projects_cannot_reach_each_other(ddaemon: DaemonProcess, engine, name: str) -> None:
    _, client = engine
    a, b = f"{name}-a", f"{name}-b"
    deploy_ok(ddaemon, a, app_files("dockerfile-hello"))
    deploy_ok(ddaemon, b, app_files("dockerfile-hello"))
    ca, cb = only_container(client, a), only_container(client, b)
    (net_a,) = ca.attrs["NetworkSettings"]["Networks"].values()
    (net_b,) = cb.attrs["NetworkSettings"]["Networks"].values()
    assert net_a["NetworkID"] != net_b["NetworkID"]
    ip_b = net_b["IPAddress"]

    def fetch(ctr, ip: str, port: int | str = 8080) -> tuple[int, str]:
        # (busybox wget -T crashes in this static build: bound it with timeout instead)
        code, out = ctr.exec_run(["timeout", "5", "wget", "-q", "-O", "-", f"http://{ip}:{port}/"])
        return code, out.decode(errors="replace")

    # Control: B's address serves B (from B's own network namespace).
    assert fetch(cb, ip_b) == (0, "hello from a Dockerfile project\n")
    code, out = fetch(ca, ip_b)
    assert code != 0, f"project A reached project B at {ip_b}: {out}"
    # Nor does A see B's published loopback port: its loopback is its own.
    port_b = [x for xs in cb.attrs["HostConfig"]["PortBindings"].values() for x in xs][0]["HostPort"]
    assert fetch(ca, "127.0.0.1", port_b)[0] != 0
    assert fetch(ca, net_a["Gateway"], port_b)[0] != 0


def test_redeploy_drops_no_request_and_cleans_up(ddaemon: DaemonProcess, engine, name: str) -> None:
    _, client = engine
    deploy_ok(ddaemon, name, app_files("dockerfile-hello"))
    first = only_container(client, name)
    results: list[int] = []
    bodies: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=ddaemon.url, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.get(f"/{name}/")
                    results.append(r.status_code)
                    bodies.add(r.text)
                except httpx.HTTPError:
                    results.append(-1)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        deploy_ok(ddaemon, name, app_files("dockerfile-hello", **{"www/index.html": "version two\n"}))
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(results) > 20
    assert set(results) == {200}, {code: results.count(code) for code in set(results)}
    assert bodies == {"hello from a Dockerfile project\n", "version two\n"}
    # The old container goes once drained; the new one carries version 2.
    wait_for(lambda: len(containers(client, name, all=True)) == 1, what="the old container removed")
    assert only_container(client, name).labels["tee-daemon.version"] == "2"
    assert first.id not in {c.id for c in containers(client, name, all=True)}


def test_crashed_container_is_restarted(ddaemon: DaemonProcess, engine, name: str) -> None:
    _, client = engine
    deploy_ok(ddaemon, name, app_files("dockerfile-hello"))
    ctr = only_container(client, name)
    os.kill(ctr.attrs["State"]["Pid"], signal.SIGKILL)  # The project's process dies.
    t0 = time.monotonic()

    def serving() -> bool:
        try:
            return ddaemon.get(f"/{name}/").status_code == 200 and only_container(client, name).attrs["RestartCount"] >= 1
        except (httpx.HTTPError, AssertionError):
            return False

    wait_for(serving, timeout=10, what="the crashed container to serve again")
    assert time.monotonic() - t0 < 10
    text = wait_for(
        lambda: (t := ddaemon.get(f"/_api/projects/{name}/logs", admin=True).text) and "container exited" in t and t,
        what="the crash in the project's log",
    )
    assert "the engine restart" in text
    # The engine's restart is counted with the daemon's others (the admin metrics).
    line = f'tee_daemon_restarts_total{{project="{name}"}} 1'
    wait_for(lambda: line in ddaemon.get("/_api/metrics", admin=True).text.splitlines(), what="the restart counted")


def test_failed_build_is_a_clear_4xx_and_the_old_version_serves(ddaemon: DaemonProcess, engine, name: str) -> None:
    _, client = engine
    deploy_ok(ddaemon, name, app_files("dockerfile-hello"))
    before = only_container(client, name).id
    r = ddaemon.deploy_files(name, app_files("dockerfile-broken"))
    assert 400 <= r.status_code < 500, r.text
    detail = r.json()["detail"]
    assert "did not build" in detail and "this step fails on purpose" in detail, detail
    assert ddaemon.get(f"/{name}/").text == "hello from a Dockerfile project\n"
    assert only_container(client, name).id == before
    project = ddaemon.get(f"/_api/projects/{name}", admin=True).json()
    assert project["version"] == 1

    # FROM an image the engine does not have: refused, never pulled.
    missing = {"Dockerfile": "FROM example.invalid/nothing:1\nCMD [\"true\"]\n"}
    r = ddaemon.deploy_files(name, missing)
    assert 400 <= r.status_code < 500 and "did not build" in r.json()["detail"], r.text
    assert ddaemon.get(f"/{name}/").status_code == 200


def test_start_failure_shows_the_container_log(ddaemon: DaemonProcess, engine, name: str) -> None:
    files = {"Dockerfile": f'FROM {BUSYBOX_IMAGE}\nCMD ["sh", "-c", "echo boom-at-start >&2; exit 7"]\n'}
    r = ddaemon.deploy_files(name, files)
    assert r.status_code == 422, r.text
    assert "boom-at-start" in r.json()["detail"] and "code 7" in r.json()["detail"]
    _, client = engine
    assert containers(client, name, all=True) == []


def test_delete_removes_everything(ddaemon: DaemonProcess, engine, name: str) -> None:
    _, client = engine
    deploy_ok(ddaemon, name, app_files("dockerfile-hello"))
    deploy_ok(ddaemon, name, app_files("dockerfile-hello", **{"www/index.html": "two\n"}))
    flt = {"label": f"{PROJECT_LABEL}={name}"}
    assert client.images.list(filters=flt) and client.networks.list(filters=flt) and client.volumes.list(filters=flt)
    with ddaemon.client() as c:
        assert c.delete(f"/_api/projects/{name}").status_code in (200, 204)

    def gone() -> bool:
        return not (client.containers.list(all=True, filters=flt, ignore_removed=True) or client.api.images(filters=flt)
                    or client.networks.list(filters=flt) or client.volumes.list(filters=flt))

    wait_for(gone, what="the project's containers, images, network and volume removed")
    assert ddaemon.get(f"/{name}/").status_code == 404


def test_daemon_restart_adopts_the_running_container(engine, tmp_path: Path, name: str) -> None:
    host, client = engine
    d = DaemonProcess(tmp_path / "data", env={"DOCKER_HOST": host}).start()
    try:
        deploy_ok(d, name, app_files("dockerfile-hello"))
        assert d.get(f"/{name}/cgi-bin/env").status_code == 200
        first = only_container(client, name)
        d.stop()  # A graceful stop leaves the container serving for the next daemon.
        assert only_container(client, name).status == "running"
        d = DaemonProcess(tmp_path / "data", env={"DOCKER_HOST": host}).start()
        r = d.get(f"/{name}/cgi-bin/env")
        assert r.status_code == 200 and "HITS=2" in r.text
        assert only_container(client, name).id == first.id
        d.kill()  # A crash too.
        d = DaemonProcess(tmp_path / "data", env={"DOCKER_HOST": host}).start()
        assert d.get(f"/{name}/").status_code == 200
        assert only_container(client, name).id == first.id
        with d.client() as c:
            assert c.delete(f"/_api/projects/{name}").status_code in (200, 204)
        wait_for(lambda: not containers(client, name, all=True), what="container removed on delete")
    finally:
        d.stop()


def test_engine_runs_busybox(engine) -> None:
    """A sanity check of the engine itself, so a failure above is not blamed on it."""
    _, client = engine
    assert run_container(client, BUSYBOX_IMAGE, ["echo", "ok"]) == b"ok\n"


def test_no_engine_is_a_clear_4xx(tmp_path: Path, name: str) -> None:
    d = DaemonProcess(tmp_path / "data", env={"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"}).start()
    try:
        r = d.deploy_files(name, app_files("dockerfile-hello"))
        assert 400 <= r.status_code < 500, r.text
        assert "no reachable Docker engine" in r.json()["detail"]
        sub = d.get("/_api/substrate").json()["runtimes"]["dockerfile"]["facts"]
        assert sub["available"] is False and sub["error"]
        assert d.get(f"/_api/projects/{name}", admin=True).status_code == 404
    finally:
        d.stop()


def test_build_time_is_bounded(engine, tmp_path: Path, name: str) -> None:
    host, client = engine
    d = DaemonProcess(tmp_path / "data", env={"DOCKER_HOST": host, "TEE_DAEMON_DOCKER_BUILD_TIMEOUT": "3"}).start()
    try:
        files = {"Dockerfile": f"FROM {BUSYBOX_IMAGE}\nRUN echo slow-step && sleep 60\nCMD [\"true\"]\n"}
        t0 = time.monotonic()
        r = d.deploy_files(name, files)
        assert time.monotonic() - t0 < 30
        assert 400 <= r.status_code < 500 and "longer than 3s" in r.json()["detail"], r.text

        def build_containers_gone() -> bool:  # The engine cancelled the step.
            return not [c for c in client.containers.list(all=True) if "sleep 60" in " ".join(c.attrs["Config"]["Cmd"] or [])]
        wait_for(build_containers_gone, timeout=20, what="the cut-off build step removed")
    finally:
        d.stop()


def test_images_of_versions_no_longer_kept_are_pruned(ddaemon: DaemonProcess, engine, name: str) -> None:
    _, client = engine
    flt = {"label": f"{PROJECT_LABEL}={name}"}
    for n in range(1, 7):  # The daemon keeps 5 versions.
        deploy_ok(ddaemon, name, app_files("dockerfile-hello", **{"www/index.html": f"v{n}\n"}))
    assert ddaemon.get(f"/{name}/").text == "v6\n"

    def versions() -> set[int]:
        # The low-level listing: images.list() inspects each image and races the pruning.
        # An image the engine is still deleting can be listed without its labels.
        found = [img.get("Labels") or {} for img in client.api.images(filters=flt)]
        return {int(labels["tee-daemon.version"]) for labels in found if "tee-daemon.version" in labels}

    wait_for(lambda: versions() == {2, 3, 4, 5, 6}, what="the image of version 1 pruned")
    # Exactly the kept versions' images: the one the latest deploy dropped is not left
    # for the next deploy to find (pruning follows core's kept list, not its folders).
    wait_for(lambda: len(containers(client, name, all=True)) == 1, what="the retired container removed")
    time.sleep(1.0)
    assert versions() == {2, 3, 4, 5, 6}
    with ddaemon.client() as c:  # Rollback to a kept version is instant: its image is there.
        assert c.post(f"/_api/projects/{name}/rollback", json={"version": 2}).status_code == 200
    assert ddaemon.get(f"/{name}/").text == "v2\n"
