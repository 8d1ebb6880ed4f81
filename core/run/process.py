"""Supervised OS processes for the process runtimes (deno, bun, node, python).

`ProcessInstance` is the `Instance` every process runtime returns. It

* starts the argv in the tenant sandbox (`sandbox.spawn`: the project's own uid, no
  capabilities, its cgroup unit, only the folders it is given, the env handed to the
  program alone; never the daemon's env: the admin token and every ``TEE_DAEMON_*``
  setting stay out), stdin closed, stdout and stderr appended to the project's log;
  the network is ``isolated`` (the default: a namespace of its own, outbound access
  through `egress` unless denied) or, opt-in, ``shared`` (the host's network);
* listens on a loopback port the daemon picked (`free_port`), or when isolated on a
  unix socket in a folder of its run dir bound into the sandbox at the same path
  (env ``LISTEN_UNIX``; a short folder under /tmp when that path would be too long for
  a socket address); `ready` polls a connect and fails with the exit code and the
  last log lines when the process exits or is not listening in time;
* after it served once, restarts it when it dies, with exponential backoff; a crash
  loop shows in `describe()` (``state: crash-loop``) and as a line in the log, and a
  kill for the memory limit says "out of memory" there and in ``oom_kills``;
* `stop` sends SIGTERM to the program, then SIGKILL; the sandbox's init takes every
  other process of the project with it, and its cgroup unit is removed;
* scale to zero (`configure(idle_stop=...)` > 0): `forward_app` wraps the proxy in an
  `IdleGate` that stamps `last_used` and counts requests in flight; one periodic task
  for all instances stops ("parks") a running instance with nothing in flight and no
  request for `idle_stop` seconds (``state: idle``, not a crash: no restart), and the
  next request cold-starts it (`wake`, bounded by the start timeout, one start shared
  by concurrent requests; a failed start answers 503 and the next request retries).

Logs rotate by copy-and-truncate (the child keeps its O_APPEND descriptor), checked by
one background task for all instances: ``LOG_MAX_BYTES`` per file, ``LOG_KEEP`` files.
"""

from __future__ import annotations

import asyncio
import json
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

from tee_daemon.kernel.errors import DeployFailed
from tee_daemon.run import sandbox
from tee_daemon.run.identity import Identity
from tee_daemon.kernel.contract import Instance

LOG_MAX_BYTES = 5 * 2**20
LOG_KEEP = 3  # app.log, app.log.1, app.log.2
LOG_CHECK_INTERVAL = 5.0
STOP_GRACE = 3.0
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0
STABLE_AFTER = 20.0  # A process up this long resets the backoff.
CRASH_LOOP_AFTER = 5  # Consecutive quick crashes before the state says crash-loop.
MINIMAL_PATH = sandbox.MINIMAL_PATH
IDLE_CHECK_MAX = 5.0  # The idle sweep runs at least this often (and 4x per idle_stop).

_idle_stop = 0.0  # Seconds without a request before a process is parked; 0 = never.
_wake_timeout = 30.0  # How long a cold start may take (the daemon's start_timeout).
_network = "isolated"  # "isolated" (own namespace, unix socket) or "shared" (a loopback port).
_egress = True  # Isolated projects may open outbound connections to the outside.
NETWORK_MODES = ("isolated", "shared")
SOCKET_NAME = "app.sock"
SUN_PATH_MAX = 100  # sun_path holds 108 bytes with the NUL; keep a margin.


def configure(*, idle_stop: float, start_timeout: float, network: str = "isolated", egress: bool = True) -> None:
    """Daemon settings for scale to zero and the projects' network (called once at start-up)."""
    global _idle_stop, _wake_timeout, _network, _egress
    if network not in NETWORK_MODES:
        raise ValueError(f"network must be one of {NETWORK_MODES}, not {network!r}")
    _idle_stop = max(float(idle_stop), 0.0)
    _wake_timeout = float(start_timeout)
    _network = network
    _egress = egress


def network_mode() -> str:
    return _network

