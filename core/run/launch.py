"""Where a process runtime's version runs: a sandboxed process on this machine, or with
`--backend docker` a container on the engine.

The deno, bun, node and python plugins describe *what* to run (argv, env, folders to
see); these functions decide *where*, so their start, forward and forget hooks stay
one line each.
"""

from __future__ import annotations

from tee_daemon.run import containers, process
from tee_daemon.kernel.contract import ASGIApp, Instance, StartContext


def start(ctx: StartContext, **plan) -> Instance:
    """Start `plan` (the keyword arguments of `process.start_process`) for `ctx`."""
    if ctx.backend == "docker":
        return containers.start_process(ctx, **plan)
    return process.start_process(ctx, **plan)


def listen_dir(ctx: StartContext):
    """The folder a version's unix socket lives in (isolated network, process backend), else None."""
    return process.socket_dir(ctx.run_dir) if ctx.backend != "docker" else None


def forward(instance: Instance) -> ASGIApp:
    if isinstance(instance, containers.ContainerInstance):
        return containers.forward_app(instance)
    return process.forward_app(instance)  # type: ignore[arg-type]


def forget(project: str) -> None:
    containers.forget_project(project)  # A no-op unless this daemon used the engine.


def isolation(backend: str) -> dict:
    """What keeps projects apart, for `GET /_api/substrate`."""
    return containers.backend_facts() if backend == "docker" else process.isolation_facts()
