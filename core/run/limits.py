"""Per-project resource limits with cgroups (SPEC section 9: memory, cpu, pids).

The daemon owns one group per hierarchy, created under the daemon's own current cgroup:

    <daemon's cgroup>/tee-daemon-<key>/<project>/<unit>

and every process of a project (a running version such as "v3-1234", or a "build" step)
runs in a unit that carries the limits. Limits sit on the unit, so one project at its
limits only throttles or kills itself.

cgroup v2 (one unified hierarchy that offers memory, cpu and pids) is preferred; else the
v1 hierarchies of memory, cpu and pids are used. `probe()` says which, or why neither.

A child joins a unit between fork and exec by writing "0" (meaning "the writing process")
to the unit's `cgroup.procs` in every hierarchy, through descriptors the daemon opened
for it (`Unit.procs_fds()`, `join()`): it is in the unit before the program starts, so
nothing it runs escapes the limits.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import msgspec

MiB = 2**20
CFS_PERIOD_US = 100_000
CONTROLLERS = ("memory", "cpu", "pids")
# v2 only: the leaf the daemon's cgroup's processes move to (see `_delegate_v2`). The
# daemon's own groups are all named "tee-daemon-<key>", so the names cannot clash.
LEAF = "leaf"
# How long remove() may take to kill a unit's processes and remove its directories.
REMOVE_TIMEOUT = 10.0
# Daemon keys, projects and units become directory names in cgroupfs: no "/", no "..",
# and no "." so that a name can never collide with an interface file like "memory.max".
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class Limits(msgspec.Struct, frozen=True):
    memory_mb: int = 512
    cpus: float = 1.0
    pids: int = 256
    disk_mb: int = 1024  # applied by tee_daemon.run.volume, carried here to keep one record


@dataclass(frozen=True)
class CgroupSupport:
    """What this machine offers: the daemon's own cgroup directory per controller.

    On v2 every controller maps to the same directory (one hierarchy); on v1 each maps to
    the daemon's group in the hierarchy that holds that controller.
    """

    version: Literal["v2", "v1"]
    dirs: dict[str, Path]

    @property
    def hierarchies(self) -> list[Path]:
        return sorted(set(self.dirs.values()))


# ---------------------------------------------------------------------------- probing


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fs type, super options) of every cgroup mount."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        found.append((_unescape(fields[3]), _unescape(fields[4]), tail[0], set(tail[2].split(","))))
    return found


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _own_paths() -> dict[str, str]:
    """Our cgroup path per hierarchy from /proc/self/cgroup: "" keys v2, else controllers."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name.removeprefix("name=")] = path
    return paths


def _join(mount_point: str, mount_root: str, path: str) -> Path:
    # Without a cgroup namespace a container may see a bind mount of its own subtree
    # (mount root "/docker/<id>") while /proc/self/cgroup shows the full path.
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        path = path[len(mount_root) :]
    return Path(mount_point) / path.lstrip("/")


def _writable(path: Path) -> bool:
    # access() also reports a read-only mount (EROFS), the usual case in containers.
    return path.is_dir() and os.access(path, os.W_OK) and os.access(path / "cgroup.procs", os.W_OK)


def _v2_support(required: Iterable[str] = CONTROLLERS) -> CgroupSupport | str:
    own = _own_paths().get("")
    mounts = [m for m in _mounts() if m[2] == "cgroup2"]
    if own is None or not mounts:
        return "no cgroup v2 hierarchy"
    root, point, _, _ = mounts[0]
    here = _join(point, root, own)
    offered = set((here / "cgroup.controllers").read_text().split()) if here.is_dir() else set()
    missing = [c for c in required if c not in offered]
    if missing:
        return f"cgroup v2 at {point} lacks {', '.join(missing)} (offers {' '.join(sorted(offered)) or 'none'})"
    if not _writable(here):
        return f"cgroup v2 group {here} is not writable"
    return CgroupSupport("v2", {c: here for c in required})


