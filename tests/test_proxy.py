"""The streaming reverse proxy (`tee_daemon.proxy.forward`) over real HTTP.

granian serves core's `Ingress` with routes to `proxy_to(...)` (tests/proxy_app.py)
in front of a Deno server (tests/proxy_upstream/server.ts) on a port and on a unix
socket, as the runtime plugins' processes would be.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from harness import REPO, free_port

HERE = Path(__file__).resolve().parent
DENO = REPO / ".venv" / "bin" / "deno"
MAX_BODY = 8 * 2**20


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def _start_upstream(target: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(DENO), "run", "-A", str(HERE / "proxy_upstream" / "server.ts"), target],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.up_port = free_port()
        self.sock = str(tmp / "up.sock")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def start_tcp_upstream(self) -> None:
        proc = self.procs["tcp"] = _start_upstream(str(self.up_port), self.tmp / "deno-tcp.log")
        _wait_http(f"http://127.0.0.1:{self.up_port}/hello", proc)

    def start(self) -> "Stack":
        if not DENO.exists():
            raise RuntimeError(f"{DENO} missing: run make install")
        self.start_tcp_upstream()
        self.procs["unix"] = _start_upstream(self.sock, self.tmp / "deno-unix.log")
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(HERE),
            PROXY_ROUTES=f"up=127.0.0.1:{self.up_port},sock={self.sock},down=127.0.0.1:{free_port()}",
            PROXY_MAX_BODY=str(MAX_BODY),
            PROXY_ACCESS_LOG=str(self.tmp / "access.log"),
        )
        cmd = [
            sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
            "--port", str(self.port), "proxy_app:create_app",
        ]  # fmt: skip
        self.procs["granian"] = subprocess.Popen(
            cmd, env=env, cwd=HERE, stdout=open(self.tmp / "granian.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        _wait_http(self.url + "/", self.procs["granian"])
        return self

    def stop(self) -> None:
        for proc in self.procs.values():
            _stop(proc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    s = Stack(tmp_path_factory.mktemp("proxy")).start()
    yield s
    s.stop()


@pytest.fixture
def client(stack: Stack):
    with httpx.Client(base_url=stack.url, timeout=30, follow_redirects=False) as c:
        yield c


def test_hello_over_tcp_and_unix_socket(client: httpx.Client) -> None:
    for name in ("up", "sock"):
        r = client.get(f"/{name}/hello")
        assert r.status_code == 200, r.text
        assert r.text == "hello world"
        assert r.headers["content-length"] == "11"


def test_keep_alive_many_requests(client: httpx.Client) -> None:
    for i in range(200):
        assert client.get(f"/up/headers?i={i}").json()["search"] == f"?i={i}"


def test_path_stripped_query_intact_and_forwarded_headers(client: httpx.Client, stack: Stack) -> None:
    r = client.get("/up/headers?q=3&x=a%20b", headers={"x-forwarded-for": "10.0.0.9", "x-other": "kept"})
    body = r.json()
    assert body["path"] == "/headers"
    assert body["search"] == "?q=3&x=a%20b"
    h = body["headers"]
    assert h["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == f"127.0.0.1:{stack.port}"
    assert h["host"] == f"127.0.0.1:{stack.port}"
    assert h["x-other"] == "kept"


def test_hop_by_hop_request_headers_not_forwarded(client: httpx.Client) -> None:
    r = client.get("/up/headers", headers={"connection": "keep-alive, x-hop", "x-hop": "1", "te": "trailers"})
    h = r.json()["headers"]
    assert "x-hop" not in h and "te" not in h and h.get("connection") in (None, "keep-alive")


def test_set_cookie_and_location_pass_through_redirect_not_followed(client: httpx.Client) -> None:
    r = client.get("/up/cookies")
    assert r.status_code == 302
    assert r.headers["location"] == "/elsewhere?x=1"
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    assert r.headers["x-custom"] == "kept"


def test_streaming_chunked_upload_arrives_whole(client: httpx.Client) -> None:
    data = os.urandom(6 * 2**20)  # above every buffer threshold, below the bound

    def gen():
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    r = client.post("/up/upload", content=gen())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["chunks"] > 1  # it streamed rather than arriving as one buffer


def test_upload_with_content_length(client: httpx.Client) -> None:
    data = os.urandom(3 * 2**20 + 7)
    body = client.post("/sock/upload", content=data).json()
    assert body["size"] == len(data) and body["sha256"] == hashlib.sha256(data).hexdigest()
    assert client.post("/up/upload", content=b"").json()["size"] == 0


def test_large_response_streams(client: httpx.Client) -> None:
    with client.stream("GET", "/up/big?n=20000000") as r:
        total = sum(len(chunk) for chunk in r.iter_bytes())
    assert total == 20_000_000


def test_head_request(client: httpx.Client) -> None:
    r = client.head("/up/hello")
    assert r.status_code == 200 and r.content == b""
    assert client.get("/up/hello").text == "hello world"  # the connection stayed usable


def test_oversized_body_gets_413_json(client: httpx.Client) -> None:
    r = client.post("/up/upload", content=b"x" * (MAX_BODY + 1))
    assert r.status_code == 413
    assert r.json()["status_code"] == 413

    def gen():
        for _ in range(MAX_BODY // 2**20 + 2):
            yield b"y" * 2**20

    r = client.post("/up/upload", content=gen())
    assert r.status_code == 413
    assert r.json()["status_code"] == 413


def test_unreachable_upstream_gets_502_json(client: httpx.Client) -> None:
    r = client.get("/down/anything")
    assert r.status_code == 502
    body = r.json()
    assert body["status_code"] == 502 and "Traceback" not in r.text


def test_sse_arrives_incrementally(client: httpx.Client, stack: Stack) -> None:
    with client.stream("GET", "/up/sse") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        first = next(line for line in lines if line)
        assert first == "data: first"  # while the upstream is still holding the stream open
        threading.Timer(0.2, lambda: httpx.get(stack.url + "/up/sse-release", timeout=10)).start()
        second = next(line for line in lines if line)
        assert second == "data: second"


def test_upstream_restart_reconnects(client: httpx.Client, stack: Stack) -> None:
    assert client.get("/up/hello").status_code == 200  # pools a connection
    _stop(stack.procs["tcp"])
    assert client.get("/up/hello").status_code == 502
    stack.start_tcp_upstream()
    assert client.get("/up/hello").status_code == 200


# -- WebSocket: a minimal client on a raw socket ---------------------------------------


def _ws_connect(port: int, path: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    assert expected in head
    return s


def _ws_send(s: socket.socket, opcode: int, payload: bytes) -> None:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
    s.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "connection closed"
        out += chunk
    return out


def _ws_recv(s: socket.socket) -> tuple[int, bytes]:
    b0, b1 = _recv_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", _recv_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", _recv_exact(s, 8))[0]
    return b0 & 0x0F, _recv_exact(s, n)


def test_websocket_echo(stack: Stack) -> None:
    s = _ws_connect(stack.port, "/up/ws")
    try:
        _ws_send(s, 1, b"hello over the proxy")
        assert _ws_recv(s) == (1, b"hello over the proxy")
        blob = os.urandom(70_000)
        _ws_send(s, 2, blob)
        assert _ws_recv(s) == (2, blob)
        _ws_send(s, 8, struct.pack("!H", 1000))
        opcode, _ = _ws_recv(s)
        assert opcode == 8
    finally:
        s.close()


def test_websocket_to_unreachable_upstream_is_refused(stack: Stack) -> None:
    s = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    try:
        s.sendall(
            b"GET /down/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = s.recv(4096)
        assert not head.startswith(b"HTTP/1.1 101")
    finally:
        s.close()


def test_access_log_line_per_request(client: httpx.Client, stack: Stack) -> None:
    client.get("/up/headers?al=1")
    client.post("/up/upload", content=b"abc")
    log = stack.tmp / "access.log"
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if "al=1" in text and "POST /upload" in text:
            break
        time.sleep(0.2)
    line = next(l for l in text.splitlines() if "al=1" in l)
    stamp, project, method, target, status, duration = line.split(" ")
    assert (project, method, target, status) == ("up", "GET", "/headers?al=1", "200")
    assert stamp.endswith("Z") and duration.endswith("ms") and float(duration[:-2]) > 0
    assert any(l.split(" ")[1:5] == ["up", "POST", "/upload", "200"] for l in text.splitlines())


def test_proxy_json_errors_have_no_trace(client: httpx.Client) -> None:
    r = client.get("/nope/x")
    assert r.status_code == 404 and json.loads(r.text)["status_code"] == 404
