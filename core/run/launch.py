"""Where a process runtime's version runs: a sandboxed process on this machine, or with
`--backend docker` a container on the engine.

The deno, bun, node and python plugins describe *what* to run in a `LaunchPlan`
(argv, working directory, folders to read, extra environment); these functions decide
*where*, so their start, forward and forget hooks stay one line each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from tee_daemon.kernel.contract import ASGIApp, Instance, StartContext
from tee_daemon.run import containers, process


class LaunchPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What to run for one version of a project.

    `argv[0]` is an absolute path to the program. The program always sees the version's
    tree and build folder read-only and the data dir read-write; `read_only` adds the
    folders it needs besides (its interpreter, installed dependencies). `extra_env` is
    added to the project's environment (which already has PORT or LISTEN_UNIX, DATA_DIR,
    HOME and PATH); `path_dirs` go in front of PATH. `facts` are shown to admins in the
    instance's description (never secrets).

    How the program listens is the daemon's choice, told by its environment: with the
    isolated project network (process backend) ``LISTEN_UNIX`` names a unix socket to
    bind (its folder is `listen_dir(ctx)`), otherwise ``PORT`` a TCP port on ``HOST``.
    """

    argv: list[str]
    cwd: Path
    read_only: list[Path] = []
    extra_env: dict[str, str] = {}
    path_dirs: list[Path] = []
    facts: dict[str, Any] = {}
    # With ``--backend docker``: the image the program runs on (it provides only the
    # shared libraries; the program and its folders are bound in). The operator's
    # TEE_DAEMON_DOCKER_IMAGE_<RUNTIME> wins; neither set: the deploy is refused.
    image: str | None = None


def start(ctx: StartContext, plan: LaunchPlan) -> Instance:
    """Start `plan` for `ctx` on the daemon's backend; the `Instance` core supervises."""
    kwargs = dict(
        argv=[str(a) for a in plan.argv],
        cwd=plan.cwd,
        read_only=list(plan.read_only),
        extra_env=dict(plan.extra_env),
        path_dirs=list(plan.path_dirs),
        facts=dict(plan.facts) or None,
    )
    if ctx.backend == "docker":
        return containers.start_process(ctx, image=plan.image, **kwargs)
    return process.start_process(ctx, **kwargs)


def listen_dir(ctx: StartContext) -> Path | None:
    """The folder a version's unix socket lives in (isolated network, process backend), else None."""
    return process.socket_dir(ctx.run_dir) if ctx.backend != "docker" else None


def forward(instance: Instance) -> ASGIApp:
    """The request handler for an instance `start` returned."""
    if isinstance(instance, containers.ContainerInstance):
        return containers.forward_app(instance)
    return process.forward_app(instance)  # type: ignore[arg-type]


def forget(project: str) -> None:
    """A project was deleted: drop what the backend kept for it (containers, images)."""
    containers.forget_project(project)  # A no-op unless this daemon used the engine.


def isolation(backend: str) -> dict:
    """What keeps projects apart, for `GET /_api/substrate`."""
    return containers.backend_facts() if backend == "docker" else process.isolation_facts()
