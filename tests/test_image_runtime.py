"""The image runtime (SPEC 11) against the tests' private Docker engine, with images
built locally on it (nothing is pulled, there is no registry)."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections.abc import Iterator

import docker
import httpx
import pytest
from docker_engine import BUSYBOX_IMAGE
from dockertest import only_container, running_engine
from harness import DaemonProcess
from tee_daemon.cli.verify import manifest_sha256

PORT = 9090  # Hard-coded in the image: the manifest's `port` is what the daemon uses.


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, docker.DockerClient]]:
    yield from running_engine(tmp_path_factory.mktemp("docker"), ("busybox",))


@pytest.fixture(scope="module")
def ddaemon(engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    host, _ = engine
    proc = DaemonProcess(tmp_path_factory.mktemp("idaemon") / "data", env={"DOCKER_HOST": host}).start()
    yield proc
    proc.stop()


def build_image(client: docker.DockerClient, text: str, tag: str) -> str:
    """An image built on the engine from busybox (pull never) serving `text` on PORT."""
    dockerfile = (
        f"FROM {BUSYBOX_IMAGE}\n"
        f"RUN mkdir /www && echo '{text}' > /www/index.html\n"
        f'CMD ["httpd", "-f", "-p", "{PORT}", "-h", "/www"]\n'
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        data = dockerfile.encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    image, _ = client.images.build(fileobj=buf, custom_context=True, tag=tag, pull=False, rm=True)
    return image.id


def deploy(daemon: DaemonProcess, **fields) -> httpx.Response:
    with daemon.client() as c:
        return c.post("/_api/projects", json=fields)


def test_image_by_id_serves_and_is_attested(ddaemon, engine, name):
    _, client = engine
    image_id = build_image(client, "hello from a prebuilt image", f"local/{name}:v1")
    assert image_id.startswith("sha256:")
    r = deploy(ddaemon, name=name, runtime="image", image=image_id, port=PORT)
    assert r.status_code == 201, r.text
    project = r.json()
    assert project["runtime"] == "image" and project["image"] == image_id and project["port"] == PORT
    r = ddaemon.get(f"/{name}/")
    assert r.status_code == 200 and r.text == "hello from a prebuilt image\n"
    # The manifest's hash covers image and port: recomputed as a verifier does.
    assert manifest_sha256(project) == project["manifest_sha256"]
    changed = {**project, "port": PORT + 1}
    assert manifest_sha256(changed) != project["manifest_sha256"]
    ctr = only_container(client, name)
    hc = ctr.attrs["HostConfig"]
    assert hc["CapDrop"] == ["ALL"] and hc["ReadonlyRootfs"] is True
    assert ctr.attrs["Config"]["User"] not in ("", "0", "root", "0:0")
    assert ctr.image.id == image_id


def test_redeploy_to_a_new_image_under_load_drops_no_request(ddaemon, engine, name):
    _, client = engine
    first = build_image(client, "image one", f"local/{name}:v1")
    second = build_image(client, "image two", f"local/{name}:v2")
    assert deploy(ddaemon, name=name, image=first, port=PORT).status_code == 201  # runtime from `image`
    failures: list[str] = []
    stop = threading.Event()

    def hammer():
        with httpx.Client(base_url=ddaemon.url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.get(f"/{name}/")
                    if r.status_code != 200 or r.text not in ("image one\n", "image two\n"):
                        failures.append(f"{r.status_code} {r.text[:100]}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        r = deploy(ddaemon, name=name, image=second, port=PORT)
        assert r.status_code == 201, r.text
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert ddaemon.get(f"/{name}/").text == "image two\n"


def test_image_refusals(ddaemon, engine, name):
    _, client = engine
    r = deploy(ddaemon, name=name, runtime="image", image=BUSYBOX_IMAGE, port=PORT)
    assert r.status_code == 400 and "digest" in r.json()["detail"]
    r = deploy(ddaemon, name=name, runtime="image", port=PORT)
    assert r.status_code == 400 and "needs 'image'" in r.json()["detail"]
    r = deploy(ddaemon, name=name, runtime="image", image="sha256:" + "0" * 64, port=70000)
    assert r.status_code == 400 and "'port'" in r.json()["detail"]
    missing = "registry.example/app@sha256:" + "ab" * 32
    r = deploy(ddaemon, name=name, runtime="image", image=missing, port=PORT)
    assert r.status_code == 422 and "not in the Docker engine" in r.json()["detail"]
    # A local image id is not a registry digest: naming it as one is refused, not guessed.
    image_id = build_image(client, "x", f"local/{name}:v1")
    r = deploy(ddaemon, name=name, runtime="image", image=f"local/{name}@{image_id}", port=PORT)
    assert r.status_code == 422 and "RepoDigests" in r.json()["detail"]
    r = deploy(ddaemon, name=name, runtime="static", image=image_id)
    assert r.status_code == 400 and "image runtime" in r.json()["detail"]
    assert ddaemon.get(f"/_api/projects/{name}", admin=True).status_code == 404


def test_image_runtime_without_an_engine_is_a_clear_4xx(fresh_daemon, tmp_path, name):
    d = fresh_daemon(env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    r = deploy(d, name=name, runtime="image", image="sha256:" + "1" * 64, port=PORT)
    assert 400 <= r.status_code < 500, r.text
    assert "engine" in r.json()["detail"].lower()
