"""Projects as Docker containers: engine access, image builds, and the container instance.

Shared by the Dockerfile runtime (and by any runtime that runs on ``--backend docker``).
Everything goes through the engine's API (docker-py, found the standard way: DOCKER_HOST),
so it works the same when the daemon itself runs in a container next to the engine.

Per project, on one engine, every object carries the labels ``tee-daemon.daemon`` (this
daemon's id: a hash of its data dir, or TEE_DAEMON_DOCKER_ID), ``tee-daemon.project`` and,
for images and containers, ``tee-daemon.version``:

* images ``tee-daemon/<project>:<id>-v<version>``, built with pull=False from a bounded
  context in bounded time, each build step under the project's memory and CPU limits on
  the project's own network; kept while the version is kept (rollback stays instant);
* one bridge network ``tee-<id>-<project>`` (``...-internal``, with no route out, when
  TEE_DAEMON_PROJECT_EGRESS=deny): containers of other projects are on other bridges,
  which the engine isolates from each other;
* one named volume ``tee-<id>-<project>-data`` mounted at /data (DATA_DIR), owned by the
  project's uid;
* one container per running version, its port published on 127.0.0.1 only (with egress
  deny the daemon connects to its address on the internal network instead). Hostile
  tenants are the norm (SPEC section 9), so every container runs as a uid:gid of the
  project's own (never root, whatever the image's USER), with every capability dropped,
  no-new-privileges, a read-only root and a size-limited tmpfs /tmp, memory (no swap),
  CPU and pids limits (TEE_DAEMON_PROJECT_*, overridden by TEE_DAEMON_DOCKER_*), never
  privileged, no devices, no host namespace, no engine socket; a restart policy
  on-failure with a cap, the configured OCI runtime. A kill for exceeding the memory
  limit is a line in the project's log. `hardening_facts` says all of it for
  /_api/substrate, and what the engine cannot do.

`stop()` always removes the container (a version retired after a switch, a delete, a
failed start); `detach()` (daemon shutdown) leaves a ready container running so that the
next daemon adopts it by its labels instead of recreating it. After a delete the runtime's
`runtime_forget` hook calls `forget_project` for the images, network and volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import secrets as _secrets
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from tee_daemon.kernel.errors import DeployFailed, UserError
from tee_daemon.kernel.contract import Instance

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


# SPEC section 9's per-project settings (core/settings.py reads the same names): the
# defaults of the container limits. The TEE_DAEMON_DOCKER_* variables below override
# them for containers only.
_PROJECT_ENV = {
    "TEE_DAEMON_PROJECT_MEMORY_MB": ("memory", lambda raw: f"{int(raw)}m"),
    "TEE_DAEMON_PROJECT_CPUS": ("cpus", float),
    "TEE_DAEMON_PROJECT_PIDS": ("pids", int),
    "TEE_DAEMON_PROJECT_DISK_MB": ("disk_mb", int),
    "TEE_DAEMON_PROJECT_EGRESS": ("egress", str),
    "TEE_DAEMON_BUILD_TIMEOUT": ("build_timeout", float),
}

_ENV = {
    "TEE_DAEMON_DOCKER_MEMORY": ("memory", str),
    "TEE_DAEMON_DOCKER_CPUS": ("cpus", float),
    "TEE_DAEMON_DOCKER_PIDS": ("pids", int),
    "TEE_DAEMON_DOCKER_RUNTIME": ("oci_runtime", str),
    "TEE_DAEMON_DOCKER_KEEP_VOLUMES": ("keep_volumes", bool),
    "TEE_DAEMON_DOCKER_READ_ONLY": ("read_only", bool),
    "TEE_DAEMON_DOCKER_TMPFS_SIZE": ("tmpfs_size", str),
    "TEE_DAEMON_DOCKER_RESTART_MAX": ("restart_max", int),
    "TEE_DAEMON_DOCKER_BUILD_TIMEOUT": ("build_timeout", float),
    "TEE_DAEMON_DOCKER_BUILD_MEMORY": ("build_memory", str),
    "TEE_DAEMON_DOCKER_MAX_CONTEXT": ("max_context", int),
    "TEE_DAEMON_DOCKER_LOG_MAX_SIZE": ("log_max_size", str),
}

DEFAULT_TMP_MB = 64  # /tmp of a container (a tmpfs: it counts against the memory limit too)


def config(environ=os.environ) -> DockerConfig:
    """The operator's settings, read on every use: TEE_DAEMON_PROJECT_* (and
    TEE_DAEMON_BUILD_TIMEOUT), overridden by TEE_DAEMON_DOCKER_* where set."""
    values: dict[str, Any] = {}
    for table in (_PROJECT_ENV, _ENV):
        for var, (field, kind) in table.items():
            raw = environ.get(var, "").strip()
            if not raw:
                continue
            try:
                values[field] = raw.lower() in {"1", "true", "yes", "on"} if kind is bool else kind(raw)
            except ValueError:
                name = getattr(kind, "__name__", "number")
                raise UserError(f"{var}={raw!r} is not a valid {'number' if name == '<lambda>' else name}") from None
            if field == "build_timeout":
                values["build_timeout_var"] = var
    if values.get("egress", "allow") not in ("allow", "deny"):
        raise UserError("TEE_DAEMON_PROJECT_EGRESS must be 'allow' or 'deny'")
    if "tmpfs_size" not in values:  # /tmp is part of the project's disk budget
        values["tmpfs_size"] = f"{min(DEFAULT_TMP_MB, int(values.get('disk_mb', 1024)))}m"
    if "build_memory" not in values:  # builds run under the project's limits (SPEC 9)
        values["build_memory"] = values.get("memory", "512m")
    return DockerConfig(**values)


CFS_PERIOD_US = 100_000


def _cpu_quota(cpus: float) -> int:
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


def _docker_host() -> str:
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
                f"this daemon has no reachable Docker engine ({_docker_host()}: {_short(exc)}); "
                "Dockerfile projects cannot run here"
            ) from None
        _client = c
        return c


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


_facts: dict[str, Any] = {}
_facts_at = 0.0
_facts_refreshing = False
FACTS_TTL = 30.0


def hardening_facts(cfg: DockerConfig, info: dict | None = None) -> dict[str, Any]:
    """What every project container gets (SPEC section 9 for containers), and what of it
    this engine (`info`: its /info answer, when known) or the build API cannot apply."""
    memory_mib = memory_bytes(cfg.memory) // MiB
    facts: dict[str, Any] = {
        "user": "a uid:gid of the project's own (never 0, never another project's), whatever the image's USER",
        "capabilities": "all dropped (CapEff 0)",
        "no_new_privileges": True,
        "privileged": False,
        "devices": "none",
        "namespaces": "own network, pid, ipc, uts and mount namespaces; never the host's",
        "engine_socket": "never bound in",
        "root_filesystem": "read-only" if cfg.read_only else "writable (TEE_DAEMON_DOCKER_READ_ONLY=0)",
        "tmp": f"tmpfs of {cfg.tmpfs_size} (counts against the memory limit)" if cfg.read_only else "image's",
        "limits": {
            "memory_mib": memory_mib,
            "swap_mib": 0,
            "cpus": cfg.cpus,
            "pids": cfg.pids,
            "tmp_mib": memory_bytes(cfg.tmpfs_size) // MiB if cfg.read_only else None,
            "restarts": cfg.restart_max,
        },
        "out_of_memory": "the container (or its process) is killed; the project's log says so, the admin "
        "view counts oom_kills, and the engine restarts a killed container",
        "network": "a bridge network per project: other projects' containers are on other bridges; its "
        "published port is bound to the host's loopback only, where no project reaches",
        "egress": cfg.egress + (" (an internal network: no route out; the daemon connects to the container's "
                                "address)" if cfg.egress == "deny" else ""),
        "build": {
            "memory_mib": memory_bytes(cfg.build_memory) // MiB,
            "swap_mib": 0,
            "cpus": cfg.cpus,
            "timeout_s": cfg.build_timeout,
            "network": "the project's own" + (" (internal)" if cfg.egress == "deny" else ""),
            "pull": False,
        },
    }
    unenforced = {
        "data_disk": "the engine's local volume driver cannot limit the size of a project's /data volume "
        f"(TEE_DAEMON_PROJECT_DISK_MB={cfg.disk_mb} applies to /tmp only)",
        "build_pids": "the engine's build API has no pids limit for build steps",
        "build_identity": "build steps run as the Dockerfile's USER (root by default) with the engine's default "
        "capabilities, unless the engine remaps users (userns-remap, rootless)",
        "host_services": "a container can connect to services of the host that listen on all interfaces "
        "(through its network's gateway); the daemon and published ports listen on loopback only",
    }
    if info:
        security = info.get("SecurityOptions") or []
        options = " ".join(security)
        facts["engine_security"] = sorted(o.split(",")[0].removeprefix("name=") for o in security)
        if "userns" in options or "rootless" in options:
            del unenforced["build_identity"]
        for key, what in (("MemoryLimit", "memory"), ("SwapLimit", "swap"), ("PidsLimit", "pids"),
                          ("CpuCfsQuota", "cpus")):
            if info.get(key) is False:
                unenforced[f"{what}_limit"] = f"the engine reports no {what} limit support ({key}: false)"
    facts["unenforced"] = unenforced
    return facts


def _engine_facts() -> dict[str, Any]:
    cfg = config()
    facts: dict[str, Any] = {
        "engine": None,
        "available": False,
        "docker_host": _docker_host() if _docker_host().startswith("unix://") else "tcp",
        "oci_runtime": cfg.oci_runtime or None,
    }
    try:
        c = client()
        version = c.version()
        info = c.info()
    except Exception as exc:
        facts["error"] = _short(exc)
        return facts
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    facts.update(
        engine=f"docker {version.get('Version')}",
        available=True,
        api_version=version.get("ApiVersion"),
        oci_runtime=cfg.oci_runtime or info.get("DefaultRuntime"),
        oci_runtimes=runtimes,
        storage_driver=info.get("Driver"),
        cgroup_version=info.get("CgroupVersion"),
        info={k: info.get(k) for k in ("SecurityOptions", "MemoryLimit", "SwapLimit", "PidsLimit", "CpuCfsQuota")},
    )
    if cfg.oci_runtime and cfg.oci_runtime not in runtimes:
        facts["error"] = f"configured OCI runtime {cfg.oci_runtime!r} is not installed in the engine"
    return facts


def substrate() -> dict[str, Any]:
    """Engine facts for /_api/substrate: cached, refreshed off the caller's thread (the
    caller may be the event loop), waiting at most 2 s for a first answer."""
    global _facts_refreshing
    now = time.monotonic()
    if (not _facts or now - _facts_at > FACTS_TTL) and not _facts_refreshing:
        _facts_refreshing = True

        def refresh() -> None:
            global _facts, _facts_at, _facts_refreshing
            try:
                _facts, _facts_at = _engine_facts(), time.monotonic()
            finally:
                _facts_refreshing = False

        worker = threading.Thread(target=refresh, daemon=True, name="docker-facts")
        worker.start()
        if not _facts:
            worker.join(2.0)
    facts = dict(_facts) if _facts else {"available": None, "engine": None, "note": "still asking the engine"}
    info = facts.pop("info", None)
    try:
        cfg = config()
    except UserError as exc:
        facts["error"] = str(exc)
        return facts
    facts["container"] = hardening_facts(cfg, info)
    return facts


def check_oci_runtime(c, cfg: DockerConfig) -> None:
    if not cfg.oci_runtime:
        return
    runtimes = (c.info().get("Runtimes") or {}).keys()
    if cfg.oci_runtime not in runtimes:
        raise EngineUnavailable(
            f"the OCI runtime {cfg.oci_runtime!r} (TEE_DAEMON_DOCKER_RUNTIME) is not installed in "
            f"the Docker engine (it has: {', '.join(sorted(runtimes))})"
        )


# -- naming -------------------------------------------------------------------------------


def projects_dir_of(ctx) -> Path:
    """<data-dir>/projects, from a Build- or StartContext: its build folder is
    projects/<name>/versions/<n>/build (the data dir may live elsewhere, on a volume)."""
    return Path(ctx.build_dir).parents[3]


def daemon_id(projects_dir: Path) -> str:
    """This daemon's id on a shared engine: TEE_DAEMON_DOCKER_ID, else a data-dir hash."""
    override = os.environ.get("TEE_DAEMON_DOCKER_ID", "").strip().lower()
    if override:
        return "".join(c for c in override if c.isalnum())[:16] or "x"
    return hashlib.sha256(str(projects_dir.resolve()).encode()).hexdigest()[:10]


