"""A project's server is untrusted: whatever bytes it answers with, the daemon must keep
serving everyone else, answer the client with a clean 502 (never a 500, never a crash),
and never let the project's framing desynchronise the client's connection."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

# A python project that, at import, serves raw bytes on $LISTEN_UNIX (or $PORT) instead of granian.
RAW_APP = r'''
import os, socket, threading, time
RESP = {
    "/status000": b"HTTP/1.1 000 X\r\nContent-Length: 2\r\n\r\nok",
    "/status42": b"HTTP/1.1 42 X\r\nContent-Length: 2\r\n\r\nok",
    "/status-1": b"HTTP/1.1 -1 X\r\nContent-Length: 2\r\n\r\nok",
    "/cr-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok",
    "/nul-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "/bad-name": b"HTTP/1.1 200 OK\r\nX A(b): v\r\nContent-Length: 2\r\n\r\nok",
    "/empty-name": b"HTTP/1.1 200 OK\r\n: v\r\nContent-Length: 2\r\n\r\nok",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nokxyz",
    "/same-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "/ws-bad-status": b"HTTP/1.1 1x1 X\r\n\r\n",
    "/ws-bad-header": b"HTTP/1.1 101 S\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-A: a\x00b\r\n\r\n",
    "/ws-bad-name": b"HTTP/1.1 101 S\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX A: b\r\n\r\n",
    "/ws-bad-protocol": b"HTTP/1.1 101 S\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: a\x01b\r\n\r\n",
}
STATE = {"sent_mib": 0, "done": False}

def endless_fragments(c):
    try:
        c.sendall(b"HTTP/1.1 101 S\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        mib = b"x" * 2**20
        c.sendall(b"\x01\x7f" + (2**20).to_bytes(8, "big") + mib)  # text, not final
        for _ in range(400):
            c.sendall(b"\x00\x7f" + (2**20).to_bytes(8, "big") + mib)  # continuation, not final
            STATE["sent_mib"] += 1
    finally:
        STATE["done"] = True

def serve(c):
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                return
            data += chunk
        path = data.split(b" ")[1].decode()
        if path == "/ws-endless":
            return endless_fragments(c)
        if path == "/ws-progress":
            body = ("%(sent_mib)d %(done)s" % STATE).encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            return
        c.sendall(RESP.get(path, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"))
        time.sleep(0.2)
    finally:
        c.close()
if os.environ.get("LISTEN_UNIX"):  # The isolated network (the default): a unix socket.
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.environ["LISTEN_UNIX"])
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(50)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


@pytest.fixture
def raw_project(daemon, name):
    r = daemon.deploy_files(name, {"app.py": RAW_APP})
    assert r.status_code == 201, r.text
    return name


def _raw_get(daemon, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    "path",
    ["/status000", "/status42", "/status-1", "/cr-in-value", "/nul-in-value", "/bad-name", "/empty-name"],
)
def test_garbage_from_a_project_is_a_502_and_the_daemon_lives(daemon, raw_project, path):
    answer = _raw_get(daemon, f"/{raw_project}{path}")
    assert daemon.proc.poll() is None, "a project's answer killed the daemon"
    assert daemon.get("/_api/health").status_code == 200
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:200]
    assert b"Traceback" not in answer


def test_a_broken_body_mid_answer_does_not_kill_the_daemon(daemon, raw_project):
    answer = _raw_get(daemon, f"/{raw_project}/bad-chunk")
    assert daemon.proc.poll() is None
    assert b"Traceback" not in answer
    assert daemon.get(f"/{raw_project}/").text == "fine"


def test_conflicting_content_lengths_never_desync_the_client(daemon, raw_project):
    answer = _raw_get(daemon, f"/{raw_project}/two-lengths")
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:200]
    # Repeated identical lengths are one length (RFC 9110 section 8.6).
    assert daemon.get(f"/{raw_project}/same-lengths").text == "ok"
    assert daemon.get(f"/{raw_project}/").text == "fine"


def _ws_handshake(daemon, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: chat\r\n\r\n".encode()
        )
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out:
                    break
        except OSError:
            pass
    return out


@pytest.mark.parametrize("path", ["/ws-bad-status", "/ws-bad-header", "/ws-bad-name", "/ws-bad-protocol"])
def test_garbage_websocket_handshake_from_a_project_is_refused(daemon, raw_project, path):
    answer = _ws_handshake(daemon, f"/{raw_project}{path}")
    assert daemon.proc.poll() is None, "a project's handshake killed the daemon"
    assert daemon.get("/_api/health").status_code == 200
    assert not answer.startswith(b"HTTP/1.1 101"), answer[:200]
    assert not answer.startswith(b"HTTP/1.1 500"), answer[:200]


def _group_rss_mib(pgid: int) -> float:
    total = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of stat: the process group
                total += int((status.parent / "statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_endless_websocket_fragments_from_a_project_are_bounded(daemon, raw_project):
    """The project sends one text message of 400 MiB in 1 MiB fragments; the daemon must
    give up on it (closing the upstream) instead of buffering it all."""
    before = _group_rss_mib(daemon.proc.pid)
    peak = before
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=60) as s:
        s.sendall(
            f"GET /{raw_project}/ws-endless HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            peak = max(peak, _group_rss_mib(daemon.proc.pid))
            sent, done = daemon.get(f"/{raw_project}/ws-progress").text.split()
            if done == "True":
                break
            time.sleep(0.2)
    assert daemon.proc.poll() is None
    assert int(sent) < 400, "the daemon read the whole endless message"
    assert peak - before < 250, f"the daemon buffered {peak - before:.0f} MiB of one websocket message"