# -- the sandbox (core/run/sandbox.py builds it; here what process projects are told) ------


def bwrap() -> str | None:
    return sandbox.bwrap()


def bwrap_isolates_network() -> bool:
    """Whether projects can get a network namespace of their own here (the sandbox
    always makes one unless the network is shared)."""
    return sandbox.bwrap() is not None


def python_roots() -> list[Path]:
    """What a sandboxed Python (this interpreter or a venv made from it) needs to read."""
    roots = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    return sorted(roots)


def isolation_facts() -> dict[str, Any]:
    """What `/_api/substrate` shows about how process projects are isolated."""
    if sandbox.bwrap() is None:
        return {
            "kind": "none",
            "enforced": False,
            "detail": f"NOT ISOLATED: {sandbox.unavailable_reason()}; projects run as plain processes "
            "with a clean environment (accepted by the operator with TEE_DAEMON_ALLOW_UNENFORCED_ISOLATION)",
            "network_mode": _network,
        }
    return {
        "kind": "bubblewrap",
        "enforced": True,
        "version": sandbox.version(),
        "identity": "a host uid and gid of its own per project (>= 200000, never 0, kept across restarts); "
        "no capabilities in any namespace, no_new_privs, no nested user namespaces (seccomp), /proc/sys read-only",
        "namespaces": ["user", "mount", "pid", "ipc", "uts", "cgroup", *(["net"] if _network == "isolated" else [])],
        "filesystem": "read-only system folders and toolchains; own tree and build read-only; own data dir and /tmp "
        "read-write; no other project's files, no daemon state; binds never follow links a project could write",
        "network_mode": _network,
        "network": (
            "isolated: each project has a network namespace of its own and is served over a unix socket; it cannot "
            "reach another project, the daemon or the host's loopback"
            + ("; outbound connections to the outside are allowed" if _egress else "; no outbound connections")
        )
        if _network == "isolated"
        else "SHARED (opt-in): projects listen on a 127.0.0.1 port and share the host's network: they can reach "
        "other loopback ports and the internet",
        "environment": "manifest env, secrets, DATA_DIR, PORT or LISTEN_UNIX, HOME, PATH only; bwrap itself gets a "
        "fixed clean environment",
    }


# -- ports and logs -----------------------------------------------------------------------

_handed_out: set[int] = set()


def free_port() -> int:
    """An unused loopback port (not one handed to another live instance)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise DeployFailed("no free loopback port")


_socket_dirs: dict[Path, Path] = {}  # run dir -> the folder of its socket


def socket_dir(run_dir: Path) -> Path | None:
    """The folder a version listens in when the network is isolated (else None).

    ``<run dir>/net`` when a socket path there fits a socket address (108 bytes with
    the NUL), else a private folder made under /tmp. The same answer for one run dir,
    so a plugin may ask for it (Deno's permission flags) before `start_process` does.
    """
    if _network != "isolated":
        return None
    run_dir = Path(run_dir).resolve()
    found = _socket_dirs.get(run_dir)
    if found is not None:
        return found
    folder = run_dir / "net"
    if len(os.fsencode(str(folder / SOCKET_NAME))) <= SUN_PATH_MAX:
        folder.mkdir(mode=0o700, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix=_socket_prefix(run_dir.parent), dir="/tmp")).resolve()  # 0700
    _socket_dirs[run_dir] = folder
    return folder


def _socket_prefix(run_root: Path) -> str:
    # Named after the daemon's run folder, so a restart finds what a killed daemon left.
    return "tee-net-" + hashlib.sha256(os.fsencode(str(run_root.resolve()))).hexdigest()[:10] + "-"


def remove_stale_socket_dirs(run_root: Path) -> None:
    """Remove /tmp socket folders a killed daemon of this data dir left (called at start,
    under the data dir's lock, so no live daemon uses them)."""
    for folder in Path("/tmp").glob(_socket_prefix(run_root) + "*"):
        shutil.rmtree(folder, ignore_errors=True)


def _release_socket_dir(folder: Path) -> None:
    for run_dir, known in list(_socket_dirs.items()):
        if known == folder:
            del _socket_dirs[run_dir]
    shutil.rmtree(folder, ignore_errors=True)


def rotate(path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> bool:
    """Copy-and-truncate `path` into path.1 (shifting older ones) when it is too big."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for index in range(keep - 1, 1, -1):
        older = path.with_name(f"{path.name}.{index - 1}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{index}"))
    if keep > 1:
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as fh:
        fh.truncate(0)
    return True


def log_files(path: Path, keep: int = LOG_KEEP) -> list[Path]:
    """The rotated files of `path`, oldest first, that exist."""
    files = [path.with_name(f"{path.name}.{i}") for i in range(keep - 1, 0, -1)] + [path]
    return [f for f in files if f.exists()]


def tail(path: Path, since: int = 0, lines: int = 30, max_bytes: int = 16384) -> str:
    """The last `lines` lines of `path` written after offset `since`."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(since if since <= size else 0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def log_line(path: Path, message: str) -> None:
    """A line from the daemon itself in a project's log."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        with open(path, "ab") as fh:
            fh.write(f"[tee-daemon {stamp}] {message}\n".encode())
    except OSError:
        pass


_live: "weakref.WeakSet[ProcessInstance]" = weakref.WeakSet()
_rotator: asyncio.Task | None = None


async def _rotate_forever() -> None:
    while True:
        await asyncio.sleep(LOG_CHECK_INTERVAL)
        for path in {inst.log_path for inst in list(_live)}:
            try:
                rotate(path)
            except OSError:
                pass


def _ensure_rotator() -> None:
    global _rotator
    if _rotator is None or _rotator.done():
        _rotator = asyncio.get_running_loop().create_task(_rotate_forever())


# -- the process ---------------------------------------------------------------------------

class ProcessInstance(Instance):
    def __init__(
        self,
        *,
        label: str,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        port: int,
        read_only: list[Path] = (),  # type: ignore[assignment]
        read_write: list[Path] = (),  # type: ignore[assignment]
        facts: dict[str, Any] | None = None,
        socket_path: Path | None = None,
        identity: Identity | None = None,
        project: str | None = None,
        unit: str = "run",
        tmp_dir: Path | None = None,
    ) -> None:
        self.label = label
        self.port = port
        # Isolated network: the process listens on `socket_path` (in a folder bound
        # read-write into its sandbox), never on a port.
        self.socket_path = socket_path
        self.upstream: tuple[str, int] | str = str(socket_path) if socket_path else ("127.0.0.1", port)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.argv = list(argv)
        self.read_only = list(read_only)
        self.read_write = list(read_write)
        self.identity = identity
        self.project = project or label
        self.unit = unit
        self.tmp_dir = tmp_dir
        self.sandboxed = sandbox.bwrap() is not None
        if self.sandboxed and identity is None:
            raise DeployFailed(f"{label}: a sandboxed project needs an identity of its own")
        self._spawned: sandbox.Spawned | None = None
        self.oom_kills = 0
        self.last_exit_reason: str | None = None
        self.facts = dict(facts or {})
        self.proc: subprocess.Popen | None = None
        self.state = "starting"
        self.restarts = 0
        self.quick_crashes = 0
        self.last_exit: int | None = None
        self.started_at = 0.0
        self._log_offset = 0
        self._stopping = False
        self._supervised = False
        self._pidfd: int | None = None
        self._task: asyncio.Task | None = None
        # Scale to zero: stamped by IdleGate, read by the idle sweep.
        self.last_used = time.monotonic()
        self.inflight = 0
        self.parked = False  # Stopped for idleness; the next request wakes it.
        self.cold_starts = 0
        self._parking: asyncio.Task | None = None
        self._waking: asyncio.Task | None = None
        self.spawn()

    # -- spawning -------------------------------------------------------------------

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        rotate(self.log_path)
        if self.socket_path is not None:
            try:  # A socket file left by the previous process: binding needs the name free.
                self.socket_path.unlink()
            except FileNotFoundError:
                pass
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            self._log_offset = os.fstat(fd).st_size
            self._release_spawn()
            if self.sandboxed:
                self._spawned = sandbox.spawn(self._plan(), stdout=fd, stderr=fd)
                self.proc = self._spawned.proc
            else:  # The operator accepted unsandboxed projects: a clean env, nothing more.
                self.proc = subprocess.Popen(
                    self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                    close_fds=True, start_new_session=True, preexec_fn=sandbox.die_with_daemon,
                )  # fmt: skip
        except OSError as exc:
            raise DeployFailed(f"{self.label}: could not start {self.argv[0]}: {exc}") from None
        finally:
            os.close(fd)
        self.started_at = time.monotonic()

    def _plan(self) -> sandbox.Plan:
        return sandbox.Plan(
            argv=self.argv,
            env=self.env,
            cwd=self.cwd,
            identity=self.identity,
            read_only=self.read_only,
            read_write=self.read_write,
            tmp=self.tmp_dir,
            network="own" if self.socket_path is not None else "host",
            egress=self.socket_path is not None and _egress,
            project=self.project,
            unit=self.unit,
        )

    def _release_spawn(self) -> None:
        """What the previous process held outside its sandbox (its egress link, its
        cgroup unit), counting an out-of-memory kill first."""
        spawned, self._spawned = self._spawned, None
        if spawned is not None:
            self._count_oom(spawned)
            spawned.release()

    def _count_oom(self, spawned: sandbox.Spawned | None) -> bool:
        """Whether the process was killed for its memory limit (and count it)."""
        if spawned is None or spawned.cgroup is None:
            return False
        kills = spawned.cgroup_oom_kills()
        if kills > spawned.oom_seen:
            spawned.oom_seen = kills
            self.oom_kills += 1
            return True
        return False

    def _recent_log(self) -> str:
        return tail(self.log_path, self._log_offset)

    def _failure(self, what: str) -> DeployFailed:
        return DeployFailed.with_log(f"{self.label} {what}", self._recent_log())

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path is not None else f"127.0.0.1:{self.port}"

    async def _listening(self) -> bool:
        try:
            if isinstance(self.upstream, str):
                connect = asyncio.open_unix_connection(self.upstream)
            else:
                connect = asyncio.open_connection(*self.upstream)
            _, writer = await asyncio.wait_for(connect, 1.0)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True

    async def _wait_listening(self, timeout: float) -> None:
        """Return when the port accepts, raise DeployFailed when the process exits first."""
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                self.last_exit = code
                raise self._failure(f"exited with {_describe_exit(code)} before serving")
            if await self._listening():
                return
            if time.monotonic() > deadline:
                where = f"on port {self.port}" if self.socket_path is None else f"at {self.socket_path}"
                raise self._failure(f"was not listening {where} after {timeout:g}s")
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.1)

    # -- Instance -------------------------------------------------------------------

    async def ready(self, timeout: float) -> None:
        await self._wait_listening(timeout)
        self.state = "running"
        self._supervised = True
        self.last_used = time.monotonic()
        _live.add(self)
        _ensure_rotator()
        if _idle_stop > 0:
            _idlers.add(self)
            _ensure_idler()
        self._watch()

    async def healthy(self) -> bool:
        if self.parked:
            return not self._stopping  # Stopped on purpose; the next request starts it.
        return self.proc is not None and self.proc.poll() is None and self.state == "running"

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.proc.pid if self.proc and not self.parked else None,
            "address": self.address,
            "network": "isolated" if self.socket_path is not None else "shared",
            "state": self.state,
            "restarts": self.restarts,
            "cold_starts": self.cold_starts,
            "last_exit": _describe_exit(self.last_exit) if self.last_exit is not None else None,
            "sandbox": "bubblewrap" if self.sandboxed else "none",
            "uid": self.identity.uid if self.identity else None,
            "oom_kills": self.oom_kills,
            "last_exit_reason": self.last_exit_reason,
            **self.facts,
        }

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.state = "stopped"
        _live.discard(self)
        _idlers.discard(self)
        self._unwatch()
        if self._task is not None:
            self._task.cancel()
        for task in (self._waking, self._parking):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._terminate(self.proc)
        self._release_spawn()
        _handed_out.discard(self.port)
        if self.socket_path is not None:
            _release_socket_dir(self.socket_path.parent)

    async def _terminate(self, proc: subprocess.Popen | None) -> None:
        """End `proc` and its group: SIGTERM to the program, SIGKILL after the grace."""
        if proc is not None and proc.poll() is None:
            if self.sandboxed:
                # Ask the program itself (bwrap's grandchild) to end: bwrap's init and
                # then bwrap exit after it and are reaped in order. Killing bwrap first
                # would orphan its init into a zombie nobody reaps.
                for pid in _children(_children([proc.pid])) or [proc.pid]:
                    _signal_pid(pid, signal.SIGTERM)
            else:
                _signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        if proc is not None:
            _signal_group(proc, signal.SIGKILL)  # Stragglers of the group.

    # -- scale to zero ------------------------------------------------------------------

    def park(self) -> None:
        """Stop the process for idleness (not a crash: the supervisor leaves it down).

        Synchronous up to the flag, so a request arriving afterwards sees `parked`
        and waits in `wake` for the stop to finish before starting a new process.
        """
        if self._stopping or self.parked or self.state != "running" or self.inflight:
            return
        self.parked = True
        self.state = "idle"
        self._unwatch()  # An exit from here on is ours, not a crash.
        if self._task is not None:
            self._task.cancel()
        log_line(self.log_path, f"{self.label} stopped after {_idle_stop:g}s without requests; "
                 "the next request starts it again")  # fmt: skip
        self._parking = asyncio.get_running_loop().create_task(self._terminate(self.proc))

    async def wake(self) -> None:
        """Cold-start a parked instance; concurrent callers share one start.

        Raises DeployFailed (short message, no log lines) when the start fails; the
        instance stays parked so the next request tries again.
        """
        if not self.parked:
            return
        if self._waking is None:
            self._waking = asyncio.get_running_loop().create_task(self._cold_start())
        task = self._waking
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current and current.cancelling()):
                raise DeployFailed(f"{self.label} was stopped while starting") from None  # By stop().
            raise

    async def _cold_start(self) -> None:
        try:
            if self._parking is not None:
                await asyncio.gather(self._parking, return_exceptions=True)
                self._parking = None
            if self._stopping:
                raise DeployFailed(f"{self.label} is stopped")
            spawned = False
            try:
                # Off the loop: the sandbox's handshake (cgroup, uid map, egress link)
                # takes milliseconds that other projects' requests must not wait for.
                # A cancel waits for the spawn to finish, so the process is then ended.
                spawning = asyncio.ensure_future(asyncio.to_thread(self.spawn))
                try:
                    await asyncio.shield(spawning)
                finally:
                    if not spawning.done():
                        await asyncio.wait([spawning])
                    spawned = not spawning.cancelled() and spawning.exception() is None
                await self._wait_listening(_wake_timeout)
            except BaseException as exc:
                self.state = "idle"
                if spawned:
                    await asyncio.shield(self._terminate(self.proc))
                if isinstance(exc, DeployFailed):
                    log_line(self.log_path, f"cold start failed: {exc}")
                    self._new_port()  # In case another program took ours meanwhile.
                    first = str(exc).split(";", 1)[0]
                    raise DeployFailed(first) from None
                raise
            self.parked = False
            self.state = "running"
            self.cold_starts += 1
            self.last_used = time.monotonic()
            self._watch()
        finally:
            self._waking = None

    def _new_port(self) -> None:
        if self.socket_path is not None:
            return  # A socket in a folder of its own: nobody else can take it.
        old = self.port
        try:
            self.port = free_port()
        except DeployFailed:
            return
        _handed_out.discard(old)
        self.env["PORT"] = str(self.port)
        self.upstream = ("127.0.0.1", self.port)

    # -- supervision ------------------------------------------------------------------

    def _watch(self) -> None:
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(self.proc.pid)
        except (OSError, AttributeError):
            self._pidfd = None
            self._task = loop.create_task(self._poll_exit())
            return
        loop.add_reader(self._pidfd, self._on_exit)

    def _unwatch(self) -> None:
        if self._pidfd is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._pidfd)
            except RuntimeError:
                pass
            os.close(self._pidfd)
            self._pidfd = None

    async def _poll_exit(self) -> None:
        while self.proc is not None and self.proc.poll() is None:
            await asyncio.sleep(0.5)
        self._on_exit()

    def _on_exit(self) -> None:
        self._unwatch()
        if self._stopping or self.proc is None:
            return
        code = self.proc.poll()
        if code is None:  # Spurious wake-up: keep watching.
            self._watch()
            return
        self.last_exit = code
        out_of_memory = self._count_oom(self._spawned)
        uptime = time.monotonic() - self.started_at
        self.quick_crashes = 0 if uptime >= STABLE_AFTER else self.quick_crashes + 1
        delay = min(BACKOFF_FIRST * 2 ** max(self.quick_crashes - 1, 0), BACKOFF_MAX)
        self.state = "crash-loop" if self.quick_crashes >= CRASH_LOOP_AFTER else "restarting"
        how = _describe_exit(code) + (" (killed: out of memory, over its memory limit)" if out_of_memory else "")
        self.last_exit_reason = "out of memory" if out_of_memory else None
        note = f"{self.label} exited with {how} after {uptime:.1f}s; restarting in {delay:.1f}s"
        if self.state == "crash-loop":
            note += f" (crash loop: {self.quick_crashes} quick crashes in a row)"
        log_line(self.log_path, note)
        self._task = asyncio.get_running_loop().create_task(self._restart(delay))

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping:
            return
        self.restarts += 1
        try:
            self.spawn()
        except DeployFailed as exc:
            log_line(self.log_path, str(exc))
            self.proc = None
            self._task = asyncio.get_running_loop().create_task(self._restart(BACKOFF_MAX))
            return
        self._watch()
        try:
            await self._wait_listening(30.0)
        except DeployFailed:
            return  # The exit watcher schedules the next attempt (or it is still starting).
        if not self._stopping and self.proc is not None and self.proc.poll() is None:
            self.state = "running"  # Serving again; `restarts` and the log keep the history.


_idlers: "weakref.WeakSet[ProcessInstance]" = weakref.WeakSet()
_idler: asyncio.Task | None = None


async def _idle_forever() -> None:
    """One sweep for all instances: park those idle for `_idle_stop` seconds."""
    while _idle_stop > 0:
        await asyncio.sleep(min(max(_idle_stop / 4, 0.05), IDLE_CHECK_MAX))
        horizon = time.monotonic() - _idle_stop
        for inst in list(_idlers):
            if inst.state == "running" and not inst.inflight and inst.last_used <= horizon:
                inst.park()


def _ensure_idler() -> None:
    global _idler
    if _idler is None or _idler.done():
        _idler = asyncio.get_running_loop().create_task(_idle_forever())


class IdleGate:
    """The project's ASGI callable when scale to zero is on: the proxy, plus a timestamp,
    a count of requests in flight and, only when the instance is parked, a cold start."""

    __slots__ = ("instance", "proxy", "upstream")

    def __init__(self, instance: ProcessInstance) -> None:
        from tee_daemon.proxy.forward import proxy_to

        self.instance = instance
        self.upstream = instance.upstream
        self.proxy = proxy_to(instance.upstream)

    async def __call__(self, scope, receive, send) -> None:
        inst = self.instance
        inst.last_used = _now()
        if inst.parked:
            try:
                await inst.wake()
            except DeployFailed as exc:
                await _unavailable(scope, send, f"project could not be started: {exc}")
                return
            if inst.upstream is not self.upstream:  # A failed start moved the port.
                from tee_daemon.proxy.forward import proxy_to

                close = getattr(self.proxy, "close", None)
                if close is not None:
                    close()
                self.upstream, self.proxy = inst.upstream, proxy_to(inst.upstream)
        inst.inflight += 1
        try:
            await self.proxy(scope, receive, send)
        finally:
            inst.inflight -= 1
            inst.last_used = _now()

    def close(self) -> None:
        close = getattr(self.proxy, "close", None)
        if close is not None:
            close()


_now = time.monotonic


async def _unavailable(scope, send, detail: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1013})  # Try again later.
        return
    body = json.dumps({"status_code": 503, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def forward_app(instance: ProcessInstance):
    """What a process runtime's `runtime_forward` returns: the bare proxy, or with
    scale to zero on, the proxy behind an `IdleGate`."""
    if _idle_stop > 0:
        return IdleGate(instance)
    from tee_daemon.proxy.forward import proxy_to

    return proxy_to(instance.upstream)


def _children(pids: list[int]) -> list[int]:
    found: list[int] = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                found += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            pass
    return found


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def base_env(ctx_env: dict[str, str], *, data_dir: Path, port: int, path_dirs: list[Path] = ()) -> dict[str, str]:  # type: ignore[assignment]
    """The whole environment of a project process: nothing inherited from the daemon."""
    path = ":".join([*(str(p) for p in path_dirs), MINIMAL_PATH])
    env = dict(ctx_env)
    env.update(
        {
            "DATA_DIR": str(data_dir),
            "HOME": str(data_dir),
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "PATH": path,
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "TEE_ENV_KEYS": ",".join(ctx_env),
        }
    )
    return env


def start_process(
    ctx,  # StartContext
    *,
    argv: list[str],
    cwd: Path,
    read_only: list[Path] = (),  # type: ignore[assignment]
    extra_env: dict[str, str] | None = None,
    path_dirs: list[Path] = (),  # type: ignore[assignment]
    facts: dict[str, Any] | None = None,
) -> ProcessInstance:
    """Start one version of a project as a supervised, sandboxed process on loopback
    (or, with the isolated network, on a unix socket in a network namespace of its own).

    The sandbox exposes the version's tree and build folder and the runtime folders in
    `read_only` read-only, and the project's data dir read-write; nothing else.
    """
    folder = socket_dir(ctx.run_dir)
    if folder is not None and not bwrap_isolates_network():
        _release_socket_dir(folder)
        raise DeployFailed(
            "the project network is isolated (TEE_DAEMON_PROJECT_NETWORK=isolated) but projects cannot be "
            f"sandboxed here ({sandbox.unavailable_reason()}); refusing to run the project unisolated"
        )
    socket_path = folder / SOCKET_NAME if folder is not None else None
    if folder is not None and ctx.identity is not None:
        os.chown(folder, ctx.identity.uid, ctx.identity.gid)  # The project binds its socket there.
    port = free_port() if socket_path is None else 0
    env = base_env(ctx.env, data_dir=ctx.data_dir, port=port, path_dirs=list(path_dirs))
    if socket_path is not None:
        del env["PORT"]
        env["LISTEN_UNIX"] = str(socket_path)
    env.update(extra_env or {})
    if bwrap() is None:
        # No private /tmp without a sandbox: give the project its own.
        tmp = ctx.run_dir / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        env["TMPDIR"] = str(tmp)
    try:
        return ProcessInstance(
            label=f"{ctx.project} v{ctx.version} ({ctx.runtime})",
            argv=argv,
            env=env,
            cwd=cwd,
            log_path=ctx.log_path,
            port=port,
            read_only=[ctx.tree, ctx.build_dir, *read_only],
            read_write=[ctx.data_dir, *([folder] if folder is not None else [])],
            facts=facts,
            socket_path=socket_path,
            identity=ctx.identity,
            project=ctx.project,
            unit=f"v{ctx.version}-{ctx.run_dir.name.rsplit('.', 1)[-1]}",
            tmp_dir=ctx.tmp_dir,
        )
    except BaseException:
        _handed_out.discard(port)
        if folder is not None:
            _release_socket_dir(folder)
        raise
