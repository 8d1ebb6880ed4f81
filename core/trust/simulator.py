"""A built-in stand-in for the dstack guest agent, for machines without TDX (SPEC 2, 7).

It speaks the guest agent's wire protocol (JSON over HTTP on a unix socket: POST /GetQuote,
/GetKey, /Info, /Version, /EmitEvent, with bytes as hex) so the daemon reaches it through
dstack-sdk exactly as it would reach the real agent; nothing else in the daemon knows.

- GetQuote answers a canned *genuine* TDX v4 quote with the caller's report_data patched in
  at offset 568, as dstack's own simulator does: dcap-qvl parses it, its signature does not
  verify, and everything that serves it says `"tee": "simulated"`. RTMR3 is patched too, to
  the replay of the simulator's event log, so a verifier's RTMR3 replay is self-consistent.
- GetKey derives keys with HMAC-SHA256 from a 32-byte root secret kept 0600 under the data
  dir: stable across restarts (the checkpoint key must be), different per path, per data
  dir. Its signature chain is a deterministic placeholder: there is no KMS to vouch for it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import socketserver
import tempfile
import threading
from http.server import BaseHTTPRequestHandler
from importlib.resources import files
from pathlib import Path
from typing import Any

REPORT_DATA = slice(568, 632)
RTMR3 = slice(520, 568)
_MRTD, _RTMR0, _RTMR1, _RTMR2 = slice(184, 232), slice(376, 424), slice(424, 472), slice(472, 520)
RUNTIME_EVENT_TYPE = 0x08000001  # dstack's RTMR3 runtime events
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; leave room
_MAX_BODY = 1 << 20


def _hmac(key: bytes, *parts: str | bytes) -> bytes:
    msg = b"\x00".join(p.encode() if isinstance(p, str) else p for p in parts)
    return hmac.new(key, msg, hashlib.sha256).digest()


def runtime_event(name: str, payload: bytes) -> dict[str, Any]:
    """An RTMR3 event in the guest agent's event-log JSON shape."""
    digest = hashlib.sha384(
        RUNTIME_EVENT_TYPE.to_bytes(4, "little") + b":" + name.encode() + b":" + payload
    ).digest()
    return {
        "imr": 3,
        "event_type": RUNTIME_EVENT_TYPE,
        "digest": digest.hex(),
        "event": name,
        "event_payload": payload.hex(),
    }


def replay_rtmr(events: list[dict[str, Any]], imr: int = 3) -> bytes:
    mr = bytes(48)
    for e in events:
        if e["imr"] == imr:
            mr = hashlib.sha384(mr + bytes.fromhex(e["digest"]).ljust(48, b"\0")).digest()
    return mr


