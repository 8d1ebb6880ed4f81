"""A size-limited disk per project for its data dir and /tmp together (SPEC section 9).

Each project gets an ext4 image, `<project_dir>/volume.img`, loop-mounted (nosuid, nodev)
at `<project_dir>/volume`, holding `data/` and `tmp/` owned by the project's uid. Over the
size, writes fail with ENOSPC. The image is sparse: it takes on the host disk only what
the project actually wrote (plus well under 1 MiB of metadata).

The usable space is a little below `size_mb`: ext4's metadata and its journal (kept for
crash consistency of the project's data, 32 MiB at 1 GiB) come out of the image.

Cost: a first `ensure()` of a 1024 MiB volume (create the sparse image, mkfs, mount,
make data/ and tmp/) took 43 ms (median of 10; 22 to 73 ms) on the 2-core development VM
with an ext4 host disk. mkfs punches the sparse image, so it writes no inode tables or
journal. Later calls take 3-5 ms (they mostly read /proc/self/mountinfo); growing to 2 GiB
offline took about 60 ms.

Growing happens online where the daemon has CAP_SYS_RESOURCE (resize2fs on the mounted
fs); without it (as on the development VM) offline, once nothing uses the volume.

Mounts live in the host's mount table, not in the daemon: they outlive a daemon that was
killed, which is why `ensure()` checks before mounting and `release_all()` exists.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
import time
from functools import cache
from pathlib import Path

log = logging.getLogger("tee_daemon.run.volume")

MiB = 2**20
IMAGE = "volume.img"
MOUNT = "volume"
TOOLS = ("losetup", "mount", "umount", "mkfs.ext4", "e2fsck", "resize2fs")
# Generous: these tools take milliseconds, but a loaded machine should not fail a deploy.
TOOL_TIMEOUT = 120.0


class VolumeError(Exception):
    """A volume could not be created, mounted, grown or released; says which command failed."""


def _run(*argv: str | Path) -> str:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise VolumeError(f"{' '.join(map(str, argv))} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


# Operations on one project are serialized (a start and a delete may race); different
# projects do not wait for each other.
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(project_dir: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(Path(os.path.realpath(project_dir)), threading.Lock())


# ------------------------------------------------------------------------ what is there


def _mount_points() -> list[tuple[str, str, str]]:
    """(mount point, fs type, source) of every mount, from /proc/self/mountinfo."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 2:
            found.append((_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return found


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounted(mount: Path) -> bool:
    where = os.path.realpath(mount)
    return any(point == where for point, _, _ in _mount_points())


def _loop_devices(image: Path) -> list[str]:
    """Loop devices backed by the image (losetup matches by inode, not by name)."""
    out = json.loads(_run("losetup", "--json", "--output", "NAME", "--associated", image) or "{}")
    return [d["name"] for d in out.get("loopdevices", [])]


def _fs_bytes(device_or_image: str | Path) -> int:
    """The size of the ext4 file system, from its superblock (1024 bytes in).

    Read through the block device while mounted: that goes through the same page cache
    as the file system's own metadata writes, so it sees an online resize at once.
    """
    with open(device_or_image, "rb") as f:
        f.seek(1024)
        sb = f.read(1024)
    blocks_lo, log_block = struct.unpack_from("<I", sb, 4)[0], struct.unpack_from("<I", sb, 24)[0]
    magic, incompat = struct.unpack_from("<H", sb, 56)[0], struct.unpack_from("<I", sb, 96)[0]
    if magic != 0xEF53:
        raise VolumeError(f"{device_or_image} holds no ext4 file system")
    blocks_hi = struct.unpack_from("<I", sb, 0x150)[0] if incompat & 0x80 else 0  # 64bit feature
    return ((blocks_hi << 32) | blocks_lo) * (1024 << log_block)


# ------------------------------------------------------------------------------ steps


def _create(image: Path, size: int) -> None:
    # Built under a temporary name and renamed: a crash mid-mkfs must not leave a
    # half-made image that the next ensure() would take for a volume.
    part = image.with_name(image.name + ".part")
    part.unlink(missing_ok=True)
    with open(part, "xb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.truncate(size)  # sparse
    _run(
        "mkfs.ext4", "-q", "-F",
        "-m", "0",  # no blocks reserved for root: the project gets the whole size
        "-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
        part,
    )  # fmt: skip
    os.replace(part, image)


def _mount(image: Path, mount: Path) -> None:
    # Always ext4 (never let mount guess a type) and never two loop devices over one
    # image: if a device is still attached (the fs lives on in a sandbox's mount
    # namespace after our mount went away), mount that device, so both are one ext4.
    devices = _loop_devices(image)
    options = "nosuid,nodev"
    if devices:
        try:
            _run("mount", "-t", "ext4", "-o", options, devices[0], mount)
            return
        except VolumeError:
            # A device on its way out (autoclear after a lazy unmount, as when a killed
            # daemon's volumes are released and it starts again at once): wait it out.
            if not _wait_detached(image, timeout=10.0):
                raise
    # mount sets up the loop device with autoclear: unmounting frees it.
    _run("mount", "-t", "ext4", "-o", "loop," + options, image, mount)


def _grow(image: Path, mount: Path, size: int) -> None:
    if os.path.getsize(image) < size:
        os.truncate(image, size)
    devices = _loop_devices(image)
    if devices:
        _run("losetup", "--set-capacity", devices[0])  # the device sees the longer file
        try:
            _run("resize2fs", devices[0])  # online: the project can keep running
            return
        except VolumeError as e:
            # Online resize needs CAP_SYS_RESOURCE, which some hosts withhold. Offline
            # resize needs the image unused: only if unmounting ours leaves no loop device
            # (nothing else holds the fs) may we touch the image file directly.
            log.info("online resize of %s failed, trying offline: %s", image, e)
        if _mounted(mount):
            _umount(mount)
        if not _wait_detached(image):
            log.warning("volume %s is in use; it keeps its size until it is not", image)
            return
    _run("e2fsck", "-f", "-p", image)  # resize2fs insists on a freshly checked fs
    _run("resize2fs", image)


def _umount(mount: Path) -> None:
    try:
        _run("umount", mount)
    except VolumeError:
        # Busy (a process still has a file open there): detach it from the tree now; the
        # kernel frees the fs, and with autoclear the loop device, when the last user goes.
        _run("umount", "--lazy", mount)


def _wait_detached(image: Path, timeout: float = 2.0) -> bool:
    # Autoclear happens when the fs lets go of the device, which may lag the umount a bit.
    deadline = time.monotonic() + timeout
    while _loop_devices(image):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _own_dir(path: Path, uid: int, gid: int) -> None:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    # Refuse anything but a real directory before changing owner and mode (the volume's
    # root is not writable by the project, but check rather than assume).
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise VolumeError(f"{path} is not a directory")
    os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, 0o700)


# ---------------------------------------------------------------------------- the API


def ensure(project_dir: Path, *, size_mb: int, uid: int, gid: int) -> Path:
    """Make the project's volume exist, at least `size_mb` big, mounted; return its mount.

    Idempotent, and safe after a daemon crash (an existing mount is reused). A larger
    `size_mb` than the image has grows it; a smaller one is ignored: shrinking could
    destroy data the project wrote, so an operator lowering the limit affects new
    projects only. Returns `project_dir/volume`, holding `data/` and `tmp/` owned by
    uid:gid with mode 0700.
    """
    image, mount = project_dir / IMAGE, project_dir / MOUNT
    size = size_mb * MiB
    with _lock(project_dir):
        if not image.exists():
            _create(image, size)
        mount.mkdir(mode=0o755, exist_ok=True)
        devices = _loop_devices(image)
        if _fs_bytes(devices[0] if devices else image) < size:
            _grow(image, mount, size)
        if not _mounted(mount):
            _mount(image, mount)
        for sub in ("data", "tmp"):
            _own_dir(mount / sub, uid, gid)
    return mount


def release(project_dir: Path) -> None:
    """Unmount the project's volume and free its loop device (before deleting the folder).

    A busy mount is detached lazily, so the folder can go at once; the image's space is
    freed when the last process using it exits.
    """
    image, mount = project_dir / IMAGE, project_dir / MOUNT
    with _lock(project_dir):
        while _mounted(mount):  # a loop: someone may have mounted it twice
            _umount(mount)
        if image.exists():
            # Normally autoclear already freed it; this covers a device set up without it
            # (or left by a crash between losetup and mount). Detaching a device whose fs is
            # still in use only marks it autoclear, so this is always safe.
            for device in _loop_devices(image):
                _run("losetup", "--detach", device)


def release_all(root: Path) -> None:
    """Unmount every volume below `root` and free its loop devices (after a daemon was killed)."""
    top = os.path.realpath(root) + "/"
    points = [p for p, kind, source in _mount_points() if p.startswith(top) and kind == "ext4" and source.startswith("/dev/loop")]
    for point in sorted(points, key=len, reverse=True):  # deepest first
        if _mounted(Path(point)):
            _umount(Path(point))
    out = json.loads(_run("losetup", "--json", "--list", "--output", "NAME,BACK-FILE") or "{}")
    for device in out.get("loopdevices", []):
        back = (device.get("back-file") or "").removesuffix(" (deleted)")
        if back.startswith(top) and back.endswith("/" + IMAGE):
            _run("losetup", "--detach", device["name"])


@cache
def probe() -> None | str:
    """None when size-limited volumes work on this machine, else why not (cached)."""
    if os.geteuid() != 0:
        return f"volumes need root (the daemon runs as uid {os.geteuid()})"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"volumes need {', '.join(missing)}"
    if not os.path.exists("/dev/loop-control"):
        return "volumes need loop devices (/dev/loop-control is missing)"
    trial = Path(tempfile.mkdtemp(prefix="tee-daemon-volume-probe-"))
    try:
        mount = ensure(trial, size_mb=16, uid=0, gid=0)
        (mount / "data" / "probe").write_bytes(b"ok")
        return None
    except (OSError, VolumeError, subprocess.SubprocessError) as e:
        return f"a trial loop-mounted ext4 volume failed: {e}"
    finally:
        try:
            release(trial)
        except (OSError, VolumeError, subprocess.SubprocessError):
            log.warning("could not release the trial volume in %s", trial)
        else:
            shutil.rmtree(trial, ignore_errors=True)
