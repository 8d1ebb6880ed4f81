"""The daemon's parts wired together once, shared by the API handlers."""

from __future__ import annotations

import logging
from pathlib import Path

from . import __version__
from .auth import load_or_create_token
from .deploy import Deployer
from .registry import Registry
from .routing import Ingress
from .runtime import ASGIApp
from .settings import Settings
from .store import Store

log = logging.getLogger("tee_daemon")


class Daemon:
    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.token, self.token_path = load_or_create_token(settings.data_dir, settings.token)
        self.store = Store(settings.data_dir)
        self.registry = registry or Registry()
        self.ingress: Ingress | None = None
        self.deployer: Deployer | None = None
        self.tee_mode = "none"

    def attach(self, api: ASGIApp) -> Ingress:
        self.ingress = Ingress(api)
        self.deployer = Deployer(self.settings, self.store, self.registry, self.ingress)
        return self.ingress

    async def start(self) -> None:
        assert self.deployer is not None
        await self.deployer.restore()
        log.info("tee-daemon %s serving %d projects", __version__, len(self.deployer.projects))

    async def stop(self) -> None:
        if self.deployer is not None:
            await self.deployer.shutdown()

    def substrate(self) -> dict:
        runtimes = {
            name: {"version": info.version, "description": info.description}
            for name, info in sorted(self.registry.runtimes.items())
        }
        facts = {
            "daemon": "tee-daemon",
            "version": __version__,
            "backend": self.settings.backend,
            "runtimes": runtimes,
            "tee": self.tee_mode,
        }
        facts.update(self.registry.substrate())
        return facts

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir
