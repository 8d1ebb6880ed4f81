"""The runtime plugin contract: the plugin author's manual.

A runtime plugin is a module or object with functions marked `@hookimpl` (import it
from `tee_daemon.kernel.hookspecs`). Built-in runtimes are plugins like any other; third-party
ones are found through the entry-point group ``tee_daemon.runtimes``::

    [project.entry-points."tee_daemon.runtimes"]
    myruntime = "my_package.plugin"

Rules core enforces:

* Hooks are synchronous and are called with keyword arguments only; an implementation
  may accept fewer arguments than its spec. Core calls `runtime_build`,
  `runtime_start`, `runtime_stop` and `runtime_forget` in a worker thread, so
  blocking is fine there.
* `runtime_describe`, `runtime_detect` and `runtime_substrate` are called on every
  plugin. The other hooks
  are called only on the plugin that declared the runtime in `runtime_describe`, with
  the runtime's name, and the first non-None answer wins.
* Two plugins declaring the same runtime name is an error at startup, not a silent
  override. Core never loads plugin code from a deployed project.
* Auth, hashing, attestation and the transparency log are core's and are not hooks.
"""

from __future__ import annotations

from pathlib import Path

import pluggy

from tee_daemon.kernel.contract import (
    ASGIApp, BuildContext, BuildReport, Detection, Instance, RuntimeInfo, StartContext,
)  # fmt: skip

PROJECT = "tee_daemon"
ENTRY_POINT_GROUP = "tee_daemon.runtimes"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def runtime_describe() -> list[RuntimeInfo]:
    """Declare the runtimes this plugin provides.

    Called once per plugin at startup. Return one `RuntimeInfo` per runtime; a plugin
    may provide several (the Deno plugin provides ``deno`` and ``bun``). The version
    string is reported in ``GET /_api/substrate``.
    """


@hookspec
def runtime_detect(tree: Path) -> Detection | None:
    """Claim a source tree that has no explicit runtime.

    Called on every plugin with the unpacked tree (never execute anything from it).
    Return a `Detection` naming one of your runtimes, or None. When several claim a
    tree, the runtime with the highest `detect_priority` wins; ``static`` claims
    everything at priority 0.
    """


@hookspec(firstresult=True)
def runtime_build(runtime: str, ctx: BuildContext) -> BuildReport | bool | None:
    """Prepare a version to run: install dependencies, compile, check the entry exists.

    Write only under ``ctx.build_dir`` and ``ctx.cache_dir``. Raise
    `tee_daemon.kernel.errors.DeployFailed` with a message for the author when the project
    cannot be built (the previous version keeps serving). Return a `BuildReport` saying
    what was installed (toolchain versions, the lockfile's digest, the installed tree's
    id, whether the install was frozen by a lockfile): core publishes it in the
    project's manifest and, for an attested project, in its log entry. Returning True
    reports only the runtime's version and counts as not pinned (a build that says
    nothing about what it fetched cannot claim it was fixed by a lockfile).
    """


@hookspec(firstresult=True)
def runtime_start(runtime: str, ctx: StartContext) -> Instance | None:
    """Start a built version and return its `Instance` without waiting for it.

    Core awaits ``instance.ready(timeout)`` before any traffic reaches it, so a slow
    or crashing start never replaces a working version. Processes must listen on
    loopback or a unix socket under ``ctx.run_dir``, never a public interface, and
    must not inherit the daemon's environment: pass ``ctx.env`` and nothing secret of
    the daemon's.
    """


@hookspec(firstresult=True)
def runtime_forward(runtime: str, instance: Instance) -> ASGIApp | None:
    """Return the ASGI callable that serves this instance's traffic.

    Called once when traffic switches to the instance; the callable then receives
    every request for ``/<name>/...`` with ``scope["path"]`` already stripped of the
    ``/<name>`` prefix (``scope["root_path"]`` holds it). Keep it fast: it is the
    hot path. Process runtimes usually return core's HTTP proxy to their socket.
    """


@hookspec(firstresult=True)
def runtime_stop(runtime: str, instance: Instance) -> bool | None:
    """Release what `runtime_start` acquired beyond ``instance.stop()`` (optional).

    Core always awaits ``instance.stop()`` first; implement this only for cleanup
    that belongs to the runtime rather than the instance (images, networks).
    """


@hookspec(firstresult=True)
def runtime_forget(runtime: str, project: str) -> bool | None:
    """A project was deleted: remove what the runtime kept for it (optional).

    Called after its instance was stopped, once for each runtime among the project's
    kept versions. Remove images, networks, volumes and the like; core removes the
    project's folders (tree, build, data dir, logs) itself.
    """


@hookspec
def runtime_substrate() -> dict | None:
    """Facts for ``GET /_api/substrate`` (isolation in force, engine versions...).

    Return a small dict of public facts, merged under the plugin's runtime names.
    """


__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT",
    "ASGIApp",
    "BuildContext",
    "BuildReport",
    "Detection",
    "Instance",
    "RuntimeInfo",
    "StartContext",
    "hookimpl",
    "hookspec",
]
