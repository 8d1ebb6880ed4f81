"""Who a container runs as and what it may see: the project's uid:gid, its data volume
made the project's, binds checked against the engine's socket, and passages through image
folders only root may enter.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

from tee_daemon.kernel.errors import DeployFailed
from tee_daemon.run.containers.engine import LABEL_CONFIG, docker_host, short

# -- identities, the data volume, what may be bound ---------------------------------------

# Used only where core hands no identity (ctx.identity: no sandbox on this machine), in a
# range of its own, below core's (tee_daemon.run.identity starts at 200000).
FALLBACK_FIRST_ID = 150_000
FALLBACK_LAST_ID = 199_999
FALLBACK_FILE = "container-identities.json"
_ids_lock = threading.Lock()


def _fallback_id(data_root: Path, project: str) -> int:
    """A number of the project's own, recorded in <data-dir>/container-identities.json
    before use and never handed out twice (not even after a delete)."""
    from tee_daemon.state.store import atomic_write

    path = data_root / FALLBACK_FILE
    with _ids_lock:
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError):
            records = {}
        projects = records.setdefault("projects", {})
        number = projects.get(project)
        if not isinstance(number, int):
            number = int(records.get("next", FALLBACK_FIRST_ID))
            if number > FALLBACK_LAST_ID:
                raise DeployFailed("the daemon has used up its range of container identities")
            projects[project] = number
            records["next"] = number + 1
            atomic_write(path, json.dumps(records, sort_keys=True).encode(), mode=0o600)
        return number


def container_identity(project: str, projects_dir: Path, identity: Any = None) -> tuple[int, int]:
    """The uid and gid a project's containers run as, whatever the image's USER says:
    core's identity of the project (a runtime passes `ctx.identity`, the one its sandbox
    uses), else one allocated here. Never 0, never another project's."""
    if identity is not None:
        uid, gid = int(identity.uid), int(identity.gid)
    else:
        uid = gid = _fallback_id(projects_dir.parent, project)
    if uid <= 0 or gid <= 0:
        raise DeployFailed(f"{project}: refusing to run a container as uid {uid}, gid {gid}")
    return uid, gid


def volume_owned_by(c, image: str, volume: str, uid: int, gid: int, mine: dict[str, str]) -> None:
    """Make the root of the project's named volume the project's (mode 0700), so that its
    unprivileged user can write /data. The engine does it: a container that is created,
    never started, mounts the volume, and an archive holding one directory entry for the
    mount point (with that owner) is extracted onto it. No image content is run."""
    import docker

    point = f"tee-volume-{secrets.token_hex(4)}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entry = tarfile.TarInfo(point)
        entry.type, entry.mode, entry.uid, entry.gid, entry.mtime = tarfile.DIRTYPE, 0o700, uid, gid, int(time.time())
        tar.addfile(entry)
    helper = None
    try:
        helper = c.containers.create(
            image, name=f"tee-init-{secrets.token_hex(6)}", entrypoint=["/nonexistent"],
            labels={**mine, LABEL_CONFIG: "volume-init"}, network_mode="none", user=f"{uid}:{gid}",
            mounts=[docker.types.Mount(target=f"/{point}", source=volume, type="volume", no_copy=True)],
        )
        if not helper.put_archive("/", buf.getvalue()):
            raise DeployFailed("the engine refused the archive")
    except docker.errors.APIError as exc:
        raise DeployFailed(f"the data volume {volume} could not be given to uid {uid}: {short(exc)}") from None
    finally:
        if helper is not None:
            with contextlib.suppress(Exception):
                helper.remove(force=True, v=True)


def host_data_dir_owned_by(path: str, uid: int, gid: int) -> None:
    """--backend docker without core's identity: the bound data dir becomes the project's."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.lchown(path, uid, gid)
        os.chmod(path, 0o700)


def _engine_sockets() -> set[str]:
    host = docker_host()
    found = {"/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"}
    if host.startswith("unix://"):
        found.add(host[len("unix://"):])
    return {os.path.realpath(p) for p in found}


def check_binds(binds: list[dict]) -> None:
    """No bind may expose the engine's socket (or a folder above it): that is root."""
    sockets = _engine_sockets()
    for bind in binds:
        src = os.path.realpath(str(bind["source"]))
        for sock in sockets:
            if sock == src or sock.startswith(src.rstrip("/") + "/"):
                raise DeployFailed(f"refusing to bind {bind['source']} into a container: it holds the "
                                   "Docker engine's socket")


# Image folders that only root may enter (Debian's and Alpine's /root is 0700).
ROOT_ONLY_DIRS = ("/root",)
PASSAGES = "container-passages"


def passages(data_root: Path, targets: list[str]) -> list[dict]:
    """Binds for host paths under an image folder only root may enter (the daemon's
    interpreter under /root/.pyenv, say): over that folder, a read-only folder of the
    daemon's (<data-dir>/container-passages/root, mode 0755) holding only the empty
    mount points, so the project's uid can pass through to what is bound beneath.
    (A tmpfs cannot: runc gives it the mode of the folder it covers.)"""
    out: list[dict] = []
    for top in ROOT_ONLY_DIRS:
        inside = [t for t in targets if t.startswith(top + "/")]
        if not inside:
            continue
        passage = data_root / PASSAGES / top.strip("/")
        for target in inside:
            folder = passage / Path(target).relative_to(top)
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)
            while folder != passage.parent:
                with contextlib.suppress(OSError):
                    os.chmod(folder, 0o755)
                folder = folder.parent
        out.append({"source": str(passage), "target": top, "read_only": True})
    return out


def binds(paths, read_only: bool) -> list[dict]:
    """Each path bound at itself, and at its resolved path when that differs (symlinks in
    the tree, e.g. node_modules, point at resolved paths; argv uses the given ones)."""
    out: list[dict] = []
    for path in paths:
        for variant in (Path(path).absolute(), Path(path).resolve()):
            if variant.exists():
                out.append({"source": str(variant.resolve()), "target": str(variant), "read_only": read_only})
    return out
