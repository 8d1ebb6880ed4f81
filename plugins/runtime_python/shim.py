"""tee-daemon's Python shim: serves the project's `app.py` on 127.0.0.1:$PORT (or the unix
socket $LISTEN_UNIX when the project network is isolated: granian's `uds`).

`app` (an ASGI application) is served as is, lifespan included; otherwise
`async def handle(method, path, headers, body, env) -> (status, headers, body)` is
wrapped in a small ASGI adapter. The server is granian (Rust HTTP/1.1 and WebSockets),
embedded in this one process: no worker processes, and an import error ends the
process with its traceback in the log, which the daemon reports.
"""

import asyncio
import importlib.util
import inspect
import os
import sys
from pathlib import Path

ENTRY = os.environ.pop("TEE_ENTRY")
# The daemon's site-packages (granian) after the project's own packages, so those win.
if os.environ.get("TEE_DAEMON_SITE"):
    sys.path.append(os.environ.pop("TEE_DAEMON_SITE"))
KEYS = [k for k in os.environ.pop("TEE_ENV_KEYS", "").split(",") if k]
ENV = {k: os.environ.get(k, "") for k in KEYS}


def load_entry():
    folder, filename = os.path.split(ENTRY)
    sys.path.insert(0, folder)
    name = os.path.splitext(filename)[0] or "app"
    spec = importlib.util.spec_from_file_location(name, ENTRY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def handle_adapter(handle):
    is_async = inspect.iscoroutinefunction(handle)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        query = scope.get("query_string") or b""
        path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        headers = {}
        for key, value in scope["headers"]:
            k, v = key.decode("latin-1").lower(), value.decode("latin-1")
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        args = (scope["method"], path, headers, b"".join(chunks), ENV)
        try:
            result = await handle(*args) if is_async else await asyncio.to_thread(handle, *args)
            status, out_headers, body = result
            if isinstance(body, str):
                body = body.encode()
            pairs = out_headers.items() if isinstance(out_headers, dict) else out_headers or []
            raw = []
            for k, v in pairs:
                values = v if isinstance(v, (list, tuple)) else [v]
                raw += [(str(k).lower().encode("latin-1"), str(item).encode("latin-1")) for item in values]
            status = int(status)
            body = bytes(body or b"")
        except Exception:
            import traceback

            traceback.print_exc()
            status, raw, body = 500, [(b"content-type", b"text/plain; charset=utf-8")], b"internal error in handle()\n"
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    return app


def main():
    module = load_entry()
    app = getattr(module, "app", None)
    handle = getattr(module, "handle", None)
    from granian.constants import Interfaces
    from granian.server.embed import Server

    if app is not None and callable(app):
        interface = Interfaces.ASGI
    elif handle is not None and callable(handle):
        app, interface = handle_adapter(handle), Interfaces.ASGINL
    else:
        sys.exit(f"{os.path.basename(ENTRY)} defines neither an ASGI `app` nor `async def handle(method, path, headers, body, env)`")
    # With an isolated network the daemon reaches the project over a unix socket.
    unix = os.environ.get("LISTEN_UNIX")
    where = {"uds": Path(unix)} if unix else {"address": os.environ.get("HOST") or "127.0.0.1", "port": int(os.environ["PORT"])}
    server = Server(
        app,
        **where,
        interface=interface,
        websockets=True,
        log_enabled=False,
        backlog=1024,
    )
    asyncio.run(server.serve())


if __name__ == "__main__":
    main()