def _v1_support() -> CgroupSupport | str:
    own = _own_paths()
    mounts = [m for m in _mounts() if m[2] == "cgroup"]
    dirs = {}
    for name in CONTROLLERS:
        mount = next((m for m in mounts if name in m[3]), None)
        if mount is None or name not in own:
            return f"no cgroup v1 {name} hierarchy"
        here = _join(mount[1], mount[0], own[name])
        if not _writable(here):
            return f"cgroup v1 group {here} is not writable"
        dirs[name] = here
    return CgroupSupport("v1", dirs)


@cache
def probe() -> CgroupSupport | str:
    """The cgroups this daemon can use for limits, or a sentence saying why there are none.

    Side-effect free: delegating controllers (v2) happens when `Cgroups` is created.
    """
    if os.geteuid() != 0:
        return "limits need root (the daemon runs as uid %d)" % os.geteuid()
    v2 = _v2_support()
    if isinstance(v2, CgroupSupport):
        return v2
    v1 = _v1_support()
    if isinstance(v1, CgroupSupport):
        return v1
    return f"{v2}; {v1}"


# ------------------------------------------------------------------ file-level helpers


def _write(path: Path, value: str) -> None:
    # cgroupfs reports a rejected value as an error from write(); one write per value.
    with open(path, "w") as f:
        f.write(value)


