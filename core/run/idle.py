"""Scale to zero (TEE_DAEMON_IDLE_STOP > 0): `forward_app` wraps the proxy in an
`IdleGate` that stamps `last_used` and counts requests in flight; one periodic task for
all instances parks a running instance with nothing in flight and no request for
`idle_stop` seconds (``state: idle``, not a crash: no restart), and the next request
cold-starts it (`ProcessInstance.wake`, bounded by the start timeout, one start shared
by concurrent requests; a failed start answers 503 and the next request retries)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from typing import Protocol

from tee_daemon.kernel.errors import DeployFailed, error_body

log = logging.getLogger("tee_daemon.run.idle")

IDLE_CHECK_MAX = 5.0  # The idle sweep runs at least this often (and 4x per idle_stop).

_idlers: "weakref.WeakSet" = weakref.WeakSet()
_idler: asyncio.Task | None = None


class Workers(Protocol):
    """What scale to zero needs from the daemon's ingress workers (web/hub.py's
    `IdleWatch`), which serve a running instance's requests without this gate seeing them."""

    def holds(self, instance) -> bool:
        """True while the workers hand the instance's requests to the supervisor (here)."""

    async def quiet(self, instance) -> bool:
        """No worker served the instance since the last sweep: from now on they hand its
        requests here, and none is in flight there. False (and nothing changed) if they
        served it, which counts as a use."""

    async def serving(self, instance) -> None:
        """The instance runs again: let the workers serve it themselves."""


_workers: Workers | None = None


def configure(workers: Workers | None) -> None:
    """Set by the daemon at start (the ingress workers' side of scale to zero)."""
    global _workers
    _workers = workers


async def _idle_forever() -> None:
    """One sweep for all instances: park those idle for their `idle_stop` seconds."""
    while _idlers:
        shortest = min(inst.settings.idle_stop for inst in list(_idlers) or [IDLE_CHECK_MAX])
        await asyncio.sleep(min(max(shortest / 4, 0.05), IDLE_CHECK_MAX))
        for inst in list(_idlers):
            if _idle(inst):
                try:
                    await _park(inst)
                except Exception:  # one instance's trouble must not end the sweep for all
                    log.exception("idle stop of %s failed", getattr(inst, "label", inst))


def _idle(inst) -> bool:
    return inst.state == "running" and not inst.inflight and inst.last_used <= _now() - inst.settings.idle_stop


async def _park(inst) -> None:
    if _workers is None:
        inst.park()
        return
    if not await _workers.quiet(inst):
        inst.last_used = _now()  # the workers served it
        return
    if _idle(inst):  # still, after the workers were asked
        inst.park()
    if not inst.parked:  # a request came in meanwhile: the workers may serve it again
        await _workers.serving(inst)


def _ensure_idler() -> None:
    global _idler
    if _idler is None or _idler.done():
        _idler = asyncio.get_running_loop().create_task(_idle_forever())


class IdleGate:
    """The project's ASGI callable when scale to zero is on: the proxy, plus a timestamp,
    a count of requests in flight and, only when the instance is parked, a cold start."""

    __slots__ = ("instance", "proxy", "upstream", "_republish")

    def __init__(self, instance) -> None:
        from tee_daemon.proxy.forward import proxy_to

        self.instance = instance
        self.upstream = instance.upstream
        self.proxy = proxy_to(instance.upstream)
        self._republish: asyncio.Task | None = None

    def ingress_spec(self):
        """The workers serve a running instance themselves; a parked one (or one being
        parked) only through here, which wakes it."""
        inst = self.instance
        if inst.parked or inst.state != "running" or (_workers is not None and _workers.holds(inst)):
            return None
        return self.proxy.ingress_spec()

    async def __call__(self, scope, receive, send) -> None:
        inst = self.instance
        inst.last_used = _now()
        if inst.parked:
            try:
                await inst.wake()
            except DeployFailed as exc:
                await _unavailable(scope, send, f"project could not be started: {exc}")
                return
            if _workers is not None and (self._republish is None or self._republish.done()):
                # Beside this request, which is served from here meanwhile.
                self._republish = asyncio.get_running_loop().create_task(_workers.serving(inst))
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
    body = json.dumps(error_body(503, detail)).encode()
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


def forward_app(instance):
    """What a process runtime's `runtime_forward` returns: the bare proxy, or with
    scale to zero on, the proxy behind an `IdleGate`."""
    if instance.settings.idle_stop > 0:
        return IdleGate(instance)
    from tee_daemon.proxy.forward import proxy_to

    return proxy_to(instance.upstream)



def watch_idle(instance) -> None:
    """Park `instance` when idle for its settings' `idle_stop` seconds."""
    _idlers.add(instance)
    _ensure_idler()


def forget_idle(instance) -> None:
    _idlers.discard(instance)
