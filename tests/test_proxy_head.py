"""Parsing of a project's response head: lenient where RFC 9112 allows, never a 500."""

from __future__ import annotations

import asyncio

import pytest

from tee_daemon.proxy import forward as proxy


def test_crlf_and_bare_lf_heads_parse_alike():
    crlf = proxy._parse_head(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2")
    lf = proxy._parse_head(b"HTTP/1.1 201 Created\nContent-Length: 2\nSet-Cookie: a=1\nSet-Cookie: b=2")
    assert crlf == lf
    status, headers, length, chunked, keep_alive = lf
    assert (status, length, chunked, keep_alive) == (201, 2, False, True)
    assert headers == [(b"content-length", b"2"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 abc Nope", b"SMTP 220 hello", b"HTTP/1.1 200 OK\r\nContent-Length: ten", b"HTTP/1.1 200 OK\r\nContent-Length: -1"],
)
def test_garbage_heads_are_upstream_errors(head):
    with pytest.raises(proxy._UpstreamError):
        proxy._parse_head(head)


HEADS = [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close, x-drop\r\nX-Drop: 1\r\nX-Keep: 2",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\nClear-Site-Data: *\r\nX-Keep: 2",
    b"HTTP/1.0 204 No Content\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\nX-Keep: 2",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\nX-Keep: 2",
]


def test_lines_seen_before_parse_as_the_first_time():
    seen: dict = {}
    for head in HEADS * 2:  # the second round comes from `seen`
        assert proxy._parse_head(head, seen) == proxy._parse_head(head)
    assert seen  # the lines were kept


@pytest.mark.parametrize(
    "line", [b"X-Bad: a\x01b", b"Bad Name: x", b"Content-Length: ten", b"Content-Length: 3"]
)
def test_a_refused_head_is_refused_every_time(line):
    seen: dict = {}
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + line  # the last: conflicting lengths
    for _ in range(2):
        with pytest.raises(proxy._UpstreamError):
            proxy._parse_head(head, seen)
    assert (line in seen) == (line == b"Content-Length: 3")  # a bad line is never kept


def test_seen_lines_are_bounded():
    seen: dict = {}
    for i in range(3 * proxy._SEEN_LINES):
        proxy._parse_head(b"HTTP/1.1 200 OK\r\nX-N: %d\r\nX-Long: " % i + b"v" * proxy._SEEN_LINE_MAX, seen)
    assert len(seen) <= proxy._SEEN_LINES
    assert all(len(line) <= proxy._SEEN_LINE_MAX for line in seen)


def test_read_head_finds_either_terminator():
    class Conn:
        def __init__(self, data: bytes) -> None:
            self.buf = data

        async def fill(self) -> bool:
            return False

    for raw, rest in [(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody", b"body"), (b"HTTP/1.1 200 OK\nA: b\n\nbody", b"body")]:
        conn = Conn(raw)
        head = asyncio.run(proxy._read_head(conn))
        assert head.startswith(b"HTTP/1.1 200 OK") and conn.buf == rest


def forwarded(client_ip: str, trusted: frozenset[str]) -> dict[bytes, bytes]:
    scope = {
        "client": (client_ip, 5555),
        "scheme": "http",
        "headers": [(b"host", b"example.org"), (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"public.example")],
    }
    scope[proxy.SCOPE_KEY] = proxy.ProxyLimits(trusted_proxies=trusted)  # as the front door hands it in
    lines, _, _ = proxy._forward_headers(scope, proxy._DROP_REQUEST)
    return dict(line.rstrip(b"\r\n").split(b": ", 1) for line in lines)


def test_forwarded_proto_and_host_only_from_trusted_proxies():
    anyone = forwarded("203.0.113.7", frozenset({"127.0.0.1"}))
    assert anyone[b"x-forwarded-proto"] == b"http" and anyone[b"x-forwarded-host"] == b"example.org"
    gateway = forwarded("127.0.0.1", frozenset({"127.0.0.1"}))
    assert gateway[b"x-forwarded-proto"] == b"https" and gateway[b"x-forwarded-host"] == b"public.example"
    assert gateway[b"x-forwarded-for"] == b"127.0.0.1"


def test_trusted_proxies_setting_parses_a_list():
    from tee_daemon.settings import load_settings

    settings = load_settings(environ={"TEE_DAEMON_TRUSTED_PROXIES": " 10.0.0.1, ::1 ,"})
    assert settings.trusted_proxies == frozenset({"10.0.0.1", "::1"})


def test_a_connection_answered_before_its_upload_ended_is_not_reused():
    """A server that refuses a request before reading its body (an auth check) closes the
    connection a moment after its answer, often without `Connection: close`: granian
    does. Reused, it would fail the next streamed upload with a 502, which cannot be
    retried once its body is being read."""

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the head only: the body is never read
        writer.write(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\nno")
        await asyncio.sleep(0.4)
        writer.close()

    async def one_upload(app) -> int:
        parts = [{"type": "http.request", "body": b"a" * 10, "more_body": True},
                 {"type": "http.request", "body": b"b" * 10, "more_body": False}]  # fmt: skip
        sent: list[dict] = []

        async def receive():
            return parts.pop(0) if parts else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
                 "headers": [(b"host", b"x"), (b"content-length", b"20")], "client": ("127.0.0.1", 1)}  # fmt: skip
        await app(scope, receive, send)
        return sent[0]["status"]

    async def main() -> list[int]:
        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        app = proxy.proxy_to(("127.0.0.1", port))
        try:
            first = await one_upload(app)
            await asyncio.sleep(0.05)  # the first connection is still open upstream
            return [first, await one_upload(app)]
        finally:
            app.close()
            server.close()

    assert asyncio.run(main()) == [401, 401]
