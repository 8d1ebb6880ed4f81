"""Where a process project listens: a loopback port the daemon picked (shared network),
or a unix socket in a folder of its run dir (isolated network), with the folders a killed
daemon left cleaned at start."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

from tee_daemon.kernel.errors import DeployFailed
from tee_daemon.run.runconfig import current

SOCKET_NAME = "app.sock"
SUN_PATH_MAX = 100  # sun_path holds 108 bytes with the NUL; keep a margin.

_handed_out: set[int] = set()


def free_port() -> int:
    """An unused loopback port (not one handed to another live instance)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise DeployFailed("no free loopback port")


def release_port(port: int) -> None:
    _handed_out.discard(port)


_socket_dirs: dict[Path, Path] = {}  # run dir -> the folder of its socket


def socket_dir(run_dir: Path) -> Path | None:
    """The folder a version listens in when the network is isolated (else None).

    ``<run dir>/net`` when a socket path there fits a socket address (108 bytes with
    the NUL), else a private folder made under /tmp. The same answer for one run dir,
    so a plugin may ask for it (Deno's permission flags) before `start_process` does.
    """
    if current().network != "isolated":
        return None
    run_dir = Path(run_dir).resolve()
    found = _socket_dirs.get(run_dir)
    if found is not None:
        return found
    folder = run_dir / "net"
    if len(os.fsencode(str(folder / SOCKET_NAME))) <= SUN_PATH_MAX:
        folder.mkdir(mode=0o700, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix=_socket_prefix(run_dir.parent), dir="/tmp")).resolve()  # 0700
    _socket_dirs[run_dir] = folder
    return folder


def _socket_prefix(run_root: Path) -> str:
    # Named after the daemon's run folder, so a restart finds what a killed daemon left.
    return "tee-net-" + hashlib.sha256(os.fsencode(str(run_root.resolve()))).hexdigest()[:10] + "-"


def remove_stale_socket_dirs(run_root: Path) -> None:
    """Remove /tmp socket folders a killed daemon of this data dir left (called at start,
    under the data dir's lock, so no live daemon uses them)."""
    for folder in Path("/tmp").glob(_socket_prefix(run_root) + "*"):
        shutil.rmtree(folder, ignore_errors=True)


def release_socket_dir(folder: Path) -> None:
    for run_dir, known in list(_socket_dirs.items()):
        if known == folder:
            del _socket_dirs[run_dir]
    shutil.rmtree(folder, ignore_errors=True)

