"""Counters for `GET /_api/metrics` (Prometheus text exposition format 0.0.4).

The hot path (project traffic through `routing.Ingress`) calls `Metrics.serve`, which
does a dict lookup, two clock reads and a few list/dict increments; everything else
(formatting, reading process memory) happens only when the endpoint is scraped.
Counters live in memory and start at zero with the daemon, as Prometheus expects.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from tee_daemon.kernel.contract import ASGIApp, Receive, Scope, Send

# Upper bounds (seconds) of the request latency histogram buckets.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ProjectStats:
    """One project's request counters, kept across its versions."""

    __slots__ = ("by_status", "buckets", "latency_sum", "count", "websockets")

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.latency_sum = 0.0
        self.count = 0
        self.websockets = 0


class Metrics:
    def __init__(self, access_log: Any = None) -> None:
        self.started = time.time()
        self.projects: dict[str, ProjectStats] = {}
        self.unrouted = 0  # requests for names no project has
        self.deploys: dict[tuple[str, str, str], int] = {}  # (project, action, result)
        self.restarts: dict[str, int] = {}
        self.access_log = access_log  # an accesslog.AccessLog: one line per project request

    # -- the hot path --------------------------------------------------------------

    def stats(self, name: str) -> ProjectStats:
        stats = self.projects.get(name)
        if stats is None:
            stats = self.projects[name] = ProjectStats()
        return stats

    async def serve(self, app: ASGIApp, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Run `app` for one request of project `name`, counting status and latency,
        and writing its access log line when an access log is attached."""
        access_log = self.access_log
        if scope["type"] != "http":
            self.stats(name).websockets += 1
            start = time.perf_counter()
            try:
                await app(scope, receive, send)
            finally:
                if access_log is not None:
                    access_log.record(name, "WS", _target(scope), 101, time.perf_counter() - start)
            return
        status = 0

        def metered(message: Any) -> Any:
            # A plain function handing back the server's awaitable: no extra coroutine.
            nonlocal status
            if not status and message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        start = time.perf_counter()
        try:
            await app(scope, receive, metered)
        finally:
            elapsed = time.perf_counter() - start
            stats = self.projects.get(name) or self.stats(name)
            stats.by_status[status] = stats.by_status.get(status, 0) + 1
            stats.buckets[bisect_left(BUCKETS, elapsed)] += 1
            stats.latency_sum += elapsed
            stats.count += 1
            if access_log is not None:
                access_log.record(name, scope["method"], _target(scope), status, elapsed)

    # -- the admin side ------------------------------------------------------------

    def deploy(self, project: str, action: str, ok: bool) -> None:
        key = (project, action, "ok" if ok else "failed")
        self.deploys[key] = self.deploys.get(key, 0) + 1

    def restart(self, project: str) -> None:
        """Call when supervision restarts a crashed project process."""
        self.restarts[project] = self.restarts.get(project, 0) + 1

    def forget(self, project: str) -> None:
        """Drop a deleted project's request series (its deploy counters stay)."""
        self.projects.pop(project, None)

    # -- across ingress workers ----------------------------------------------------

    def export(self) -> dict[str, Any]:
        """The request counters as plain data, for the supervisor to add up (web/hub.py)."""
        return {
            "unrouted": self.unrouted,
            "projects": {
                name: [{str(k): n for k, n in s.by_status.items()}, s.buckets, s.latency_sum, s.count, s.websockets]
                for name, s in self.projects.items()
            },
        }

    def merged(self, exports: Iterable[dict[str, Any]]) -> "Metrics":
        """These counters plus the workers' `export()`s (a new Metrics; this one is unchanged)."""
        total = Metrics()
        total.started, total.deploys, total.restarts = self.started, self.deploys, self.restarts
        total.unrouted = self.unrouted
        for name, s in self.projects.items():
            t = total.stats(name)
            t.by_status, t.buckets = dict(s.by_status), list(s.buckets)
            t.latency_sum, t.count, t.websockets = s.latency_sum, s.count, s.websockets
        for export in exports:
            total.unrouted += export["unrouted"]
            for name, (by_status, buckets, latency_sum, count, websockets) in export["projects"].items():
                t = total.stats(name)
                for status, n in by_status.items():
                    t.by_status[int(status)] = t.by_status.get(int(status), 0) + n
                t.buckets = [a + b for a, b in zip(t.buckets, buckets)]
                t.latency_sum += latency_sum
                t.count += count
                t.websockets += websockets
        return total

    def render(
        self, routes: dict[str, Any] | None = None, extra: Iterable[str] = (), active: dict[str, int] | None = None
    ) -> str:
        """The exposition text; `routes` is `Ingress.routes` for the per-project gauges,
        `active` the requests in flight in the ingress workers, by project."""
        out: list[str] = []

        def family(name: str, kind: str, help: str) -> None:
            out.append(f"# HELP {name} {help}")
            out.append(f"# TYPE {name} {kind}")

        family("tee_daemon_start_time_seconds", "gauge", "When this daemon process started (unix time).")
        out.append(f"tee_daemon_start_time_seconds {self.started:.3f}")

        family("tee_daemon_requests_total", "counter", "Requests routed to projects, by project and HTTP status (0: no response).")
        for name, stats in sorted(self.projects.items()):
            for status, n in sorted(stats.by_status.items()):
                out.append(f'tee_daemon_requests_total{{project="{_label(name)}",status="{status}"}} {n}')
        family("tee_daemon_unrouted_requests_total", "counter", "Requests for a name no project has (answered 404).")
        out.append(f"tee_daemon_unrouted_requests_total {self.unrouted}")

        family("tee_daemon_websocket_connections_total", "counter", "WebSocket connections routed to projects.")
        for name, stats in sorted(self.projects.items()):
            if stats.websockets:
                out.append(f'tee_daemon_websocket_connections_total{{project="{_label(name)}"}} {stats.websockets}')

        family("tee_daemon_request_duration_seconds", "histogram", "Time to serve a project request, to the end of its body.")
        for name, stats in sorted(self.projects.items()):
            label = _label(name)
            cumulative = 0
            for bound, n in zip((*BUCKETS, None), stats.buckets):
                cumulative += n
                le = "+Inf" if bound is None else repr(bound)
                out.append(f'tee_daemon_request_duration_seconds_bucket{{project="{label}",le="{le}"}} {cumulative}')
            out.append(f'tee_daemon_request_duration_seconds_sum{{project="{label}"}} {stats.latency_sum:.6f}')
            out.append(f'tee_daemon_request_duration_seconds_count{{project="{label}"}} {stats.count}')

        family("tee_daemon_deploys_total", "counter", "Admin operations on projects, by action and result.")
        for (name, action, result), n in sorted(self.deploys.items()):
            out.append(
                f'tee_daemon_deploys_total{{project="{_label(name)}",action="{_label(action)}",result="{result}"}} {n}'
            )

        facts = {name: _facts(route.instance) for name, route in (routes or {}).items()}
        # Counted as supervision restarts (its callback: `restart`), across versions;
        # every routed project has a series, 0 until its first restart.
        restarts = {name: 0 for name in facts} | self.restarts
        family(
            "tee_daemon_restarts_total",
            "counter",
            "Restarts of crashed or unresponsive project processes and containers since the daemon started.",
        )
        for name, n in sorted(restarts.items()):
            out.append(f'tee_daemon_restarts_total{{project="{_label(name)}"}} {n}')

        if routes is not None:
            up, versions, active_lines, memory = [], [], [], []
            for name, route in sorted(routes.items()):
                label = _label(name)
                state = facts[name].get("state", "running")
                serving = 1 if state == "running" else 0
                up.append(
                    f'tee_daemon_project_up{{project="{label}",runtime="{_label(route.runtime)}",'
                    f'state="{_label(state)}"}} {serving}'
                )
                versions.append(f'tee_daemon_project_version{{project="{label}"}} {route.version}')
                in_flight = route.active + (active or {}).get(name, 0)
                active_lines.append(f'tee_daemon_project_active_requests{{project="{label}"}} {in_flight}')
                rss = facts_rss(facts[name])
                if rss is not None:
                    memory.append(f'tee_daemon_project_memory_rss_bytes{{project="{label}"}} {rss}')
            family(
                "tee_daemon_project_up",
                "gauge",
                "1 while the project's instance runs; 0 when parked idle, restarting or crash-looping (see the state label).",
            )
            out.extend(up)
            family("tee_daemon_project_version", "gauge", "The version number that serves.")
            out.extend(versions)
            family("tee_daemon_project_active_requests", "gauge", "Requests in flight.")
            out.extend(active_lines)
            family(
                "tee_daemon_project_memory_rss_bytes",
                "gauge",
                "Resident memory of the project's processes (with their children), where the runtime reports them.",
            )
            out.extend(memory)

        family("tee_daemon_process_memory_rss_bytes", "gauge", "Resident memory of the daemon process itself.")
        own = process_rss(os.getpid(), children=False)
        out.append(f"tee_daemon_process_memory_rss_bytes {own or 0}")
        out.extend(extra)
        return "\n".join(out) + "\n"


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# -- process memory ------------------------------------------------------------------


def _facts(instance: Any) -> dict[str, Any]:
    try:
        facts = instance.describe()
    except Exception:
        return {}
    return facts if isinstance(facts, dict) else {}


def instance_rss(instance: Any) -> int | None:
    return facts_rss(_facts(instance))


def facts_rss(facts: dict[str, Any]) -> int | None:
    """RSS in bytes of what `Instance.describe()` names: `rss_bytes`, or `pid`/`pids`
    (each with its descendants). None when the runtime reports neither."""
    if isinstance(facts.get("rss_bytes"), int):
        return facts["rss_bytes"]
    pids = [p for p in facts.get("pids") or [] if isinstance(p, int)]
    if isinstance(facts.get("pid"), int):
        pids.append(facts["pid"])
    if not pids:
        return None
    total, seen = 0, set()
    for pid in pids:
        for p in _tree(pid):
            if p not in seen:
                seen.add(p)
                total += process_rss(p, children=False) or 0
    return total


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo and len(found) < 4096:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            pass
    return found


def process_rss(pid: int, children: bool = True) -> int | None:
    if children:
        return sum(process_rss(p, children=False) or 0 for p in _tree(pid))
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _target(scope: Scope) -> bytes:
    """The request target below `/<name>` as received (percent-encoded), with the query."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
    query = scope.get("query_string")
    return raw + b"?" + query if query else raw