def load_root_secret(state_dir: Path) -> bytes:
    """The simulator's root secret: created once (0600), then read on every start."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / "root-secret"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes()
        if len(secret) != 32:
            raise RuntimeError(f"{path} is not a 32-byte simulator root secret") from None
        return secret
    secret = secrets.token_bytes(32)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    return secret


class TeeSimulator:
    def __init__(self, data_dir: Path, socket_path: Path | None = None) -> None:
        self.state_dir = Path(data_dir) / "tee-simulator"
        self._root = load_root_secret(self.state_dir)
        self._requested_socket = socket_path
        self.socket_path: Path | None = None
        self._template = files("tee_daemon.trust.simdata").joinpath("tdx_quote.bin").read_bytes()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: str | None = None

        self.app_id = _hmac(self._root, "app-id")[:20]
        self.instance_id = _hmac(self._root, "instance-id")[:20]
        self.device_id = _hmac(self._root, "device-id")
        self.app_compose = json.dumps(
            {"manifest_version": 2, "name": "tee-daemon-simulator", "runner": "docker-compose",
             "docker_compose_file": "services:\n  tee-daemon:\n    image: tee-daemon:simulated\n",
             "kms_enabled": False, "key_provider": "none", "simulated": True},
            sort_keys=True, separators=(",", ":"),
        )
        self.compose_hash = hashlib.sha256(self.app_compose.encode()).digest()
        self.os_image_hash = hashlib.sha256(b"tee-daemon simulator: no OS image").digest()
        self.key_provider_info = '{"id":"","name":"tee-daemon-simulator"}'
        self.vm_config = json.dumps({"os_image_hash": self.os_image_hash.hex(), "simulated": True})
        # The boot-time RTMR3 events of a dstack app, in dstack's order and shape.
        self._events = [
            runtime_event("system-preparing", b""),
            runtime_event("app-id", self.app_id),
            runtime_event("compose-hash", self.compose_hash),
            runtime_event("instance-id", self.instance_id),
            runtime_event("boot-mr-done", b""),
            runtime_event("os-image-hash", self.os_image_hash),
            runtime_event("key-provider", self.key_provider_info.encode()),
            runtime_event("system-ready", b""),
        ]

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self.socket_path is None:
            raise RuntimeError("the TEE simulator is not started")
        return str(self.socket_path)

    def start(self) -> str:
        path = self._requested_socket or self.state_dir / "dstack.sock"
        if len(str(path)) > _MAX_SOCKET_PATH:
            # A deep data dir would overflow sun_path; the socket alone moves to a private
            # temp dir (the root secret stays in the data dir).
            self._tmpdir = tempfile.mkdtemp(prefix="tee-sim-")
            path = Path(self._tmpdir) / "dstack.sock"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(path))
                raise RuntimeError(f"another process already serves {path}")
            except OSError:
                path.unlink()  # stale socket of a previous run
            finally:
                probe.close()
        server = _Server(str(path), _Handler)
        os.chmod(path, 0o600)  # only this user may ask for quotes and keys
        server.sim = self
        self._server, self.socket_path = server, path
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="tee-simulator", daemon=True
        )
        self._thread.start()
        return str(path)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)
        if self._tmpdir is not None:
            os.rmdir(self._tmpdir)
            self._tmpdir = None

    def __enter__(self) -> TeeSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the guest agent's methods -------------------------------------------------------

    def _event_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def get_quote(self, args: dict[str, Any]) -> dict[str, Any]:
        data = bytes.fromhex(args.get("report_data", ""))
        if len(data) > 64:
            raise ValueError("report_data must be at most 64 bytes")
        data = data.ljust(64, b"\0")
        events = self._event_log()
        quote = bytearray(self._template)
        quote[RTMR3] = replay_rtmr(events)
        quote[REPORT_DATA] = data
        return {
            "quote": bytes(quote).hex(),
            "event_log": json.dumps(events),
            "report_data": data.hex(),
            "vm_config": self.vm_config,
        }

    def get_key(self, args: dict[str, Any]) -> dict[str, Any]:
        algorithm = (args.get("algorithm") or "secp256k1").lower()
        if algorithm == "k256":
            algorithm = "secp256k1"
        if algorithm not in ("secp256k1", "ed25519"):
            raise ValueError(f"unsupported algorithm {algorithm!r}")
        path, purpose = str(args.get("path", "")), str(args.get("purpose", ""))
        key = _hmac(self._root, "get-key", algorithm, path)
        chain = [
            (_hmac(self._root, "sim-sig-app", purpose, key) + b"\x00" * 33).hex(),
            (_hmac(self._root, "sim-sig-kms", self.app_id) + b"\x00" * 33).hex(),
        ]
        return {"key": key.hex(), "signature_chain": chain}

    def info(self, args: dict[str, Any]) -> dict[str, Any]:
        events = self._event_log()
        t = self._template
        rtmr3 = replay_rtmr(events)
        mrs = [t[_MRTD], t[_RTMR0], t[_RTMR1], t[_RTMR2], rtmr3]
        mr_aggregated = hashlib.sha256(b"".join(mrs)).hexdigest()
        tcb_info = {
            "mrtd": t[_MRTD].hex(), "rtmr0": t[_RTMR0].hex(), "rtmr1": t[_RTMR1].hex(),
            "rtmr2": t[_RTMR2].hex(), "rtmr3": rtmr3.hex(), "mr_aggregated": mr_aggregated,
            "os_image_hash": self.os_image_hash.hex(), "compose_hash": self.compose_hash.hex(),
            "device_id": self.device_id.hex(), "app_compose": self.app_compose,
            "event_log": events,
        }
        return {
            "app_id": self.app_id.hex(), "instance_id": self.instance_id.hex(), "app_cert": "",
            "tcb_info": json.dumps(tcb_info), "app_name": "tee-daemon-simulator",
            "device_id": self.device_id.hex(), "mr_aggregated": mr_aggregated,
            "os_image_hash": self.os_image_hash.hex(),
            "key_provider_info": self.key_provider_info,
            "compose_hash": self.compose_hash.hex(), "vm_config": self.vm_config,
        }

    def version(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"version": "0.5.7", "rev": "tee-daemon-simulator"}

    def emit_event(self, args: dict[str, Any]) -> dict[str, Any]:
        name = str(args.get("event", ""))
        if not name:
            raise ValueError("event name cannot be empty")
        event = runtime_event(name, bytes.fromhex(args.get("payload", "")))
        with self._lock:
            self._events.append(event)
        return {}

    def dispatch(self, method: str, args: dict[str, Any]) -> dict[str, Any] | None:
        handler = {
            "GetQuote": self.get_quote, "GetKey": self.get_key, "Info": self.info,
            "Version": self.version, "EmitEvent": self.emit_event,
        }.get(method)
        return None if handler is None else handler(args)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    sim: TeeSimulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # httpx keeps the connection alive
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # unix-socket peers have no address; the daemon logs what matters

    def address_string(self) -> str:
        return "unix"

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._reply(413, {"error": "request too large"})
            return
        raw = self.rfile.read(length) if length else b""
        # "/GetQuote", also "/prpc/GetQuote" and "/prpc/DstackGuest.GetQuote?json".
        method = self.path.split("?", 1)[0].rsplit("/", 1)[-1].rsplit(".", 1)[-1]
        try:
            args = json.loads(raw) if raw.strip() else {}
            if not isinstance(args, dict):
                raise ValueError("the request body must be a JSON object")
            result = self.server.sim.dispatch(method, args)
        except ValueError as e:
            self._reply(400, {"error": str(e)})
            return
        except Exception as e:  # a simulator bug must not kill the connection thread
            self._reply(500, {"error": f"simulator error: {e}"})
            return
        if result is None:
            self._reply(404, {"error": f"method {method!r} is not provided by the simulator"})
        else:
            self._reply(200, result)

    do_POST = _handle
    do_GET = _handle
