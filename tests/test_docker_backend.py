"""docker_backend's pure parts, and the daemon's own image (Dockerfile at the repo root)
built FROM the local runtime-base image with pull=False and no package index."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from docker_engine import (
    RUNTIME_BASE_IMAGE,
    build_image,
    default_cache_dir,
    docker_engine,
    ensure_base_images,
    run_container,
)
from harness import REPO
from tee_daemon.run import containers as db
from tee_daemon.settings import load_settings
from tee_daemon_plugins.runtime_dockerfile import image
from tee_daemon.kernel.errors import DeployFailed


def _config(environ: dict[str, str]) -> db.DockerConfig:
    """The containers' settings as the daemon hands them in: from its one `Settings`."""
    return db.docker_config(load_settings(environ=environ))


def test_config_defaults_and_environment() -> None:
    cfg = _config({})
    assert (cfg.memory, cfg.cpus, cfg.pids, cfg.oci_runtime, cfg.keep_volumes) == ("512m", 1.0, 256, None, False)
    cfg = _config({
        "TEE_DAEMON_DOCKER_MEMORY": "1g", "TEE_DAEMON_DOCKER_CPUS": "2.5", "TEE_DAEMON_DOCKER_PIDS": "99",
        "TEE_DAEMON_DOCKER_RUNTIME": "runsc", "TEE_DAEMON_DOCKER_KEEP_VOLUMES": "1",
        "TEE_DAEMON_DOCKER_READ_ONLY": "0", "TEE_DAEMON_DOCKER_IMAGE_DENO": "local/deno:1",
    })
    assert (cfg.memory, cfg.cpus, cfg.pids, cfg.oci_runtime, cfg.keep_volumes, cfg.read_only) == (
        "1g", 2.5, 99, "runsc", True, False)
    assert cfg.images == {"deno": "local/deno:1"}
    with pytest.raises(SystemExit, match="TEE_DAEMON_DOCKER_PIDS"):
        _config({"TEE_DAEMON_DOCKER_PIDS": "many"})
    assert db.memory_bytes("96m") == 96 << 20 and db.memory_bytes("1g") == 1 << 30 and db.memory_bytes("512") == 512


def test_names_and_labels_are_per_daemon(tmp_path: Path) -> None:
    a, b = db.daemon_id(tmp_path / "a"), db.daemon_id(tmp_path / "b")
    assert a != b and len(a) == 10
    assert db.network_name(a, "p") != db.network_name(b, "p")
    assert db.labels(a, "p", 3) == {db.LABEL_DAEMON: a, db.LABEL_PROJECT: "p", db.LABEL_VERSION: "3"}
    assert image.image_tag(a, "p", 3) == f"tee-daemon/p:{a}-v3"


def test_build_context_is_bounded_and_honours_dockerignore(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "big.bin").write_bytes(b"x" * (2 * db.MiB))
    with pytest.raises(DeployFailed, match="build context"):
        image.build_context(tmp_path, "Dockerfile", db.MiB)
    (tmp_path / ".dockerignore").write_text("# comment\nbig.bin\n")
    ctx = image.build_context(tmp_path, "Dockerfile", db.MiB)
    import tarfile

    with tarfile.open(fileobj=ctx) as tar:
        assert "big.bin" not in tar.getnames() and "Dockerfile" in tar.getnames()


def test_log_timestamps_are_split_off() -> None:
    ts, text = db.parse_ts(b"2024-05-01T10:00:00.250000000Z hello world")
    assert text == b"hello world" and abs(ts - 1714557600.25) < 1e-3
    assert db.parse_ts(b"no timestamp") == (None, b"no timestamp")


def _wheelhouse(dest: Path) -> None:
    """tee-daemon's wheel (fresh) and its dependencies' wheels (cached machine-wide)."""
    cache = default_cache_dir().parent / "wheelhouse"
    cache.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    for f in cache.glob("tee_daemon-*.whl"):
        f.unlink()
    offline = subprocess.run([*pip, "wheel", "--no-index", "--find-links", str(cache), "-w", str(cache), str(REPO)],
                             capture_output=True, text=True)
    if offline.returncode != 0:  # First run on this machine: fetch the dependencies once.
        subprocess.run([*pip, "wheel", "-w", str(cache), str(REPO)], check=True, capture_output=True, text=True)
    dest.mkdir()
    for wheel in cache.glob("*.whl"):
        shutil.copy(wheel, dest / wheel.name)


@pytest.mark.timeout(900)
def test_daemon_image_builds_from_a_local_base_and_runs(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    for folder in ("core", "plugins"):
        shutil.copytree(REPO / folder, context / folder, ignore=shutil.ignore_patterns("__pycache__"))
    _wheelhouse(context / "wheelhouse")
    with docker_engine(tmp_path / "docker") as host:
        client = docker.DockerClient(base_url=host, timeout=600)
        try:
            ensure_base_images(client, names=("runtime-base",))
            image = build_image(client, context, "tee-daemon/daemon:test", buildargs={"BASE": RUNTIME_BASE_IMAGE})
            out = run_container(client, image.id, ["--version"])
            assert out.decode().strip() == "tee-daemon 0.1.0"
            config = image.attrs["Config"]
            assert config["Entrypoint"] == ["tee-daemon"] and config["Cmd"] == ["serve"]
            assert "TEE_DAEMON_DATA_DIR=/data" in config["Env"]
            assert not any("wheelhouse" in str(layer) for layer in image.history())
        finally:
            client.close()
