"""Size-limited project volumes (SPEC 9: over disk, writes fail with ENOSPC): needs root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tee_daemon.run import volume

WHY_NOT = volume.probe()
if WHY_NOT is not None:
    # A skip on a developer's machine; in CI it would hide an unenforced disk limit.
    if os.environ.get("CI"):
        raise RuntimeError(f"volumes do not work on this CI machine: {WHY_NOT}")
    pytestmark = pytest.mark.skip(reason=WHY_NOT)

UID = GID = 4242  # any unused id: the project identity


@pytest.fixture
def base():
    # Traversable by the project uid (pytest's tmp_path is 0700 root), as the sandbox
    # would make data/ and tmp/ reachable.
    top = Path(tempfile.mkdtemp(prefix="tee-volume-test-"))
    os.chmod(top, 0o711)
    yield top
    volume.release_all(top)
    shutil.rmtree(top)


@pytest.fixture
def project(base: Path) -> Path:
    path = base / "site"
    path.mkdir()
    return path


def as_project(*argv: str) -> subprocess.CompletedProcess:
    """Run a command as the project's uid and gid, without any supplementary group."""
    return subprocess.run(
        ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
    )


def write_mib(path: Path, mib: int) -> subprocess.CompletedProcess:
    return as_project("dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync")


def mounts_at(path: Path) -> list[str]:
    """The mount options of every mount at path (one entry per mount)."""
    where = os.path.realpath(path)
    return [line.split()[5] for line in Path("/proc/self/mountinfo").read_text().splitlines() if line.split()[4] == where]


def loop_devices_of(image: Path) -> list[str]:
    out = json.loads(subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True, check=True).stdout or "{}")
    return [d["name"] for d in out.get("loopdevices", []) if d.get("back-file", "").startswith(str(image))]


def test_probe_says_volumes_work():
    assert WHY_NOT is None


def test_writes_beyond_the_size_fail_with_enospc(project: Path):
    mount = volume.ensure(project, size_mb=16, uid=UID, gid=GID)
    assert mount == project / "volume"
    full = write_mib(mount / "data" / "big", 32)
    assert full.returncode != 0
    assert "No space left on device" in full.stderr
    # data/ and tmp/ share the one limit: with data full, tmp is full too.
    more = write_mib(mount / "tmp" / "more", 1)
    assert "No space left on device" in more.stderr
    assert as_project("rm", str(mount / "data" / "big")).returncode == 0
    assert write_mib(mount / "tmp" / "more", 4).returncode == 0


def test_ownership_and_modes(project: Path):
    mount = volume.ensure(project, size_mb=16, uid=UID, gid=GID)
    for sub in ("data", "tmp"):
        st = os.lstat(mount / sub)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (UID, GID, 0o700)
    top = os.stat(mount)
    assert (top.st_uid, top.st_gid, top.st_mode & 0o7777) == (0, 0, 0o755)
    # The project cannot write beside its two dirs, and the image is the daemon's.
    assert as_project("touch", str(mount / "elsewhere")).returncode != 0
    assert os.stat(project / "volume.img").st_mode & 0o777 == 0o600
    [options] = mounts_at(mount)
    assert {"nosuid", "nodev"} <= set(options.split(","))


def test_data_survives_release_and_ensure(project: Path):
    mount = volume.ensure(project, size_mb=16, uid=UID, gid=GID)
    assert as_project("sh", "-c", f"echo kept > {mount}/data/file").returncode == 0
    volume.release(project)
    assert mounts_at(mount) == []
    assert not (mount / "data").exists()
    volume.ensure(project, size_mb=16, uid=UID, gid=GID)
    assert (mount / "data" / "file").read_text() == "kept\n"


def test_ensure_twice_mounts_once(project: Path):
    first = volume.ensure(project, size_mb=16, uid=UID, gid=GID)
    second = volume.ensure(project, size_mb=16, uid=UID, gid=GID)
    assert first == second
    assert len(mounts_at(first)) == 1
    assert len(loop_devices_of(project / "volume.img")) == 1


def test_release_frees_the_loop_device(project: Path):
    volume.ensure(project, size_mb=16, uid=UID, gid=GID)
    assert len(loop_devices_of(project / "volume.img")) == 1
    volume.release(project)
    assert loop_devices_of(project / "volume.img") == []
    volume.release(project)  # nothing mounted: nothing to do


def test_an_attached_device_is_reused_not_doubled(project: Path):
    # A crash between losetup and mount (or a sandbox still holding the fs) leaves a loop
    # device without a mount: ensure mounts that device rather than a second one.
    volume.ensure(project, size_mb=16, uid=UID, gid=GID)
    volume.release(project)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(project / "volume.img")], capture_output=True, text=True, check=True
    ).stdout.strip()
    volume.ensure(project, size_mb=16, uid=UID, gid=GID)
    assert loop_devices_of(project / "volume.img") == [device]
    volume.release(project)
    assert loop_devices_of(project / "volume.img") == []


def test_grows_but_never_shrinks(project: Path):
    mount = volume.ensure(project, size_mb=16, uid=UID, gid=GID)
    (mount / "data" / "file").write_text("kept")
    small = shutil.disk_usage(mount).total
    volume.ensure(project, size_mb=48, uid=UID, gid=GID)
    grown = shutil.disk_usage(mount).total
    assert grown > small + 24 * volume.MiB
    assert (mount / "data" / "file").read_text() == "kept"
    assert len(mounts_at(mount)) == 1
    volume.ensure(project, size_mb=16, uid=UID, gid=GID)
    assert shutil.disk_usage(mount).total == grown
    assert os.path.getsize(project / "volume.img") == 48 * volume.MiB
    # The space really is usable now.
    assert write_mib(mount / "data" / "big", 30).returncode == 0


def test_release_all_unmounts_everything_below(base: Path):
    projects = [base / "projects" / name for name in ("a", "b")]
    for path in projects:
        path.mkdir(parents=True)
        volume.ensure(path, size_mb=16, uid=UID, gid=GID)
    volume.release_all(base)
    for path in projects:
        assert mounts_at(path / "volume") == []
        assert loop_devices_of(path / "volume.img") == []
