"""``--backend docker``: a process runtime's plan (deno, bun, node, python) run in a
container instead of the process sandbox: the same argv, environment and working
directory, on a base image that only provides the shared libraries.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tee_daemon.kernel.errors import UserError
from tee_daemon.run.containers.engine import (
    DEFAULT_PORT,
    client,
    config,
    daemon_id,
    ensure_network,
    filters,
    images,
    network_name,
    projects_dir_of,
)
from tee_daemon.run.containers.facts import substrate
from tee_daemon.run.containers.instance import ContainerInstance, ContainerSpec, start_container
from tee_daemon.run.containers.mounts import binds, container_identity, passages
from tee_daemon.run.environment import base_env

def runtime_image(runtime: str, default: str | None = None) -> str:
    """The base image a process runtime's plan runs on: the operator's
    TEE_DAEMON_DOCKER_IMAGE_<RUNTIME>, else the one the runtime's plan names."""
    image = config().images.get(runtime, "").strip() or (default or "").strip()
    if not image:
        raise UserError(f"no base image for runtime {runtime!r}: set TEE_DAEMON_DOCKER_IMAGE_{runtime.upper()}")
    return image


def backend_facts() -> dict[str, Any]:
    """/_api/substrate's isolation facts for deno, bun, node and python under --backend docker."""
    facts = {
        "kind": "container",
        # Each runtime's plan names its own base image (pinned in its plugin); these are
        # the operator's choices over them.
        "images": dict(config().images),
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


def process_spec(
    ctx,  # StartContext
    *,
    argv: list[str],
    cwd: Path,
    read_only=(),
    extra_env: dict[str, str] | None = None,
    path_dirs=(),
    facts: dict[str, Any] | None = None,
    image: str | None = None,
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
    env = base_env(ctx.env, data_dir=ctx.data_dir, port=int(DEFAULT_PORT), path_dirs=list(path_dirs))
    env.update(extra_env or {})
    env.update(HOST="0.0.0.0", TMPDIR="/tmp")
    mounts: list[dict] = []
    seen: set[str] = {str(Path(ctx.data_dir).absolute())}
    for bind in binds([ctx.tree, ctx.build_dir, *read_only], True):
        if bind["target"] not in seen:
            seen.add(bind["target"])
            mounts.append(bind)
    projects_dir = projects_dir_of(ctx)
    data_dir = str(Path(ctx.data_dir).absolute())
    mounts += passages(projects_dir.parent, [m["target"] for m in mounts] + [data_dir])
    identity = getattr(ctx, "identity", None)
    if identity is None and os.geteuid() != 0:
        uid, gid = os.getuid(), os.getgid()  # Not root: cannot give the data dir away.
    else:
        uid, gid = container_identity(ctx.project, projects_dir, identity)
    return ContainerSpec(
        project=ctx.project,
        version=ctx.version,
        runtime=ctx.runtime,
        image=runtime_image(ctx.runtime, image),
        projects_dir=projects_dir,
        log_path=ctx.log_path,
        env=env,
        entrypoint=[str(argv[0])],
        command=[str(a) for a in argv[1:]],
        working_dir=str(cwd),
        mounts=mounts,
        data_dir=data_dir,
        user=f"{uid}:{gid}",
        daemon_id=container_daemon_id(ctx),
        image_setting=f"TEE_DAEMON_DOCKER_IMAGE_{ctx.runtime.upper()}",
    )


def start_process(ctx, **plan) -> ContainerInstance:
    """`process.start_process`'s counterpart for --backend docker (same arguments)."""
    return start_container(process_spec(ctx, **plan))


def container_spec(ctx, *, image: str, runtime: str, env: dict[str, str] | None = None) -> ContainerSpec:
    """The container of one version of a runtime that brings its own image (the
    Dockerfile runtime): `image` run as the project's own uid:gid (core's identity of
    it, else one of the containers' own), the project's named volume at /data."""
    projects_dir = projects_dir_of(ctx)
    uid, gid = container_identity(ctx.project, projects_dir, ctx.identity)
    return ContainerSpec(
        project=ctx.project,
        version=ctx.version,
        runtime=runtime,
        image=image,
        projects_dir=projects_dir,
        log_path=ctx.log_path,
        env=dict(ctx.env if env is None else env),
        user=f"{uid}:{gid}",
        daemon_id=container_daemon_id(ctx),
    )


def container_daemon_id(ctx) -> str:
    """The daemon's id on the engine for a context (its `daemon_id`, else worked out
    from core's folders as for containers core starts itself)."""
    return ctx.daemon_id or daemon_id(projects_dir_of(ctx))


def project_network(ctx) -> str:
    """The project's own network (made if missing; internal with egress deny), by name:
    builds run on it, as its containers do."""
    did = container_daemon_id(ctx)
    internal = config().egress == "deny"
    ensure_network(client(), did, ctx.project, internal)
    return network_name(did, ctx.project, internal)


def container_images(c, did: str, project: str) -> list[dict]:
    """Summaries of the project's images on the engine (labels included)."""
    return images(c, filters(did, project))