def image_tag(did: str, project: str, version: int) -> str:
    return f"tee-daemon/{project}:{did}-v{version}"


def network_name(did: str, project: str, internal: bool = False) -> str:
    return f"tee-{did}-{project}" + ("-internal" if internal else "")


def volume_name(did: str, project: str) -> str:
    return f"tee-{did}-{project}-data"


def labels(did: str, project: str, version: int | None = None, **extra: str) -> dict[str, str]:
    out = {LABEL_DAEMON: did, LABEL_PROJECT: project, **extra}
    if version is not None:
        out[LABEL_VERSION] = str(version)
    return out


def _filters(did: str, project: str | None = None, version: int | None = None) -> dict:
    wanted = [f"{LABEL_DAEMON}={did}"]
    if project is not None:
        wanted.append(f"{LABEL_PROJECT}={project}")
    if version is not None:
        wanted.append(f"{LABEL_VERSION}={version}")
    return {"label": wanted}


# -- logs ---------------------------------------------------------------------------------


def log_line(path: Path | None, message: str) -> None:
    """A line from the daemon itself in a project's log."""
    if path is None:
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as fh:
            fh.write(f"[tee-daemon {stamp}] {message}\n".encode())


def _rotate(path: Path) -> None:
    try:
        from tee_daemon.run.process import rotate
    except ImportError:  # pragma: no cover
        return
    with contextlib.suppress(OSError):
        rotate(path)


