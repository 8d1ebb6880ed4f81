"""The streaming reverse proxy from the front door to a project's process.

`proxy_to(upstream)` returns an ASGI callable that forwards HTTP and WebSocket traffic
to a process listening on a unix socket (a path) or on ``("127.0.0.1", port)``.

This is the hottest code in the product, so it is a small HTTP/1.1 client written
directly on asyncio protocols rather than a general-purpose library:

* a keep-alive pool of idle connections per upstream (LIFO, idle ones expire before
  the runtimes' own keep-alive timeouts; a request that finds a reused connection
  closed under it is retried once on a fresh one when nothing was consumed yet);
* bodies stream both ways: nothing is buffered beyond one chunk (reading from the
  upstream pauses above a high-water mark; uploads wait for the socket to drain);
* status and headers pass untouched apart from hop-by-hop ones; redirects are not
  followed; `X-Forwarded-For/-Proto/-Host` are added;
* a request body larger than the bound gets a 413 JSON answer; an unreachable or
  crashed upstream a 502 JSON answer, never a trace;
* WebSockets: the upgrade is replayed to the upstream and frames are relayed both
  ways (a minimal RFC 6455 codec: client frames masked, fragments reassembled).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import struct
import time
from typing import Any

from tee_daemon.kernel.errors import error_answer
from tee_daemon.kernel.contract import ASGIApp, Receive, Scope, Send

log = logging.getLogger("tee_daemon.proxy.forward")

Upstream = str | tuple[str, int]

# Idle pooled connections older than this are closed rather than reused: Node closes
# idle keep-alive sockets after 5 s, and reusing one as it closes loses the request.
IDLE_TTL = 4.0
MAX_IDLE = 128  # per upstream
HIGH_WATER = 64 * 1024  # pause reading from the upstream above this many buffered bytes
# Largest body piece handed to the server at once: with a client that does not read, the
# server holds a few of them, so their size bounds what a slow reader costs (SPEC 10).
SEND_MAX = 64 * 1024
MAX_HEAD = 64 * 1024  # response status line + headers
HEAD_TIMEOUT = 300.0  # for the upstream's response head (then 504)
CONNECT_TIMEOUT = 10.0
MAX_WS_MESSAGE = 64 * 2**20  # one websocket message from a project, fragments included

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+")  # a header name (RFC 9110 5.6.2), lower case
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls other than HTAB

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers not forwarded: hop-by-hop, the ones we set, and `expect` (the
# front server already answered any 100-continue; the body is sent regardless).
_DROP_REQUEST = _HOP_BY_HOP | {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"expect",
    b"content-length",
}
_DROP_WS_REQUEST = _DROP_REQUEST | {
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-accept",
}
# Response headers a project may not send, because under path routing every project
# shares the daemon's origin: `Service-Worker-Allowed` would let a service worker of
# `/<name>/` control `/` and every other project (and replace the daemon's own pages);
# `Clear-Site-Data` would wipe the cookies and storage of the whole origin.
_DROP_RESPONSE = frozenset({b"service-worker-allowed", b"clear-site-data"})
_DROP_WS_RESPONSE = _HOP_BY_HOP | _DROP_RESPONSE | {
    b"sec-websocket-accept",
    b"sec-websocket-protocol",
    b"sec-websocket-extensions",
    b"content-length",
}


class ProxyLimits:
    """What the daemon's settings say about forwarding, handed to every proxy by the
    front door in the request's scope (`SCOPE_KEY`), so no proxy reads a global."""

    __slots__ = ("max_request_body", "trusted_proxies")

    def __init__(self, max_request_body: int = 32 * 2**20, trusted_proxies: frozenset[str] = frozenset()) -> None:
        self.max_request_body = max_request_body
        # Peers (e.g. a TLS-terminating gateway in front of the daemon) whose
        # X-Forwarded-Proto and X-Forwarded-Host are passed on instead of replaced.
        self.trusted_proxies = trusted_proxies


SCOPE_KEY = "tee_daemon.proxy"
DEFAULT_LIMITS = ProxyLimits()  # a proxy called outside the daemon's front door


