"""The tenant sandbox: how every project process and every build step is started.

A project's program runs inside bubblewrap with

* **its own identity**: bwrap is started by the daemon (root) with a new user namespace
  that maps the project's uid and gid to themselves (written by the daemon while bwrap
  waits on ``--userns-block-fd``; root is mapped too, for bwrap's own setup only, see
  `_map_identity`); setpriv then makes the program that unprivileged host uid, never 0,
  with no capabilities, an empty bounding set, ``no_new_privs`` (bwrap sets it), and a
  seccomp filter that refuses new user namespaces (the one way back to capabilities);
  bwrap makes ``/proc/sys`` read-only, and the program cannot remount anything;
* **a sealed environment**: bwrap itself runs with a fixed, clean environment; the
  project's variables travel on a memfd read by ``--args`` as ``--setenv`` pairs, so
  they reach the program inside and nothing outside (``LD_PRELOAD`` in a project's env
  loads into the project, not into bwrap), and never show in a command line;
* **only what the daemon chose**: system folders, the toolchains and the paths the
  caller lists, each checked to contain no link below the daemon's data dir, so nothing
  a project wrote can redirect a bind;
* **limits**: the process joins its cgroup unit between fork and exec (memory, cpu,
  pids), and its /tmp is a folder on its size-limited volume (or a tmpfs for builds);
* **a network namespace of its own** unless the caller shares the host's, optionally
  given outbound access (`egress`) before the program starts.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import platform
import select
import shutil
import signal
import stat
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tee_daemon.kernel.errors import DeployFailed
from tee_daemon.run.identity import Identity

log = logging.getLogger("tee_daemon.run.sandbox")

MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"
SETPRIV = "/usr/bin/setpriv"  # util-linux: drops to the project's identity inside
HANDSHAKE_TIMEOUT = 10.0

_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_ETC = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/crypto-policies",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/mime.types",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
)


class CgroupUnit(Protocol):
    def procs_fds(self) -> list[int]: ...

    def oom_kills(self) -> int: ...

    def remove(self) -> None: ...


class CgroupProvider(Protocol):
    def unit(self, project: str, unit: str) -> CgroupUnit: ...


class EgressAttachment(Protocol):
    resolv_conf: str

    def close(self) -> None: ...


class EgressProvider(Protocol):
    def attach(self, pid: int) -> EgressAttachment: ...


# -- daemon-wide configuration (set once by the daemon at start) ------------------------

_data_root: Path | None = None  # No bind source may pass through a link below this.
_egress: EgressProvider | None = None
_cgroups: CgroupProvider | None = None


def configure(*, data_root: Path, egress: EgressProvider | None, cgroups: CgroupProvider | None) -> None:
    global _data_root, _egress, _cgroups
    _data_root = Path(os.path.realpath(data_root))
    _egress = egress
    _cgroups = cgroups


def has_egress() -> bool:
    """Whether sandboxes can be given outbound access (a namespace of their own then)."""
    return _egress is not None


# -- what to run ----------------------------------------------------------------------


@dataclass
class Plan:
    """One sandboxed program: what it runs, sees and may write."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    identity: Identity | None
    read_only: list[Path] = field(default_factory=list)
    read_write: list[Path] = field(default_factory=list)
    tmp: Path | None = None  # A host folder to serve as /tmp; None: a private tmpfs.
    network: str = "own"  # "own": a namespace of its own; "host": the host's network.
    egress: bool = False  # With an own namespace: outbound access to the outside.
    project: str = ""  # The cgroup unit `project/unit` holds its limits (when configured).
    unit: str = "run"


@dataclass
class Spawned:
    proc: subprocess.Popen
    egress: EgressAttachment | None = None
    cgroup: CgroupUnit | None = None
    oom_seen: int = 0  # The unit's OOM-kill count already reported.

    def cgroup_oom_kills(self) -> int:
        return self.cgroup.oom_kills() if self.cgroup is not None else 0

    def release(self) -> None:
        """Free what the process held outside its sandbox, once it has exited."""
        if self.egress is not None:
            self.egress.close()
            self.egress = None
        if self.cgroup is not None:
            try:
                self.cgroup.remove()  # Kills stragglers: nothing of this process survives.
            except OSError as exc:
                log.warning("could not remove a cgroup unit: %s", exc)
            self.cgroup = None


# -- probing ----------------------------------------------------------------------------


@functools.cache
def bwrap() -> str | None:
    """The bubblewrap binary when it can sandbox a project with its own identity here."""
    if os.environ.get("TEE_DAEMON_NO_SANDBOX") == "1":
        return None
    path = shutil.which("bwrap") or ("/usr/bin/bwrap" if os.path.exists("/usr/bin/bwrap") else None)
    if path is None or unavailable_reason(path) is not None:
        return None
    return path


