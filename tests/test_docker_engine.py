"""The private Docker engine the container tests rely on (tests/docker_engine.py).

Never skipped: if the engine cannot start here, these tests fail loudly.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Iterator

import docker
import pytest

from docker_engine import (
    BUSYBOX_IMAGE,
    REPO,
    docker_engine,
    ensure_base_images,
    run_container,
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[docker.DockerClient]:
    with docker_engine(tmp_path_factory.mktemp("docker")) as host:
        client = docker.DockerClient(base_url=host)
        try:
            yield client
        finally:
            client.close()


def _get(url: str, deadline_s: float = 15.0) -> bytes:
    end = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read()
        except Exception as e:  # noqa: BLE001 - server not up yet
            last = e
            time.sleep(0.1)
    raise AssertionError(f"{url} not reachable within {deadline_s}s: {last!r}")


def test_busybox_echo_and_httpd_on_published_loopback_port(engine: docker.DockerClient) -> None:
    assert engine.ping()
    images = ensure_base_images(engine, names=("busybox",))
    assert images == {"busybox": BUSYBOX_IMAGE}
    assert engine.images.get(BUSYBOX_IMAGE).labels

    assert run_container(engine, BUSYBOX_IMAGE, ["echo", "hello"]) == b"hello\n"

    httpd = run_container(
        engine, BUSYBOX_IMAGE, ["httpd", "-f", "-p", "8080", "-h", "/var/www"],
        detach=True, ports={"8080/tcp": ("127.0.0.1", None)},
        mem_limit="64m", nano_cpus=500_000_000, pids_limit=32,
    )
    try:
        httpd.reload()
        binding = httpd.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]
        assert binding["HostIp"] == "127.0.0.1"
        body = _get(f"http://127.0.0.1:{binding['HostPort']}/index.html")
        assert body == b"hello from tee-daemon/busybox\n"
        hc = httpd.attrs["HostConfig"]
        assert (hc["Memory"], hc["NanoCpus"], hc["PidsLimit"]) == (64 << 20, 500_000_000, 32)
    finally:
        httpd.remove(force=True)


def test_runtime_base_runs_deno_node_bun_python(engine: docker.DockerClient) -> None:
    images = ensure_base_images(engine, names=("runtime-base",))
    binaries = {}
    for exe in ("deno", "node", "bun"):
        p = REPO / ".runtimes" / "bin" / exe
        assert p.exists(), f"{p} missing: run scripts/setup-runtimes.sh"
        binaries[exe] = p.resolve()
    volumes = {str(p): {"bind": f"/opt/runtimes/{exe}", "mode": "ro"} for exe, p in binaries.items()}
    script = (
        "set -e; /opt/runtimes/deno --version | head -n1; /opt/runtimes/node --version; "
        "/opt/runtimes/bun --version; python3 --version; "
        "/opt/runtimes/deno eval 'console.log(6*7)'; "
        "/opt/runtimes/node -e 'console.log(6*7)'; "
        "/opt/runtimes/bun -e 'console.log(6*7)'; "
        "python3 -c 'print(6*7)'"
    )
    out = run_container(
        engine, images["runtime-base"], ["sh", "-c", script], volumes=volumes,
        environment={"DENO_DIR": "/tmp/deno", "HOME": "/tmp"}, user="65534:65534",
    ).decode()
    lines = out.splitlines()
    assert lines[0].startswith("deno 2."), out
    assert lines[1].startswith("v"), out
    assert lines[3].startswith("Python 3."), out
    assert lines[4:] == ["42"] * 4, out


def test_engine_gone_after_exit(tmp_path: Path) -> None:
    with docker_engine(tmp_path) as host:
        sock = Path(host.removeprefix("unix://"))
        assert sock.exists()
        bridge = (tmp_path / "dockerd.mode").read_text().split("bridge=")[1].split()[0]
        assert Path(f"/sys/class/net/{bridge}").exists()
    assert not sock.exists()
    assert not Path(f"/sys/class/net/{bridge}").exists()