# -- builds -------------------------------------------------------------------------------


def _dockerignore(tree: Path) -> list[str] | None:
    path = tree / ".dockerignore"
    if not path.is_file() or path.is_symlink():
        return None
    lines = path.read_text(errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def build_context(tree: Path, dockerfile: str, max_bytes: int):
    """The build context as a tar file (honouring .dockerignore), refused above `max_bytes`."""
    from docker import utils

    ctx = utils.tar(str(tree), exclude=_dockerignore(tree), dockerfile=(dockerfile, None))
    size = ctx.seek(0, io.SEEK_END)
    ctx.seek(0)
    if size > max_bytes:
        ctx.close()
        raise DeployFailed(
            f"the Docker build context is {size / MiB:.1f} MiB, more than the limit of "
            f"{max_bytes / MiB:.0f} MiB (TEE_DAEMON_DOCKER_MAX_CONTEXT); list what the image "
            "does not need in .dockerignore"
        )
    return ctx


def build_image(
    *,
    tree: Path,
    dockerfile: str,
    tag: str,
    image_labels: dict[str, str],
    log_path: Path | None,
    cfg: DockerConfig,
    network: str | None = None,
) -> str:
    """Build with pull=False in at most cfg.build_timeout seconds; return the image id.

    Each build step's container gets the project's memory (no swap) and CPU limits and
    runs on `network` (the project's own network: not the engine's default bridge that
    other projects' builds share; internal with egress deny). The engine's build API has
    no pids limit, and steps run as the Dockerfile's USER (see `hardening_facts`).
    The engine's output goes to `log_path`; a failure raises DeployFailed with its tail.
    """
    import docker

    client()  # EngineUnavailable first, with its clear message.
    ctx = build_context(tree, dockerfile, cfg.max_context)
    api = _BuildClient(**docker.utils.kwargs_from_env(), version="auto", timeout=cfg.build_timeout)
    # Beyond what docker-py's container_limits accepts: the CPU quota and the network.
    api.extra_build_params = {"cpuperiod": CFS_PERIOD_US, "cpuquota": _cpu_quota(cfg.cpus)}
    if network:
        api.extra_build_params["networkmode"] = network
    build_memory = memory_bytes(cfg.build_memory)
    output: list[str] = []
    image_id = None
    error = None
    timed_out = threading.Event()

    def cancel() -> None:
        timed_out.set()
        api.abort()

    timer = threading.Timer(cfg.build_timeout, cancel)
    log_line(log_path, f"docker build {tag} (pull=False, limit {cfg.build_timeout:g}s, memory "
             f"{cfg.build_memory}, cpus {cfg.cpus:g}, network {network or 'default'})")
    out = open(log_path, "ab") if log_path else None
    try:
        timer.start()
        stream = api.build(
            fileobj=ctx,
            custom_context=True,
            encoding=None,
            tag=tag,
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
            labels=image_labels,
            container_limits={"memory": build_memory, "memswap": build_memory},
        )
        for item in stream:
            text = item.get("stream") or item.get("status") or ""
            if item.get("error"):
                error = item["error"].strip()
                text = f"ERROR: {error}\n"
            if isinstance(item.get("aux"), dict) and item["aux"].get("ID"):
                image_id = item["aux"]["ID"]
            if text:
                output.append(text)
                if out:
                    out.write(text.encode(errors="replace") if text.endswith("\n") else (text + "\n").encode())
                    out.flush()
    except docker.errors.APIError as exc:
        error = _short(exc)
    except Exception as exc:
        error = "the build was cut off" if timed_out.is_set() else _short(exc)
    finally:
        timer.cancel()
        ctx.close()
        if out:
            out.close()
        with contextlib.suppress(Exception):
            api.close()
    if timed_out.is_set():
        error = f"the Docker build took longer than {cfg.build_timeout:g}s ({cfg.build_timeout_var})"
    tail = "\n".join("".join(output).splitlines()[-LOG_TAIL:])
    if error is None and image_id is None:
        try:
            image_id = client().images.get(tag).id
        except Exception:
            error = "the engine reported no image"
    if error is not None:
        log_line(log_path, f"docker build failed: {error}")
        hint = ""
        if "pull access denied" in error or "not found" in error.lower() and "FROM" in tail:
            hint = " (nothing is pulled from a registry here: FROM must name an image already in the engine)"
        raise DeployFailed(f"the Dockerfile did not build: {error}{hint}\n--- build log tail ---\n{tail}", log=tail)
    return image_id


try:
    import docker as _docker

    class _BuildClient(_docker.APIClient):
        """An API client whose streaming build can be cut off from another thread."""

        _response = None
        extra_build_params: dict[str, Any] = {}

        def _post(self, url, **kwargs):
            if self.extra_build_params and url.endswith("/build"):
                kwargs["params"] = {**(kwargs.get("params") or {}), **self.extra_build_params}
            return super()._post(url, **kwargs)

        def _stream_helper(self, response, decode=False):
            self._response = response
            return super()._stream_helper(response, decode=decode)

        def abort(self) -> None:
            response = self._response
            if response is None:
                return
            with contextlib.suppress(Exception):
                sock = self._get_raw_response_socket(response)
                sock = getattr(sock, "_sock", sock)  # a SocketIO over a unix socket
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):
                response.close()

except ImportError:  # pragma: no cover - docker-py is a dependency
    _BuildClient = None  # type: ignore[assignment,misc]


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
            raise DeployFailed(f"{project}: the network {name} could not be created: {_short(exc)}") from None
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


def _images(c, filters: dict) -> list[dict]:
    """Image summaries. (images.list() inspects each one, which races concurrent removals.)"""
    return c.api.images(filters=filters)


def remove_project(c, did: str, project: str, keep_volume: bool) -> None:
    """Every container, image, network (and the volume unless kept) of one project."""
    f = _filters(did, project)
    for ctr in c.containers.list(all=True, filters=f, ignore_removed=True):
        with contextlib.suppress(Exception):
            ctr.remove(force=True, v=True)
    for img in _images(c, f):
        with contextlib.suppress(Exception):
            c.images.remove(img["Id"], force=True)
    for net in c.networks.list(filters=f):
        with contextlib.suppress(Exception):
            net.remove()
    if not keep_volume:
        for vol in c.volumes.list(filters=f):
            with contextlib.suppress(Exception):
                vol.remove(force=True)


def prune_images(c, did: str, project: str, keep_versions: set[int]) -> None:
    """Images of versions the project no longer keeps (and no container uses)."""
    for img in _images(c, _filters(did, project)):
        try:
            version = int((img.get("Labels") or {}).get(LABEL_VERSION, ""))
        except ValueError:
            continue
        if version not in keep_versions:
            with contextlib.suppress(Exception):
                c.images.remove(img["Id"])


def sweep(projects_dir: Path) -> None:
    """Remove what this daemon left on the engine for projects that no longer exist."""
    try:
        c = client()
    except EngineUnavailable:
        return
    did = daemon_id(projects_dir)
    cfg = config()
    seen: set[str] = set()
    for ctr in c.containers.list(all=True, filters=_filters(did), ignore_removed=True):
        seen.add((ctr.labels or {}).get(LABEL_PROJECT, ""))
    for img in _images(c, _filters(did)):
        seen.add((img.get("Labels") or {}).get(LABEL_PROJECT, ""))
    for net in c.networks.list(filters=_filters(did)):
        seen.add((net.attrs.get("Labels") or {}).get(LABEL_PROJECT, ""))
    for vol in c.volumes.list(filters=_filters(did)):
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
    keep = config().keep_volumes
    for projects_dir in dirs:
        remove_project(c, daemon_id(projects_dir), project, keep)


def prune_old_images(projects_dir: Path, project: str) -> None:
    """Images of versions whose folder core has pruned (no longer kept for rollback)."""
    versions = projects_dir / project / "versions"
    try:
        kept = {int(p.name) for p in versions.iterdir() if p.name.isdigit()}
    except OSError:
        return  # Being deleted: runtime_forget removes everything.
    prune_images(client(), daemon_id(projects_dir), project, kept)


# -- the container instance ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse_ts(line: bytes) -> tuple[float | None, bytes]:
    """Split docker's RFC 3339 nano timestamp prefix off a log line."""
    head, sep, rest = line.partition(b" ")
    if not sep:
        return None, line
    try:
        text = head.decode()
        base, _, frac = text.rstrip("Z").partition(".")
        ts = datetime.fromisoformat(base + "+00:00").timestamp() + float("0." + (frac or "0"))
    except ValueError:
        return None, line
    return ts, rest


# -- identities, the data volume, what may be bound ---------------------------------------

# Used only where core hands no identity (ctx.identity: no sandbox on this machine), in a
# range of its own, below core's (tee_daemon.run.identity starts at 200000).
FALLBACK_FIRST_ID = 150_000
FALLBACK_LAST_ID = 199_999
FALLBACK_FILE = "container-identities.json"
_ids_lock = threading.Lock()


def _fallback_id(data_root: Path, project: str) -> int:
    """A number of the project's own, recorded in <data-dir>/container-identities.json
    before use and never handed out twice (not even after a delete)."""
    from tee_daemon.state.store import atomic_write

    path = data_root / FALLBACK_FILE
    with _ids_lock:
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError):
            records = {}
        projects = records.setdefault("projects", {})
        number = projects.get(project)
        if not isinstance(number, int):
            number = int(records.get("next", FALLBACK_FIRST_ID))
            if number > FALLBACK_LAST_ID:
                raise DeployFailed("the daemon has used up its range of container identities")
            projects[project] = number
            records["next"] = number + 1
            atomic_write(path, json.dumps(records, sort_keys=True).encode(), mode=0o600)
        return number


def container_identity(project: str, projects_dir: Path, identity: Any = None) -> tuple[int, int]:
    """The uid and gid a project's containers run as, whatever the image's USER says:
    core's identity of the project (a runtime passes `ctx.identity`, the one its sandbox
    uses), else one allocated here. Never 0, never another project's."""
    if identity is not None:
        uid, gid = int(identity.uid), int(identity.gid)
    else:
        uid = gid = _fallback_id(projects_dir.parent, project)
    if uid <= 0 or gid <= 0:
        raise DeployFailed(f"{project}: refusing to run a container as uid {uid}, gid {gid}")
    return uid, gid


def _volume_owned_by(c, image: str, volume: str, uid: int, gid: int, mine: dict[str, str]) -> None:
    """Make the root of the project's named volume the project's (mode 0700), so that its
    unprivileged user can write /data. The engine does it: a container that is created,
    never started, mounts the volume, and an archive holding one directory entry for the
    mount point (with that owner) is extracted onto it. No image content is run."""
    import docker

    point = f"tee-volume-{_secrets.token_hex(4)}"
    buf = io.BytesIO()
    import tarfile

    with tarfile.open(fileobj=buf, mode="w") as tar:
        entry = tarfile.TarInfo(point)
        entry.type, entry.mode, entry.uid, entry.gid, entry.mtime = tarfile.DIRTYPE, 0o700, uid, gid, int(time.time())
        tar.addfile(entry)
    helper = None
    try:
        helper = c.containers.create(
            image, name=f"tee-init-{_secrets.token_hex(6)}", entrypoint=["/nonexistent"],
            labels={**mine, LABEL_CONFIG: "volume-init"}, network_mode="none", user=f"{uid}:{gid}",
            mounts=[docker.types.Mount(target=f"/{point}", source=volume, type="volume", no_copy=True)],
        )
        if not helper.put_archive("/", buf.getvalue()):
            raise DeployFailed("the engine refused the archive")
    except docker.errors.APIError as exc:
        raise DeployFailed(f"the data volume {volume} could not be given to uid {uid}: {_short(exc)}") from None
    finally:
        if helper is not None:
            with contextlib.suppress(Exception):
                helper.remove(force=True, v=True)


def _host_data_dir_owned_by(path: str, uid: int, gid: int) -> None:
    """--backend docker without core's identity: the bound data dir becomes the project's."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.lchown(path, uid, gid)
        os.chmod(path, 0o700)


def _engine_sockets() -> set[str]:
    host = _docker_host()
    found = {"/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"}
    if host.startswith("unix://"):
        found.add(host[len("unix://"):])
    return {os.path.realpath(p) for p in found}


def _check_binds(binds: list[dict]) -> None:
    """No bind may expose the engine's socket (or a folder above it): that is root."""
    sockets = _engine_sockets()
    for bind in binds:
        src = os.path.realpath(str(bind["source"]))
        for sock in sockets:
            if sock == src or sock.startswith(src.rstrip("/") + "/"):
                raise DeployFailed(f"refusing to bind {bind['source']} into a container: it holds the "
                                   "Docker engine's socket")


# Image folders that only root may enter (Debian's and Alpine's /root is 0700).
ROOT_ONLY_DIRS = ("/root",)
PASSAGES = "container-passages"