@functools.cache
def unavailable_reason(path: str | None = None) -> str | None:
    """Why projects cannot get their own identity in a sandbox here, or None."""
    path = path or shutil.which("bwrap")
    if path is None:
        return "bubblewrap (bwrap) is not installed"
    if not os.access(SETPRIV, os.X_OK):
        return f"{SETPRIV} (util-linux) is missing"
    if os.geteuid() != 0:
        return "the daemon is not root, so it cannot give each project a uid of its own"
    try:
        probe = Plan(argv=["/bin/true"], env={}, cwd=Path("/"), identity=Identity(65534, 65534))
        spawned = _spawn(path, probe, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = spawned.proc.communicate(timeout=HANDSHAKE_TIMEOUT)
    except (OSError, subprocess.SubprocessError, DeployFailed) as exc:
        return f"bubblewrap cannot start a sandbox here: {exc}"
    if spawned.proc.returncode != 0:
        return f"bubblewrap cannot start a sandbox here: {err.decode(errors='replace').strip()}"
    return None


@functools.cache
def version() -> str | None:
    path = bwrap()
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().split()[-1] if out.strip() else None


# -- seccomp: no new user namespaces ---------------------------------------------------

_CLONE_NEWUSER = 0x10000000
_ARCHES = {  # audit arch, unshare, clone, clone3, whether x32 numbers exist
    "x86_64": (0xC000003E, 272, 56, 435, True),
    "aarch64": (0xC00000B7, 97, 220, 435, False),
}


@functools.cache
def seccomp_program() -> bytes | None:
    """A classic-BPF seccomp filter: unshare/clone with CLONE_NEWUSER fail with EPERM,
    clone3 (whose flags a filter cannot read) with ENOSYS so libc falls back to clone;
    everything else is allowed. None on an architecture we have no numbers for."""
    arch = _ARCHES.get(platform.machine())
    if arch is None:
        return None
    audit_arch, nr_unshare, nr_clone, nr_clone3, has_x32 = arch
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    # (code, k, jump-if-true label, jump-if-false label); labels resolve to offsets.
    program: list[tuple[int, int, str | None, str | None] | str] = [
        (ld, 4, None, None),  # seccomp_data.arch
        (jeq, audit_arch, "native", "deny"),
        "native",
        (ld, 0, None, None),  # seccomp_data.nr
        *([(jge, 0x40000000, "deny", None)] if has_x32 else []),  # x32 aliases
        (jeq, nr_clone3, "enosys", None),
        (jeq, nr_unshare, "flags", None),
        (jeq, nr_clone, "flags", "allow"),
        "flags",
        (ld, 16, None, None),  # low half of args[0]: the flags of unshare and clone
        (jset, _CLONE_NEWUSER, "deny", "allow"),
        "allow",
        (ret, allow, None, None),
        "deny",
        (ret, eperm, None, None),
        "enosys",
        (ret, enosys, None, None),
    ]
    labels: dict[str, int] = {}
    index = 0
    for item in program:
        if isinstance(item, str):
            labels[item] = index
        else:
            index += 1
    out = bytearray()
    index = 0
    for item in program:
        if isinstance(item, str):
            continue
        code, k, yes, no = item
        jt = labels[yes] - index - 1 if yes else 0
        jf = labels[no] - index - 1 if no else 0
        out += struct.pack("=HBBI", code, jt, jf, k)
        index += 1
    return bytes(out)


# -- building the bwrap command --------------------------------------------------------


@functools.cache
def _system_binds() -> tuple[str, ...]:
    """The host's system folders, read-only (looked up once: they do not change)."""
    args: list[str] = []
    for folder in _SYSTEM_DIRS:
        if os.path.islink(folder):
            args += ["--symlink", os.readlink(folder), folder]
        elif os.path.isdir(folder):
            args += ["--ro-bind", folder, folder]
    # bwrap makes the folder holding a file bind 0700: /etc must stay traversable.
    args += ["--perms", "0755", "--dir", "/etc"]
    for item in _SYSTEM_ETC:
        if os.path.exists(item):
            args += ["--ro-bind", item, item]
    return tuple(args)


def _checked(path: Path) -> str | None:
    """The real path to bind for `path`, None when it does not exist; DeployFailed when
    the path passes through a link below the data dir (a project could have made it)."""
    absolute = os.path.abspath(path)
    real = os.path.realpath(absolute)
    if _data_root is not None and real != absolute:
        root = str(_data_root)
        # Walk the part below the data dir component by component, never following.
        if absolute.startswith(root + os.sep):
            current = root
            for part in Path(absolute[len(root) + 1 :]).parts:
                current = os.path.join(current, part)
                try:
                    if stat.S_ISLNK(os.lstat(current).st_mode):
                        raise DeployFailed(f"refusing to expose {absolute}: {current} is a link")
                except FileNotFoundError:
                    return None
        elif real.startswith(root + os.sep):
            raise DeployFailed(f"refusing to expose {absolute}: it links into the daemon's data dir")
    return real if os.path.exists(real) else None


def _binds(plan: Plan) -> list[str]:
    binds: dict[str, str] = {}
    for flag, paths in (("--ro-bind", plan.read_only), ("--bind", plan.read_write)):
        for path in paths:
            real = _checked(Path(path))
            if real is not None and real not in binds:
                binds[real] = flag
    args: list[str] = []
    # bwrap would copy the modes of host folders such as a 0700 /root onto the folders
    # it creates to hold a bind: make every such parent traversable (0755) first.
    parents = {str(parent) for real in binds for parent in Path(real).parents if str(parent) != "/"}
    for parent in sorted(parents - set(binds), key=lambda p: (p.count("/"), p)):
        if not parent.startswith(_SYSTEM_DIRS):
            args += ["--perms", "0755", "--dir", parent]
    # Parents before children, so a nested bind is not hidden by its parent's.
    for real in sorted(binds, key=lambda p: (p.count("/"), p)):
        args += [binds[real], real, real]
    return args


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)  # Inheritable on purpose: bwrap reads it.
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


