"""Runs a project's command inside its sandbox and, with the isolated network, relays the
daemon's unix socket to the TCP port the command listens on.

Why: with ``TEE_DAEMON_PROJECT_NETWORK=isolated`` a project lives in a network
namespace of its own and the daemon reaches it only through a unix socket
(``LISTEN_UNIX``) in a folder bound into the sandbox. An ordinary app (Express,
gunicorn, uvicorn) listens on TCP ``$HOST:$PORT`` instead. The namespace is the
project's alone, so the port is free and unreachable from outside; this program starts
the command with ``PORT``/``HOST`` set, waits until that port accepts, and only then
binds ``LISTEN_UNIX`` (so the daemon's readiness check means "the app serves"). Every
connection to the socket is relayed, bytes both ways, to ``$HOST:$PORT`` (with
splice(2): the kernel moves the bytes).

The command runs under ``/bin/sh -c`` (a Procfile line may use ``$PORT``). Its exit ends
this program with the same status, so the daemon's supervision (restart, "exited
before serving" with the log tail) sees the app, not the relay. SIGTERM and SIGINT are
passed on to the command. Standard library only: it runs on the daemon's interpreter.
"""

import asyncio
import os
import signal
import socket
import sys

COMMAND = os.environ.pop("TEE_COMMAND")
os.environ.pop("TEE_ENV_KEYS", None)  # For the handler shims; an ordinary app has no use for it.
UNIX = os.environ.pop("LISTEN_UNIX", None)
INNER_PORT = "8080"  # The namespace is the project's own: nothing else can hold it.
POLL = 0.05
CHUNK = 1 << 16  # A pipe's default capacity.
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
HINT_AFTER = 3.0  # Seconds without a listener before the log says what is awaited.


class Direction:
    """Bytes one way, from `src` to `dst`, through a pipe with splice(2): the kernel moves
    them, Python only sees readiness (the relay runs in the project's CPU quota, so it
    should cost as little as it can). While `dst` cannot take more, `src` is not read:
    a slow reader slows the writer instead of filling memory."""

    def __init__(self, loop, src: socket.socket, dst: socket.socket, pair: "Pair") -> None:
        self.loop, self.src, self.dst, self.pair = loop, src, dst, pair
        self.r, self.w = os.pipe()
        self.buffered = 0  # Bytes in the pipe, not yet written to dst.
        self.done = False
        loop.add_reader(src.fileno(), self.readable)

    def readable(self) -> None:
        try:
            n = os.splice(self.src.fileno(), self.w, CHUNK, flags=SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            return self.pair.close()
        if n == 0:  # EOF: pass the half-close on; the other way may still be talking.
            self.loop.remove_reader(self.src.fileno())
            self.done = True
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return self.pair.close_if_done()
        self.buffered += n
        if not self.flush():
            self.loop.remove_reader(self.src.fileno())
            self.loop.add_writer(self.dst.fileno(), self.writable)

    def flush(self) -> bool:
        """Write what the pipe holds; False when dst is full."""
        while self.buffered:
            try:
                self.buffered -= os.splice(self.r, self.dst.fileno(), self.buffered, flags=SPLICE_FLAGS)
            except BlockingIOError:
                return False
            except OSError:
                self.pair.close()
                return True
        return True

    def writable(self) -> None:
        if self.flush() and not self.pair.closed:
            self.loop.remove_writer(self.dst.fileno())
            self.loop.add_reader(self.src.fileno(), self.readable)

    def close(self) -> None:
        for fd in (self.r, self.w):
            os.close(fd)


class Pair:
    """One relayed connection: the daemon's side and the app's side, both ways."""

    def __init__(self, loop, client: socket.socket, upstream: socket.socket) -> None:
        self.loop, self.socks, self.closed = loop, (client, upstream), False
        self.ways = (Direction(loop, client, upstream, self), Direction(loop, upstream, client, self))

    def close_if_done(self) -> None:
        if all(way.done for way in self.ways):
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in self.socks:
            self.loop.remove_reader(sock.fileno())
            self.loop.remove_writer(sock.fileno())
            sock.close()
        for way in self.ways:
            way.close()


async def relay_one(loop, client: socket.socket, host: str, port: int) -> None:
    upstream = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    upstream.setblocking(False)
    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await loop.sock_connect(upstream, (host, port))
    except OSError:
        client.close()
        upstream.close()
        return
    Pair(loop, client, upstream)


async def serve(loop, listener: socket.socket, host: str, port: int) -> None:
    while True:
        client, _ = await loop.sock_accept(listener)
        client.setblocking(False)
        loop.create_task(relay_one(loop, client, host, port))


async def listening(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


async def main() -> int:
    loop = asyncio.get_running_loop()
    env = dict(os.environ)
    env.setdefault("HOST", "127.0.0.1")
    if UNIX:
        env["PORT"] = INNER_PORT
    host, port = env["HOST"], int(env["PORT"])
    child = await asyncio.create_subprocess_exec("/bin/sh", "-c", COMMAND, env=env)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: child.returncode is None and child.send_signal(s))
    exited = asyncio.ensure_future(child.wait())
    served = False
    if UNIX:
        # An app told 127.0.0.1 may still bind "localhost", which can resolve to ::1
        # only (Fastify's default): either loopback address of the namespace will do.
        wildcard_or_loopback = host in ("0.0.0.0", "::", "", "127.0.0.1", "localhost")
        candidates = ["127.0.0.1", "::1"] if wildcard_or_loopback else [host]
        connect_host = None
        hint_at = loop.time() + HINT_AFTER
        while not exited.done():
            for candidate in candidates:
                if await listening(candidate, port):
                    connect_host = candidate
                    break
            if connect_host is not None:
                break
            if hint_at and loop.time() > hint_at:
                hint_at = 0
                print(f"tee-daemon: waiting for the command to listen on {host}:{port} "
                      f"(the PORT and HOST it was given)", flush=True)  # fmt: skip
            await asyncio.sleep(POLL)
        if not exited.done():
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(UNIX)
            listener.listen(1024)
            listener.setblocking(False)
            loop.create_task(serve(loop, listener, connect_host, port))
            served = True
    code = await exited
    code = code if code >= 0 else 128 - code
    if UNIX and not served:
        print(f"tee-daemon: the command exited (status {code}) before listening on {host}:{port}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
