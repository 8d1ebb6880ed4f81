"""The Docker engine as this daemon uses it: its settings, the client, names and labels,
and the per-project objects (network, volume) with their clean-up.

Everything goes through the engine's API (docker-py, found the standard way: DOCKER_HOST),
so it works the same when the daemon itself runs in a container next to the engine.
Every object carries the labels ``tee-daemon.daemon`` (this daemon's id: a hash of its
projects folder, or TEE_DAEMON_DOCKER_ID), ``tee-daemon.project`` and, for images and
containers, ``tee-daemon.version``; see the package docstring for what each object is.

The settings come from the daemon's one `Settings` (`configure`, called where the daemon
is assembled); nothing here reads the daemon's environment but DOCKER_HOST (docker-py's).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from tee_daemon.run.logfiles import log_line  # noqa: F401  (used by instance, watch)
from tee_daemon.kernel.errors import DeployFailed, UserError
from tee_daemon.run.identity import daemon_id_of

LABEL_DAEMON = "tee-daemon.daemon"
LABEL_PROJECT = "tee-daemon.project"
LABEL_VERSION = "tee-daemon.version"
LABEL_CONFIG = "tee-daemon.config"
LABEL_RUNTIME = "tee-daemon.runtime"

DEFAULT_PORT = "8080"
LOG_TAIL = 30
MiB = 2**20


# -- configuration ------------------------------------------------------------------------


class DockerConfig(msgspec.Struct, frozen=True):
    memory: str = "512m"
    cpus: float = 1.0
    pids: int = 256
    oci_runtime: str | None = None
    keep_volumes: bool = False
    read_only: bool = True
    tmpfs_size: str = "64m"
    restart_max: int = 10
    build_timeout: float = 600.0
    build_memory: str = "512m"
    max_context: int = 200 * MiB
    log_max_size: str = "10m"
    egress: str = "allow"  # "deny": the project's network is internal (no route out)
    disk_mb: int = 1024
    # The variable that set build_timeout (named in the error a slow build gets).
    build_timeout_var: str = "TEE_DAEMON_BUILD_TIMEOUT"
    # TEE_DAEMON_DOCKER_ID: this daemon's id on a shared engine (else a hash of its folder).
    daemon_id: str | None = None
    # TEE_DAEMON_DOCKER_IMAGE_<RUNTIME>: base images of process runtimes (--backend docker).
    images: dict[str, str] = {}


DEFAULT_TMP_MB = 64  # /tmp of a container (a tmpfs: it counts against the memory limit too)


def docker_config(settings: Any) -> DockerConfig:
    """The containers' settings from the daemon's `Settings`: SPEC section 9's per-project
    limits (TEE_DAEMON_PROJECT_*, TEE_DAEMON_BUILD_TIMEOUT), overridden for containers by
    the TEE_DAEMON_DOCKER_* ones where set."""
    s = settings
    memory = s.docker_memory or f"{int(s.project_memory_mb)}m"
    return DockerConfig(
        memory=memory,
        cpus=s.docker_cpus if s.docker_cpus is not None else float(s.project_cpus),
        pids=s.docker_pids if s.docker_pids is not None else int(s.project_pids),
        oci_runtime=s.docker_runtime or None,
        keep_volumes=bool(s.docker_keep_volumes),
        read_only=bool(s.docker_read_only),
        # /tmp is part of the project's disk budget.
        tmpfs_size=s.docker_tmpfs_size or f"{min(DEFAULT_TMP_MB, int(s.project_disk_mb))}m",
        restart_max=int(s.docker_restart_max),
        build_timeout=float(s.docker_build_timeout if s.docker_build_timeout is not None else s.build_timeout),
        # Builds run under the project's limits (SPEC 9).
        build_memory=s.docker_build_memory or memory,
        max_context=int(s.docker_max_context),
        log_max_size=s.docker_log_max_size,
        egress=s.project_egress,
        disk_mb=int(s.project_disk_mb),
        build_timeout_var="TEE_DAEMON_DOCKER_BUILD_TIMEOUT" if s.docker_build_timeout is not None
        else "TEE_DAEMON_BUILD_TIMEOUT",
        daemon_id=s.docker_id or None,
        images=dict(s.docker_images),
    )


_config = DockerConfig()
_on_restart: Callable[[str], None] | None = None


def configure(settings: Any, on_restart: Callable[[str], None] | None = None) -> None:
    """The daemon's settings for everything container, and the callback that counts
    the engine's restarts of a project's container (called once, at assembly)."""
    global _config, _on_restart
    _config = docker_config(settings)
    _on_restart = on_restart


def note_restarts(project: str, count: int) -> None:
    """The engine restarted a container of `project` `count` times more."""
    if _on_restart is not None:
        for _ in range(max(count, 0)):
            _on_restart(project)


def config() -> DockerConfig:
    return _config


CFS_PERIOD_US = 100_000


def cpu_quota(cpus: float) -> int:
    return max(1000, int(cpus * CFS_PERIOD_US))


def memory_bytes(value: str) -> int:
    units = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
    v = value.strip().lower()
    if v and v[-1] in units:
        return int(float(v[:-1]) * units[v[-1]])
    return int(v)


# -- the engine ---------------------------------------------------------------------------

_lock = threading.Lock()
_client: Any = None


class EngineUnavailable(UserError):
    """No Docker engine answers: a deploy that needs one is refused (4xx)."""


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def new_client(timeout: float = 60.0):
    import docker

    return docker.from_env(timeout=timeout)


def client():
    """A connected docker-py client, or EngineUnavailable with a message for the author."""
    global _client
    with _lock:
        if _client is not None:
            try:
                _client.ping()
                return _client
            except Exception:
                with contextlib.suppress(Exception):
                    _client.close()
                _client = None
        try:
            c = new_client()
            c.ping()
        except Exception as exc:
            raise EngineUnavailable(
                f"this daemon has no reachable Docker engine ({docker_host()}: {short(exc)}); "
                "Dockerfile projects cannot run here"
            ) from None
        _client = c
        return c


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]



# -- naming -------------------------------------------------------------------------------


def projects_dir_of(ctx) -> Path:
    """<data-dir>/projects, from a Build- or StartContext: the folder holding the
    project's own (core's layout: the executor is core; plugins never work this out)."""
    if ctx.folders is not None:
        return Path(ctx.folders.project_dir).parent
    return Path(ctx.build_dir).parents[3]  # projects/<name>/versions/<n>/build


def daemon_id(projects_dir: Path) -> str:
    """This daemon's id on a shared engine: TEE_DAEMON_DOCKER_ID, else a data-dir hash."""
    return daemon_id_of(projects_dir, _config.daemon_id)


def network_name(did: str, project: str, internal: bool = False) -> str:
    return f"tee-{did}-{project}" + ("-internal" if internal else "")


def volume_name(did: str, project: str) -> str:
    return f"tee-{did}-{project}-data"


def labels(did: str, project: str, version: int | None = None, **extra: str) -> dict[str, str]:
    out = {LABEL_DAEMON: did, LABEL_PROJECT: project, **extra}
    if version is not None:
        out[LABEL_VERSION] = str(version)
    return out


def filters(did: str, project: str | None = None, version: int | None = None) -> dict:
    wanted = [f"{LABEL_DAEMON}={did}"]
    if project is not None:
        wanted.append(f"{LABEL_PROJECT}={project}")
    if version is not None:
        wanted.append(f"{LABEL_VERSION}={version}")
    return {"label": wanted}



# -- logs ---------------------------------------------------------------------------------

# `log_line` (imported above) is the one writer of the daemon's lines in a project's log.


def rotate_log(path: Path) -> None:
    from tee_daemon.run.logfiles import rotate

    with contextlib.suppress(OSError):
        rotate(path)



# -- per-project objects ------------------------------------------------------------------


def ensure_network(c, did: str, project: str, internal: bool = False):
    """The project's own bridge network; `internal` (egress deny): one without a route
    out of it, which the engine cannot publish ports from (the daemon then connects to
    the container's address on it)."""
    import docker

    name = network_name(did, project, internal)
    try:
        net = c.networks.get(name)
    except docker.errors.NotFound:
        net = None
    if net is not None:
        attrs = net.attrs
        if bool(attrs.get("Internal")) == internal and (attrs.get("Labels") or {}).get(LABEL_DAEMON) == did:
            return net
        # Not the network this daemon made (or made differently): never join it.
        with contextlib.suppress(Exception):
            net.remove()
    try:
        return c.networks.create(
            name, driver="bridge", internal=internal, labels=labels(did, project), check_duplicate=True
        )
    except docker.errors.APIError as exc:
        try:
            net = c.networks.get(name)  # Created concurrently.
        except docker.errors.NotFound:
            raise DeployFailed(f"{project}: the network {name} could not be created: {short(exc)}") from None
        if bool(net.attrs.get("Internal")) != internal:
            raise DeployFailed(f"{project}: the network {name} exists with other settings and is in use") from None
        return net


