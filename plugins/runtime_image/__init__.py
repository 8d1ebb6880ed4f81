"""The image runtime: a prebuilt image from the Docker engine (upstream's layer 1), run as
a container listening on the manifest's `port` (SPEC section 11).

`{"runtime": "image", "image": "<ref>@sha256:<digest>" | "sha256:<image id>", "port": N}`:
the digest is the identity that is attested (core refuses a reference without one with
400, and puts `image` and `port` in the public manifest and `manifest_sha256`). Nothing
is pulled, ever: the image must already be in the engine (loaded or built there), and a
registry digest must be one of the image's RepoDigests, so the digest names what runs.

The container is started by core's container executor like a Dockerfile project's:
hardened the same way (the project's own uid:gid, never the image's USER; no
capabilities; read-only root with a tmpfs /tmp; the project's limits; its own network
and /data volume), with `PORT` set to the port. Without a reachable engine a deploy
answers a clear 4xx.
"""

from __future__ import annotations

import json
from pathlib import Path

from tee_daemon.plugin import (
    BuildContext,
    BuildReport,
    ContainerInstance,
    DeployFailed,
    Detection,
    Instance,
    RuntimeInfo,
    StartContext,
    container_forward,
    container_spec,
    docker_client,
    forget_containers,
    hookimpl,
    start_container,
)

NAME = "image"
IMAGE_FILE = "image.json"


@hookimpl
def runtime_describe() -> list[RuntimeInfo]:
    return [
        RuntimeInfo(
            name=NAME,
            default_entry=None,
            detect_priority=0,  # Never detected: a deploy names the image.
            version=None,
            description="a prebuilt image already in the Docker engine, named by its digest, listening on `port`",
        )
    ]


@hookimpl
def runtime_detect(tree: Path) -> Detection | None:
    return None


def resolve(client, image: str) -> str:
    """The engine's id of `image`, checking that the digest really names it."""
    import docker

    ref, _, digest = image.rpartition("@")
    try:
        found = client.images.get(image if ref else digest)
    except docker.errors.ImageNotFound:
        found = None
    except docker.errors.APIError as exc:
        raise DeployFailed(f"the Docker engine could not look up image {image!r}: {exc.explanation or exc}") from None
    if found is None or (ref and not any(d.endswith("@" + digest) for d in found.attrs.get("RepoDigests") or [])):
        hint = " (a registry digest must be one of the image's RepoDigests; an image id 'sha256:...' names a local image)"
        raise DeployFailed(
            f"image {image!r} is not in the Docker engine; nothing is pulled here: load or build it on the engine first"
            + (hint if ref else "")
        )
    return found.id


@hookimpl
def runtime_build(runtime: str, ctx: BuildContext) -> BuildReport:
    if not ctx.image:
        raise DeployFailed("the image runtime needs 'image' (with its digest)")
    image_id = resolve(docker_client(), ctx.image)  # No engine: a clear 4xx first.
    (ctx.build_dir / IMAGE_FILE).write_text(json.dumps({"image": ctx.image, "id": image_id}) + "\n")
    # What runs is fixed by the image's digest (attested as `image`): nothing is installed
    # at deploy time, so it is pinned (SPEC 12).
    return BuildReport(pinned=True)


@hookimpl
def runtime_start(runtime: str, ctx: StartContext) -> Instance:
    client = docker_client()
    image_id = resolve(client, ctx.image or "")  # The engine may have lost it since the build.
    env = {**ctx.env, "PORT": str(ctx.port or 8080)}
    return start_container(container_spec(ctx, image=image_id, runtime=NAME, env=env))


@hookimpl
def runtime_forward(runtime: str, instance: ContainerInstance):
    return container_forward(instance)


@hookimpl
def runtime_forget(runtime: str, project: str) -> bool:
    forget_containers(project)  # The project's containers, network and volume; never the image.
    return True