def limits_of(scope: Scope) -> ProxyLimits:
    return scope.get(SCOPE_KEY) or DEFAULT_LIMITS


class _UpstreamError(Exception):
    """The upstream closed or misbehaved; `reused` says the connection was pooled."""


class _ClientGone(Exception):
    pass


# -- the connection -------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection to the upstream, read through a small buffer."""

    __slots__ = (
        "transport",
        "buf",
        "eof",
        "waiter",
        "paused",
        "drain_waiter",
        "write_paused",
        "idle_since",
        "reused",
        "started",
        "deadline",
        "timed_out",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.eof = False
        self.waiter: asyncio.Future | None = None
        self.paused = False
        self.drain_waiter: asyncio.Future | None = None
        self.write_paused = False
        self.idle_since = 0.0
        self.reused = False
        self.started = False  # the response head went to the client
        self.deadline = 0.0  # for the response head, checked by the pool's sweeper
        self.timed_out = False

    # protocol callbacks
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.buf:
            self.buf += data
        else:
            self.buf = data
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if len(self.buf) > HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # helpers for the proxy coroutine
    async def fill(self) -> bool:
        """Wait for more bytes; False at end of stream."""
        if self.eof:
            return False
        if self.paused:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        await waiter
        return bool(self.buf) or not self.eof

    def take(self, n: int = -1) -> bytes:
        if n < 0 or n > SEND_MAX:
            n = SEND_MAX
        buf = self.buf
        if n >= len(buf):
            self.buf = b""
            if self.paused:
                self.paused = False
                self.transport.resume_reading()  # type: ignore[union-attr]
            return buf
        self.buf = buf[n:]
        return buf[:n]

    async def drain(self) -> None:
        if self.write_paused and not self.eof:
            waiter = self.drain_waiter = asyncio.get_running_loop().create_future()
            await waiter

    def close(self) -> None:
        self.eof = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def alive(self) -> bool:
        return not self.eof and not self.buf and not self.transport.is_closing()  # type: ignore[union-attr]


class _Pool:
    __slots__ = ("upstream", "idle", "waiting", "sweeping", "seen_lines")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.idle: list[_Conn] = []
        self.waiting: set[_Conn] = set()  # connections awaiting a response head
        self.sweeping = False
        self.seen_lines: dict[bytes, tuple[int, tuple[bytes, bytes] | None]] = {}  # see _parse_head

    def take_idle(self, now: float) -> _Conn | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.alive and now - conn.idle_since < IDLE_TTL:
                conn.reused = True
                return conn
            conn.close()
        return None

    def watch(self, conn: _Conn, now: float, timeout: float) -> None:
        """Time out the response head without a timer per request: one sweep a second."""
        conn.deadline = now + timeout
        self.waiting.add(conn)
        if not self.sweeping:
            self.sweeping = True
            asyncio.get_running_loop().call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self.waiting if c.deadline < now]:
            self.waiting.discard(conn)
            conn.timed_out = True
            _timeout(conn)
        if self.waiting:
            asyncio.get_running_loop().call_later(1.0, self._sweep)
        else:
            self.sweeping = False

    async def connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        upstream = self.upstream
        if isinstance(upstream, str):
            coro = loop.create_unix_connection(_Conn, upstream)
        else:
            coro = loop.create_connection(_Conn, upstream[0], upstream[1])
        _, conn = await asyncio.wait_for(coro, CONNECT_TIMEOUT)
        return conn

    def release(self, conn: _Conn, now: float) -> None:
        if conn.alive and len(self.idle) < MAX_IDLE:
            conn.idle_since = now
            self.idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


# -- answers of the proxy itself ------------------------------------------------------


async def _json(send: Send, status: int, detail: str, scope: Scope) -> None:
    """The proxy's own refusal: JSON, or a small HTML page for a browser's navigation."""
    headers, body = error_answer(scope, status, detail)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


BAD_BODY = "the request body is malformed or was cut short (bad chunk size or fewer bytes than announced)"


async def _bad_body(send: Send, scope: Scope) -> None:
    try:
        await _json(send, 400, BAD_BODY, scope)
    except Exception:  # the client is really gone
        pass


# -- request head ---------------------------------------------------------------------


def _target(scope: Scope) -> bytes:
    raw = scope.get("raw_path")
    if raw:
        target = raw
        if b"?" in target:  # some servers keep the query in raw_path
            return target
    else:
        from urllib.parse import quote

        target = quote(scope["path"]).encode("latin-1")
    query = scope.get("query_string")
    if query:
        return target + b"?" + query
    return target


def _forward_headers(scope: Scope, drop: frozenset[bytes]) -> tuple[list[bytes], bytes | None, bool]:
    """Header lines for the upstream, plus the request's content-length and chunked flag."""
    lines: list[bytes] = []
    host = None
    xff = None
    length = None
    chunked = False
    connection_tokens: list[bytes] | None = None
    given_proto = given_host = None
    for name, value in scope["headers"]:
        if name in drop:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
            elif name == b"connection":
                connection_tokens = [t.strip().lower() for t in value.split(b",")]
            elif name == b"x-forwarded-proto":
                given_proto = value
            elif name == b"x-forwarded-host":
                given_host = value
            continue
        if name == b"host":
            host = value
        lines.append(name + b": " + value + b"\r\n")
    if connection_tokens:
        extra = {t for t in connection_tokens if t and t not in (b"close", b"keep-alive", b"upgrade")}
        if extra:
            lines = [line for line in lines if line.split(b":", 1)[0] not in extra]
    client = scope.get("client")
    addr = client[0].encode("latin-1") if client else b"unknown"
    lines.append(b"x-forwarded-for: " + (xff + b", " + addr if xff else addr) + b"\r\n")
    if not (client and client[0] in limits_of(scope).trusted_proxies):
        given_proto = given_host = None  # Anyone else could claim anything.
    proto = given_proto or (b"https" if scope.get("scheme") in ("https", "wss") else b"http")
    lines.append(b"x-forwarded-proto: " + proto + b"\r\n")
    if host is None:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}".encode("latin-1") if server else b"localhost"
        lines.append(b"host: " + host + b"\r\n")
    lines.append(b"x-forwarded-host: " + (given_host or host) + b"\r\n")
    return lines, length, chunked


# -- response head --------------------------------------------------------------------


def _status(status_line: bytes) -> int:
    """The status code of `HTTP/1.x NNN reason`: three ASCII digits, 100-999. Anything
    else would make the front server fail (an invalid status code panics granian's
    worker and takes the whole daemon down)."""
    code = status_line[9:12]
    if (
        not status_line.startswith(b"HTTP/1.")
        or not (code.isdigit() and len(code) == 3 and code[0:1] != b"0")
        or status_line[12:13] not in (b"", b" ")
    ):
        raise _UpstreamError(f"bad status line {status_line[:80]!r}")
    return int(code)


def _valid_header(name: bytes, value: bytes) -> bool:
    """A header the front server accepts: a token name, no control characters but HTAB."""
    return bool(_TOKEN.fullmatch(name)) and not _BAD_VALUE.search(value)


# What one response header line is to the proxy (see _header_line).
_FIELD, _LENGTH, _CHUNKED, _CONNECTION, _SKIP = range(5)
# A project's server sends the same few header lines on every response: each upstream
# keeps the ones it has checked (short lines only, a bounded number), so a response
# costs a dict lookup per line instead of a split, two strips and two regex scans.
_SEEN_LINES = 256
_SEEN_LINE_MAX = 256


def _header_line(line: bytes) -> tuple[int, tuple[bytes, bytes] | None]:
    """(what the line is, its (name, value)) for a line of a response head; raises on a
    header the front server would refuse."""
    name, sep, value = line.partition(b":")
    if not sep:
        return _SKIP, None
    name = name.strip().lower()
    value = value.strip()
    if not _valid_header(name, value):
        # The front server refuses such headers with a 500; they are the project's fault.
        raise _UpstreamError(f"bad response header {line[:80]!r}")
    if name in _HOP_BY_HOP:
        kind = _CHUNKED if name == b"transfer-encoding" else _CONNECTION if name == b"connection" else _SKIP
    elif name == b"content-length":
        if not value.isdigit():  # A project's garbage must become a 502, not a 500.
            raise _UpstreamError(f"bad content-length {value[:40]!r}")
        kind = _LENGTH
    elif name in _DROP_RESPONSE:
        kind = _SKIP
    else:
        kind = _FIELD
    return kind, (name, value)