def _passages(data_root: Path, targets: list[str]) -> list[dict]:
    """Binds for host paths under an image folder only root may enter (the daemon's
    interpreter under /root/.pyenv, say): over that folder, a read-only folder of the
    daemon's (<data-dir>/container-passages/root, mode 0755) holding only the empty
    mount points, so the project's uid can pass through to what is bound beneath.
    (A tmpfs cannot: runc gives it the mode of the folder it covers.)"""
    out: list[dict] = []
    for top in ROOT_ONLY_DIRS:
        inside = [t for t in targets if t.startswith(top + "/")]
        if not inside:
            continue
        passage = data_root / PASSAGES / top.strip("/")
        for target in inside:
            folder = passage / Path(target).relative_to(top)
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)
            while folder != passage.parent:
                with contextlib.suppress(OSError):
                    os.chmod(folder, 0o755)
                folder = folder.parent
        out.append({"source": str(passage), "target": top, "read_only": True})
    return out


class ContainerSpec(msgspec.Struct, frozen=True):
    project: str
    version: int
    runtime: str
    image: str
    projects_dir: Path
    log_path: Path
    env: dict[str, str]
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    working_dir: str | None = None
    mounts: list[dict] = []  # {"source", "target", "read_only"} binds (process backend)
    read_only: bool | None = None
    # The project's data dir bound read-write at this same path (DATA_DIR as spec.env has
    # it) instead of the project's named volume at /data (--backend docker).
    data_dir: str | None = None
    user: str | None = None  # "uid:gid" (never 0); None: one of the project's own (container_identity)


