"""`tee-daemon serve`: one supervisor and N ingress workers behind the daemon's port.

    serve            this process: holds the data dir's lock and the listening socket,
    │                and is granian's master of the ingress workers
    ├─ supervisor    `python -m tee_daemon.cli.serve` (granian, one worker, on a private
    │                unix socket): the daemon itself (deploys, project processes, the
    │                transparency log, the TEE, the API and pages) and the route hub
    └─ ingress ×N    granian's workers on the daemon's port (web/worker.py): project
                     traffic straight to the projects, the rest passed to the supervisor

The supervisor starts first; the workers start once its hub listens, which is after every
stored project was started again, so the port answers only with the routes in place. A
supervisor that exits takes the daemon down (exit 1): the workers could not follow route
changes without it. Both sockets live in a private folder (mode 0700), `<data-dir>/ingress`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec

from tee_daemon import __version__
from tee_daemon.settings import Settings, handoff, load_settings, worker_settings

SUPERVISOR_STOP_TIMEOUT = 60.0  # for the supervisor to stop every project and close the log
# The workers keep pooled connections to the supervisor up to 4 s idle (proxy IDLE_TTL):
# its server must keep them longer, or a reused one could close under a request.
SUPERVISOR_KEEPALIVE_MS = 75_000


def serve(args: argparse.Namespace) -> int:
    from tee_daemon.web import connguard
    from tee_daemon.web.auth import load_or_create_token

    settings = load_settings(
        {
            "host": args.host,
            "port": args.port,
            "data_dir": args.data_dir,
            "backend": args.backend,
            "allow_insecure_sources": True if args.allow_insecure_sources else None,
            "base_domain": args.base_domain,
            "workers": args.workers,
        }
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(settings.data_dir)  # held for the daemon's life
    _, token_path = load_or_create_token(settings.data_dir, settings.token)
    from tee_daemon.run.tenancy import problems, refusal

    unenforced = problems(settings)  # SPEC 9: what cannot be enforced is refused loudly.
    if unenforced and not settings.allow_unenforced_isolation:
        print(refusal(unenforced), file=sys.stderr)
        return 1
    # SPEC 10: the daemon's own socket (no port sharing), bound before anything starts so
    # clients queue in its backlog rather than being refused while projects start.
    try:
        listener = connguard.bind_listener(settings.host, settings.port)
    except connguard.PortInUse as exc:
        print(exc, file=sys.stderr)
        return 1
    where = f"in {token_path}" if token_path else "from TEE_DAEMON_TOKEN"
    print(
        f"tee-daemon {__version__} on {settings.public_base}/ (data: {settings.data_dir}; "
        f"{settings.workers} ingress worker{'s' if settings.workers != 1 else ''})",
        file=sys.stderr,
    )
    print(f"admin token: {where}", file=sys.stderr)
    nofile = connguard.raise_nofile()
    ingress_dir = _private_folder(settings.data_dir)
    settings = msgspec.structs.replace(settings, ingress_dir=ingress_dir)
    # The supervisor and granian's workers build their apps themselves: hand them these
    # very settings.
    os.environ.update(handoff(settings))
    supervisor = None
    try:
        supervisor = _start_supervisor(lock)
        if not _wait_for_hub(supervisor, settings):
            print(f"tee-daemon: the supervisor exited ({supervisor.returncode}) before serving", file=sys.stderr)
            return 1
        died = _follow(supervisor)
        _serve_ingress(settings, listener, nofile)
        if died.is_set():
            print(f"tee-daemon: the supervisor exited ({supervisor.returncode}): stopped", file=sys.stderr)
            return 1
        return 0
    finally:
        if supervisor is not None:
            _stop(supervisor)
        shutil.rmtree(ingress_dir, ignore_errors=True)


# A unix socket's path has room for 107 bytes; the longest name below is 15.
_SOCKET_PATH_ROOM = 107 - len("/supervisor.sock")


def _private_folder(data_dir: Path) -> Path:
    """The folder of the supervisor's and the hub's sockets, made anew (mode 0700):
    `<data-dir>/ingress`, or where that path is too long for a socket, a temporary one."""
    folder = data_dir / "ingress"
    if len(os.fsencode(folder)) > _SOCKET_PATH_ROOM:
        return Path(tempfile.mkdtemp(prefix="tee-daemon-"))
    shutil.rmtree(folder, ignore_errors=True)  # a killed daemon's (we hold the lock)
    folder.mkdir(mode=0o700)
    return folder


def _start_supervisor(lock) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tee_daemon.cli.serve"],
        # It holds the data dir's lock too (the same open file): a new daemon cannot take
        # the data dir while a supervisor of this one still runs.
        pass_fds=[lock.fileno()],
        preexec_fn=lambda: _die_with_parent(signal.SIGTERM),  # a killed `serve` stops it
    )


def _die_with_parent(sig: int) -> None:
    """Have the kernel send `sig` to this process when its parent exits."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def _wait_for_hub(supervisor: subprocess.Popen, settings: Settings) -> bool:
    """Wait until the supervisor's hub accepts (the daemon has started); False if it exited."""
    from tee_daemon.web.hub import hub_path

    path = str(hub_path(settings.ingress_dir))  # type: ignore[arg-type]
    while supervisor.poll() is None:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return True
        except OSError:
            time.sleep(0.05)
        finally:
            probe.close()
    return False


