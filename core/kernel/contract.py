"""What core and runtime plugins hand each other.

Hooks are synchronous (pluggy does not await) and core calls build/start/stop off the
event loop. What a plugin hands back for serving is an `Instance`: core awaits its async
methods and sends traffic to the ASGI callable the plugin's `forward` hook returns.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import msgspec


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Identity(msgspec.Struct, frozen=True):
    """A project's host uid and gid (equal numbers: one group per project).

    Defined in the kernel because both contexts carry it; `tee_daemon.run.identity`
    allocates and records the numbers.
    """

    uid: int
    gid: int


class RuntimeInfo(msgspec.Struct, frozen=True):
    """A runtime a plugin provides.

    `detect_priority` orders autodetection: higher is tried first. The built-ins use
    dockerfile 60, deno 50, bun 40, node 30, python 20, static 0 (SPEC section 5); a
    third-party runtime picks a number that places it where it belongs.
    """

    name: str
    default_entry: str | None = None
    detect_priority: int = 10
    version: str | None = None
    description: str = ""


class Detection(msgspec.Struct, frozen=True):
    """A runtime's claim on a source tree: which runtime and which entry file."""

    runtime: str
    entry: str | None = None


class Folders(msgspec.Struct, frozen=True):
    """A project's folders, as core lays them out (plugins never derive one from another).

    `project_dir` holds the project's versions and records (the daemon's, not the
    project's to write); `data_dir` survives restarts and redeploys; `cache_dir` is the
    project's own cache (never shared with another project); `logs_dir` holds its logs.
    """

    project_dir: Path
    data_dir: Path
    cache_dir: Path
    logs_dir: Path


class BuildReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a build installed, for the attested manifest (SPEC section 12).

    `runtime_build` returns one (or True when it installs nothing worth reporting).
    `toolchain`: the exact versions of the tools the version runs and installs with
    (``{"node": "22.1.0", "npm": "10.7.0"}``); core adds the daemon's own.
    `lock_sha256`: SHA-256 (hex) of the lockfile the install used, or None.
    `deps_tree_sha256`: `tee_daemon.plugin.deps_tree_sha256` of the installed folder,
    or None when nothing was installed.
    `pinned`: True only when every installed dependency is fixed by that lockfile with
    integrity hashes (a frozen install), or nothing was installed.
    """

    toolchain: dict[str, str] = {}
    lock_sha256: str | None = None
    deps_tree_sha256: str | None = None
    pinned: bool = False


class BuildContext(msgspec.Struct, frozen=True):
    """Everything a build may read or write.

    `tree` is the deployed source (read-only by convention: its hash is published).
    `build_dir` is this version's private, writable folder (a venv, node_modules, ...).
    `cache_dir` is the project's own cache for this runtime (never shared with another
    project), for caches such as dependency installs keyed by a lockfile hash.
    `identity` is the project's own uid/gid: every build step runs sandboxed as it.
    `kept_versions` are the versions core keeps after this deploy (the new one
    included), oldest first; `folders` the project's folders; `daemon_id` a short id of
    this daemon, stable across restarts (for names on shared resources such as a
    container engine); `backend` where versions run ("process" or "docker").
    """

    project: str
    version: int
    runtime: str
    entry: str | None
    tree: Path
    build_dir: Path
    cache_dir: Path
    env: dict[str, str]
    allow_lifecycle_scripts: bool = False
    log_path: Path | None = None
    identity: Identity | None = None
    build_timeout: float = 600.0
    # SPEC 11, for the runtimes that use them (command, image): the manifest's command,
    # image (with its digest) and port; None otherwise.
    command: str | None = None
    image: str | None = None
    port: int | None = None
    kept_versions: tuple[int, ...] = ()
    folders: Folders | None = None
    daemon_id: str = ""
    backend: str = "process"


class StartContext(msgspec.Struct, frozen=True):
    """Everything needed to start one version of a project.

    `env` is the manifest env with the secrets merged in: hand it to the project only.
    `data_dir` survives restarts and redeploys. `run_dir` is a private folder for
    sockets and pid files of this start. `log_path` is where stdout/stderr belong.
    `identity` is the project's own uid/gid; `tmp_dir`, when set, is the folder that
    serves as its /tmp (on the same size-limited volume as `data_dir`).
    `kept_versions`, `folders`, `daemon_id` and `backend` as in `BuildContext`.
    """

    project: str
    version: int
    runtime: str
    entry: str | None
    tree: Path
    build_dir: Path
    data_dir: Path
    run_dir: Path
    log_path: Path
    env: dict[str, str]
    backend: str = "process"
    identity: Identity | None = None
    tmp_dir: Path | None = None
    command: str | None = None  # as in BuildContext
    image: str | None = None
    port: int | None = None
    kept_versions: tuple[int, ...] = ()
    folders: Folders | None = None
    daemon_id: str = ""


class Instance(abc.ABC):
    """One running version of a project, as started by a runtime plugin.

    Core owns the lifecycle: it waits for `ready`, switches traffic to the callable
    returned by the `runtime_forward` hook, and calls `stop` after draining.
    """

    @abc.abstractmethod
    async def ready(self, timeout: float) -> None:
        """Return once the instance serves; raise `DeployFailed` (with the last log
        lines in its message) if it exits or is not healthy within `timeout` seconds."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop serving and release every resource. Idempotent."""

    async def detach(self) -> None:
        """The daemon is shutting down (not a redeploy, not a delete).

        The default stops the instance. One that can outlive the daemon and be adopted
        by its next start (a container) may leave itself running instead.
        """
        await self.stop()

    async def healthy(self) -> bool:
        """A cheap liveness check used by supervision; default: always healthy."""
        return True

    def describe(self) -> dict[str, Any]:
        """Facts for admins (pid, address, container id...). Never secrets."""
        return {}
