"""Supervised OS processes for the process runtimes (deno, bun, node, python).

`ProcessInstance` is the `Instance` every process runtime returns. It

* starts the argv in the tenant sandbox (`sandbox.spawn`: the project's own uid, no
  capabilities, its cgroup unit, only the folders it is given, the env handed to the
  program alone (`environment.base_env`; never the daemon's env), stdin closed, stdout
  and stderr appended to the project's log (`logfiles`, rotated); the network is
  ``isolated`` (the default: a namespace of its own, outbound access through `egress`
  unless denied) or, opt-in, ``shared`` (the host's network);
* listens on a loopback port the daemon picked, or when isolated on a unix socket in a
  folder of its run dir bound into the sandbox at the same path (env ``LISTEN_UNIX``;
  see `ports`); `ready` polls a connect and fails with the exit code and the last log
  lines when the process exits or is not listening in time;
* after it served once, is supervised (`supervision`): restarted when it dies or stops
  answering its health check, a kill for the memory limit said ("out of memory") in
  the log and counted in ``oom_kills``;
* `stop` sends SIGTERM to the program, then SIGKILL; the sandbox's init takes every
  other process of the project with it, and its cgroup unit is removed;
* with scale to zero (`idle`), is parked when idle and cold-started by the next request.

The daemon's settings for all of it are handed in once (`runconfig.configure`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tee_daemon.kernel.contract import Instance
from tee_daemon.kernel.errors import DeployFailed
from tee_daemon.run import sandbox
from tee_daemon.run.environment import MINIMAL_PATH, base_env
from tee_daemon.run.identity import Identity
from tee_daemon.run.idle import IdleGate, forget_idle, forward_app, watch_idle
from tee_daemon.run.isolation import bwrap_isolates_network, isolation_facts
from tee_daemon.run.logfiles import forget_log, log_files, log_line, rotate, tail, watch_log
from tee_daemon.run.ports import (
    SOCKET_NAME,
    _socket_prefix,
    free_port,
    release_port,
    release_socket_dir,
    remove_stale_socket_dirs,
    socket_dir,
)
from tee_daemon.run.runconfig import ProcessSettings, configure, current
from tee_daemon.run.supervision import Supervised, describe_exit, forget_health, watch_health

# Names other modules and tests use from here (the split modules own them).
__all__ = [
    "IdleGate", "MINIMAL_PATH", "ProcessInstance", "ProcessSettings", "SOCKET_NAME", "_socket_prefix",
    "base_env", "bwrap", "bwrap_isolates_network", "configure", "forward_app", "free_port",
    "isolation_facts", "log_files", "log_line", "remove_stale_socket_dirs", "rotate",
    "socket_dir", "start_process", "tail",
]

STOP_GRACE = 3.0


def bwrap() -> str | None:
    return sandbox.bwrap()


class ProcessInstance(Supervised, Instance):
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
        settings: ProcessSettings | None = None,
    ) -> None:
        self.settings = settings or current()
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
        self.last_health = time.monotonic()
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
            egress=self.socket_path is not None and self.settings.egress,
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
                raise self._failure(f"exited with {describe_exit(code)} before serving")
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
        watch_log(self)
        if self.settings.idle_stop > 0:
            watch_idle(self)
        self._watch()
        watch_health(self)

    async def healthy(self) -> bool:
        if self.parked:
            return not self._stopping  # Stopped on purpose; the next request starts it.
        # Alive is not enough: supervision restarts a process that stopped answering.
        alive = self.proc is not None and self.proc.poll() is None and self.state == "running"
        return alive and await self._listening()

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.proc.pid if self.proc and not self.parked else None,
            "address": self.address,
            "network": "isolated" if self.socket_path is not None else "shared",
            "state": self.state,
            "restarts": self.restarts,
            "cold_starts": self.cold_starts,
            "last_exit": describe_exit(self.last_exit) if self.last_exit is not None else None,
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
        forget_log(self)
        forget_idle(self)
        forget_health(self)
        self._unwatch()
        if self._task is not None:
            self._task.cancel()
        for task in (self._waking, self._parking):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._terminate(self.proc)
        self._release_spawn()
        release_port(self.port)
        if self.socket_path is not None:
            release_socket_dir(self.socket_path.parent)

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
        log_line(self.log_path, f"{self.label} stopped after {self.settings.idle_stop:g}s without requests; "
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
                await self._wait_listening(self.settings.wake_timeout)
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
        release_port(old)
        self.env["PORT"] = str(self.port)
        self.upstream = ("127.0.0.1", self.port)


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
        release_socket_dir(folder)
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
        release_port(port)
        if folder is not None:
            release_socket_dir(folder)
        raise
