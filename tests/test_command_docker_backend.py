"""`--backend docker`: the command runtime's app in a container of the private engine,
on the local runtime-base image (nothing pulled), listening on $PORT itself (no relay)."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest
from docker_engine import RUNTIME_BASE_IMAGE
from dockertest import app_files, deploy_ok, only_container, running_engine
from harness import DaemonProcess


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, docker.DockerClient]]:
    yield from running_engine(tmp_path_factory.mktemp("docker"), ("runtime-base",))


@pytest.fixture(scope="module")
def ddaemon(engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    host, _ = engine
    proc = DaemonProcess(
        tmp_path_factory.mktemp("cbackend") / "data",
        extra_args=["--backend", "docker"],
        env={"DOCKER_HOST": host, "TEE_DAEMON_DOCKER_IMAGE_COMMAND": RUNTIME_BASE_IMAGE},
    ).start()
    yield proc
    proc.stop()


def test_procfile_app_runs_in_a_hardened_container(ddaemon: DaemonProcess, engine, name: str) -> None:
    _, client = engine
    project = deploy_ok(ddaemon, name, app_files("procfile-hello"))
    assert project["runtime"] == "command"
    body = ddaemon.get(f"/{name}/x?y=1").json()
    assert body == {"version": "1", "path": "/x?y=1", "port": "8080"}
    ctr = only_container(client, name)
    assert ctr.attrs["Config"]["Image"] == RUNTIME_BASE_IMAGE
    hc = ctr.attrs["HostConfig"]
    assert hc["CapDrop"] == ["ALL"] and hc["ReadonlyRootfs"] is True
    assert ctr.attrs["Config"]["User"] not in ("", "0", "root", "0:0")
