"""Runs a project's command inside its sandbox and, with the isolated network, relays the
daemon's unix socket to the TCP port the command listens on.

Why: with ``TEE_DAEMON_PROJECT_NETWORK=isolated`` a project lives in a network
namespace of its own and the daemon reaches it only through a unix socket
(``LISTEN_UNIX``) in a folder bound into the sandbox. An ordinary app (Express,
gunicorn, uvicorn) listens on TCP ``$HOST:$PORT`` instead. The namespace is the
project's alone, so the port is free and unreachable from outside; this program starts
the command with ``PORT``/``HOST`` set, waits until that port accepts, and only then
binds ``LISTEN_UNIX`` (so the daemon's readiness check means "the app serves"). Every
connection to the socket is relayed, bytes both ways, to ``$HOST:$PORT``.

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
UNIX = os.environ.pop("LISTEN_UNIX", None)
INNER_PORT = "8080"  # The namespace is the project's own: nothing else can hold it.
POLL = 0.05
HINT_AFTER = 3.0  # Seconds without a listener before the log says what is awaited.


class Pipe(asyncio.Protocol):
    """One direction of a relayed connection, with flow control: when the other side's
    write buffer is full, reading from this side pauses."""

    def __init__(self, peer: "Pipe | None" = None, on_connect=None) -> None:
        self.peer = peer
        self.on_connect = on_connect
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # Data that arrived before the peer connected.
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.on_connect is not None:
            asyncio.ensure_future(self.on_connect(self))

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            self.transport.pause_reading()
            return
        peer.transport.write(data)

    def eof_received(self):
        if self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()  # Half-close: the other side may still answer.
            return True
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # The peer's write buffer is ours to throttle.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def relay_one(client: Pipe, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    try:
        _, upstream = await loop.create_connection(lambda: Pipe(client), host, port)
    except OSError:
        client.transport.close()
        return
    client.peer = upstream
    if client.closed:
        upstream.transport.close()
        return
    for data in client.pending:
        upstream.transport.write(data)
    client.pending.clear()
    client.transport.resume_reading()


async def listening(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, asyncio.TimeoutError):
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
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        hint_at = loop.time() + HINT_AFTER
        while not exited.done() and not await listening(connect_host, port):
            if hint_at and loop.time() > hint_at:
                hint_at = 0
                print(f"tee-daemon: waiting for the command to listen on {host}:{port} "
                      f"(the PORT and HOST it was given)", flush=True)  # fmt: skip
            await asyncio.sleep(POLL)
        if not exited.done():
            await loop.create_unix_server(
                lambda: Pipe(on_connect=lambda pipe: relay_one(pipe, connect_host, port)), UNIX, backlog=1024
            )
            served = True
    code = await exited
    code = code if code >= 0 else 128 - code
    if UNIX and not served:
        print(f"tee-daemon: the command exited (status {code}) before listening on {host}:{port}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