def _read_keyed(path: Path, key: str) -> int:
    """The number after `key` in a "key value" per line file, 0 if unreadable."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _pids(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _kill_listed(group: Path) -> None:
    """SIGKILL every process listed in the group, without hitting a recycled pid.

    Between reading a pid and signalling it, the process could exit and its pid be
    reused by someone else. A pidfd pins the process: we open one per pid, then keep only
    those still listed in the group, so the pidfd is known to name a member.
    """
    pidfds = {}
    for pid in _pids(group):
        try:
            pidfds[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            pass
        except OSError as e:  # kernels before 5.3 have no pidfds: plain kill, small race
            if e.errno != errno.ENOSYS:
                raise
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        still = set(_pids(group))
        for pid, fd in pidfds.items():
            if pid in still:
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    finally:
        for fd in pidfds.values():
            os.close(fd)


def _destroy(group: Path, deadline: float) -> None:
    """Kill everything in `group` and its descendants, then remove the directories."""
    if not group.is_dir():
        return
    for child in [p for p in group.iterdir() if p.is_dir()]:
        _destroy(child, deadline)
    kill_file = group / "cgroup.kill"  # v2, kernel 5.14+: kills atomically, forks included
    while True:
        if kill_file.exists():
            try:
                _write(kill_file, "1")
            except FileNotFoundError:
                return  # removed meanwhile
        else:
            _kill_listed(group)
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            # EBUSY while a killed process is still on its way out.
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise OSError(e.errno, f"cannot remove cgroup {group}: {e.strerror}") from e
        time.sleep(0.02)


def _check_name(what: str, name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid cgroup {what} {name!r}: use letters, digits, '_' and '-'")
    return name


# ----------------------------------------------------------------------------- groups


class Unit:
    """One unit's group in every hierarchy: <root>/<project>/<unit>."""

    def __init__(self, version: str, dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs  # controller -> this unit's directory in that hierarchy

    @property
    def hierarchies(self) -> list[Path]:
        return sorted(set(self.dirs.values()))

    def procs_fds(self) -> list[int]:
        """Fresh O_WRONLY|O_CLOEXEC descriptors to `cgroup.procs` of this unit, one per hierarchy.

        Give them to the child (see `join`); the caller closes them after the fork.
        Opening here, in the daemon, means the child needs no access to cgroupfs at all,
        and CLOEXEC keeps them out of the program the child then executes.
        """
        fds: list[int] = []
        try:
            for group in self.hierarchies:
                fds.append(os.open(group / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def pids(self) -> list[int]:
        """Every process in the unit (in any hierarchy)."""
        return sorted({pid for group in self.hierarchies for pid in _pids(group)})

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in this unit, 0 if unknown."""
        group = self.dirs.get("memory")
        if group is None:
            return 0
        if self.version == "v2":
            return _read_keyed(group / "memory.events", "oom_kill")
        return _read_keyed(group / "memory.oom_control", "oom_kill")

    def remove(self) -> None:
        """Kill every process left in the unit and remove its directories.

        Raises OSError if the processes did not go away within REMOVE_TIMEOUT seconds.
        """
        deadline = time.monotonic() + REMOVE_TIMEOUT
        for group in self.hierarchies:
            _destroy(group, deadline)


def join(fds: Iterable[int]) -> None:
    """Move the calling process into the unit whose `procs_fds()` these are.

    Meant for the child between fork and exec, e.g.
    `subprocess.Popen(..., preexec_fn=functools.partial(join, fds))`. "0" stands for the
    writing process itself (v1 and v2 alike), so no pid needs to be known in advance.
    """
    for fd in fds:
        os.write(fd, b"0")


class Cgroups:
    """The daemon's groups: one root per hierarchy, a subtree per project, a unit per run.

    Raises OSError if the groups cannot be created and ValueError if `probe()` found no
    usable cgroups (pass `support` to choose the hierarchy explicitly, as tests do).
    """

    def __init__(self, daemon_key: str, limits: Limits, support: CgroupSupport | None = None) -> None:
        found = support if support is not None else probe()
        if isinstance(found, str):
            raise ValueError(f"no cgroup limits on this machine: {found}")
        self.limits = limits
        self.version = found.version
        name = "tee-daemon-" + _check_name("daemon key", daemon_key)
        if self.version == "v2":
            base = _delegate_v2(found.hierarchies[0], list(found.dirs))
            self.dirs = {c: base / name for c in found.dirs}
        else:
            self.dirs = {c: d / name for c, d in found.dirs.items()}
        # An earlier daemon with the same key that was killed leaves its groups (and any
        # project processes still in them) behind: they are ours, so end them.
        deadline = time.monotonic() + REMOVE_TIMEOUT
        for root in self.hierarchies:
            _destroy(root, deadline)
            root.mkdir()
            self._delegate(root)

    @property
    def hierarchies(self) -> list[Path]:
        return sorted(set(self.dirs.values()))

    def _delegate(self, group: Path) -> None:
        # v2: a group's children get a controller only if the group enables it for them.
        if self.version == "v2":
            _write(group / "cgroup.subtree_control", " ".join("+" + c for c in self.dirs))

    def unit(self, project: str, unit: str) -> Unit:
        """Create (or reuse) <root>/<project>/<unit> with the limits applied to it."""
        _check_name("project", project)
        _check_name("unit", unit)
        dirs = {}
        for controller, root in self.dirs.items():
            top = root / project
            if not top.is_dir():
                top.mkdir(exist_ok=True)
                self._delegate(top)
            (top / unit).mkdir(exist_ok=True)
            dirs[controller] = top / unit
        for group in sorted(set(dirs.values())):
            self._apply(group, set(c for c, d in dirs.items() if d == group))
        return Unit(self.version, dirs)

    def _apply(self, group: Path, controllers: set[str]) -> None:
        limits = self.limits
        memory = limits.memory_mb * MiB
        quota = max(1000, round(limits.cpus * CFS_PERIOD_US))  # the kernel's least is 1 ms
        if self.version == "v2":
            if "memory" in controllers:
                _write(group / "memory.max", str(memory))
                # The limit must cover swap too, or a project could spill into swap.
                if (group / "memory.swap.max").exists():
                    _write(group / "memory.swap.max", "0")
                # Over memory the project is killed and restarted (SPEC 9): kill the whole
                # unit at once rather than leave it running with one worker missing.
                if (group / "memory.oom.group").exists():
                    _write(group / "memory.oom.group", "1")
            if "cpu" in controllers:
                _write(group / "cpu.max", f"{quota} {CFS_PERIOD_US}")
            if "pids" in controllers:
                _write(group / "pids.max", str(limits.pids))
            return
        if "memory" in controllers:
            # memsw (memory+swap) must never be below the memory limit: set the one that
            # keeps that true first (lowering: memory first; raising: memsw first).
            memsw = group / "memory.memsw.limit_in_bytes"
            try:
                _write(group / "memory.limit_in_bytes", str(memory))
            except OSError as e:
                if e.errno != errno.EINVAL or not memsw.exists():
                    raise
                _write(memsw, str(memory))
                _write(group / "memory.limit_in_bytes", str(memory))
            if memsw.exists():  # absent when the kernel does not account swap
                _write(memsw, str(memory))
        if "cpu" in controllers:
            _write(group / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(group / "cpu.cfs_quota_us", str(quota))
        if "pids" in controllers:
            _write(group / "pids.max", str(limits.pids))

    def forget(self, project: str) -> None:
        """Kill everything of a project and remove its whole subtree."""
        _check_name("project", project)
        deadline = time.monotonic() + REMOVE_TIMEOUT
        for root in self.hierarchies:
            _destroy(root / project, deadline)

    def close(self) -> None:
        """Kill every project process and remove the daemon's groups (orderly shutdown)."""
        deadline = time.monotonic() + REMOVE_TIMEOUT
        for root in self.hierarchies:
            _destroy(root, deadline)

    def facts(self) -> dict:
        """For /_api/substrate: which cgroups enforce which limits, and where."""
        # Whether the memory limit covers swap too (not when the kernel does not account it).
        memory = self.dirs.get("memory")
        swap_file = "memory.swap.max" if self.version == "v2" else "memory.memsw.limit_in_bytes"
        swap = memory is not None and (memory / swap_file).exists()
        return {
            "version": self.version,
            "limits": msgspec.structs.asdict(self.limits),
            "swap_limited": swap,
            "where": {c: str(d) for c, d in sorted(self.dirs.items())},
        }


def _delegate_v2(own: Path, controllers: list[str]) -> Path:
    """Make `own` (the daemon's v2 group) hand `controllers` to its children; return the base.

    v2's "no internal processes" rule: a group other than the root may not both hold
    processes and enable controllers for its children, and the daemon itself sits in
    `own`. Of the two ways out, creating our root beside `own` would write into the parent,
    which is not ours (systemd delegates only the service's own group; a container owns
    only its namespace root). So, as systemd's delegation guide and docker-in-docker do,
    the processes in `own` move into a leaf `own/leaf`, after which `own` may delegate.
    That moves every process of our group (helpers started with the daemon too); they
    keep their limits, since `own/leaf` inherits everything `own` had.

    A daemon started from inside such a leaf (a restart from the same shell, tests) uses
    the leaf's parent as its base, so a restart finds what the earlier daemon left.
    """
    wanted = set(controllers)

    def enabled(group: Path) -> bool:
        return wanted <= set((group / "cgroup.subtree_control").read_text().split())

    if own.name == LEAF and enabled(own.parent):
        return own.parent
    if enabled(own):
        return own
    change = " ".join("+" + c for c in controllers)
    try:
        _write(own / "cgroup.subtree_control", change)
        return own
    except OSError as e:
        if e.errno != errno.EBUSY:  # EBUSY: processes inside, as expected
            raise
    leaf = own / LEAF
    leaf.mkdir(exist_ok=True)
    deadline = time.monotonic() + REMOVE_TIMEOUT
    while pids := _pids(own):  # repeat: a process may fork while we move the others
        for pid in pids:
            try:
                _write(leaf / "cgroup.procs", str(pid))
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise OSError(errno.EBUSY, f"cannot empty cgroup {own} into {leaf}")
    _write(own / "cgroup.subtree_control", change)
    return own