class ContainerInstance(Instance):
    """One version of a project running as a container; see the module docstring."""

    def __init__(self, spec: ContainerSpec) -> None:
        self.spec = spec
        self.cfg = config()
        self.did = daemon_id(spec.projects_dir)
        self.port = spec.env.get("PORT") or DEFAULT_PORT
        self.internal = self.cfg.egress == "deny"
        self.network = network_name(self.did, spec.project, self.internal)
        self.host_port: int | None = None
        # Where the daemon connects: the loopback port the engine publishes, or with
        # egress deny (an internal network, which publishes nothing) the container's
        # address on its network.
        self.address: tuple[str, int] | None = None
        self.container_id: str | None = None
        self.container_name: str | None = None
        self.adopted = False
        self.state = "starting"
        self.restarts = 0
        self.last_exit: int | None = None
        self.oom_kills = 0
        self.last_oom: float | None = None
        self._ready = False
        self._stopping = False
        self._follower: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._events: Any = None
        self._follow_stop = threading.Event()
        self._forward: Any = None

    @property
    def label(self) -> str:
        return f"{self.spec.project} v{self.spec.version}"

    @property
    def memory_mib(self) -> int:
        return memory_bytes(self.cfg.memory) // MiB

    # -- creation (in a worker thread) --------------------------------------------------

    def _user(self) -> str:
        if self.spec.user is not None:
            uid, _, gid = self.spec.user.partition(":")
            if uid.strip() in ("", "0", "root") or gid.strip() in ("0", "root"):
                raise DeployFailed(f"{self.label}: refusing to run a container as {self.spec.user!r}")
            return self.spec.user
        uid, gid = container_identity(self.spec.project, self.spec.projects_dir)
        return f"{uid}:{gid}"

    def _tmpfs(self, read_only: bool, image_volumes: list[str]) -> dict[str, str] | None:
        """/tmp, size-limited, on a read-only root; and over each VOLUME the image
        declares (else the engine gives it an anonymous volume: writable, unlimited and
        left behind), a size-limited tmpfs that keeps the folder's mode and goes with
        the container."""
        out: dict[str, str] = {}
        if read_only:
            out["/tmp"] = f"rw,nosuid,nodev,mode=1777,size={self.cfg.tmpfs_size}"
        taken = {"/tmp", "/data" if self.spec.data_dir is None else self.spec.data_dir}
        taken.update(str(m["target"]) for m in self.spec.mounts)
        for path in sorted(image_volumes):
            path = "/" + path.strip("/")
            if path not in taken and path != "/":
                out[path] = f"rw,nosuid,nodev,size={self.cfg.tmpfs_size}"
        return out or None

    def _image_volumes(self, c) -> list[str]:
        try:
            return sorted((c.api.inspect_image(self.spec.image).get("Config") or {}).get("Volumes") or {})
        except Exception:
            return []  # A missing image is reported by create.

    def _run_config(self, image_volumes: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
        """The container's configuration: the hardening of SPEC section 9 for containers."""
        cfg = self.cfg
        env = {**self.spec.env, "PORT": self.port}
        if self.spec.data_dir is None:
            env["DATA_DIR"] = "/data"
        read_only = cfg.read_only if self.spec.read_only is None else self.spec.read_only
        from docker.types import LogConfig, Mount

        _check_binds([*self.spec.mounts, *([{"source": self.spec.data_dir}] if self.spec.data_dir else [])])
        if self.spec.data_dir is None:
            mounts = [Mount(target="/data", source=volume_name(self.did, self.spec.project), type="volume",
                            no_copy=True)]
        else:
            mounts = [Mount(target=self.spec.data_dir, source=self.spec.data_dir, type="bind", read_only=False)]
        for m in self.spec.mounts:
            mounts.append(Mount(target=m["target"], source=str(m["source"]), type="bind",
                                read_only=bool(m.get("read_only", True))))
        memory = memory_bytes(cfg.memory)
        run = dict(
            environment=env,
            network=self.network,
            mounts=mounts,
            user=self._user(),
            mem_limit=memory,
            memswap_limit=memory,  # no swap on top
            nano_cpus=int(cfg.cpus * 1e9),
            pids_limit=cfg.pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            privileged=False,
            ipc_mode="private",
            oom_score_adj=500,  # Under host memory pressure a project goes before the daemon.
            read_only=read_only,
            tmpfs=self._tmpfs(read_only, list(image_volumes)),
            restart_policy={"Name": "on-failure", "MaximumRetryCount": cfg.restart_max},
            log_config=LogConfig(type="json-file", config={"max-size": cfg.log_max_size, "max-file": "2"}),
            command=self.spec.command,
            entrypoint=self.spec.entrypoint,
            working_dir=self.spec.working_dir,
        )
        if cfg.oci_runtime:
            run["runtime"] = cfg.oci_runtime
        run = {k: v for k, v in run.items() if v is not None}
        digest = hashlib.sha256(
            json.dumps({"image": self.spec.image, "port": self.port, "internal": self.internal, "run": run},
                       sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        return run | {"_digest": digest}

    def start(self) -> "ContainerInstance":
        import docker

        c = client()
        check_oci_runtime(c, self.cfg)
        ensure_network(c, self.did, self.spec.project, self.internal)
        if self.spec.data_dir is None:
            ensure_volume(c, self.did, self.spec.project)
        run = self._run_config(self._image_volumes(c))
        digest = run.pop("_digest")
        mine = labels(self.did, self.spec.project, self.spec.version,
                      **{LABEL_CONFIG: digest, LABEL_RUNTIME: self.spec.runtime})
        mine_only = _filters(self.did, self.spec.project, self.spec.version)
        existing = c.containers.list(all=True, filters=mine_only, ignore_removed=True)
        for ctr in existing:
            if (not self.adopted and ctr.status in ("running", "restarting")
                    and (ctr.labels or {}).get(LABEL_CONFIG) == digest):
                if self._adopt(ctr):
                    continue
            with contextlib.suppress(Exception):
                ctr.remove(force=True, v=True)
        if self.adopted:
            log_line(self.spec.log_path, f"{self.label}: adopted running container {self.container_name}")
            return self
        uid, _, gid = run["user"].partition(":")
        if self.spec.data_dir is None:
            _volume_owned_by(c, self.spec.image, volume_name(self.did, self.spec.project), int(uid), int(gid),
                             labels(self.did, self.spec.project, self.spec.version))
        elif os.geteuid() == 0:
            _host_data_dir_owned_by(self.spec.data_dir, int(uid), int(gid))
        last: Exception | None = None
        for _ in range(5):
            host_port = None if self.internal else _free_port()
            name = f"tee-{self.did}-{self.spec.project}-v{self.spec.version}-{_secrets.token_hex(3)}"
            ports = None if host_port is None else {f"{self.port}/tcp": ("127.0.0.1", host_port)}
            try:
                ctr = c.containers.create(self.spec.image, name=name, labels=mine, detach=True, ports=ports, **run)
            except docker.errors.ImageNotFound:
                hint = (f"; set TEE_DAEMON_DOCKER_IMAGE_{self.spec.runtime.upper()} to an image it has"
                        if self.spec.runtime in DEFAULT_IMAGES else "")
                raise DeployFailed(f"{self.label}: image {self.spec.image} is not in the engine (nothing is "
                                   f"pulled here: the operator pulls or imports it{hint})") from None
            except docker.errors.APIError as exc:
                raise DeployFailed(f"{self.label}: the container could not be created: {_short(exc)}") from None
            self._since = time.time() - 1
            self.container_id = ctr.id  # The OOM watcher needs it before the first start.
            self._start_watcher(self._since)
            try:
                ctr.start()
            except docker.errors.APIError as exc:
                last = exc
                self._stop_watcher()
                with contextlib.suppress(Exception):
                    ctr.remove(force=True, v=True)
                if "already allocated" in str(exc) or "address already in use" in str(exc):
                    continue  # Lost a race for the port: pick another.
                raise DeployFailed(f"{self.label}: the container did not start: {str(exc)[:800]}") from None
            self.container_id, self.container_name, self.host_port = ctr.id, name, host_port
            if host_port is not None:
                self.address = ("127.0.0.1", host_port)
            else:
                ctr.reload()
                self._note_address(ctr.attrs)
            self._start_follower()
            return self
        raise DeployFailed(f"{self.label}: no free loopback port for the container ({_short(last)})")

    def _note_address(self, attrs: dict) -> None:
        """The container's address on its internal network (it can change on a restart)."""
        if not self.internal:
            return
        net = ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).get(self.network) or {}
        ip = net.get("IPAddress")
        if ip:
            self.address = (ip, int(self.port))

    def _adopt(self, ctr) -> bool:
        if self.internal:
            self._note_address(ctr.attrs)
            if self.address is None:
                return False
        else:
            bindings = (ctr.attrs.get("HostConfig", {}).get("PortBindings") or {}).get(f"{self.port}/tcp") or []
            ports = [int(b["HostPort"]) for b in bindings if b.get("HostIp") == "127.0.0.1" and b.get("HostPort")]
            if not ports:
                return False
            self.host_port = ports[0]
            self.address = ("127.0.0.1", ports[0])
        self.container_id, self.container_name = ctr.id, ctr.name
        self.adopted = True
        self.restarts = ctr.attrs.get("RestartCount", 0)
        try:
            self._since = self.spec.log_path.stat().st_mtime
        except OSError:
            self._since = time.time()
        self._start_watcher(time.time())  # Kills before the adoption were logged by then.
        self._start_follower()
        return True

    # -- out of memory ---------------------------------------------------------------

    def _start_watcher(self, since: float) -> None:
        self._watch_stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch_oom, args=(self.container_id, self._watch_stop, since),
                                         daemon=True, name=f"oom-{self.spec.project}-v{self.spec.version}")
        self._watcher.start()

    def _stop_watcher(self) -> None:
        stop = getattr(self, "_watch_stop", None)
        if stop is not None:
            stop.set()
        events, self._events = self._events, None
        if events is not None:
            with contextlib.suppress(Exception):
                events.close()

    def _watch_oom(self, container_id: str, stop: threading.Event, since_ts: float) -> None:
        """The engine's "oom" events of the container: each kill by the memory limit (of
        the main process or any other) is a line in the project's log and counted in
        `describe()`. A burst of events for one kill gives one line."""
        since = int(since_ts) - 1
        last_nano = int(since_ts * 1e9)
        for _ in range(100_000):  # Reconnects after engine restarts, one a second at most.
            if stop.is_set():
                return
            try:
                api = new_client(timeout=None).api  # type: ignore[arg-type]
                self._events = events = api.events(
                    since=since, decode=True,
                    filters={"container": [container_id], "event": ["oom", "destroy"]},
                )
                if stop.is_set():
                    events.close()
                    return
                for event in events:
                    nano = int(event.get("timeNano") or 0)
                    if nano and nano <= last_nano:
                        continue
                    last_nano = max(last_nano, nano)
                    since = int(event.get("time") or since)
                    action = event.get("Action") or event.get("status")
                    if action == "destroy":
                        return
                    if action == "oom":
                        self._note_oom(nano / 1e9 if nano else time.time())
            except Exception:
                pass
            if stop.wait(1.0):
                return

    def _note_oom(self, when: float) -> None:
        if self.last_oom is not None and when - self.last_oom < 2.0:
            self.last_oom = when
            return  # The same kill (cgroup v1 reports one several times).
        self.last_oom = when
        self.oom_kills += 1
        log_line(self.spec.log_path, f"{self.label}: out of memory: a process of the container was killed for "
                 f"exceeding its memory limit of {self.memory_mib} MiB (TEE_DAEMON_PROJECT_MEMORY_MB)")

    def _why(self, state: dict, code: int | None) -> str:
        """" (killed for exceeding its memory limit ...)" when that is why it exited."""
        oom = bool(state.get("OOMKilled"))
        if not oom and code == 137:
            deadline = time.monotonic() + 1.0  # The watcher may not have seen the event yet.
            while not oom and time.monotonic() < deadline:
                oom = self.last_oom is not None and time.time() - self.last_oom < 30
                if not oom:
                    time.sleep(0.05)
        return f" (killed for exceeding its memory limit of {self.memory_mib} MiB)" if oom else ""

    # -- logs --------------------------------------------------------------------------

    def _start_follower(self) -> None:
        self._follower = threading.Thread(target=self._follow, daemon=True, name=f"logs-{self.container_name}")
        self._follower.start()

    def _follow(self) -> None:
        """Append the container's output to the project's log, across engine restarts."""
        import docker

        try:
            api = new_client(timeout=None).api  # type: ignore[arg-type]
        except Exception:
            return
        since = self._since
        last_state = None
        writes = 0
        while not self._follow_stop.is_set():
            try:
                stream = api.logs(self.container_id, stdout=True, stderr=True, stream=True,
                                  follow=True, timestamps=True, since=since)
                buf = b""
                with open(self.spec.log_path, "ab") as out:
                    for chunk in stream:
                        buf += chunk
                        *lines, buf = buf.split(b"\n")
                        for line in lines:
                            ts, text = _parse_ts(line)
                            if ts is not None:
                                if ts <= since:
                                    continue
                                since = ts
                            out.write(text + b"\n")
                        out.flush()
                        writes += 1
                        if writes % 200 == 0:
                            _rotate(self.spec.log_path)
            except docker.errors.NotFound:
                return
            except Exception:
                pass
            if self._follow_stop.is_set():
                return
            try:
                attrs = api.inspect_container(self.container_id)
            except docker.errors.NotFound:
                return
            except Exception:
                time.sleep(1)
                continue
            state = attrs.get("State", {})
            previous, self.restarts = self.restarts, attrs.get("RestartCount", self.restarts)
            status = state.get("Status")
            code = state.get("ExitCode")
            if code:
                self.last_exit = code
            self._note_address(attrs)
            key = (status, self.restarts)
            if key != last_state:
                if status == "running" and self.restarts > previous:
                    self.state = "running" if self._ready else self.state
                    if not code:  # Restarted already: the engine reset ExitCode.
                        code = self._died_with()
                    log_line(self.spec.log_path, f"{self.label}: container exited"
                             f"{f' with code {code}' if code else ''}{self._why(state, code)}; the engine "
                             f"restarted it (restart {self.restarts} of at most {self.cfg.restart_max})")
                elif status == "restarting" or (status == "exited" and self._engine_will_restart(attrs)):
                    self.state = "restarting"
                    log_line(self.spec.log_path, f"{self.label}: container exited with code {code}"
                             f"{self._why(state, code)}; the engine restarts it (restart {self.restarts + 1} "
                             f"of at most {self.cfg.restart_max})")
                elif status in ("exited", "dead"):
                    self.state = "exited"
                    if not self._stopping:
                        log_line(self.spec.log_path, f"{self.label}: container exited with code {code}"
                                 f"{self._why(state, code)} and is not restarted any more")
                elif status == "running":
                    self.state = "running" if self._ready else self.state
                last_state = key
            time.sleep(0.25)

    def _engine_will_restart(self, attrs: dict) -> bool:
        policy = attrs.get("HostConfig", {}).get("RestartPolicy", {}) or {}
        code = attrs.get("State", {}).get("ExitCode", 0)
        return policy.get("Name") == "on-failure" and code != 0 and attrs.get("RestartCount", 0) < policy.get(
            "MaximumRetryCount", 0)

    def recent_log(self) -> str:
        try:
            c = client()
            out = c.api.logs(self.container_id, stdout=True, stderr=True, tail=LOG_TAIL)
            return out.decode(errors="replace").rstrip()
        except Exception:
            return ""

    # -- Instance ------------------------------------------------------------------------

    def _failure(self, what: str) -> DeployFailed:
        return DeployFailed.with_log(f"{self.label} {what}", self.recent_log())

    def _inspect(self) -> dict:
        return client().api.inspect_container(self.container_id)

    def _died_with(self) -> int | None:
        """The exit code of the container's last death, from the engine's events."""
        try:
            events = client().api.events(
                since=int(self._since), until=int(time.time()) + 1, decode=True,
                filters={"container": self.container_id, "event": "die"},
            )
            code = None
            for event in events:
                code = (event.get("Actor", {}).get("Attributes") or {}).get("exitCode", code)
            return int(code) if code is not None else None
        except Exception:
            return None

    async def _answers(self) -> bool:
        """An HTTP answer on the container's address (the engine's proxy accepts
        connections before the program listens, so a TCP connect alone proves nothing)."""
        if self.address is None:
            return False
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.address), 2.0)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: tee-daemon-health\r\n"
                         b"Connection: close\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.read(5), 5.0)
            return head.startswith(b"HTTP/")
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                attrs = await asyncio.to_thread(self._inspect)
            except Exception as exc:
                raise DeployFailed(f"{self.label}: the container is gone ({_short(exc)})") from None
            state = attrs.get("State", {})
            if state.get("Status") in ("exited", "dead") or attrs.get("RestartCount", 0) > self.restarts:
                code = state.get("ExitCode")
                if not code:  # The engine restarted it already and reset ExitCode.
                    code = await asyncio.to_thread(self._died_with)
                why = await asyncio.to_thread(self._why, state, code)
                raise self._failure(f"exited with code {code}{why} before serving on port {self.port}")
            self._note_address(attrs)
            if state.get("Running") and await self._answers():
                break
            if time.monotonic() > deadline:
                raise self._failure(f"did not answer HTTP on port {self.port} within {timeout:g}s")
            await asyncio.sleep(0.1)
        self._ready = True
        self.state = "running"

    async def healthy(self) -> bool:
        return self.state == "running"

    def describe(self) -> dict[str, Any]:
        host, port = self.address or ("127.0.0.1", self.host_port)
        return {
            "container": self.container_name,
            "container_id": (self.container_id or "")[:12],
            "address": f"{host}:{port}",
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "oom_kills": self.oom_kills,
            "last_oom": (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_oom))
                         if self.last_oom is not None else None),
            "memory_limit_mib": self.memory_mib,
            "adopted": self.adopted,
            "sandbox": "container" + (f" ({self.cfg.oci_runtime})" if self.cfg.oci_runtime else ""),
        }

    async def stop(self) -> None:
        """Retired (redeploy, rollback), deleted or failed to start: the container goes."""
        if self._stopping:
            return
        self._stopping = True
        self.state = "stopped"
        self._follow_stop.set()
        self._stop_watcher()
        await asyncio.to_thread(self._remove_container)

    async def detach(self) -> None:
        """Daemon shutdown: a ready container keeps serving for the next daemon to adopt;
        only the log follower stops (the adopter catches up from the engine's log)."""
        if self._ready and not self._stopping:
            self._follow_stop.set()
            self._stop_watcher()
            return
        await self.stop()

    def _remove_container(self) -> None:
        if self.container_id is None:
            return
        try:
            c = client()
            ctr = c.containers.get(self.container_id)
            with contextlib.suppress(Exception):
                ctr.stop(timeout=5)
            ctr.remove(force=True, v=True)
        except Exception:
            pass


