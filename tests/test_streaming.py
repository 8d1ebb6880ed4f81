"""Server-sent events and WebSockets from real runtime projects, through the daemon."""

from __future__ import annotations

import os
import struct
import time

import httpx
import pytest

from test_proxy import _ws_connect, _ws_recv, _ws_send
from test_runtimes import app_files, deploy_ok

SAMPLES = ["deno-stream", "python-stream"]


@pytest.mark.parametrize("sample", SAMPLES)
def test_sse_arrives_incrementally(daemon, name, sample):
    deploy_ok(daemon, name, app_files(sample))
    arrivals = []
    start = time.monotonic()
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        with client.stream("GET", f"/{name}/sse") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data:"):
                    arrivals.append((line, time.monotonic() - start))
    assert [line for line, _ in arrivals] == ["data: event 0", "data: event 1", "data: event 2"]
    # The first event is delivered before the upstream has finished (0.8 s later).
    assert arrivals[0][1] < arrivals[2][1] - 0.5, arrivals


@pytest.mark.parametrize("sample", SAMPLES)
def test_websocket_echo(daemon, name, sample):
    deploy_ok(daemon, name, app_files(sample))
    s = _ws_connect(int(daemon.url.rsplit(":", 1)[1]), f"/{name}/ws")
    try:
        _ws_send(s, 1, b"hello through the daemon")
        assert _ws_recv(s) == (1, b"hello through the daemon")
        blob = os.urandom(100_000)
        _ws_send(s, 2, blob)
        assert _ws_recv(s) == (2, blob)
        _ws_send(s, 8, struct.pack("!H", 1000))
    finally:
        s.close()


def test_a_streams_head_arrives_before_its_first_bytes(daemon, name):
    """A stream whose body starts later (a log follower, an idle event stream): the
    client has the head at once, not only when the project first writes."""
    server = """let release: () => void;
const released = new Promise<void>((r) => (release = r));
export default async function handler(req: Request): Promise<Response> {
  if (new URL(req.url).pathname === "/release") { release(); return new Response("released"); }
  const body = new ReadableStream({
    async start(c) { await released; c.enqueue(new TextEncoder().encode("late\\n")); c.close(); },
  });
  return new Response(body, { headers: { "content-type": "text/plain" } });
}
"""
    deploy_ok(daemon, name, {"server.ts": server})
    with httpx.Client(base_url=daemon.url, timeout=20) as client:
        with client.stream("GET", f"/{name}/stream") as r:  # returns once the head is in
            assert r.status_code == 200
            assert httpx.get(f"{daemon.url}/{name}/release", timeout=20).text == "released"
            assert r.read() == b"late\n"
