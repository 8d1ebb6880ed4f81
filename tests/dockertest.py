"""Helpers shared by the tests that run projects on the private Docker engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import docker

from docker_engine import docker_engine, ensure_base_images
from harness import REPO, DaemonProcess

APPS = REPO / "tests" / "apps"
PROJECT_LABEL = "tee-daemon.project"


def app_files(folder: str, **replace: str) -> dict[str, bytes]:
    """A sample app's files, with some replaced by the given texts."""
    root = APPS / folder
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    for path, text in replace.items():
        files[path] = text.encode()
    return files


def deploy_ok(daemon: DaemonProcess, name: str, files: dict, **manifest) -> dict:
    r = daemon.deploy_files(name, files, **manifest)
    assert r.status_code in (200, 201), r.text
    return r.json()


def containers(client: docker.DockerClient, name: str, all: bool = False) -> list:
    return client.containers.list(all=all, filters={"label": f"{PROJECT_LABEL}={name}"}, ignore_removed=True)


def only_container(client: docker.DockerClient, name: str):
    found = containers(client, name)
    assert len(found) == 1, [c.name for c in found]
    found[0].reload()
    return found[0]


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running_engine(root: Path, images: tuple[str, ...]) -> Iterator[tuple[str, docker.DockerClient]]:
    """A private engine with the given local base images; for module-scoped fixtures."""
    with docker_engine(root) as host:
        client = docker.DockerClient(base_url=host)
        ensure_base_images(client, names=images)
        try:
            yield host, client
        finally:
            client.close()
