"""tee-daemon's Python shim: serves the project's `app.py` on 127.0.0.1:$PORT (or the unix
socket $LISTEN_UNIX when the project network is isolated: granian's `uds`).

`app` (an ASGI application) is served as is, lifespan included; a WSGI `app` (Flask,
Django's `get_wsgi_application()`: a callable that is not a coroutine function) is
wrapped in `wsgi_adapter`, which runs it in a thread; otherwise
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


def is_asgi(app) -> bool:
    """An ASGI app is a coroutine function (or an object whose __call__ is one); a WSGI
    app is a plain callable `(environ, start_response)`."""
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(type(app).__call__)


async def lifespan_ack(receive, send):
    while True:
        kind = (await receive())["type"].rsplit(".", 1)[-1]
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


def wsgi_environ(scope, body: bytes) -> dict:
    import io

    server = scope.get("server") or ("127.0.0.1", 80)
    client = scope.get("client") or ("", 0)
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        # WSGI carries the path as latin-1 decoded bytes (PEP 3333).
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": (scope.get("query_string") or b"").decode("latin-1"),
        "SERVER_NAME": str(server[0] or "localhost"),
        "SERVER_PORT": str(server[1] or 80),
        "SERVER_PROTOCOL": "HTTP/" + scope.get("http_version", "1.1"),
        "REMOTE_ADDR": str(client[0] or ""),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(body)),
    }
    for key, value in scope["headers"]:
        name = key.decode("latin-1").upper().replace("-", "_")
        value = value.decode("latin-1")
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif name != "CONTENT_LENGTH":
            name = "HTTP_" + name
            environ[name] = f"{environ[name]},{value}" if name in environ else value
    return environ


def wsgi_adapter(wsgi_app):
    """Serve a WSGI app from the ASGI server: the request body is read first, then the
    app runs in a worker thread and its body chunks are sent as they come (streaming
    responses stream; a blocking app never blocks the event loop)."""
    import queue

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await lifespan_ack(receive, send)
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        environ = wsgi_environ(scope, b"".join(chunks))
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue(maxsize=8)  # Bounded: a slow client slows the app.
        cancelled = queue.SimpleQueue()
        started = {}

        def start_response(status, headers, exc_info=None):
            if exc_info and started.get("sent"):
                raise exc_info[1].with_traceback(exc_info[2])
            started["status"] = int(status.split(" ", 1)[0])
            started["headers"] = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
            return lambda data: put(bytes(data))  # The legacy write() callable.

        def put(item):
            if not cancelled.empty():
                raise OSError("client went away")
            asyncio.run_coroutine_threadsafe(out.put(item), loop).result()

        def run():
            try:
                result = wsgi_app(environ, start_response)
                try:
                    for data in result:
                        if data:
                            put(bytes(data))
                finally:
                    if hasattr(result, "close"):
                        result.close()
                put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop, which answers 500 and logs it
                put(exc)

        worker = loop.run_in_executor(None, run)
        sent_head = False
        try:
            while True:
                item = await out.get()
                if isinstance(item, BaseException):
                    if sent_head:
                        raise item
                    import traceback

                    traceback.print_exception(item)
                    await send({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})  # fmt: skip
                    await send({"type": "http.response.body", "body": b"internal error in the WSGI app\n"})
                    return
                if not sent_head:
                    if "status" not in started:
                        raise RuntimeError("the WSGI app returned without calling start_response")
                    started["sent"] = True
                    await send({"type": "http.response.start", "status": started["status"], "headers": started["headers"]})
                    sent_head = True
                if item is None:
                    await send({"type": "http.response.body", "body": b""})
                    return
                await send({"type": "http.response.body", "body": item, "more_body": True})
        finally:
            cancelled.put(True)
            while not worker.done():  # Let a blocked put() finish so the thread ends.
                try:
                    out.get_nowait()
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0.01)

    return app


def main():
    module = load_entry()
    app = getattr(module, "app", None)
    handle = getattr(module, "handle", None)
    from granian.constants import Interfaces
    from granian.server.embed import Server

    if app is not None and callable(app):
        interface = Interfaces.ASGI
        if not is_asgi(app):
            app = wsgi_adapter(app)
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