def _follow(supervisor: subprocess.Popen) -> threading.Event:
    """When the supervisor exits, stop serving (granian's master stops on SIGTERM)."""
    died = threading.Event()

    def watch() -> None:
        supervisor.wait()
        if not stopping.is_set():
            died.set()
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="tee-daemon-supervisor-watch", daemon=True).start()
    return died


stopping = threading.Event()  # `serve` itself is stopping the supervisor


def _stop(supervisor: subprocess.Popen) -> None:
    stopping.set()
    if supervisor.poll() is None:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(SUPERVISOR_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()


def _serve_ingress(settings: Settings, listener: socket.socket, nofile: int) -> None:
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    from tee_daemon.web import connguard

    # SPEC 10: enough connection slots that thousands of idle connections do not keep
    # clients out, and a header timeout (hyper's timer, plus each worker's guard for
    # connections that never send).
    keepalive = connguard.keepalive_timeout(settings.header_timeout)
    server = connguard.server_class()(
        "tee_daemon.web.worker:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        respawn_failed_workers=True,  # a fresh worker starts from the hub's snapshot
        log_access=False,
        websockets=True,
        backlog=connguard.LISTEN_BACKLOG,
        backpressure=connguard.connection_limit(nofile),
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, int(keepalive * 1000)), keep_alive=True, max_buffer_size=connguard.SERVER_BUFFER
        ),
    )
    server.listener = listener
    server.serve()


def supervise() -> int:
    """The supervisor process: granian with one worker running the daemon's app on the
    private socket `serve` named in the settings it handed over."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    from tee_daemon.web import connguard
    from tee_daemon.web.hub import supervisor_path

    settings = worker_settings()
    if settings.ingress_dir is None:
        print("tee-daemon: the supervisor is started by `tee-daemon serve`", file=sys.stderr)
        return 4
    Granian(
        "tee_daemon.cli.serve:supervisor_app",
        factory=True,
        uds=supervisor_path(settings.ingress_dir),
        uds_permissions=0o600,
        interface=Interfaces.ASGI,
        workers=1,
        log_access=False,
        websockets=True,
        backlog=connguard.LISTEN_BACKLOG,
        backpressure=connguard.connection_limit(connguard.raise_nofile()),
        http1_settings=HTTP1Settings(
            header_read_timeout=SUPERVISOR_KEEPALIVE_MS, keep_alive=True, max_buffer_size=connguard.SERVER_BUFFER
        ),
    ).serve()
    return 0


def supervisor_app():
    """granian's factory in the supervisor's worker: the daemon's app, seeing each request
    as the ingress worker that passed it on saw it."""
    from tee_daemon.web.app import create_app
    from tee_daemon.web.peer import Restore

    # Should granian's master of the supervisor die, the daemon goes as in a crash (its
    # projects with it), never on without the process `serve` watches.
    _die_with_parent(signal.SIGKILL)
    return Restore(create_app(worker_settings()))


def _lock_data_dir(data_dir):
    """One daemon per data dir: two would serve, deploy and log over each other."""
    import fcntl

    handle = open(data_dir / "daemon.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"tee-daemon: another daemon is already using {data_dir}") from None
    return handle


if __name__ == "__main__":
    sys.exit(supervise())