def ensure_volume(c, did: str, project: str):
    import docker

    name = volume_name(did, project)
    try:
        return c.volumes.get(name)
    except docker.errors.NotFound:
        return c.volumes.create(name, labels=labels(did, project))


def images(c, filters: dict) -> list[dict]:
    """Image summaries. (images.list() inspects each one, which races concurrent removals.)"""
    return c.api.images(filters=filters)


def remove_project(c, did: str, project: str, keep_volume: bool) -> None:
    """Every container, image, network (and the volume unless kept) of one project."""
    f = filters(did, project)
    for ctr in c.containers.list(all=True, filters=f, ignore_removed=True):
        with contextlib.suppress(Exception):
            ctr.remove(force=True, v=True)
    for img in images(c, f):
        with contextlib.suppress(Exception):
            c.images.remove(img["Id"], force=True)
    for net in c.networks.list(filters=f):
        with contextlib.suppress(Exception):
            net.remove()
    if not keep_volume:
        for vol in c.volumes.list(filters=f):
            with contextlib.suppress(Exception):
                vol.remove(force=True)


def sweep(projects_dir: Path) -> None:
    """Remove what this daemon left on the engine for projects that no longer exist."""
    try:
        c = client()
    except EngineUnavailable:
        return
    did = daemon_id(projects_dir)
    cfg = _config
    seen: set[str] = set()
    for ctr in c.containers.list(all=True, filters=filters(did), ignore_removed=True):
        seen.add((ctr.labels or {}).get(LABEL_PROJECT, ""))
    for img in images(c, filters(did)):
        seen.add((img.get("Labels") or {}).get(LABEL_PROJECT, ""))
    for net in c.networks.list(filters=filters(did)):
        seen.add((net.attrs.get("Labels") or {}).get(LABEL_PROJECT, ""))
    for vol in c.volumes.list(filters=filters(did)):
        seen.add((vol.attrs.get("Labels") or {}).get(LABEL_PROJECT, ""))
    seen.discard("")
    for project in seen:
        if not (projects_dir / project).exists():
            remove_project(c, did, project, cfg.keep_volumes)


# -- this process's daemons, deletes and old versions --------------------------------------

_dirs: set[Path] = set()
_dirs_lock = threading.Lock()


def note_projects_dir(projects_dir: Path) -> None:
    """Remember a projects dir this process serves from the engine (for `forget_project`)
    and, the first time, sweep what projects deleted while the daemon was down left."""
    with _dirs_lock:
        if projects_dir in _dirs:
            return
        _dirs.add(projects_dir)
    threading.Thread(target=sweep, args=(projects_dir,), daemon=True, name="docker-sweep").start()


def forget_project(project: str) -> None:
    """A project was deleted (its instance already stopped): remove its containers,
    images, network and (unless TEE_DAEMON_DOCKER_KEEP_VOLUMES) volume. A no-op in a
    process that never used the engine."""
    with _dirs_lock:
        dirs = list(_dirs)
    if not dirs:
        return
    c = client()
    keep = _config.keep_volumes
    for projects_dir in dirs:
        remove_project(c, daemon_id(projects_dir), project, keep)
