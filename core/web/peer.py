"""The hop from an ingress worker to the supervisor, made invisible to the supervisor.

A worker hands the supervisor the requests it has no route for (the API, the pages, a
project only the supervisor can serve) over the supervisor's private unix socket. The
supervisor must then see the request as the worker received it: the client's address
(for X-Forwarded-For, the trusted-proxy rule, the access log), the scheme and the server
address. The worker passes the client's headers as they came, X-Forwarded-* included
(the supervisor applies its own rules to them), and adds one header of its own,
`x-tee-daemon-peer`, which `Restore` turns back into the scope's fields. A client's own
`x-tee-daemon-peer` is dropped by the worker, so it can never be believed.
"""

from __future__ import annotations

from tee_daemon.kernel.contract import ASGIApp, Receive, Scope, Send

PEER = b"x-tee-daemon-peer"
# Request headers the front proxy would replace but the supervisor must see as sent.
_AS_SENT = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})


def pass_headers(scope: Scope, drop: frozenset[bytes]) -> tuple[list[bytes], bytes | None, bool]:
    """Header lines for the supervisor: the client's, less hop-by-hop ones, plus the peer
    line; and the request's content-length and chunked flag (as the proxy needs them)."""
    lines: list[bytes] = []
    length = None
    chunked = False
    for name, value in scope["headers"]:
        if name in drop and name not in _AS_SENT:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            continue
        if name == PEER:
            continue
        lines.append(name + b": " + value + b"\r\n")
    lines.append(PEER + b": " + _encode(scope) + b"\r\n")
    return lines, length, chunked


def _encode(scope: Scope) -> bytes:
    client = scope.get("client") or ("-", 0)
    server = scope.get("server") or ("-", 0)
    return f"{scope.get('scheme') or 'http'} {client[0] or '-'} {client[1]} {server[0] or '-'} {server[1]}".encode(
        "latin-1"
    )


def _decode(value: bytes) -> dict | None:
    parts = value.decode("latin-1").split(" ")
    if len(parts) != 5 or not parts[2].isdigit() or not parts[4].isdigit():
        return None
    scheme, client, client_port, server, server_port = parts
    return {
        "scheme": scheme,
        "client": None if client == "-" else (client, int(client_port)),
        "server": None if server == "-" else (server, int(server_port)),
    }


class Restore:
    """The supervisor's outermost ASGI layer: a request a worker passed on gets back the
    client, scheme and server the worker saw."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __getattr__(self, name: str):  # the wrapped app's state and routes
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = scope["headers"]
            for name, value in headers:
                if name == PEER:
                    fields = _decode(value)
                    if fields is not None:
                        scope = {**scope, **fields, "headers": [h for h in headers if h[0] != PEER]}
                    break
        await self.app(scope, receive, send)
