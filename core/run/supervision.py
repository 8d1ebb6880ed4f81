"""Supervision of a process project: after it served once, its process is restarted
when it dies, with exponential backoff (a crash loop shows in `describe()` as
``state: crash-loop`` and as a line in the log), and when it is alive but stops
answering: one periodic task for all supervised instances calls `Instance.healthy`
every ``health_interval`` seconds, and ``health_failures`` failures in a row end the
process, which the exit watcher then restarts like a crash. Each restart is counted
(`restarts`) and handed to the daemon's `on_restart` callback (the admin metrics).

`Supervised` is a part of `ProcessInstance` (kept apart to keep each file one concern),
which sets every attribute used here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import weakref

from tee_daemon.kernel.errors import DeployFailed
from tee_daemon.run.logfiles import log_line

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0
STABLE_AFTER = 20.0  # A process up this long resets the backoff.
CRASH_LOOP_AFTER = 5  # Consecutive quick crashes before the state says crash-loop.


class Supervised:
    """The supervising half of `ProcessInstance`."""

    _unhealthy_kill = False
    health_failures = 0

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
        how = describe_exit(code) + (" (killed: out of memory, over its memory limit)" if out_of_memory else "")
        self.last_exit_reason = "out of memory" if out_of_memory else None
        if self._unhealthy_kill:
            self._unhealthy_kill = False
            how += " (stopped by the daemon: it did not answer its health check)"
            self.last_exit_reason = "health check"
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
        if self.settings.on_restart is not None:
            self.settings.on_restart(self.project)  # The admin metrics count it.
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


    async def check_health(self) -> None:
        """One health check (by the periodic task): after `health_failures` failed
        checks in a row, end the running process so that it is restarted."""
        if self._stopping or self.parked or self.state != "running" or self._waking is not None:
            self.health_failures = 0
            return
        if await self.healthy():
            self.health_failures = 0
            return
        if self._stopping or self.parked or self.state != "running" or self.proc is None:
            return  # It changed meanwhile (an exit, a park): that path handles it.
        self.health_failures += 1
        if self.health_failures < self.settings.health_failures:
            return
        self.health_failures = 0
        log_line(self.log_path, f"{self.label} is running but did not answer its health check "
                 f"{self.settings.health_failures} times in a row; ending it to restart it")
        self._unhealthy_kill = True
        # The exit watcher sees the end and restarts it (backoff, count, log line).
        await self._terminate(self.proc)


_supervised: "weakref.WeakSet[Supervised]" = weakref.WeakSet()
_checker: asyncio.Task | None = None


def watch_health(instance: Supervised) -> None:
    _supervised.add(instance)
    global _checker
    if _checker is None or _checker.done():
        _checker = asyncio.get_running_loop().create_task(_check_forever())


def forget_health(instance: Supervised) -> None:
    _supervised.discard(instance)


async def _check_forever() -> None:
    """One task for all supervised instances: each checked every `health_interval`s."""
    while _supervised:
        instances = list(_supervised)
        await asyncio.sleep(min(inst.settings.health_interval for inst in instances))
        now = time.monotonic()
        due = [inst for inst in list(_supervised) if now - inst.last_health >= inst.settings.health_interval * 0.9]
        for inst in due:
            inst.last_health = now
        if due:
            await asyncio.gather(*(inst.check_health() for inst in due), return_exceptions=True)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
