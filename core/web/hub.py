"""The supervisor's end of the ingress workers' route feed (a private unix socket).

Each ingress worker (web/worker.py) connects once, says hello and gets a snapshot of
every route it can serve itself; from then on the hub sends each route change and waits
for every worker's answer before `publish` returns, so when the API answers a deploy,
rollback or delete, no worker routes by the old table any more. The hub also asks the
workers to wait out requests on a replaced route (`drained`) and for their counters
(`collect`, for /_api/metrics).

What a worker can serve itself is what the route's ASGI app says it can be rebuilt from:
`app.ingress_spec()` -> (an importable factory "module:name", its JSON arguments), as the
proxy to a project's process and the static files do. A route without one, or whose
`ingress_spec()` is None for now (an in-process app of a third-party runtime, a process
parked by scale to zero, which only the supervisor can wake), is not sent: the workers
hand its requests to the supervisor whole.

A worker that does not answer within `ANSWER_TIMEOUT` is stopped (SIGKILL): granian
starts a fresh one, which gets every route in its snapshot, so no worker ever serves by a
table older than the last change the API answered for.

Messages are JSON lines: hub -> worker `{"id", "op", ...}`, worker -> hub `{"id", ...}`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import time
import weakref
from pathlib import Path
from typing import Any

import msgspec

from tee_daemon.kernel.routes import Route, RouteTable

log = logging.getLogger("tee_daemon.web.hub")

ANSWER_TIMEOUT = 10.0  # for a worker to apply a change or send its counters
PARK_DRAIN_TIMEOUT = 5.0  # for the workers' requests on an instance about to be parked
SWEEP_SHARE = 1.0  # seconds one collection of counters serves the idle sweep's first checks
MAX_LINE = 16 * 2**20  # a snapshot or a worker's counters, for many projects


def hub_path(ingress_dir: Path) -> Path:
    return ingress_dir / "hub.sock"


def supervisor_path(ingress_dir: Path) -> Path:
    """The supervisor's HTTP socket, which the workers pass what they do not serve to."""
    return ingress_dir / "supervisor.sock"


def spec_of(route: Route) -> dict[str, Any] | None:
    """What a worker builds `route` from, or None when only the supervisor can serve it."""
    describe = getattr(route.app, "ingress_spec", None)
    if describe is None:
        return None
    described = describe()  # None: not now (an instance being parked)
    if described is None:
        return None
    factory, args = described
    return {"factory": factory, "args": args, "runtime": route.runtime, "version": route.version}


class _Link:
    """One connected worker."""

    def __init__(self, pid: int, writer: asyncio.StreamWriter) -> None:
        self.pid = pid
        self.writer = writer
        self.waiting: dict[int, asyncio.Future] = {}
        self.next_id = 1

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(msgspec.json.encode(message) + b"\n")

    def ask(self, message: dict[str, Any]) -> asyncio.Future:
        ident, self.next_id = self.next_id, self.next_id + 1
        future = self.waiting[ident] = asyncio.get_running_loop().create_future()
        self.send({**message, "id": ident})
        return future

    def answered(self, answer: dict[str, Any]) -> None:
        future = self.waiting.pop(answer.get("id", 0), None)
        if future is not None and not future.done():
            future.set_result(answer)

    def gone(self) -> None:
        """The worker exited: nothing it held can be served any more; stop waiting for it."""
        for future in self.waiting.values():
            if not future.done():
                future.set_result(None)
        self.waiting.clear()


