"""An ingress worker: one of the N processes that serve the daemon's port.

Each is granian's worker running the same front door (`Ingress`) as the supervisor, with
three differences:

* its routes come from the supervisor's hub (web/hub.py): a snapshot at startup (before
  it serves anything), then every change, each applied before the hub's `publish`
  returns. A route is rebuilt here from the spec its app gave (the proxy to the project's
  process, the static folder), so project traffic never touches the supervisor;
* what it has no route for (the API, the viewer and admin pages, a project only the
  supervisor can serve) goes whole to the supervisor's private socket (`PassThrough`,
  web/peer.py keeps the client's address);
* its counters stay here; the supervisor adds them up when /_api/metrics is asked
  (`stats`), and its access log lines go to the daemon's one access log.

When the link to the hub breaks the supervisor is gone (or has given up on this worker),
so the worker exits at once rather than serve by routes nobody updates.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from tee_daemon.kernel.contract import ASGIApp, Receive, Scope, Send
from tee_daemon.kernel.routes import Route
from tee_daemon.proxy.forward import Proxy, ProxyLimits
from tee_daemon.settings import Settings
from tee_daemon.web import peer
from tee_daemon.web.accesslog import AccessLog
from tee_daemon.web.hub import MAX_LINE, hub_path, supervisor_path
from tee_daemon.web.ingress import Ingress
from tee_daemon.web.metrics import Metrics
from tee_daemon.web.origins import Origins

log = logging.getLogger("tee_daemon.web.worker")

CONNECT_TIMEOUT = 30.0  # for the hub's socket, which exists once the supervisor serves
EXIT_LINK_LOST = 70


def build(spec: dict[str, Any]) -> ASGIApp:
    """The app a route spec names: `factory(*args)`, the factory imported by its path."""
    module, _, name = spec["factory"].partition(":")
    factory = importlib.import_module(module)
    for part in name.split("."):
        factory = getattr(factory, part)
    return factory(*spec["args"])


class PassThrough(Proxy):
    """The proxy to the supervisor: headers as the client sent them plus the peer line,
    no body bound of its own (the supervisor applies the upload and body limits), and no
    head timeout a deploy could outlast (a build is bounded by its own timeout)."""

    head_timeout = 7 * 24 * 3600.0
    unreachable = "the daemon is not answering (it is starting or stopping); try again shortly"

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), max_body=sys.maxsize)

    def request_headers(self, scope: Scope, drop: frozenset[bytes]) -> tuple[list[bytes], bytes | None, bool]:
        return peer.pass_headers(scope, drop)


class RouteFeed:
    """This worker's routes, kept as the hub says."""

    def __init__(self, path: Path, metrics: Metrics) -> None:
        self.path = path
        self.metrics = metrics
        self.routes: dict[str, Route] = {}
        self.retired: dict[tuple[str, int], Route] = {}  # replaced, until the hub says drained
        self.forgotten = 0  # requests served for projects deleted since
        self._drains: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        """Connect and take the snapshot: the worker serves only after this returns."""
        reader, self._writer = await _connect(self.path)
        self._writer.write(b"{}\n")  # hello (the hub knows our pid from the socket)
        snapshot = msgspec.json.decode(await reader.readline())
        for name, spec in snapshot["routes"].items():
            self._set(name, spec)
        self._task = asyncio.get_running_loop().create_task(self._follow(reader))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()

    async def _follow(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = msgspec.json.decode(line)
                if message["op"] == "drain":
                    # Waiting out requests must not hold up the changes sent meanwhile.
                    self._drains.add(asyncio.get_running_loop().create_task(self._answer_drain(message)))
                    self._drains = {task for task in self._drains if not task.done()}
                else:
                    self._answer(message, self._handle(message))
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("ingress worker %d: route feed failed", os.getpid())
        log.error("ingress worker %d lost the supervisor's route feed: exiting", os.getpid())
        os._exit(EXIT_LINK_LOST)

    def _answer(self, message: dict[str, Any], answer: dict[str, Any]) -> None:
        self._writer.write(msgspec.json.encode({**answer, "id": message["id"]}) + b"\n")  # type: ignore[union-attr]

    def _handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message["op"]
        if op == "set":
            self._set(message["name"], message["route"], message["gone"])
            return {}
        if op == "stats":
            counted = sum(stats.count for stats in self.metrics.projects.values())
            return {
                "pid": os.getpid(),
                "served": self.forgotten + counted,
                **self.metrics.export(),
                "active": {name: r.active for name, r in self.routes.items() if r.active},
            }
        return {"error": f"unknown op {op!r}"}

    def _set(self, name: str, spec: dict[str, Any] | None, gone: bool = False) -> None:
        """Route `name` by `spec` (None: through the supervisor; `gone`: deleted)."""
        old = self.routes.pop(name, None)
        app = _build_or_none(name, spec) if spec is not None else None
        if app is not None:
            self.routes[name] = Route(app, None, spec["runtime"], spec["version"])  # type: ignore[index]
        if gone:  # the supervisor forgets its own counters of the project too
            stats = self.metrics.projects.get(name)
            self.forgotten += stats.count if stats else 0
            self.metrics.forget(name)
        if old is None:
            return
        if gone or (spec is not None and spec["version"] == old.version):
            _close(old)  # nothing will ask to drain it
            return
        previous = self.retired.pop((name, old.version), None)
        if previous is not None:
            _close(previous)
        self.retired[(name, old.version)] = old

    async def _answer_drain(self, message: dict[str, Any]) -> None:
        route = self.retired.pop((message["name"], message["version"]), None)
        if route is not None:
            await route.drained(message["timeout"])
            _close(route)
        self._answer(message, {})


def _build_or_none(name: str, spec: dict[str, Any]) -> ASGIApp | None:
    """The route's app, or None (its requests then go to the supervisor) should a
    plugin's factory fail here: the project still serves, through one process."""
    try:
        return build(spec)
    except Exception:
        log.exception("ingress worker %d cannot build %s's route from %s", os.getpid(), name, spec["factory"])
        return None


def _close(route: Route) -> None:
    close = getattr(route.app, "close", None)
    if close is not None:
        close()  # idle pooled connections to a process about to stop


async def _connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_TIMEOUT
    while True:
        try:
            return await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


class _Lifespan:
    """The worker's API part: lifespan starts and stops the feed and the access log;
    every other request goes to the supervisor."""

    def __init__(self, feed: RouteFeed, access_log: AccessLog, supervisor: ASGIApp) -> None:
        self.feed = feed
        self.access_log = access_log
        self.supervisor = supervisor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.supervisor(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.feed.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": f"no route feed: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.feed.stop()
                self.access_log.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_worker_app(settings: Settings) -> Ingress:
    access_log = AccessLog(settings.data_dir / "logs" / "access.log")
    metrics = Metrics(access_log=access_log)
    assert settings.ingress_dir is not None, "ingress workers are started by `serve`"
    feed = RouteFeed(hub_path(settings.ingress_dir), metrics)
    supervisor = PassThrough(supervisor_path(settings.ingress_dir))
    return Ingress(
        _Lifespan(feed, access_log, supervisor),
        routes=feed.routes,
        metrics=metrics,
        origins=Origins(settings),
        proxy_limits=ProxyLimits(settings.max_request_body, settings.trusted_proxies),
        defer=supervisor,
    )


def create_app() -> Ingress:
    """granian's factory for the ingress workers: the silent-connection guard (these
    processes hold the clients' connections), then the worker's front door."""
    from tee_daemon.settings import worker_settings
    from tee_daemon.web import connguard

    settings = worker_settings()
    connguard.start_guard(settings)
    return build_worker_app(settings)
