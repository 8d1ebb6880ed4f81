"""What a container does while it runs, as the daemon follows it: its output appended
to the project's log, the engine's restarts and exits noted there (and counted), and each
kill for the memory limit said there and counted in `oom_kills`.

`ContainerWatch` is a part of `ContainerInstance` (kept apart to keep each file one
concern); its threads talk to the engine with a client of their own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import datetime

from tee_daemon.run.containers.engine import LOG_TAIL, client, log_line, new_client, note_restarts, rotate_log


class ContainerWatch:
    """The watching half of `ContainerInstance` (which sets every attribute used here)."""

    # -- out of memory ---------------------------------------------------------------

    def _start_watcher(self, since: float) -> None:
        self._watch_stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch_oom, args=(self.container_id, self._watch_stop, since),
                                         daemon=True, name=f"oom-{self.spec.project}-v{self.spec.version}")
        self._watcher.start()

    def _stop_watcher(self) -> None:
        stop = getattr(self, "_watch_stop", None)
        if stop is not None:
            stop.set()
        events, self._events = self._events, None
        if events is not None:
            with contextlib.suppress(Exception):
                events.close()

    def _watch_oom(self, container_id: str, stop: threading.Event, since_ts: float) -> None:
        """The engine's "oom" events of the container: each kill by the memory limit (of
        the main process or any other) is a line in the project's log and counted in
        `describe()`. A burst of events for one kill gives one line."""
        since = int(since_ts) - 1
        last_nano = int(since_ts * 1e9)
        for _ in range(100_000):  # Reconnects after engine restarts, one a second at most.
            if stop.is_set():
                return
            try:
                api = new_client(timeout=None).api  # type: ignore[arg-type]
                self._events = events = api.events(
                    since=since, decode=True,
                    filters={"container": [container_id], "event": ["oom", "destroy"]},
                )
                if stop.is_set():
                    events.close()
                    return
                for event in events:
                    nano = int(event.get("timeNano") or 0)
                    if nano and nano <= last_nano:
                        continue
                    last_nano = max(last_nano, nano)
                    since = int(event.get("time") or since)
                    action = event.get("Action") or event.get("status")
                    if action == "destroy":
                        return
                    if action == "oom":
                        self._note_oom(nano / 1e9 if nano else time.time())
            except Exception:
                pass
            if stop.wait(1.0):
                return

    def _note_oom(self, when: float) -> None:
        if self.last_oom is not None and when - self.last_oom < 2.0:
            self.last_oom = when
            return  # The same kill (cgroup v1 reports one several times).
        self.last_oom = when
        self.oom_kills += 1
        log_line(self.spec.log_path, f"{self.label}: out of memory: a process of the container was killed for "
                 f"exceeding its memory limit of {self.memory_mib} MiB (TEE_DAEMON_PROJECT_MEMORY_MB)")

    def _why(self, state: dict, code: int | None) -> str:
        """" (killed for exceeding its memory limit ...)" when that is why it exited."""
        oom = bool(state.get("OOMKilled"))
        if not oom and code == 137:
            deadline = time.monotonic() + 1.0  # The watcher may not have seen the event yet.
            while not oom and time.monotonic() < deadline:
                oom = self.last_oom is not None and time.time() - self.last_oom < 30
                if not oom:
                    time.sleep(0.05)
        return f" (killed for exceeding its memory limit of {self.memory_mib} MiB)" if oom else ""

    # -- logs --------------------------------------------------------------------------

    def _start_follower(self) -> None:
        self._follower = threading.Thread(target=self._follow, daemon=True, name=f"logs-{self.container_name}")
        self._follower.start()

    def _follow(self) -> None:
        """Append the container's output to the project's log, across engine restarts."""
        import docker

        try:
            api = new_client(timeout=None).api  # type: ignore[arg-type]
        except Exception:
            return
        since = self._since
        last_state = None
        writes = 0
        while not self._follow_stop.is_set():
            try:
                stream = api.logs(self.container_id, stdout=True, stderr=True, stream=True,
                                  follow=True, timestamps=True, since=since)
                buf = b""
                with open(self.spec.log_path, "ab") as out:
                    for chunk in stream:
                        buf += chunk
                        *lines, buf = buf.split(b"\n")
                        for line in lines:
                            ts, text = parse_ts(line)
                            if ts is not None:
                                if ts <= since:
                                    continue
                                since = ts
                            out.write(text + b"\n")
                        out.flush()
                        writes += 1
                        if writes % 200 == 0:
                            rotate_log(self.spec.log_path)
            except docker.errors.NotFound:
                return
            except Exception:
                pass
            if self._follow_stop.is_set():
                return
            try:
                attrs = api.inspect_container(self.container_id)
            except docker.errors.NotFound:
                return
            except Exception:
                time.sleep(1)
                continue
            state = attrs.get("State", {})
            previous, self.restarts = self.restarts, attrs.get("RestartCount", self.restarts)
            note_restarts(self.spec.project, self.restarts - previous)
            status = state.get("Status")
            code = state.get("ExitCode")
            if code:
                self.last_exit = code
            self._note_address(attrs)
            key = (status, self.restarts)
            if key != last_state:
                if status == "running" and self.restarts > previous:
                    self.state = "running" if self._ready else self.state
                    if not code:  # Restarted already: the engine reset ExitCode.
                        code = self._died_with()
                    log_line(self.spec.log_path, f"{self.label}: container exited"
                             f"{f' with code {code}' if code else ''}{self._why(state, code)}; the engine "
                             f"restarted it (restart {self.restarts} of at most {self.cfg.restart_max})")
                elif status == "restarting" or (status == "exited" and self._engine_will_restart(attrs)):
                    self.state = "restarting"
                    log_line(self.spec.log_path, f"{self.label}: container exited with code {code}"
                             f"{self._why(state, code)}; the engine restarts it (restart {self.restarts + 1} "
                             f"of at most {self.cfg.restart_max})")
                elif status in ("exited", "dead"):
                    self.state = "exited"
                    if not self._stopping:
                        log_line(self.spec.log_path, f"{self.label}: container exited with code {code}"
                                 f"{self._why(state, code)} and is not restarted any more")
                elif status == "running":
                    self.state = "running" if self._ready else self.state
                last_state = key
            time.sleep(0.25)

    def _engine_will_restart(self, attrs: dict) -> bool:
        policy = attrs.get("HostConfig", {}).get("RestartPolicy", {}) or {}
        code = attrs.get("State", {}).get("ExitCode", 0)
        return policy.get("Name") == "on-failure" and code != 0 and attrs.get("RestartCount", 0) < policy.get(
            "MaximumRetryCount", 0)

    def recent_log(self) -> str:
        try:
            c = client()
            out = c.api.logs(self.container_id, stdout=True, stderr=True, tail=LOG_TAIL)
            return out.decode(errors="replace").rstrip()
        except Exception:
            return ""

    def _died_with(self) -> int | None:
        """The exit code of the container's last death, from the engine's events."""
        try:
            events = client().api.events(
                since=int(self._since), until=int(time.time()) + 1, decode=True,
                filters={"container": self.container_id, "event": "die"},
            )
            code = None
            for event in events:
                code = (event.get("Actor", {}).get("Attributes") or {}).get("exitCode", code)
            return int(code) if code is not None else None
        except Exception:
            return None


def parse_ts(line: bytes) -> tuple[float | None, bytes]:
    """Split docker's RFC 3339 nano timestamp prefix off a log line."""
    head, sep, rest = line.partition(b" ")
    if not sep:
        return None, line
    try:
        text = head.decode()
        base, _, frac = text.rstrip("Z").partition(".")
        ts = datetime.fromisoformat(base + "+00:00").timestamp() + float("0." + (frac or "0"))
    except ValueError:
        return None, line
    return ts, rest
