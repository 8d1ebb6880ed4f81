"""`--backend docker`: deno, node and python projects run in containers of a real, private
Docker engine (tests/docker_engine.py), on the local runtime-base image.

Never skipped: if the engine cannot start here these tests fail loudly (CI runs them).
Nothing is pulled: TEE_DAEMON_DOCKER_IMAGE_* name the image imported locally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import docker
import pytest

from docker_engine import RUNTIME_BASE_IMAGE
from dockertest import PROJECT_LABEL, running_engine, app_files, containers, deploy_ok, only_container, wait_for
from harness import DaemonProcess

LIMITS = {"TEE_DAEMON_DOCKER_MEMORY": "192m", "TEE_DAEMON_DOCKER_CPUS": "0.5", "TEE_DAEMON_DOCKER_PIDS": "64"}
IMAGES = {f"TEE_DAEMON_DOCKER_IMAGE_{rt}": RUNTIME_BASE_IMAGE for rt in ("DENO", "BUN", "NODE", "PYTHON")}
SAMPLES = {"deno": "deno-hello", "node": "node-esm", "python": "python-handle"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, docker.DockerClient]]:
    yield from running_engine(tmp_path_factory.mktemp("docker"), ("runtime-base",))


@pytest.fixture(scope="module")
def ddaemon(engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    host, _ = engine
    proc = DaemonProcess(
        tmp_path_factory.mktemp("dbackend") / "data",
        extra_args=["--backend", "docker"],
        env={"DOCKER_HOST": host, **LIMITS, **IMAGES},
    ).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("runtime", sorted(SAMPLES))
def test_runtime_serves_from_a_hardened_container(ddaemon: DaemonProcess, engine, name: str, runtime: str) -> None:
    _, client = engine
    sample = SAMPLES[runtime]
    project = deploy_ok(ddaemon, name, app_files(sample), env={"GREETING": "hi"}, secrets={"API_KEY": "s3"})
    assert project["runtime"] == runtime
    body = ddaemon.get(f"/{name}/hello?x=1").json()
    assert body["runtime"] == runtime and body["path"] == "/hello" and body["query"] == "?x=1"
    assert body["env"]["GREETING"] == "hi" and body["env"]["API_KEY"] == "s3"
    data_dir = body["DATA_DIR"]
    assert data_dir == str(ddaemon.data_dir / "projects" / name / "data")
    assert ddaemon.get(f"/{name}/count").json() == {"count": 1}

    ctr = only_container(client, name)
    assert ctr.attrs["Config"]["Image"] == RUNTIME_BASE_IMAGE
    hc = ctr.attrs["HostConfig"]
    assert hc["Memory"] == 192 << 20 and hc["NanoCpus"] == 500_000_000 and hc["PidsLimit"] == 64
    assert hc["CapDrop"] == ["ALL"] and "no-new-privileges" in hc["SecurityOpt"]
    assert hc["ReadonlyRootfs"] is True
    bindings = [b for bs in hc["PortBindings"].values() for b in bs]
    assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings)
    labels = ctr.labels
    assert labels[PROJECT_LABEL] == name and labels["tee-daemon.version"] == "1"
    assert labels["tee-daemon.runtime"] == runtime
    uid, _, gid = ctr.attrs["Config"]["User"].partition(":")  # The project's own, never root.
    assert int(uid) > 0 and int(gid) > 0
    assert (Path(data_dir).stat().st_uid, Path(data_dir).stat().st_gid) == (int(uid), int(gid))
    assert list(ctr.attrs["NetworkSettings"]["Networks"]) == [f"tee-{labels['tee-daemon.daemon']}-{name}"]
    mounts = {m["Destination"]: m for m in ctr.attrs["Mounts"]}
    assert mounts[data_dir]["Type"] == "bind" and mounts[data_dir]["RW"] is True
    tree = str(ddaemon.data_dir / "projects" / name / "versions" / "1" / "tree")
    assert mounts[tree]["RW"] is False
    assert all(not m["RW"] for dest, m in mounts.items() if dest != data_dir)
    # The data file is on the host, in the project's data dir.
    assert (Path(data_dir) / "count.txt").read_text() == "1"
    # Nothing of the host's files beyond the binds: the project's own logs folder is absent.
    assert (ddaemon.data_dir / "projects" / name / "logs").is_dir()
    code, _ = ctr.exec_run(["test", "-e", str(ddaemon.data_dir / "projects" / name / "logs")])
    assert code == 1

    sub = ddaemon.get("/_api/substrate").json()
    assert sub["backend"] == "docker"


def test_substrate_reports_the_docker_backend(ddaemon: DaemonProcess) -> None:
    sub = ddaemon.get("/_api/substrate").json()
    assert sub["backend"] == "docker"
    iso = sub["isolation"]
    assert iso["kind"] == "container" and iso["images"]["deno"] == RUNTIME_BASE_IMAGE
    assert iso["engine"].startswith("docker ")


@pytest.mark.parametrize("runtime", ["deno", "node"])
def test_data_persists_across_redeploy_and_delete_cleans_up(
    ddaemon: DaemonProcess, engine, name: str, runtime: str
) -> None:
    _, client = engine
    files = app_files(SAMPLES[runtime])
    deploy_ok(ddaemon, name, files)
    assert ddaemon.get(f"/{name}/count").json() == {"count": 1}
    first = only_container(client, name)
    entry = next(iter(files))
    files[entry] += b"\n// version two\n"
    assert deploy_ok(ddaemon, name, files)["version"] == 2
    assert ddaemon.get(f"/{name}/count").json() == {"count": 2}
    wait_for(lambda: len(containers(client, name, all=True)) == 1, what="the old container removed")
    assert only_container(client, name).labels["tee-daemon.version"] == "2"
    assert first.id not in {c.id for c in containers(client, name, all=True)}

    flt = {"label": f"{PROJECT_LABEL}={name}"}
    assert client.networks.list(filters=flt)
    with ddaemon.client() as c:
        assert c.delete(f"/_api/projects/{name}").status_code in (200, 204)
    wait_for(lambda: not (client.containers.list(all=True, filters=flt) or client.networks.list(filters=flt)),
             what="the project's containers and network removed")
    assert ddaemon.get(f"/{name}/").status_code == 404
    assert client.images.get(RUNTIME_BASE_IMAGE)  # The shared base image stays.


def test_python_with_requirements_uses_its_venv(ddaemon: DaemonProcess, engine, name: str) -> None:
    deploy_ok(ddaemon, name, app_files("python-deps"))
    doc, module_file, prefix = ddaemon.get(f"/{name}/").text.splitlines()
    assert doc == "a = 1"
    assert "/cache/python/deps/" in module_file and "/cache/python/deps/" in prefix
    assert only_container(engine[1], name).labels["tee-daemon.runtime"] == "python"


def test_daemon_restart_adopts_the_container(engine, tmp_path: Path, name: str) -> None:
    host, client = engine
    args = dict(extra_args=["--backend", "docker"], env={"DOCKER_HOST": host, **IMAGES})
    d = DaemonProcess(tmp_path / "data", **args).start()
    try:
        deploy_ok(d, name, app_files("node-esm"))
        assert d.get(f"/{name}/count").json() == {"count": 1}
        first = only_container(client, name)
        d.stop()  # A graceful stop leaves the container serving for the next daemon.
        assert only_container(client, name).status == "running"
        d = DaemonProcess(tmp_path / "data", **args).start()
        assert d.get(f"/{name}/count").json() == {"count": 2}
        assert only_container(client, name).id == first.id
    finally:
        d.stop()
    wait_for(lambda: containers(client, name), what="container still there")  # Cleanup below.
    for ctr in containers(client, name, all=True):
        ctr.remove(force=True)


def test_missing_image_is_a_clear_error(engine, tmp_path: Path, name: str) -> None:
    host, client = engine
    env = {"DOCKER_HOST": host, **IMAGES, "TEE_DAEMON_DOCKER_IMAGE_DENO": "example.invalid/none:1"}
    d = DaemonProcess(tmp_path / "data", extra_args=["--backend", "docker"], env=env).start()
    try:
        r = d.deploy_files(name, app_files("deno-hello"))
        assert 400 <= r.status_code < 500, r.text
        detail = r.json()["detail"]
        assert "example.invalid/none:1" in detail and "TEE_DAEMON_DOCKER_IMAGE_DENO" in detail, detail
        assert containers(client, name, all=True) == []
    finally:
        d.stop()
