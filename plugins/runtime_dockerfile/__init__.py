"""The Dockerfile runtime: the project's `Dockerfile` built and run as a container.

The container listens on `$PORT` (8080 unless the manifest's env sets PORT); the daemon
reaches it on a loopback port the engine publishes (or, with egress deny, at its address on
the project's internal network) and proxies `/<name>/...` to it. It runs as the project's
own unprivileged uid:gid, never as the image's USER, hardened as `docker_backend` says.
Works whenever a Docker engine is reachable (DOCKER_HOST), whatever the default backend;
without one a deploy answers a clear 4xx. Engine work lives in `tee_daemon.run.containers`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tee_daemon.run import containers as db
from tee_daemon.kernel.errors import DeployFailed
from tee_daemon.kernel.hookspecs import hookimpl
from tee_daemon.kernel.contract import BuildContext, Detection, Instance, RuntimeInfo, StartContext

NAME = "dockerfile"
IMAGE_FILE = "image.json"

@hookimpl
def runtime_describe() -> list[RuntimeInfo]:
    return [
        RuntimeInfo(
            name=NAME,
            default_entry="Dockerfile",
            detect_priority=60,
            version=None,  # The engine's version is in the substrate facts.
            description="the project's Dockerfile, built and run as a container listening on $PORT",
        )
    ]


@hookimpl
def runtime_detect(tree: Path) -> Detection | None:
    path = tree / "Dockerfile"
    if path.is_file() and not path.is_symlink():
        return Detection(runtime=NAME, entry="Dockerfile")
    return None


def _build(ctx: BuildContext | StartContext, log_path: Path | None) -> dict:
    cfg = db.config()
    projects_dir = db.projects_dir_of(ctx)
    did = db.daemon_id(projects_dir)
    dockerfile = ctx.entry or "Dockerfile"
    if not (ctx.tree / dockerfile).is_file():
        raise DeployFailed(f"{dockerfile!r} is not in the project")
    tag = db.image_tag(did, ctx.project, ctx.version)
    internal = cfg.egress == "deny"
    db.ensure_network(db.client(), did, ctx.project, internal)  # Builds run on the project's own network.
    image_id = db.build_image(
        tree=ctx.tree,
        dockerfile=dockerfile,
        tag=tag,
        image_labels=db.labels(did, ctx.project, ctx.version, **{db.LABEL_RUNTIME: NAME}),
        log_path=log_path,
        cfg=cfg,
        network=db.network_name(did, ctx.project, internal),
    )
    record = {"image": image_id, "tag": tag}
    (ctx.build_dir / IMAGE_FILE).write_text(json.dumps(record) + "\n")
    return record


@hookimpl
def runtime_build(runtime: str, ctx: BuildContext) -> bool:
    db.client()  # No engine: a clear 4xx before anything else.
    db.note_projects_dir(db.projects_dir_of(ctx))
    _build(ctx, ctx.log_path)
    return True


@hookimpl
def runtime_start(runtime: str, ctx: StartContext) -> Instance:
    client = db.client()
    projects_dir = db.projects_dir_of(ctx)
    db.note_projects_dir(projects_dir)
    image = None
    try:
        image = json.loads((ctx.build_dir / IMAGE_FILE).read_text())["image"]
        client.images.get(image)
    except Exception:
        # Built on another engine, or the engine lost it: build again from the kept tree.
        build_log = ctx.log_path.with_name("build.log")
        image = _build(ctx, build_log)["image"]
    uid, gid = db.container_identity(ctx.project, projects_dir, getattr(ctx, "identity", None))
    spec = db.ContainerSpec(
        project=ctx.project,
        version=ctx.version,
        runtime=NAME,
        image=image,
        projects_dir=projects_dir,
        log_path=ctx.log_path,
        env=dict(ctx.env),
        user=f"{uid}:{gid}",
    )
    return db.start_container(spec)


@hookimpl
def runtime_forward(runtime: str, instance: db.ContainerInstance):
    return db.forward_app(instance)


@hookimpl
def runtime_stop(runtime: str, instance: db.ContainerInstance) -> bool:
    """After a version's container is gone: drop images of versions no longer kept (core
    prunes their folders right after a switch, before the old version is drained)."""
    db.prune_old_images(instance.spec.projects_dir, instance.spec.project)
    return True


@hookimpl
def runtime_forget(runtime: str, project: str) -> bool:
    db.forget_project(project)
    return True


@hookimpl
def runtime_substrate() -> dict:
    return {NAME: db.substrate()}
