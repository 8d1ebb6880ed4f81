"""What keeps tenants apart, wired together once per daemon (SPEC section 9).

`Tenancy` owns the per-project identities (`identity`), the cgroup limits (`limits`),
the size-limited volumes holding each data dir and /tmp (`volume`) and outbound
access for isolated namespaces (`egress`), and hands the sandbox what it needs.

At start it checks that each of them really works on this machine. One that does not
is refused loudly: the daemon exits with the reason, unless the operator accepted it
with ``TEE_DAEMON_ALLOW_UNENFORCED_ISOLATION=1``; `/_api/substrate` then lists what is
not enforced (``isolation.unenforced``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from tee_daemon.run import egress, limits, sandbox, volume
from tee_daemon.run.identity import Identities, Identity
from tee_daemon.settings import Settings
from tee_daemon.state.store import Store

log = logging.getLogger("tee_daemon.run.tenancy")


class Tenant:
    """One project's identity and folders, as the deploy path passes them on."""

    def __init__(self, identity: Identity | None, data_dir: Path, tmp_dir: Path | None, cache_dir: Path) -> None:
        self.identity = identity
        self.data_dir = data_dir
        self.tmp_dir = tmp_dir
        self.cache_dir = cache_dir


class Tenancy:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.identities = Identities(settings.data_dir)
        self.key = daemon_key(settings.data_dir)
        self.unenforced: dict[str, str] = {}
        self.cgroups = None
        self.egress = None
        self.volumes = False
        self.limits = None

    # -- start-up ------------------------------------------------------------------

    def start(self) -> None:
        """Bring up every part that applies. What cannot be enforced here was refused
        by `tee-daemon serve` already (see `problems`), or accepted by the operator."""
        s = self.settings
        if s.backend == "docker":  # Containers get the engine's equivalents.
            sandbox.configure(data_root=s.data_dir, egress=None, cgroups=None)
            return
        self.unenforced = problems(s)
        if self.unenforced and not s.allow_unenforced_isolation:
            raise SystemExit(refusal(self.unenforced))
        for reason in self.unenforced.values():
            log.warning("NOT ENFORCED (accepted by the operator): %s", reason)
        self.limits = limits.Limits(
            memory_mb=s.project_memory_mb, cpus=s.project_cpus, pids=s.project_pids, disk_mb=s.project_disk_mb
        )
        if "limits" not in self.unenforced:
            self.cgroups = limits.Cgroups(self.key, self.limits)
        self.volumes = "disk" not in self.unenforced
        if self.volumes:
            self.store.before_removing = volume.release
        # Builds of isolated projects always go out through it (they fetch dependencies,
        # never through the host's network, where the daemon's port is); running projects
        # only with TEE_DAEMON_PROJECT_EGRESS=allow (process.configure).
        if s.project_network == "isolated" and "egress" not in self.unenforced:
            self.egress = egress.Egress(self.key)
        sandbox.configure(data_root=s.data_dir, egress=self.egress, cgroups=self.cgroups)

    def close(self) -> None:
        """At shutdown, after every project stopped: unmount the volumes (a start mounts
        them again) and remove the firewall of the egress."""
        if self.volumes:
            volume.release_all(self.store.projects_dir)
        if self.egress is not None:
            self.egress.close()
            self.egress = None
        if self.cgroups is not None:
            self.cgroups.close()
            self.cgroups = None

    # -- per project ---------------------------------------------------------------

    def tenant(self, project: str) -> Tenant:
        """The project's identity, its data dir and /tmp (on its volume), its caches."""
        sandboxed = sandbox.bwrap() is not None
        identity = self.identities.of(project) if sandboxed else None
        folder = self.store.project_dir(project)
        folder.mkdir(parents=True, exist_ok=True)
        cache = folder / "cache"
        cache.mkdir(exist_ok=True)
        if self.volumes and identity is not None:
            mount = volume.ensure(folder, size_mb=self.settings.project_disk_mb, uid=identity.uid, gid=identity.gid)
            return Tenant(identity, mount / "data", mount / "tmp", cache)
        data = self.store.data_dir(project)
        if identity is not None:
            os.chown(data, identity.uid, identity.gid)
            os.chmod(data, 0o700)
        return Tenant(identity, data, None, cache)

    def forget(self, project: str) -> None:
        """A deleted project: its cgroups and identity dropped (the store unmounts its
        volume before removing its folder)."""
        if self.cgroups is not None:
            self.cgroups.forget(project)
        self.identities.forget(project)

    def facts(self) -> dict[str, Any]:
        """Appended to the isolation facts of /_api/substrate (process projects only:
        containers report the engine's equivalents themselves)."""
        s = self.settings
        if s.backend == "docker":
            return {}
        facts: dict[str, Any] = {
            "limits": {
                "memory_mb": s.project_memory_mb,
                "cpus": s.project_cpus,
                "pids": s.project_pids,
                "disk_mb": s.project_disk_mb,
                "build_timeout_s": s.build_timeout,
                "cgroups": self.cgroups.facts() if self.cgroups is not None else None,
                "disk": "a loop-mounted ext4 volume per project holds its data dir and /tmp" if self.volumes else None,
            },
            "egress": s.project_egress if s.project_network == "isolated" else "shared network",
        }
        if self.egress is not None:
            facts["egress_detail"] = self.egress.facts()
        if self.unenforced:
            facts["unenforced"] = dict(self.unenforced)
        return facts


def daemon_key(data_dir: Path) -> str:
    """The short id naming this data dir's cgroups, firewall chains and address pool."""
    return hashlib.sha256(os.fsencode(str(data_dir))).hexdigest()[:8]


def remove_leftovers(data_dir: Path) -> None:
    """What a killed daemon of `data_dir` left on the host (mounted volumes, cgroups,
    firewall chains). A daemon starting again cleans them up itself; this is for a
    data dir that will not be served again (the test suite's, after a crash test)."""
    volume.release_all(data_dir)
    key = daemon_key(data_dir)
    if not isinstance(limits.probe(), str):
        limits.Cgroups(key, limits.Limits()).close()
    if egress.probe() is None:
        egress.Egress(key).close()


def problems(settings: Settings) -> dict[str, str]:
    """What of SPEC 9 this machine cannot enforce for process projects, part -> why."""
    if settings.backend == "docker":
        return {}
    found: dict[str, str] = {}
    if (reason := sandbox.unavailable_reason()) is not None:
        found["sandbox"] = f"projects cannot be sandboxed with identities of their own: {reason}"
    support = limits.probe()
    if isinstance(support, str):
        found["limits"] = f"memory, cpu and pids limits cannot be applied: {support}"
    if (reason := volume.probe()) is not None:
        found["disk"] = f"the disk limit cannot be applied: {reason}"
    if settings.project_network == "isolated" and (reason := egress.probe()) is not None:
        found["egress"] = (
            f"isolated projects and their builds cannot be given outbound access without the host here ({reason})"
        )
    return found


def refusal(found: dict[str, str]) -> str:
    return (
        "tee-daemon: refusing to start: " + "; ".join(found.values())
        + ". Run as root on a machine with bubblewrap, cgroups and loop devices, or accept this with "
        "TEE_DAEMON_ALLOW_UNENFORCED_ISOLATION=1"
    )  # fmt: skip
