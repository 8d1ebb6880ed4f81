"""The daemon's parts wired together once, shared by the API handlers."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from tee_daemon import __version__

from tee_daemon.run import launch, process
from tee_daemon.web.auth import load_or_create_token
from tee_daemon.state.deploy import Deployer
from tee_daemon.state.journal import Journal
from tee_daemon.kernel.registry import Registry
from tee_daemon.web.ingress import Ingress
from tee_daemon.kernel.contract import ASGIApp
from .settings import Settings
from tee_daemon.state.store import Store
from tee_daemon.run.tenancy import Tenancy

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
        self.ingress: Ingress | None = None
        self.deployer: Deployer | None = None
        self.tee_mode = "none"
        self.tee = None  # tee.Tee once started
        self.tee_info: dict = {}
        self.journal: Journal | None = None

    def attach(self, api: ASGIApp) -> Ingress:
        from tee_daemon.proxy import forward as proxy
        from tee_daemon.web.accesslog import AccessLog

        proxy.configure(self.settings.max_request_body, self.settings.trusted_proxies)
        process.configure(
            idle_stop=self.settings.idle_stop,
            start_timeout=self.settings.start_timeout,
            network=self.settings.project_network,
            egress=self.settings.project_egress == "allow",
        )
        self.tenancy.start()
        from tee_daemon.web.origins import Origins

        self.ingress = Ingress(
            api, access_log=AccessLog(self.settings.data_dir / "logs" / "access.log"), origins=Origins(self.settings)
        )
        self.deployer = Deployer(self.settings, self.store, self.registry, self.ingress, tenancy=self.tenancy)
        return self.ingress

    async def start(self) -> None:
        assert self.deployer is not None
        await self._start_tee()
        process.remove_stale_socket_dirs(self.store.run_dir)
        await self.deployer.restore()
        if self.journal is not None:
            await asyncio.to_thread(self.journal.reconcile, list(self.deployer.projects.values()))
        log.info("tee-daemon %s serving %d projects", __version__, len(self.deployer.projects))

    async def _start_tee(self) -> None:
        """The TEE (dstack agent, else the built-in simulator) and the checked log."""
        from tee_daemon.trust.tee import connect_tee

        error = None
        try:
            self.tee = await asyncio.to_thread(connect_tee, self.settings.data_dir)
            self.tee_mode = self.tee.mode
            self.tee_info = await asyncio.to_thread(self.tee.info)
        except Exception as exc:  # The daemon still serves; attestation says why it cannot.
            error = str(exc)
            self.tee_mode = "unavailable"
            log.error("no TEE: %s", exc)
        self.journal = Journal(self.settings.data_dir, self.tee, error)
        await asyncio.to_thread(self.journal.open)
        self.deployer.journal = self.journal  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.deployer is not None:
            await self.deployer.shutdown()
        if self.ingress is not None:
            self.ingress.close()
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
            "transparency_log": self.journal.status() if self.journal else None,
        }
        # How projects are kept apart is core's (the sandbox, or the container engine).
        facts["isolation"] = {**launch.isolation(self.settings.backend), **self.tenancy.facts()}
        return facts

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir
