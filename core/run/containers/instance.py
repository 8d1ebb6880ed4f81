"""One version of a project as a container: created (or adopted) hardened as the package
docstring says, awaited until it answers HTTP, stopped (removed) or detached (left
running for the next daemon to adopt), and the proxy that forwards to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from tee_daemon.kernel.contract import Instance
from tee_daemon.kernel.errors import DeployFailed
from tee_daemon.run.containers.engine import (
    DEFAULT_PORT,
    LABEL_CONFIG,
    LABEL_RUNTIME,
    MiB,
    client,
    config,
    daemon_id,
    ensure_network,
    ensure_volume,
    filters,
    labels,
    log_line,
    memory_bytes,
    network_name,
    note_projects_dir,
    short,
    volume_name,
)
from tee_daemon.run.containers.facts import check_oci_runtime
from tee_daemon.run.containers.mounts import check_binds, container_identity, host_data_dir_owned_by, volume_owned_by
from tee_daemon.run.containers.watch import ContainerWatch

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    image_setting: str | None = None  # The setting that names `image`, for the error when it is missing.
    daemon_id: str | None = None  # None: this daemon's id worked out from `projects_dir`


class ContainerInstance(ContainerWatch, Instance):
    """One version of a project running as a container; see the module docstring."""

    def __init__(self, spec: ContainerSpec) -> None:
        self.spec = spec
        self.cfg = config()
        self.did = spec.daemon_id or daemon_id(spec.projects_dir)
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

        check_binds([*self.spec.mounts, *([{"source": self.spec.data_dir}] if self.spec.data_dir else [])])
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
        mine_only = filters(self.did, self.spec.project, self.spec.version)
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
            volume_owned_by(c, self.spec.image, volume_name(self.did, self.spec.project), int(uid), int(gid),
                             labels(self.did, self.spec.project, self.spec.version))
        elif os.geteuid() == 0:
            host_data_dir_owned_by(self.spec.data_dir, int(uid), int(gid))
        last: Exception | None = None
        for _ in range(5):
            host_port = None if self.internal else free_port()
            name = f"tee-{self.did}-{self.spec.project}-v{self.spec.version}-{secrets.token_hex(3)}"
            ports = None if host_port is None else {f"{self.port}/tcp": ("127.0.0.1", host_port)}
            try:
                ctr = c.containers.create(self.spec.image, name=name, labels=mine, detach=True, ports=ports, **run)
            except docker.errors.ImageNotFound:
                hint = f"; set {self.spec.image_setting} to an image it has" if self.spec.image_setting else ""
                raise DeployFailed(f"{self.label}: image {self.spec.image} is not in the engine (nothing is "
                                   f"pulled here: the operator pulls or imports it{hint})") from None
            except docker.errors.APIError as exc:
                raise DeployFailed(f"{self.label}: the container could not be created: {short(exc)}") from None
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
        raise DeployFailed(f"{self.label}: no free loopback port for the container ({short(last)})")

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

    # -- Instance ------------------------------------------------------------------------

    def _failure(self, what: str) -> DeployFailed:
        return DeployFailed.with_log(f"{self.label} {what}", self.recent_log())

    def _inspect(self) -> dict:
        return client().api.inspect_container(self.container_id)

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
                raise DeployFailed(f"{self.label}: the container is gone ({short(exc)})") from None
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
            "image": self.spec.image,
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
    client()  # No engine: a clear 4xx.
    note_projects_dir(spec.projects_dir)
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