class WorkerHub:
    def __init__(self, path: Path | None, routes: RouteTable) -> None:
        self.path = path  # None: no ingress workers (a daemon built in-process)
        self.routes = routes
        self.links: set[_Link] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.path is None:
            return
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.path), limit=MAX_LINE)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self.links):  # the workers exit when their link ends
            link.writer.close()
            link.gone()
        self.links.clear()  # and no later change waits for them

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = None
        try:
            line = await reader.readline()
            if not line:
                return  # `serve` checking that the hub listens
            msgspec.json.decode(line)  # the worker's hello
            # The pid the kernel gives (not one the peer claims): it may be killed below.
            sock = writer.get_extra_info("socket")
            pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            link = _Link(pid, writer)
            # The snapshot and joining the set happen in one step of the loop: a change
            # made before is in the snapshot, one made after is sent to this link too.
            routes = {name: spec for name, route in self.routes.items() if (spec := spec_of(route))}
            link.send({"op": "snapshot", "routes": routes})
            self.links.add(link)
            while line := await reader.readline():
                link.answered(msgspec.json.decode(line))
        except (OSError, ValueError, KeyError, TypeError, msgspec.DecodeError) as exc:
            log.warning("ingress worker link ended: %s", exc)
        finally:
            if link is not None:
                self.links.discard(link)
                link.gone()
            writer.close()

    # -- the Publisher the route table calls ------------------------------------------

    async def publish(self, name: str, route: Route | None) -> None:
        spec = spec_of(route) if route else None
        await self._ask({"op": "set", "name": name, "route": spec, "gone": route is None})

    async def drained(self, name: str, version: int, timeout: float) -> None:
        await self._ask({"op": "drain", "name": name, "version": version, "timeout": timeout}, timeout + ANSWER_TIMEOUT)

    async def collect(self) -> list[dict[str, Any]]:
        """Every worker's counters (`Metrics.export()` plus its pid and requests in flight)."""
        return await self._ask({"op": "stats"})

    async def _ask(self, message: dict[str, Any], timeout: float = ANSWER_TIMEOUT) -> list[dict[str, Any]]:
        links = list(self.links)
        if not links:
            return []
        futures = [link.ask(message) for link in links]
        done, _ = await asyncio.wait(futures, timeout=timeout)
        for link, future in zip(links, futures):
            if future not in done:
                # A worker that cannot apply a change must not go on serving by the old
                # table: stop it; its replacement starts from a fresh snapshot.
                log.error("ingress worker %d did not answer %s in %.0f s: stopping it", link.pid, message["op"], timeout)
                self.links.discard(link)
                link.gone()
                _kill(link.pid)
        return [answer for future in futures if future in done and (answer := future.result())]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class IdleWatch:
    """Scale to zero with ingress workers (run/idle.py's `Workers`): a running instance
    is served by the workers, so its gate in the supervisor does not see its requests;
    the sweep asks here whether the workers did. Parking first moves the route to the
    supervisor in every worker and waits out their requests on it, so the next request
    reaches the gate that wakes the instance."""

    def __init__(self, hub: WorkerHub, routes: RouteTable) -> None:
        self.hub = hub
        self.routes = routes
        self._held: weakref.WeakSet = weakref.WeakSet()
        self._seen: dict[str, int] = {}  # requests the workers had served, by project
        self._collected: tuple[float, list[dict[str, Any]]] | None = None  # (when, counters)

    def holds(self, instance: Any) -> bool:
        return instance in self._held

    async def quiet(self, instance: Any) -> bool:
        name = getattr(instance, "project", None)
        route = self.routes.get(name) if name else None
        if route is None or route.instance is not instance or not self.hub.links:
            return True  # not the routed version, or no worker to ask
        if await self._served_since(name):
            return False
        self._held.add(instance)
        await self.routes.refresh(name)  # the workers now hand its requests to the supervisor
        await self.hub.drained(name, route.version, PARK_DRAIN_TIMEOUT)
        if await self._served_since(name, fresh=True):  # between the question and the switch
            await self.serving(instance)
            return False
        return True

    async def serving(self, instance: Any) -> None:
        self._held.discard(instance)
        name = getattr(instance, "project", None)
        route = self.routes.get(name) if name else None
        if route is not None and route.instance is instance:
            await self.routes.refresh(name)

    async def _served_since(self, name: str, fresh: bool = False) -> bool:
        """Whether the workers served `name` since the last question (or have a request
        of it in flight). One sweep asks about every idle-looking instance: their first
        questions share one collection of the workers' counters; the check after the
        route moved (`fresh`) always asks anew."""
        now = time.monotonic()
        if fresh or self._collected is None or now - self._collected[0] > SWEEP_SHARE:
            self._collected = (now, await self.hub.collect())
        workers = self._collected[1]
        served = sum(w["projects"][name][3] for w in workers if name in w["projects"])
        busy = any(w["active"].get(name) for w in workers)
        before = self._seen.get(name)
        self._seen[name] = served
        return busy or served != before
