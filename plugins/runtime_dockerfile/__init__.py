"""The Dockerfile runtime: the project's `Dockerfile` built and run as a container.

The container listens on `$PORT` (8080 unless the manifest's env sets PORT); the daemon
reaches it on a loopback port the engine publishes (or, with egress deny, at its address on
the project's internal network) and proxies `/<name>/...` to it. It runs as the project's
own unprivileged uid:gid, never as the image's USER, hardened as `tee_daemon.run.containers` says.
Works whenever a Docker engine is reachable (DOCKER_HOST), whatever the default backend;
without one a deploy answers a clear 4xx. The image builder is `image`; core's container executor
(reached through `tee_daemon.plugin`) runs the containers.
"""

from __future__ import annotations

import json
from pathlib import Path

from tee_daemon.plugin import (
    LABEL_RUNTIME,
    BuildContext,
    ContainerInstance,
    DeployFailed,
    Detection,
    Instance,
    RuntimeInfo,
    StartContext,
    container_config,
    container_daemon_id,
    container_facts,
    container_forward,
    container_labels,
    container_spec,
    docker_client,
    forget_containers,
    hookimpl,
    project_network,
    start_container,
)

from .image import build_image, image_tag, prune_images

NAME = "dockerfile"
IMAGE_FILE = "image.json"

# project -> (daemon id, the version started last, the versions core keeps once it
# serves). Images of other versions are removed once no container uses them: when a
# retired version's container is gone (`runtime_stop`), after the switch to the new one.
_kept: dict[str, tuple[str, int, tuple[int, ...]]] = {}


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
    did = container_daemon_id(ctx)
    dockerfile = ctx.entry or "Dockerfile"
    if not (ctx.tree / dockerfile).is_file():
        raise DeployFailed(f"{dockerfile!r} is not in the project")
    tag = image_tag(did, ctx.project, ctx.version)
    image_id = build_image(
        tree=ctx.tree,
        dockerfile=dockerfile,
        tag=tag,
        image_labels=container_labels(did, ctx.project, ctx.version, **{LABEL_RUNTIME: NAME}),
        log_path=log_path,
        cfg=container_config(),
        network=project_network(ctx),  # Builds run on the project's own network.
    )
    record = {"image": image_id, "tag": tag}
    (ctx.build_dir / IMAGE_FILE).write_text(json.dumps(record) + "\n")
    return record


@hookimpl
def runtime_build(runtime: str, ctx: BuildContext) -> bool:
    docker_client()  # No engine: a clear 4xx before anything else.
    _build(ctx, ctx.log_path)
    return True


@hookimpl
def runtime_start(runtime: str, ctx: StartContext) -> Instance:
    client = docker_client()
    if ctx.kept_versions:
        _kept[ctx.project] = (container_daemon_id(ctx), ctx.version, tuple(ctx.kept_versions))
    image = None
    try:
        image = json.loads((ctx.build_dir / IMAGE_FILE).read_text())["image"]
        client.images.get(image)
    except Exception:
        # Built on another engine, or the engine lost it: build again from the kept tree.
        build_log = ctx.log_path.with_name("build.log")
        image = _build(ctx, build_log)["image"]
    return start_container(container_spec(ctx, image=image, runtime=NAME))


@hookimpl
def runtime_forward(runtime: str, instance: ContainerInstance):
    return container_forward(instance)


@hookimpl
def runtime_stop(runtime: str, instance: ContainerInstance) -> bool:
    """After a version's container is gone: drop the images of versions core no longer
    keeps (as of the project's latest deploy, which started the version now serving)."""
    kept = _kept.get(instance.spec.project)
    # The version started last stopping is a failed start (or a delete): its deploy's
    # list does not hold then, and nothing is retired.
    if kept is not None and kept[1] != instance.spec.version:
        did, _, versions = kept
        prune_images(did, instance.spec.project, versions)
    return True


@hookimpl
def runtime_forget(runtime: str, project: str) -> bool:
    _kept.pop(project, None)
    forget_containers(project)
    return True


@hookimpl
def runtime_substrate() -> dict:
    """The engine's facts and what each container gets (under runtimes.dockerfile.facts)."""
    return container_facts()