def _parse_head(
    head: bytes, seen: dict[bytes, tuple[int, tuple[bytes, bytes] | None]] | None = None
) -> tuple[int, list[tuple[bytes, bytes]], int | None, bool, bool]:
    """(status, headers, content-length, chunked, keep-alive) of a response head;
    `seen` holds the lines already checked on this upstream (`_header_line`)."""
    # Lines end in CRLF; a bare LF is accepted too (RFC 9112 section 2.2), as CGI
    # programs behind a project's server sometimes send it. Values are stripped.
    lines = head.split(b"\n")
    status_line = lines[0].rstrip(b"\r")
    if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
        raise _UpstreamError(f"bad status line {status_line[:80]!r}")
    status = _status(status_line)
    keep_alive = status_line[7:8] == b"1"
    if seen is None:
        seen = {}
    headers: list[tuple[bytes, bytes]] = []
    length = None
    chunked = False
    drop_extra: set[bytes] | None = None
    for line in lines[1:]:
        parsed = seen.get(line)
        if parsed is None:
            parsed = _header_line(line)
            if len(line) <= _SEEN_LINE_MAX:
                if len(seen) >= _SEEN_LINES:
                    seen.clear()
                seen[line] = parsed
        kind, field = parsed
        if kind == _FIELD:
            headers.append(field)  # type: ignore[arg-type]
        elif kind == _SKIP:
            continue
        elif kind == _LENGTH:
            value = int(field[1])  # type: ignore[index]
            if length is not None:
                # Two lengths: the client would frame the body by one and we by the other,
                # so the rest of it would be read as the next response (RFC 9112 6.3).
                if value != length:
                    raise _UpstreamError("conflicting content-length headers")
                continue
            length = value
            headers.append(field)  # type: ignore[arg-type]
        elif kind == _CHUNKED:
            chunked = b"chunked" in field[1].lower()  # type: ignore[index]
        else:  # _CONNECTION
            tokens = {t.strip().lower() for t in field[1].split(b",")}  # type: ignore[index]
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
            drop_extra = tokens - {b"close", b"keep-alive", b"upgrade"}
    if drop_extra:
        headers = [h for h in headers if h[0] not in drop_extra]
    if chunked and length is not None:  # RFC 9112 6.3: chunked wins, drop the length
        length = None
        headers = [h for h in headers if h[0] != b"content-length"]
    return status, headers, length, chunked, keep_alive


async def _read_head(conn: _Conn) -> bytes:
    while True:
        buf = conn.buf
        idx, end = buf.find(b"\r\n\r\n"), 4
        if idx < 0:
            idx, end = buf.find(b"\n\n"), 2  # A head whose lines end in a bare LF.
        if idx >= 0:
            conn.buf = buf[idx + end :]
            return buf[:idx]
        if len(buf) > MAX_HEAD:
            raise _UpstreamError("response head too large")
        if not await conn.fill():
            raise _UpstreamError("upstream closed before answering")


# -- the proxy ------------------------------------------------------------------------

_EMPTY_MORE = {"type": "http.response.body", "body": b"", "more_body": True}


