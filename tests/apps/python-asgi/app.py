"""Python sample: a plain ASGI application named `app`."""

import json
import os
from pathlib import Path


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = scope["query_string"].decode()
    print(f"hit {path}", flush=True)
    if path == "/count":
        file = Path(os.environ["DATA_DIR"]) / "count.txt"
        n = int(file.read_text()) + 1 if file.exists() else 1
        file.write_text(str(n))
        payload = {"count": n}
    else:
        if path == "/crash":
            os._exit(3)
        payload = {
            "runtime": "python", "path": path, "query": "?" + query if query else "",
            "env": {k: os.environ[k] for k in ("GREETING", "API_KEY") if k in os.environ}, "dataDir": os.environ["DATA_DIR"],
            "DATA_DIR": os.environ["DATA_DIR"], "environ": sorted(os.environ),
        }
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
