"""The daemon's parts, each built once from the one `Settings`, shared by the API.

Everything is assembled in `__init__` (no part starts as None and is attached later);
`start` brings the parts up in order (sandbox, TEE and its log, the stored projects)
and `stop` takes them down. The web front (`web/app.py`) is built around a daemon:
its router serves the daemon's routes, metrics and origins.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from tee_daemon import __version__
from tee_daemon.kernel.registry import Registry
from tee_daemon.proxy.forward import ProxyLimits
from tee_daemon.run import containers, idle, launch, process
from tee_daemon.run.tenancy import Tenancy
from tee_daemon.state.deploy import Deployer
from tee_daemon.state.journal import Journal
from tee_daemon.state.store import Store
from tee_daemon.trust.tee import Tee, connect_tee
from tee_daemon.web.accesslog import AccessLog
from tee_daemon.web.auth import load_or_create_token
from tee_daemon.web.hub import IdleWatch, WorkerHub, hub_path
from tee_daemon.kernel.routes import RouteTable
from tee_daemon.web.metrics import Metrics
from tee_daemon.web.origins import Origins

from .settings import Settings

log = logging.getLogger("tee_daemon")
# One INFO line per guest-agent call would drown the daemon's own log.
for noisy in ("httpx", "dstack_sdk"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


class Daemon:
    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.token, self.token_path = load_or_create_token(settings.data_dir, settings.token)
        self.store = Store(settings.data_dir)
        self.registry = registry or Registry()
        self.tenancy = Tenancy(settings, self.store)
        # The front door's parts: the live routes (switched by the deployer), the
        # counters, the host policy and what the proxies forward under.
        self.routes = RouteTable()
        self.metrics = Metrics(access_log=AccessLog(settings.data_dir / "logs" / "access.log"))
        self.origins = Origins(settings)
        self.proxy_limits = ProxyLimits(settings.max_request_body, settings.trusted_proxies)
        # The ingress workers' feed: every route change reaches them before the API answers.
        hub_socket = hub_path(settings.ingress_dir) if settings.ingress_dir else None
        self.hub = WorkerHub(hub_socket, self.routes)
        self.routes.publisher = self.hub
        # The transparency log exists from the start; `start` opens it with the TEE.
        self.journal = Journal(settings.data_dir)
        self.deployer = Deployer(
            settings, self.store, self.registry, self.routes, journal=self.journal, tenancy=self.tenancy
        )
        # What the TEE is: "none" until `start` connects (or finds none: "unavailable").
        self.tee: Tee | None = None
        self.tee_mode = "none"
        self.tee_info: dict = {}

    async def start(self) -> None:
        # run/ gets the settings, and a callback for the restart counter (it imports no web/).
        process.configure(self.settings, on_restart=self.metrics.restart)
        # Scale to zero asks the ingress workers whether they served a project (if any).
        idle.configure(IdleWatch(self.hub, self.routes) if self.hub.path else None)
        containers.configure(self.settings, on_restart=self.metrics.restart)
        self.tenancy.start()
        await self._start_tee()
        process.remove_stale_socket_dirs(self.store.run_dir)
        await self.deployer.restore()
        await asyncio.to_thread(self.journal.reconcile, list(self.deployer.projects.values()))
        await self.hub.start()  # last: the ingress workers start once it listens
        log.info("tee-daemon %s serving %d projects", __version__, len(self.deployer.projects))

    async def _start_tee(self) -> None:
        """The TEE (dstack agent, else the built-in simulator) and the checked log."""
        error = None
        try:
            self.tee = await asyncio.to_thread(connect_tee, self.settings.data_dir)
            self.tee_mode = self.tee.mode
            self.tee_info = await asyncio.to_thread(self.tee.info)
        except Exception as exc:  # The daemon still serves; attestation says why it cannot.
            error = str(exc)
            self.tee_mode = "unavailable"
            log.error("no TEE: %s", exc)
        await asyncio.to_thread(self.journal.open, self.tee, error)

    async def stop(self) -> None:
        await self.hub.stop()
        await self.deployer.shutdown()
        if self.metrics.access_log is not None:
            self.metrics.access_log.close()  # flush
        if self.tee is not None:
            self.tee.close()
            self.tee = None
        self.tenancy.close()

    def substrate(self) -> dict:
        facts = {
            "daemon": "tee-daemon",
            "version": __version__,
            "backend": self.settings.backend,
            "runtimes": self.registry.runtime_facts(),  # each plugin's own facts nested
            "tee": self.tee_mode,
            "tee_info": self.tee_info,
            # The app-compose document the daemon runs under (SPEC 12): its SHA-256 is the
            # event log's compose-hash, which `verify` checks (the daemon's own image).
            "app_compose": self.tee_info.get("app_compose"),
            "transparency_log": self.journal.status(),
        }
        # How projects are kept apart is core's (the sandbox, or the container engine).
        facts["isolation"] = {**launch.isolation(self.settings.backend), **self.tenancy.facts()}
        return facts

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir
