"""Projects as Docker containers: engine access, image builds, and the container instance.

Shared by the Dockerfile runtime (and by any runtime that runs on ``--backend docker``).
Everything goes through the engine's API (docker-py, found the standard way: DOCKER_HOST),
so it works the same when the daemon itself runs in a container next to the engine.

Per project, on one engine, every object carries the labels ``tee-daemon.daemon`` (this
daemon's id: a hash of its data dir, or TEE_DAEMON_DOCKER_ID), ``tee-daemon.project`` and,
for images and containers, ``tee-daemon.version``:

* images ``tee-daemon/<project>:<id>-v<version>``, built with pull=False from a bounded
  context in bounded time; kept while the version is kept (rollback stays instant);
* one bridge network ``tee-<id>-<project>``: containers of other projects are on other
  bridges, which the engine isolates from each other;
* one named volume ``tee-<id>-<project>-data`` mounted at /data (DATA_DIR);
* one container per running version, its port published on 127.0.0.1 only; caps dropped,
  no-new-privileges, read-only root (tmpfs /tmp), memory/CPU/pids limits, restart policy
  on-failure with a cap, the configured OCI runtime.

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

from .errors import DeployFailed, UserError
from .runtime import Instance

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
    build_memory: str = "2g"
    max_context: int = 200 * MiB
    log_max_size: str = "10m"


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


def config(environ=os.environ) -> DockerConfig:
    """The operator's settings (TEE_DAEMON_DOCKER_*), read on every use."""
    values: dict[str, Any] = {}
    for var, (field, kind) in _ENV.items():
        raw = environ.get(var, "").strip()
        if not raw:
            continue
        try:
            values[field] = raw.lower() in {"1", "true", "yes", "on"} if kind is bool else kind(raw)
        except ValueError:
            raise UserError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
    return DockerConfig(**values)


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


def _engine_facts() -> dict[str, Any]:
    cfg = config()
    facts: dict[str, Any] = {
        "engine": None,
        "available": False,
        "docker_host": _docker_host() if _docker_host().startswith("unix://") else "tcp",
        "oci_runtime": cfg.oci_runtime or None,
        "limits": {"memory": cfg.memory, "cpus": cfg.cpus, "pids": cfg.pids},
        "isolation": "container per project: own bridge network, all capabilities dropped, "
        "no-new-privileges" + (", read-only root" if cfg.read_only else ""),
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
    return dict(_facts) if _facts else {"available": None, "engine": None, "note": "still asking the engine"}


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


def daemon_id(projects_dir: Path) -> str:
    """This daemon's id on a shared engine: TEE_DAEMON_DOCKER_ID, else a data-dir hash."""
    override = os.environ.get("TEE_DAEMON_DOCKER_ID", "").strip().lower()
    if override:
        return "".join(c for c in override if c.isalnum())[:16] or "x"
    return hashlib.sha256(str(projects_dir.resolve()).encode()).hexdigest()[:10]


def image_tag(did: str, project: str, version: int) -> str:
    return f"tee-daemon/{project}:{did}-v{version}"


def network_name(did: str, project: str) -> str:
    return f"tee-{did}-{project}"


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
        from .process import rotate
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
) -> str:
    """Build with pull=False in at most cfg.build_timeout seconds; return the image id.

    The engine's output goes to `log_path`; a failure raises DeployFailed with its tail.
    """
    import docker

    client()  # EngineUnavailable first, with its clear message.
    ctx = build_context(tree, dockerfile, cfg.max_context)
    api = _BuildClient(**docker.utils.kwargs_from_env(), version="auto", timeout=cfg.build_timeout)
    output: list[str] = []
    image_id = None
    error = None
    timed_out = threading.Event()

    def cancel() -> None:
        timed_out.set()
        api.abort()

    timer = threading.Timer(cfg.build_timeout, cancel)
    log_line(log_path, f"docker build {tag} (pull=False, limit {cfg.build_timeout:g}s)")
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
            container_limits={"memory": memory_bytes(cfg.build_memory), "memswap": -1},
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
        error = f"the Docker build took longer than {cfg.build_timeout:g}s (TEE_DAEMON_DOCKER_BUILD_TIMEOUT)"
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


def ensure_network(c, did: str, project: str):
    import docker

    name = network_name(did, project)
    try:
        return c.networks.get(name)
    except docker.errors.NotFound:
        pass
    try:
        return c.networks.create(
            name, driver="bridge", labels=labels(did, project), check_duplicate=True
        )
    except docker.errors.APIError:
        return c.networks.get(name)  # Created concurrently.


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
            ctr.remove(force=True)
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
    user: str | None = None  # "uid:gid"; None: the image's user


class ContainerInstance(Instance):
    """One version of a project running as a container; see the module docstring."""

    def __init__(self, spec: ContainerSpec) -> None:
        self.spec = spec
        self.cfg = config()
        self.did = daemon_id(spec.projects_dir)
        self.port = spec.env.get("PORT") or DEFAULT_PORT
        self.host_port: int | None = None
        self.container_id: str | None = None
        self.container_name: str | None = None
        self.adopted = False
        self.state = "starting"
        self.restarts = 0
        self.last_exit: int | None = None
        self._ready = False
        self._stopping = False
        self._follower: threading.Thread | None = None
        self._follow_stop = threading.Event()

    @property
    def label(self) -> str:
        return f"{self.spec.project} v{self.spec.version}"

    # -- creation (in a worker thread) --------------------------------------------------

    def _run_config(self) -> dict[str, Any]:
        cfg = self.cfg
        env = {**self.spec.env, "PORT": self.port}
        if self.spec.data_dir is None:
            env["DATA_DIR"] = "/data"
        read_only = cfg.read_only if self.spec.read_only is None else self.spec.read_only
        from docker.types import LogConfig, Mount

        if self.spec.data_dir is None:
            mounts = [Mount(target="/data", source=volume_name(self.did, self.spec.project), type="volume")]
        else:
            mounts = [Mount(target=self.spec.data_dir, source=self.spec.data_dir, type="bind", read_only=False)]
        for m in self.spec.mounts:
            mounts.append(Mount(target=m["target"], source=str(m["source"]), type="bind",
                                read_only=bool(m.get("read_only", True))))
        run = dict(
            environment=env,
            network=network_name(self.did, self.spec.project),
            mounts=mounts,
            mem_limit=memory_bytes(cfg.memory),
            memswap_limit=memory_bytes(cfg.memory),
            nano_cpus=int(cfg.cpus * 1e9),
            pids_limit=cfg.pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=read_only,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={cfg.tmpfs_size}"} if read_only else None,
            restart_policy={"Name": "on-failure", "MaximumRetryCount": cfg.restart_max},
            log_config=LogConfig(type="json-file", config={"max-size": cfg.log_max_size, "max-file": "2"}),
            command=self.spec.command,
            entrypoint=self.spec.entrypoint,
            working_dir=self.spec.working_dir,
            user=self.spec.user,
        )
        if cfg.oci_runtime:
            run["runtime"] = cfg.oci_runtime
        digest = hashlib.sha256(
            json.dumps(
                {"image": self.spec.image, "env": env, "cfg": msgspec.to_builtins(cfg),
                 "cmd": self.spec.command, "ep": self.spec.entrypoint, "wd": self.spec.working_dir,
                 "mounts": self.spec.mounts, "ro": read_only, "data": self.spec.data_dir,
                 "user": self.spec.user},
                sort_keys=True, default=str,
            ).encode()
        ).hexdigest()[:16]
        return {k: v for k, v in run.items() if v is not None} | {"_digest": digest}

    def start(self) -> "ContainerInstance":
        import docker

        c = client()
        check_oci_runtime(c, self.cfg)
        ensure_network(c, self.did, self.spec.project)
        if self.spec.data_dir is None:
            ensure_volume(c, self.did, self.spec.project)
        run = self._run_config()
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
                ctr.remove(force=True)
        if self.adopted:
            log_line(self.spec.log_path, f"{self.label}: adopted running container {self.container_name}")
            return self
        last: Exception | None = None
        for _ in range(5):
            host_port = _free_port()
            name = f"tee-{self.did}-{self.spec.project}-v{self.spec.version}-{_secrets.token_hex(3)}"
            try:
                ctr = c.containers.create(
                    self.spec.image, name=name, labels=mine, detach=True,
                    ports={f"{self.port}/tcp": ("127.0.0.1", host_port)}, **run,
                )
            except docker.errors.ImageNotFound:
                hint = (f"; set TEE_DAEMON_DOCKER_IMAGE_{self.spec.runtime.upper()} to an image it has"
                        if self.spec.runtime in DEFAULT_IMAGES else "")
                raise DeployFailed(f"{self.label}: image {self.spec.image} is not in the engine (nothing is "
                                   f"pulled here: the operator pulls or imports it{hint})") from None
            except docker.errors.APIError as exc:
                raise DeployFailed(f"{self.label}: the container could not be created: {_short(exc)}") from None
            try:
                ctr.start()
            except docker.errors.APIError as exc:
                last = exc
                with contextlib.suppress(Exception):
                    ctr.remove(force=True)
                if "already allocated" in str(exc) or "address already in use" in str(exc):
                    continue  # Lost a race for the port: pick another.
                raise DeployFailed(f"{self.label}: the container did not start: {_short(exc)}") from None
            self.container_id, self.container_name, self.host_port = ctr.id, name, host_port
            self._since = time.time() - 1
            self._start_follower()
            return self
        raise DeployFailed(f"{self.label}: no free loopback port for the container ({_short(last)})")

    def _adopt(self, ctr) -> bool:
        bindings = (ctr.attrs.get("HostConfig", {}).get("PortBindings") or {}).get(f"{self.port}/tcp") or []
        for b in bindings:
            if b.get("HostIp") == "127.0.0.1" and b.get("HostPort"):
                self.host_port = int(b["HostPort"])
                self.container_id, self.container_name = ctr.id, ctr.name
                self.adopted = True
                self.restarts = ctr.attrs.get("RestartCount", 0)
                try:
                    self._since = self.spec.log_path.stat().st_mtime
                except OSError:
                    self._since = time.time()
                self._start_follower()
                return True
        return False

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
            key = (status, self.restarts)
            if key != last_state:
                if status == "running" and self.restarts > previous:
                    self.state = "running" if self._ready else self.state
                    log_line(self.spec.log_path, f"{self.label}: container exited"
                             f"{f' with code {code}' if code else ''}; the engine restarted it "
                             f"(restart {self.restarts} of at most {self.cfg.restart_max})")
                elif status == "restarting" or (status == "exited" and self._engine_will_restart(attrs)):
                    self.state = "restarting"
                    log_line(self.spec.log_path, f"{self.label}: container exited with code {code}; "
                             f"the engine restarts it (restart {self.restarts + 1} of at most {self.cfg.restart_max})")
                elif status in ("exited", "dead"):
                    self.state = "exited"
                    if not self._stopping:
                        log_line(self.spec.log_path, f"{self.label}: container exited with code {code}"
                                 " and is not restarted any more")
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
        """An HTTP answer on the published port (the engine's proxy accepts connections
        before the program listens, so a TCP connect alone proves nothing)."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.host_port), 2.0)
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
                raise self._failure(f"exited with code {code} before serving on port {self.port}")
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
        return {
            "container": self.container_name,
            "container_id": (self.container_id or "")[:12],
            "address": f"127.0.0.1:{self.host_port}",
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
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
        await asyncio.to_thread(self._remove_container)

    async def detach(self) -> None:
        """Daemon shutdown: a ready container keeps serving for the next daemon to adopt;
        only the log follower stops (the adopter catches up from the engine's log)."""
        if self._ready and not self._stopping:
            self._follow_stop.set()
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
            ctr.remove(force=True)
        except Exception:
            pass


def start_container(spec: ContainerSpec) -> ContainerInstance:
    """Create (or adopt) the container of one version; core then awaits `ready`."""
    return ContainerInstance(spec).start()


def forward_app(instance: ContainerInstance):
    """What a runtime's `runtime_forward` returns for a container: the proxy to its
    loopback-published port."""
    from .proxy import proxy_to

    return proxy_to(("127.0.0.1", instance.host_port))


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
    return {
        "kind": "container",
        "images": {rt: runtime_image(rt) for rt in DEFAULT_IMAGES},
        "filesystem": "the image's root read-only (tmpfs /tmp); own tree, build folder and runtime "
        "binary bound read-only; own data dir bound read-write",
        **substrate(),
    }


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
    read-write at its own path (DATA_DIR and HOME unchanged), run as the daemon's uid:gid.
    The program listens on 0.0.0.0:$PORT inside its network namespace; the engine
    publishes that port on the host's loopback only."""
    from .process import base_env

    env = base_env(ctx.env, data_dir=ctx.data_dir, port=int(DEFAULT_PORT), path_dirs=list(path_dirs))
    env.update(extra_env or {})
    env.update(HOST="0.0.0.0", TMPDIR="/tmp")
    mounts: list[dict] = []
    seen: set[str] = {str(Path(ctx.data_dir).absolute())}
    for bind in _binds([ctx.tree, ctx.build_dir, *read_only], True):
        if bind["target"] not in seen:
            seen.add(bind["target"])
            mounts.append(bind)
    return ContainerSpec(
        project=ctx.project,
        version=ctx.version,
        runtime=ctx.runtime,
        image=runtime_image(ctx.runtime),
        projects_dir=Path(ctx.data_dir).parent.parent,
        log_path=ctx.log_path,
        env=env,
        entrypoint=[str(argv[0])],
        command=[str(a) for a in argv[1:]],
        working_dir=str(cwd),
        mounts=mounts,
        data_dir=str(Path(ctx.data_dir).absolute()),
        user=f"{os.getuid()}:{os.getgid()}",
    )


def start_process(ctx, **plan) -> ContainerInstance:
    """`process.start_process`'s counterpart for --backend docker (same arguments)."""
    spec = process_spec(ctx, **plan)
    client()  # No engine: a clear 4xx.
    note_projects_dir(spec.projects_dir)
    return start_container(spec)
