"""What the engine and every project container get, for `GET /_api/substrate`.

`hardening_facts` says what SPEC section 9 means for a container and what this engine (or
its build API) cannot apply; `substrate` adds the engine's own facts, cached and refreshed
off the caller's thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tee_daemon.run.containers.engine import (
    MiB,
    DockerConfig,
    EngineUnavailable,
    client,
    config,
    docker_host,
    memory_bytes,
    short,
)

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
        "docker_host": docker_host() if docker_host().startswith("unix://") else "tcp",
        "oci_runtime": cfg.oci_runtime or None,
    }
    try:
        c = client()
        version = c.version()
        info = c.info()
    except Exception as exc:
        facts["error"] = short(exc)
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
    facts["container"] = hardening_facts(config(), info)
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