_PR_SET_PDEATHSIG = 1
try:  # Resolved here, in the parent: the child between fork and exec only calls it.
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None


def die_with_daemon() -> None:  # pragma: no cover - runs in the child
    """In the child before exec: get SIGKILL when the daemon dies (no orphans)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _enter_cgroup_and_die_with_parent(fds: list[int]) -> None:  # pragma: no cover - child
    """Between fork and exec: join the cgroup unit, and get SIGKILL if the daemon dies."""
    for fd in fds:
        os.write(fd, b"0")
    die_with_daemon()


def _spawn(tool: str, plan: Plan, *, stdout: Any, stderr: Any) -> Spawned:
    """Start `plan` under bwrap and complete the identity handshake."""
    identity = plan.identity
    if identity is None or identity.uid == 0 or identity.gid == 0:
        raise DeployFailed("a sandboxed program needs an identity of its own (not root)")
    env_pairs: list[str] = ["--clearenv"]
    for key, value in plan.env.items():
        if "=" in key or "\0" in key or "\0" in value or not key:
            raise DeployFailed(f"environment variable {key!r} cannot be passed to a process")
        env_pairs += ["--setenv", key, value]
    child_fds: list[int] = []  # Handed to bwrap, closed here once it runs.
    own_fds: list[int] = []  # Kept here for the handshake.
    unit = None
    try:
        info_r, info_w = os.pipe()
        own_fds.append(info_r)
        child_fds.append(info_w)
        block_r, block_w = os.pipe()
        own_fds.append(block_w)
        child_fds.append(block_r)
        args_fd = _memfd("tee-env", b"".join(a.encode() + b"\0" for a in env_pairs))
        child_fds.append(args_fd)
        argv = [
            tool, "--args", str(args_fd),
            "--unshare-user", "--userns-block-fd", str(block_r), "--info-fd", str(info_w),
            "--uid", "0", "--gid", "0",
            "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try",
            *(["--unshare-net"] if plan.network == "own" else []),
            "--die-with-parent", "--new-session", "--hostname", "project",
            *_system_binds(), "--proc", "/proc", "--dev", "/dev",
        ]  # fmt: skip
        argv += ["--bind", str(plan.tmp), "/tmp"] if plan.tmp is not None else ["--perms", "1777", "--tmpfs", "/tmp"]
        argv += _binds(plan)
        program = seccomp_program()
        if program is not None:
            seccomp_fd = _memfd("tee-seccomp", program)
            child_fds.append(seccomp_fd)
            argv += ["--seccomp", str(seccomp_fd)]
        resolv_fd = None
        if plan.network == "own" and plan.egress:
            if _egress is None:
                raise DeployFailed("outbound access was asked for but this daemon has no egress")
            # Filled once the attachment exists; bwrap reads it when it sets up the
            # mounts, after the handshake.
            resolv_fd = os.memfd_create("tee-resolv", 0)
            own_fds.append(resolv_fd)  # Also handed to bwrap (below).
            argv += ["--perms", "0644", "--ro-bind-data", str(resolv_fd), "/etc/resolv.conf"]
        # bwrap sets up the mounts as root inside the namespace (see `_map_identity`);
        # setpriv then becomes the project's uid and gid for good (every capability,
        # the bounding set and the inheritable set cleared) and execs the program.
        argv += ["--chdir", str(plan.cwd), "--", SETPRIV, f"--reuid={identity.uid}", f"--regid={identity.gid}",
                 "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--", *plan.argv]  # fmt: skip
        unit = _cgroups.unit(plan.project, plan.unit) if _cgroups is not None and plan.project else None
        own_fds += (cgroup_fds := unit.procs_fds() if unit is not None else [])
        try:
            proc = subprocess.Popen(
                argv,
                env={"PATH": MINIMAL_PATH},  # bwrap's own environment: fixed and clean.
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                pass_fds=child_fds + ([resolv_fd] if resolv_fd is not None else []),
                start_new_session=True,
                preexec_fn=functools.partial(_enter_cgroup_and_die_with_parent, cgroup_fds),
            )
        except OSError as exc:
            raise DeployFailed(f"could not start the sandbox: {exc}") from None
    except BaseException:
        _close(own_fds + child_fds)
        if unit is not None:
            unit.remove()
        raise
    _close(child_fds)
    attachment: EgressAttachment | None = None
    try:
        child = _read_child_pid(info_r, proc)
        _map_identity(child, identity)
        if resolv_fd is not None:
            assert _egress is not None
            attachment = _egress.attach(child)
            os.pwrite(resolv_fd, attachment.resolv_conf.encode(), 0)
        os.write(block_w, b"1")
    except BaseException:
        _kill(proc)
        Spawned(proc, attachment, unit).release()
        raise
    finally:
        _close(own_fds)
    return Spawned(proc, attachment, unit, unit.oom_kills() if unit is not None else 0)


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def _read_child_pid(fd: int, proc: subprocess.Popen) -> int:
    """bwrap's --info-fd JSON: the pid (on the host) of the sandbox's first process."""
    data = b""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT
    while True:
        try:
            return int(json.loads(data)["child-pid"])
        except (ValueError, KeyError):
            pass
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise DeployFailed("the sandbox did not start in time")
        chunk = os.read(fd, 4096)
        if not chunk:
            proc.wait(5)
            raise DeployFailed(f"the sandbox failed to start (exit code {proc.returncode})")
        data += chunk


def _map_identity(pid: int, identity: Identity) -> None:
    """Map the project's uid and gid into the sandbox's user namespace.

    Root is mapped too, because bwrap (started as root so that it can reach every
    folder it binds, even below a 0700 home) builds the sandbox's mounts as root
    inside the namespace. The program never gets it back: setpriv switches to the
    project's uid and drops every capability before exec, `no_new_privs` makes
    set-uid files and file capabilities inert, and the seccomp filter refuses the
    nested user namespaces that would hand out new capabilities.
    """
    base = f"/proc/{pid}"
    # setgroups stays allowed: setpriv needs it to drop root's supplementary groups.
    with open(f"{base}/uid_map", "w") as fh:
        fh.write(f"0 0 1\n{identity.uid} {identity.uid} 1\n")
    with open(f"{base}/gid_map", "w") as fh:
        fh.write(f"0 0 1\n{identity.gid} {identity.gid} 1\n")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


# -- the two ways in -------------------------------------------------------------------


def spawn(plan: Plan, *, stdout: Any, stderr: Any) -> Spawned:
    """Start `plan` in the sandbox (a long-running project process)."""
    tool = bwrap()
    if tool is None:
        raise DeployFailed(f"projects cannot be sandboxed here: {unavailable_reason()}")
    return _spawn(tool, plan, stdout=stdout, stderr=stderr)


def run(plan: Plan, *, what: str, log_path: Path, timeout: float) -> None:
    """Run a build step in the sandbox to completion, its output appended to `log_path`;
    DeployFailed with the output's tail when it fails or outlives `timeout`."""
    from tee_daemon.run.logfiles import tail

    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as out:
        spawned = spawn(plan, stdout=out, stderr=out)
    try:
        code = spawned.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill(spawned.proc)
        raise DeployFailed(f"{what} took longer than {timeout:g}s", log=tail(log_path, start)) from None
    finally:
        spawned.release()
    if code != 0:
        output = tail(log_path, start)
        raise DeployFailed(f"{what} failed (exit code {code}):\n{output}", log=output)
