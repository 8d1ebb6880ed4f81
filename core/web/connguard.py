"""The daemon's front door (SPEC section 10, "Connections").

* `raise_nofile` lifts the soft RLIMIT_NOFILE to the hard limit, so thousands of idle
  connections do not run the daemon out of descriptors.
* `bind_listener` binds the daemon's own listening socket *without* SO_REUSEPORT (granian
  binds each worker's socket with it on Linux, so a second daemon on the same port would
  silently share it and requests would be split between the two). A port already in use
  is a `PortInUse` error, which `serve` reports and exits on.
* `server_class` gives granian's server class, changed only in that its workers listen
  on that socket instead of binding their own.
* `start_guard` starts the silent-connection guard in an ingress worker (granian's
  factory, web/worker.py).

The guard closes connections that have not sent a single byte within the header timeout.
granian (hyper) applies its header read timeout to a request head once its first byte
has arrived and to the wait for the next request on a kept-alive connection, but not to
a fresh connection that never sends anything: such a connection would hold one of the
worker's connection slots forever. The guard scans the worker's own descriptors about
every second (only sockets accepted on the daemon's port that have received nothing),
reads TCP_INFO and shuts down those older than the timeout; granian then sees the end of
the stream and frees the slot.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import struct
import threading
import time

log = logging.getLogger("tee_daemon.connections")

# Descriptors kept back from granian's connection limit for everything else the worker
# opens (project connections, logs, the store).
FD_RESERVE = 2048
# The kernel caps the listen backlog at net.core.somaxconn.
LISTEN_BACKLOG = 4096
# hyper's per-connection buffer (the request head's limit too, and the queue of response
# bytes a client that does not read can make it hold).
SERVER_BUFFER = 64 * 1024
# The longest a kept-alive connection may sit idle.
KEEPALIVE_IDLE = 60.0


class PortInUse(Exception):
    pass


def raise_nofile() -> int:
    """Set the soft descriptor limit to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_limit(nofile: int) -> int:
    """Connections one worker accepts at once (granian's backpressure)."""
    return max(1024, nofile - FD_RESERVE)


def keepalive_timeout(header_timeout: float) -> float:
    """hyper's one timer bounds a request head and the idle wait for the next one."""
    return min(header_timeout, KEEPALIVE_IDLE)


def bind_listener(host: str, port: int, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR only lets a restarted daemon bind past TIME_WAIT; unlike
        # SO_REUSEPORT it never lets two listeners share the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"tee-daemon: {where} is already in use (another daemon or program listens there); "
                "choose another --port or stop it"
            ) from None
        raise PortInUse(f"tee-daemon: cannot listen on {where}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def server_class():
    """granian's server class, serving on a socket bound by `bind_listener`."""
    from granian import Granian
    from granian._granian import SocketHolder

    class Server(Granian):  # type: ignore[misc, valid-type]
        listener: socket.socket

        def _init_shared_socket(self):
            sock = self.listener
            self._ssp = None
            self._sfd = sock.fileno()
            self._shd = SocketHolder(self._sfd, False, self.backlog)
            self._sso = sock

        def _drop_shared_socket(self):
            self.listener.close()

    return Server


# struct tcp_info (linux/tcp.h): tcpi_last_data_recv (ms) at 52, tcpi_bytes_received at 128.
_TCP_INFO_LEN = 136


def _tcp_info(sock: socket.socket) -> tuple[int, int] | None:
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(raw) < _TCP_INFO_LEN:
        return None
    (last_recv_ms,) = struct.unpack_from("I", raw, 52)
    (received,) = struct.unpack_from("Q", raw, 128)
    return last_recv_ms, received


class SilentGuard:
    """Shuts down accepted connections that sent nothing within `timeout` seconds."""

    def __init__(self, port: int, timeout: float, interval: float | None = None) -> None:
        self.port = port
        self.timeout = timeout
        self.interval = interval if interval is not None else max(0.2, min(1.0, timeout / 4))
        self.talked: set[int] = set()  # inodes that sent something: hyper's timer has them
        self.first_seen: dict[int, float] = {}
        self.closed = 0
        self._trimmed_at = 0  # sockets seen at the last malloc_trim
        self._stop = threading.Event()

    def start(self) -> "SilentGuard":
        threading.Thread(target=self._run, name="tee-daemon-connguard", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception:  # never let the guard die quietly
                log.exception("connection guard scan failed")

    def scan(self) -> None:
        now = time.monotonic()
        live: set[int] = set()
        try:
            entries = os.listdir("/proc/self/fd")
        except OSError:
            return
        for name in entries:
            try:
                target = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                continue
            if not target.startswith("socket:["):
                continue
            inode = int(target[8:-1])
            live.add(inode)
            if inode in self.talked:
                continue
            self._check(int(name), inode, now)
        self.talked &= live
        if len(live) + 64 <= self._trimmed_at:
            _malloc_trim()  # many connections ended: hand their buffers back to the system
        if len(live) + 64 <= self._trimmed_at or len(live) > self._trimmed_at:
            self._trimmed_at = len(live)
        for inode in list(self.first_seen):
            if inode not in live:
                del self.first_seen[inode]

    def _check(self, fd: int, inode: int, now: float) -> None:
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            return
        try:
            if os.fstat(sock.fileno()).st_ino != inode:  # the number was reused: next scan
                return
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                self.talked.add(inode)
                return
            try:
                local_port = sock.getsockname()[1]
                sock.getpeername()
            except OSError:  # the listener itself, or not connected
                self.talked.add(inode)
                return
            if local_port != self.port:  # the daemon's own connections to projects
                self.talked.add(inode)
                return
            info = _tcp_info(sock)
            if info is None:
                return
            last_recv_ms, received = info
            if received:
                self.talked.add(inode)
                return
            first = self.first_seen.setdefault(inode, now)
            age = max(now - first, last_recv_ms / 1000)
            if age >= self.timeout:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    self.closed += 1
                except OSError:
                    pass
                self.talked.add(inode)
        finally:
            sock.close()


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


_guard: SilentGuard | None = None


def start_guard(settings) -> None:
    """Start this process's silent-connection guard (once): in each ingress worker, the
    processes that hold the clients' connections."""
    global _guard
    if _guard is None:
        _guard = SilentGuard(settings.port, settings.header_timeout).start()