def start_container(spec: ContainerSpec) -> ContainerInstance:
    """Create (or adopt) the container of one version; core then awaits `ready`."""
    return ContainerInstance(spec).start()


class _Forward:
    """The proxy to a container's address, following it when it changes (an internal
    network's address after an engine restart)."""

    __slots__ = ("instance", "proxy")

    def __init__(self, instance: ContainerInstance) -> None:
        from tee_daemon.proxy.forward import proxy_to

        self.instance = instance
        self.proxy = proxy_to(instance.address)

    async def __call__(self, scope, receive, send) -> None:
        address = self.instance.address
        if address is not None and tuple(self.proxy.upstream) != tuple(address):
            from tee_daemon.proxy.forward import proxy_to

            old, self.proxy = self.proxy, proxy_to(address)
            old.close()
        await self.proxy(scope, receive, send)


def forward_app(instance: ContainerInstance):
    """What a runtime's `runtime_forward` returns for a container: the proxy to its
    loopback-published port (or its address on an internal network)."""
    if instance._forward is None:
        instance._forward = _Forward(instance)
    return instance._forward


# -- --backend docker: a process runtime's plan run in a container ----------------------

# The base image per process runtime. The host's runtime binary (and, for python, the
# daemon's interpreter and venvs) is bound in read-only at its own path, so the image only
# has to provide glibc and the shared libraries those binaries link (libstdc++, libgcc;
# for python also libssl3, libffi8, libsqlite3, zlib...). The defaults are pinned by digest;
# nothing here ever pulls: the operator pulls (or imports) the image into the engine, or
# sets TEE_DAEMON_DOCKER_IMAGE_<RUNTIME> to an image the engine already has.
DEFAULT_BASE = (
    "debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251"
)
DEFAULT_IMAGES = {"deno": DEFAULT_BASE, "bun": DEFAULT_BASE, "node": DEFAULT_BASE, "python": DEFAULT_BASE}