class Proxy:
    """The ASGI callable for one upstream."""

    __slots__ = ("upstream", "pool", "max_body", "__weakref__")
    # What a subclass may change (web/worker.py's pass-through to the supervisor).
    head_timeout = HEAD_TIMEOUT
    unreachable = "the project is not reachable (its process is down or starting)"

    def __init__(self, upstream: Upstream, max_body: int | None = None) -> None:
        if not isinstance(upstream, str):
            upstream = (str(upstream[0]), int(upstream[1]))
        self.upstream = upstream
        self.pool = _Pool(upstream)
        self.max_body = max_body  # None: the front door's limit, from the settings

    def close(self) -> None:
        """Close idle pooled connections (requests in flight finish on their own)."""
        self.pool.close()

    def request_headers(self, scope: Scope, drop: frozenset[bytes]) -> tuple[list[bytes], bytes | None, bool]:
        """The header lines for the upstream, the request's content-length, chunked."""
        return _forward_headers(scope, drop)

    def ingress_spec(self) -> tuple[str, list]:
        """How an ingress worker builds this same proxy (kernel/routes.py)."""
        upstream = self.upstream if isinstance(self.upstream, str) else list(self.upstream)
        return "tee_daemon.proxy.forward:proxy_to", [upstream, self.max_body]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self.websocket(scope, receive, send)
            return
        lines, length, chunked = self.request_headers(scope, _DROP_REQUEST)
        method: str = scope["method"]
        max_body = self.max_body if self.max_body is not None else limits_of(scope).max_request_body
        first = b""
        streaming = False  # more body to come after `first`
        upload_chunked = False
        if length is not None and not chunked:
            try:
                declared = int(length)
            except ValueError:
                await _json(send, 400, "invalid content-length", scope)
                return
            if declared > max_body:
                await _json(send, 413, f"request body larger than {max_body} bytes", scope)
                return
        if length is not None or chunked:
            message = await receive()
            if message["type"] == "http.disconnect":
                # granian reports a malformed body (a bad chunk size) or one cut short as
                # a disconnect: answer 400 (harmless if the client is really gone).
                await _bad_body(send, scope)
                return
            first = message.get("body", b"")
            streaming = message.get("more_body", False)
            if len(first) > max_body:
                await _json(send, 413, f"request body larger than {max_body} bytes", scope)
                return
            if not streaming:
                lines.append(b"content-length: %d\r\n" % len(first))
            elif chunked:
                lines.append(b"transfer-encoding: chunked\r\n")
                upload_chunked = True
            else:
                lines.append(b"content-length: " + length + b"\r\n")  # type: ignore[operator]
        request_head = b"".join([method.encode(), b" ", _target(scope), b" HTTP/1.1\r\n", *lines, b"\r\n"])
        head_only = method == "HEAD"

        attempt = 0
        while True:
            attempt += 1
            pool = self.pool
            now = time.monotonic()
            conn = pool.take_idle(now)
            if conn is None:
                try:
                    conn = await pool.connect()
                except (OSError, asyncio.TimeoutError) as exc:
                    log.debug("upstream %s unreachable: %s", self.upstream, exc)
                    await _json(send, 502, self.unreachable, scope)
                    return
            conn.started = False
            state = None
            uploader = None
            try:
                if streaming:
                    state = _Upload()
                    conn.transport.write(request_head)  # type: ignore[union-attr]
                    uploader = asyncio.ensure_future(_upload(conn, state, first, receive, max_body, upload_chunked))
                else:
                    conn.transport.write(request_head + first if first else request_head)  # type: ignore[union-attr]
                pool.watch(conn, now, self.head_timeout)
                done = await self._respond(conn, send, head_only, state)
            except _UpstreamError as exc:
                pool.waiting.discard(conn)
                if uploader is not None:
                    uploader.cancel()
                conn.close()
                if state is not None and state.too_large:
                    if not conn.started:
                        await _json(send, 413, f"request body larger than {max_body} bytes", scope)
                    return
                if state is not None and state.client_gone:
                    if not conn.started:
                        await _bad_body(send, scope)
                    return
                if conn.reused and not conn.started and not streaming and attempt == 1 and not conn.timed_out:
                    continue  # a pooled connection closed under us: once more, fresh
                if not conn.started:
                    if conn.timed_out:
                        await _json(send, 504, "the project did not answer in time", scope)
                        return
                    log.warning("upstream %s failed: %s", self.upstream, exc)
                    await _json(send, 502, "the project closed the connection without a valid answer", scope)
                    return
                raise
            except _ClientGone:
                pool.waiting.discard(conn)
                if uploader is not None:
                    uploader.cancel()
                conn.close()
                return
            except BaseException:
                pool.waiting.discard(conn)
                if uploader is not None:
                    uploader.cancel()
                conn.close()
                raise
            if uploader is not None:
                if not uploader.done():
                    uploader.cancel()  # the upstream answered without reading it all
                    done = False
                elif uploader.cancelled() or uploader.exception() is not None or state.doubtful:  # type: ignore[union-attr]
                    done = False
            if done:
                pool.release(conn, time.monotonic())
            else:
                conn.close()
            return

    async def _respond(self, conn: _Conn, send: Send, head_only: bool, state: "_Upload | None") -> bool:
        """Relay the response; True when the connection may be reused."""
        while True:
            head = await _read_head(conn)
            status, headers, length, chunked, keep_alive = _parse_head(head, self.pool.seen_lines)
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue, 103 Early Hints: not relayed
            break
        self.pool.waiting.discard(conn)
        if state is not None:
            if state.too_large:
                raise _UpstreamError("request body too large")
            # A server that refuses an upload (or answers before it has all of it) may
            # not have read the body, and then closes the connection a moment after its
            # answer, often without saying so (granian does): such a one is not reused.
            state.doubtful = status >= 400 or not state.sent
        no_body = head_only or status in (204, 304) or status == 101
        conn.started = True
        start = {"type": "http.response.start", "status": status, "headers": headers}
        try:
            if no_body:
                await send(start)
                await send({"type": "http.response.body", "body": b""})
                return keep_alive
            if length is not None:
                buf = conn.buf
                if len(buf) >= length:
                    # The whole body is here (the usual small response): one message.
                    if len(buf) == length:
                        conn.buf = b""
                    else:
                        conn.buf = buf[length:]
                        buf = buf[:length]
                    await send(start)
                    await send({"type": "http.response.body", "body": buf})
                    return keep_alive
                await send(start)
                remaining = length
                while remaining:
                    if not conn.buf and not await conn.fill():
                        raise _UpstreamError("upstream closed mid-body")
                    chunk = conn.take(remaining)
                    remaining -= len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
                return keep_alive
            await send(start)
            if not conn.buf:
                # A stream whose first bytes come later (a log follower, server-sent
                # events): the server sends a head only with a body message, so hand it
                # an empty one now rather than hold the client's head until then.
                await send(_EMPTY_MORE)
            if chunked:
                await _relay_chunked(conn, send)
                return keep_alive
            # No length, not chunked: the body ends when the upstream closes.
            while True:
                if not conn.buf and not await conn.fill():
                    break
                chunk = conn.take()
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return False
        except _UpstreamError:
            raise
        except (OSError, RuntimeError) as exc:
            # The client went away (the server raises from send): stop quietly.
            if _is_disconnect(exc):
                raise _ClientGone() from None
            raise

    # -- WebSocket ---------------------------------------------------------------------

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        lines, _, _ = self.request_headers(scope, _DROP_WS_REQUEST)
        lines = [line for line in lines if not line.startswith(b"sec-websocket-protocol:")]
        protocols = scope.get("subprotocols") or []
        if protocols:
            lines.append(b"sec-websocket-protocol: " + ", ".join(protocols).encode("latin-1") + b"\r\n")
        key = base64.b64encode(os.urandom(16))
        head = b"".join(
            [
                b"GET ",
                _target(scope),
                b" HTTP/1.1\r\n",
                *lines,
                b"connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n",
                b"sec-websocket-key: ",
                key,
                b"\r\n\r\n",
            ]
        )
        try:
            conn = await self.pool.connect()
        except (OSError, asyncio.TimeoutError):
            await send({"type": "websocket.close", "code": 1011, "reason": "project not reachable"})
            return
        try:
            conn.transport.write(head)  # type: ignore[union-attr]
            timer = asyncio.get_running_loop().call_later(CONNECT_TIMEOUT * 3, _timeout, conn)
            try:
                raw = await _read_head(conn)
            finally:
                timer.cancel()
            lines_ = raw.split(b"\r\n")
            try:
                status = _status(lines_[0])
            except _UpstreamError:
                status = 0
            if status != 101:
                await send({"type": "websocket.close", "code": 1011 if status >= 500 or not status else 1008})
                return
            subprotocol = None
            extra: list[tuple[bytes, bytes]] = []
            for line in lines_[1:]:
                name, sep, value = line.partition(b":")
                name = name.strip().lower()
                value = value.strip()
                if sep and not _valid_header(name, value):
                    raise _UpstreamError(f"bad handshake header {line[:80]!r}")
                if name == b"sec-websocket-protocol":
                    if value.decode("latin-1") not in protocols:
                        raise _UpstreamError(f"subprotocol {value[:40]!r} was not offered")
                    subprotocol = value.decode("latin-1")
                elif sep and name not in _DROP_WS_RESPONSE:
                    extra.append((name, value))
            accept: dict[str, Any] = {"type": "websocket.accept", "subprotocol": subprotocol}
            if extra:
                accept["headers"] = extra
            await send(accept)
            await _ws_relay(conn, receive, send)
        except _UpstreamError:
            await _ws_close_quietly(send, 1011)
        finally:
            conn.close()


