"""What the daemon's settings say about running process projects, handed in once.

`configure` is called where the daemon is assembled (`core/daemon.py`) with the one
`Settings` and the callback that counts restarts (the admin metrics: run/ does not
import web/); every process instance reads `current()` when it is made.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

NETWORK_MODES = ("isolated", "shared")


class ProcessSettings(msgspec.Struct, frozen=True, kw_only=True):
    idle_stop: float = 0.0  # Seconds without a request before a process is parked; 0 = never.
    wake_timeout: float = 30.0  # How long a cold start may take (the daemon's start_timeout).
    network: str = "isolated"  # "isolated" (own namespace, unix socket) or "shared" (a loopback port).
    egress: bool = True  # Isolated projects may open outbound connections to the outside.
    # Supervision checks `Instance.healthy` this often; this many failures in a row
    # end a running process so that it is restarted.
    health_interval: float = 5.0
    health_failures: int = 3
    # Called with the project's name each time supervision restarts its process.
    on_restart: Callable[[str], None] | None = None


_current = ProcessSettings()


def configure(settings, on_restart: Callable[[str], None] | None = None) -> ProcessSettings:
    """The process projects' settings from the daemon's `Settings`."""
    global _current
    if settings.project_network not in NETWORK_MODES:
        raise ValueError(f"network must be one of {NETWORK_MODES}, not {settings.project_network!r}")
    _current = ProcessSettings(
        idle_stop=max(float(settings.idle_stop), 0.0),
        wake_timeout=float(settings.start_timeout),
        network=settings.project_network,
        egress=settings.project_egress == "allow",
        on_restart=on_restart,
    )
    return _current


def current() -> ProcessSettings:
    return _current
