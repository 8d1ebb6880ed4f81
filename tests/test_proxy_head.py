"""Parsing of a project's response head: lenient where RFC 9112 allows, never a 500."""

from __future__ import annotations

import asyncio

import pytest

from tee_daemon import proxy


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