def runtime_image(runtime: str, environ=os.environ) -> str:
    """The base image for `runtime` under --backend docker (TEE_DAEMON_DOCKER_IMAGE_<RUNTIME>)."""
    override = environ.get(f"TEE_DAEMON_DOCKER_IMAGE_{runtime.upper()}", "").strip()
    if override:
        return override
    if runtime not in DEFAULT_IMAGES:
        raise UserError(f"no base image for runtime {runtime!r}: set TEE_DAEMON_DOCKER_IMAGE_{runtime.upper()}")
    return DEFAULT_IMAGES[runtime]


def backend_facts() -> dict[str, Any]:
    """/_api/substrate's isolation facts for deno, bun, node and python under --backend docker."""
    facts = {
        "kind": "container",
        "images": {rt: runtime_image(rt) for rt in DEFAULT_IMAGES},
        "filesystem": "the image's root read-only (tmpfs /tmp); own tree, build folder and runtime "
        "binary bound read-only; own data dir bound read-write",
        **substrate(),
    }
    container = facts.get("container")
    if isinstance(container, dict):
        container["build"] = "dependency installs run on the host, in the process sandbox (see limits)"
        unenforced = container.setdefault("unenforced", {})
        for key in ("build_pids", "build_identity"):
            unenforced.pop(key, None)
        unenforced["data_disk"] = ("the data dir bound from the host is not size-limited by the engine "
                                   "(TEE_DAEMON_PROJECT_DISK_MB applies to /tmp only)")
        if os.geteuid() != 0:
            container["user"] = ("the daemon's own uid:gid (not root; a daemon that is not root cannot "
                                 "give each project's data dir a uid of its own)")
    return facts


def _binds(paths, read_only: bool) -> list[dict]:
    """Each path bound at itself, and at its resolved path when that differs (symlinks in
    the tree, e.g. node_modules, point at resolved paths; argv uses the given ones)."""
    out: list[dict] = []
    for path in paths:
        for variant in (Path(path).absolute(), Path(path).resolve()):
            if variant.exists():
                out.append({"source": str(variant.resolve()), "target": str(variant), "read_only": read_only})
    return out


def process_spec(
    ctx,  # StartContext
    *,
    argv: list[str],
    cwd: Path,
    read_only=(),
    extra_env: dict[str, str] | None = None,
    path_dirs=(),
    facts: dict[str, Any] | None = None,
) -> ContainerSpec:
    """A process runtime's plan (what it would hand `process.start_process`) as a container:
    the same argv, environment and working directory; the version's tree and build folder
    and the runtime folders in `read_only` bound read-only at their own paths, the data dir
    read-write at its own path (DATA_DIR and HOME unchanged), run as the project's own
    uid:gid (core's identity of it; see `container_identity`; a daemon that is not root,
    and so cannot hand the data dir to another uid, runs it as its own non-root uid).
    The program listens on 0.0.0.0:$PORT inside its network namespace; the engine
    publishes that port on the host's loopback only (egress deny: the daemon connects to
    it on the project's internal network)."""
    from tee_daemon.run.process import base_env

    env = base_env(ctx.env, data_dir=ctx.data_dir, port=int(DEFAULT_PORT), path_dirs=list(path_dirs))
    env.update(extra_env or {})
    env.update(HOST="0.0.0.0", TMPDIR="/tmp")
    mounts: list[dict] = []
    seen: set[str] = {str(Path(ctx.data_dir).absolute())}
    for bind in _binds([ctx.tree, ctx.build_dir, *read_only], True):
        if bind["target"] not in seen:
            seen.add(bind["target"])
            mounts.append(bind)
    projects_dir = projects_dir_of(ctx)
    data_dir = str(Path(ctx.data_dir).absolute())
    mounts += _passages(projects_dir.parent, [m["target"] for m in mounts] + [data_dir])
    identity = getattr(ctx, "identity", None)
    if identity is None and os.geteuid() != 0:
        uid, gid = os.getuid(), os.getgid()  # Not root: cannot give the data dir away.
    else:
        uid, gid = container_identity(ctx.project, projects_dir, identity)
    return ContainerSpec(
        project=ctx.project,
        version=ctx.version,
        runtime=ctx.runtime,
        image=runtime_image(ctx.runtime),
        projects_dir=projects_dir,
        log_path=ctx.log_path,
        env=env,
        entrypoint=[str(argv[0])],
        command=[str(a) for a in argv[1:]],
        working_dir=str(cwd),
        mounts=mounts,
        data_dir=data_dir,
        user=f"{uid}:{gid}",
    )


def start_process(ctx, **plan) -> ContainerInstance:
    """`process.start_process`'s counterpart for --backend docker (same arguments)."""
    spec = process_spec(ctx, **plan)
    client()  # No engine: a clear 4xx.
    note_projects_dir(spec.projects_dir)
    return start_container(spec)
