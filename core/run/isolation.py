"""What `/_api/substrate` shows about how process projects are isolated."""

from __future__ import annotations

from typing import Any

from tee_daemon.run import sandbox
from tee_daemon.run.runconfig import current


def bwrap_isolates_network() -> bool:
    """Whether projects can get a network namespace of their own here (the sandbox
    always makes one unless the network is shared)."""
    return sandbox.bwrap() is not None



def isolation_facts() -> dict[str, Any]:
    """What `/_api/substrate` shows about how process projects are isolated."""
    _network, _egress = current().network, current().egress
    if sandbox.bwrap() is None:
        return {
            "kind": "none",
            "enforced": False,
            "detail": f"NOT ISOLATED: {sandbox.unavailable_reason()}; projects run as plain processes "
            "with a clean environment (accepted by the operator with TEE_DAEMON_ALLOW_UNENFORCED_ISOLATION)",
            "network_mode": _network,
        }
    return {
        "kind": "bubblewrap",
        "enforced": True,
        "version": sandbox.version(),
        "identity": "a host uid and gid of its own per project (>= 200000, never 0, kept across restarts); "
        "no capabilities in any namespace, no_new_privs, no nested user namespaces (seccomp), /proc/sys read-only",
        "namespaces": ["user", "mount", "pid", "ipc", "uts", "cgroup", *(["net"] if _network == "isolated" else [])],
        "filesystem": "read-only system folders and toolchains; own tree and build read-only; own data dir and /tmp "
        "read-write; no other project's files, no daemon state; binds never follow links a project could write",
        "network_mode": _network,
        "network": (
            "isolated: each project has a network namespace of its own and is served over a unix socket; it cannot "
            "reach another project, the daemon or the host's loopback"
            + ("; outbound connections to the outside are allowed" if _egress else "; no outbound connections")
        )
        if _network == "isolated"
        else "SHARED (opt-in): projects listen on a 127.0.0.1 port and share the host's network: they can reach "
        "other loopback ports and the internet",
        "environment": "manifest env, secrets, DATA_DIR, PORT or LISTEN_UNIX, HOME, PATH only; bwrap itself gets a "
        "fixed clean environment",
    }