def proxy_to(upstream: Upstream, max_body: int | None = None) -> ASGIApp:
    """The ASGI callable forwarding to `upstream` (a unix socket path or (host, port))."""
    return Proxy(upstream, max_body)


# -- helpers ----------------------------------------------------------------------------


def _timeout(conn: _Conn) -> None:
    conn.close()
    conn._wake()


def _is_disconnect(exc: BaseException) -> bool:
    name = type(exc).__name__
    return isinstance(exc, OSError) or "Disconnect" in name or "closed" in str(exc).lower()


class _Upload:
    __slots__ = ("too_large", "client_gone", "sent", "doubtful")

    def __init__(self) -> None:
        self.too_large = False
        self.client_gone = False
        self.sent = False  # the whole body went to the upstream
        self.doubtful = False  # the connection may be closing after the answer


async def _upload(conn: _Conn, state: _Upload, first: bytes, receive: Receive, max_body: int, chunked: bool) -> None:
    """Stream the rest of the request body to the upstream, counting it."""
    transport = conn.transport
    total = len(first)
    body = first
    more = True
    while True:
        if body:
            if chunked:
                transport.write(b"%x\r\n" % len(body) + body + b"\r\n")  # type: ignore[union-attr]
            else:
                transport.write(body)  # type: ignore[union-attr]
            await conn.drain()
            if conn.eof:
                return
        if not more:
            break
        message = await receive()
        if message["type"] == "http.disconnect":
            state.client_gone = True
            conn.close()
            return
        body = message.get("body", b"")
        more = message.get("more_body", False)
        total += len(body)
        if total > max_body:
            state.too_large = True
            conn.close()
            return
    if chunked:
        transport.write(b"0\r\n\r\n")  # type: ignore[union-attr]
    state.sent = True


