"""The Dockerfile runtime's image builder: the build context (bounded, honouring
.dockerignore), the build itself (pull=False, bounded time, the project's limits, the
project's own network) and the pruning of images of versions core no longer keeps.

Images are ``tee-daemon/<project>:<daemon id>-v<version>``, labelled like every engine
object of the daemon; they are kept while the version is kept (rollback stays instant).
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from pathlib import Path
from typing import Any

from tee_daemon.plugin import (
    CFS_PERIOD_US,
    LABEL_VERSION,
    DeployFailed,
    DockerConfig,
    container_images,
    cpu_quota,
    docker_client,
    memory_bytes,
    project_log,
    short,
)

LOG_TAIL = 30
MiB = 2**20


def image_tag(did: str, project: str, version: int) -> str:
    return f"tee-daemon/{project}:{did}-v{version}"


def _dockerignore(tree: Path) -> list[str] | None:
    path = tree / ".dockerignore"
    if not path.is_file() or path.is_symlink():
        return None
    lines = path.read_text(errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def build_context(tree: Path, dockerfile: str, max_bytes: int):
    """The build context as a tar file (honouring .dockerignore), refused above `max_bytes`."""
    from docker import utils

    ctx = utils.tar(str(tree), exclude=_dockerignore(tree), dockerfile=(dockerfile, None))
    size = ctx.seek(0, io.SEEK_END)
    ctx.seek(0)
    if size > max_bytes:
        ctx.close()
        raise DeployFailed(
            f"the Docker build context is {size / MiB:.1f} MiB, more than the limit of "
            f"{max_bytes / MiB:.0f} MiB (TEE_DAEMON_DOCKER_MAX_CONTEXT); list what the image "
            "does not need in .dockerignore"
        )
    return ctx


def build_image(
    *,
    tree: Path,
    dockerfile: str,
    tag: str,
    image_labels: dict[str, str],
    log_path: Path | None,
    cfg: DockerConfig,
    network: str | None = None,
) -> str:
    """Build with pull=False in at most cfg.build_timeout seconds; return the image id.

    Each build step's container gets the project's memory (no swap) and CPU limits and
    runs on `network` (the project's own network: not the engine's default bridge that
    other projects' builds share; internal with egress deny). The engine's build API has
    no pids limit, and steps run as the Dockerfile's USER (see `hardening_facts`).
    The engine's output goes to `log_path`; a failure raises DeployFailed with its tail.
    """
    import docker

    docker_client()  # EngineUnavailable first, with its clear message.
    ctx = build_context(tree, dockerfile, cfg.max_context)
    api = _BuildClient(**docker.utils.kwargs_from_env(), version="auto", timeout=cfg.build_timeout)
    # Beyond what docker-py's container_limits accepts: the CPU quota and the network.
    api.extra_build_params = {"cpuperiod": CFS_PERIOD_US, "cpuquota": cpu_quota(cfg.cpus)}
    if network:
        api.extra_build_params["networkmode"] = network
    build_memory = memory_bytes(cfg.build_memory)
    output: list[str] = []
    image_id = None
    error = None
    timed_out = threading.Event()

    def cancel() -> None:
        timed_out.set()
        api.abort()

    timer = threading.Timer(cfg.build_timeout, cancel)
    project_log(log_path, f"docker build {tag} (pull=False, limit {cfg.build_timeout:g}s, memory "
             f"{cfg.build_memory}, cpus {cfg.cpus:g}, network {network or 'default'})")
    out = open(log_path, "ab") if log_path else None
    try:
        timer.start()
        stream = api.build(
            fileobj=ctx,
            custom_context=True,
            encoding=None,
            tag=tag,
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
            labels=image_labels,
            container_limits={"memory": build_memory, "memswap": build_memory},
        )
        for item in stream:
            text = item.get("stream") or item.get("status") or ""
            if item.get("error"):
                error = item["error"].strip()
                text = f"ERROR: {error}\n"
            if isinstance(item.get("aux"), dict) and item["aux"].get("ID"):
                image_id = item["aux"]["ID"]
            if text:
                output.append(text)
                if out:
                    out.write(text.encode(errors="replace") if text.endswith("\n") else (text + "\n").encode())
                    out.flush()
    except docker.errors.APIError as exc:
        error = short(exc)
    except Exception as exc:
        error = "the build was cut off" if timed_out.is_set() else short(exc)
    finally:
        timer.cancel()
        ctx.close()
        if out:
            out.close()
        with contextlib.suppress(Exception):
            api.close()
    if timed_out.is_set():
        error = f"the Docker build took longer than {cfg.build_timeout:g}s ({cfg.build_timeout_var})"
    tail = "\n".join("".join(output).splitlines()[-LOG_TAIL:])
    if error is None and image_id is None:
        try:
            image_id = docker_client().images.get(tag).id
        except Exception:
            error = "the engine reported no image"
    if error is not None:
        project_log(log_path, f"docker build failed: {error}")
        hint = ""
        if "pull access denied" in error or "not found" in error.lower() and "FROM" in tail:
            hint = " (nothing is pulled from a registry here: FROM must name an image already in the engine)"
        raise DeployFailed(f"the Dockerfile did not build: {error}{hint}\n--- build log tail ---\n{tail}", log=tail)
    return image_id


try:
    import docker as _docker

    class _BuildClient(_docker.APIClient):
        """An API client whose streaming build can be cut off from another thread."""

        _response = None
        extra_build_params: dict[str, Any] = {}

        def _post(self, url, **kwargs):
            if self.extra_build_params and url.endswith("/build"):
                kwargs["params"] = {**(kwargs.get("params") or {}), **self.extra_build_params}
            return super()._post(url, **kwargs)

        def _stream_helper(self, response, decode=False):
            self._response = response
            return super()._stream_helper(response, decode=decode)

        def abort(self) -> None:
            response = self._response
            if response is None:
                return
            with contextlib.suppress(Exception):
                sock = self._get_raw_response_socket(response)
                sock = getattr(sock, "_sock", sock)  # a SocketIO over a unix socket
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):
                response.close()

except ImportError:  # pragma: no cover - docker-py is a dependency
    _BuildClient = None  # type: ignore[assignment,misc]


def prune_images(did: str, project: str, kept_versions: tuple[int, ...]) -> None:
    """Remove the project's images of versions not in `kept_versions` (core's list after
    the latest deploy). An image a container still uses stays (no force): the next
    prune, after that container is gone, takes it."""
    c = docker_client()
    for img in container_images(c, did, project):
        try:
            version = int((img.get("Labels") or {}).get(LABEL_VERSION, ""))
        except ValueError:
            continue
        if version not in kept_versions:
            with contextlib.suppress(Exception):
                c.images.remove(img["Id"])
