"""What each project name serves: the live routes, and how a change reaches every
ingress worker before the API answers.

The deployer owns the one `RouteTable` (in the supervisor). A `RouteTable` is the dict
the supervisor's own front door reads (`routes.get(name)` on the hot path), and every
change to it goes through an awaited method (`switch`, `drop`, `drop_all`) that also
tells the `Publisher` (the hub the ingress workers listen to, `web/hub.py`) and waits
until each worker has it. Requests a worker already routed to a replaced route are waited
for with `drained`, as the supervisor's own are.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from tee_daemon.kernel.contract import ASGIApp, Instance


class Route:
    """A live instance and the number of requests it is serving right now."""

    __slots__ = ("app", "instance", "runtime", "version", "active", "_idle")

    def __init__(self, app: ASGIApp, instance: Instance | None, runtime: str, version: int) -> None:
        self.app = app
        self.instance = instance  # None in an ingress worker: the supervisor owns instances
        self.runtime = runtime
        self.version = version
        self.active = 0
        self._idle: asyncio.Event | None = None

    def done(self) -> None:
        self.active -= 1
        if self.active == 0 and self._idle is not None:
            self._idle.set()

    async def drained(self, timeout: float) -> None:
        """Wait until requests already routed here have finished (bounded)."""
        if self.active == 0:
            return
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass


class Publisher(Protocol):
    """Where route changes go besides the supervisor's own table (the worker hub)."""

    async def publish(self, name: str, route: Route | None) -> None:
        """Return once every connected ingress worker routes `name` to `route` (None:
        the name is gone)."""

    async def drained(self, name: str, version: int, timeout: float) -> None:
        """Return once no worker has a request in flight on `name`'s `version` (bounded)."""


class RouteTable(dict[str, Route]):
    """The live routes by project name; change them only through the async methods."""

    def __init__(self) -> None:
        super().__init__()
        self.publisher: Publisher | None = None  # set by the daemon when workers serve

    async def switch(self, name: str, route: Route) -> None:
        self[name] = route
        if self.publisher is not None:
            await self.publisher.publish(name, route)

    async def refresh(self, name: str) -> None:
        """Publish `name`'s route again: what its app says about how the workers may
        serve it has changed (scale to zero parks or wakes it)."""
        route = self.get(name)
        if route is not None and self.publisher is not None:
            await self.publisher.publish(name, route)

    async def drop(self, name: str) -> Route | None:
        route = self.pop(name, None)
        if route is not None and self.publisher is not None:
            await self.publisher.publish(name, None)
        return route

    async def drop_all(self) -> list[Route]:
        routes = list(self.values())
        for name in list(self):
            await self.drop(name)
        return routes

    async def drained(self, name: str, route: Route, timeout: float) -> None:
        """Wait (bounded) for the requests on a replaced `route`, here and in the workers."""
        waits = [route.drained(timeout)]
        if self.publisher is not None:
            waits.append(self.publisher.drained(name, route.version, timeout))
        await asyncio.gather(*waits)