async def _relay_chunked(conn: _Conn, send: Send) -> None:
    while True:
        # chunk-size line
        while True:
            buf = conn.buf
            idx = buf.find(b"\r\n")
            if idx >= 0:
                break
            if len(buf) > 4096:
                raise _UpstreamError("bad chunk header")
            if not await conn.fill():
                raise _UpstreamError("upstream closed mid-body")
        size_text = buf[:idx].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _UpstreamError("bad chunk size") from None
        conn.buf = buf[idx + 2 :]
        if size == 0:
            # trailers (ignored) up to the blank line
            while True:
                buf = conn.buf
                if buf.startswith(b"\r\n"):
                    conn.buf = buf[2:]
                    break
                idx = buf.find(b"\r\n\r\n")
                if idx >= 0:
                    conn.buf = buf[idx + 4 :]
                    break
                if len(buf) > MAX_HEAD:
                    raise _UpstreamError("trailers too large")
                if not await conn.fill():
                    raise _UpstreamError("upstream closed in trailers")
            await send({"type": "http.response.body", "body": b""})
            return
        remaining = size
        while remaining:
            if not conn.buf and not await conn.fill():
                raise _UpstreamError("upstream closed mid-chunk")
            data = conn.take(remaining)
            remaining -= len(data)
            await send({"type": "http.response.body", "body": data, "more_body": True})
        while len(conn.buf) < 2:
            if not await conn.fill():
                raise _UpstreamError("upstream closed after a chunk")
        if conn.buf[:2] != b"\r\n":
            raise _UpstreamError("bad chunk terminator")
        conn.buf = conn.buf[2:]


# -- WebSocket frames -------------------------------------------------------------------

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def _client_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return header + key + _mask(payload, key)


async def _read_frame(conn: _Conn) -> tuple[bool, int, bytes]:
    async def need(n: int) -> None:
        while len(conn.buf) < n:
            if not await conn.fill():
                raise _UpstreamError("upstream websocket closed")

    await need(2)
    b0, b1 = conn.buf[0], conn.buf[1]
    fin = bool(b0 & 0x80)
    opcode = b0 & 0x0F
    masked = bool(b1 & 0x80)
    n = b1 & 0x7F
    offset = 2
    if n == 126:
        await need(4)
        n = struct.unpack_from("!H", conn.buf, 2)[0]
        offset = 4
    elif n == 127:
        await need(10)
        n = struct.unpack_from("!Q", conn.buf, 2)[0]
        offset = 10
    if n > MAX_WS_MESSAGE:
        raise _UpstreamError("websocket frame too large")
    key = b""
    if masked:
        await need(offset + 4)
        key = conn.buf[offset : offset + 4]
        offset += 4
    await need(offset + n)
    payload = conn.buf[offset : offset + n]
    conn.buf = conn.buf[offset + n :]
    if conn.paused and len(conn.buf) < HIGH_WATER:
        conn.paused = False
        conn.transport.resume_reading()  # type: ignore[union-attr]
    if masked:
        payload = _mask(payload, key)
    return fin, opcode, payload


async def _ws_close_quietly(send: Send, code: int) -> None:
    try:
        await send({"type": "websocket.close", "code": code})
    except Exception:
        pass


async def _ws_relay(conn: _Conn, receive: Receive, send: Send) -> None:
    transport = conn.transport
    assert transport is not None

    async def client_to_upstream() -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    transport.write(_client_frame(_OP_TEXT, text.encode()))
                else:
                    transport.write(_client_frame(_OP_BINARY, message.get("bytes") or b""))
                await conn.drain()
            elif kind == "websocket.disconnect":
                code = message.get("code", 1000) or 1000
                if code in (1005, 1006, 1015):
                    code = 1000
                if not transport.is_closing():
                    transport.write(_client_frame(_OP_CLOSE, struct.pack("!H", code)))
                return

    async def upstream_to_client() -> None:
        fragments: list[bytes] = []
        fragment_op = 0
        buffered = 0
        while True:
            try:
                fin, opcode, payload = await _read_frame(conn)
            except _UpstreamError:
                await _ws_close_quietly(send, 1011)
                return
            if opcode == _OP_PING:
                transport.write(_client_frame(_OP_PONG, payload))
                continue
            if opcode == _OP_PONG:
                continue
            if opcode == _OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1000
                if code in (1005, 1006, 1015):
                    code = 1000
                reason = payload[2:].decode("utf-8", "replace")
                if not transport.is_closing():
                    transport.write(_client_frame(_OP_CLOSE, payload[:2]))
                try:
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                except Exception:
                    pass
                return
            if opcode == _OP_CONT:
                fragments.append(payload)
                buffered += len(payload)
            else:
                fragment_op = opcode
                fragments = [payload]
                buffered = len(payload)
            if buffered > MAX_WS_MESSAGE:
                # A project streaming endless fragments must not grow the daemon's memory:
                # drop what is buffered, hang up on the project, then close the client.
                fragments = []
                conn.close()
                try:
                    await asyncio.wait_for(_ws_close_quietly(send, 1009), CONNECT_TIMEOUT)
                except asyncio.TimeoutError:
                    pass
                return
            if not fin:
                continue
            data = b"".join(fragments) if len(fragments) > 1 else fragments[0]
            fragments = []
            if fragment_op == _OP_TEXT:
                await send({"type": "websocket.send", "text": data.decode("utf-8", "replace")})
            else:
                await send({"type": "websocket.send", "bytes": data})

    tasks = [asyncio.ensure_future(client_to_upstream()), asyncio.ensure_future(upstream_to_client())]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            exc = task.exception()
            if exc is not None and not _is_disconnect(exc):
                log.debug("websocket relay ended: %r", exc)
    finally:
        for task in tasks:
            task.cancel()
