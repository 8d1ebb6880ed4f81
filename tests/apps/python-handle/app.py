"""Python sample: `async def handle(method, path, headers, body, env)`."""

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


async def handle(method, path, headers, body, env):
    url = urlsplit(path)
    print(f"hit {url.path}", flush=True)
    if url.path == "/count":
        file = Path(os.environ["DATA_DIR"]) / "count.txt"
        n = int(file.read_text()) + 1 if file.exists() else 1
        file.write_text(str(n))
        return 200, {"content-type": "application/json"}, json.dumps({"count": n})
    if url.path == "/crash":
        os._exit(3)
    if url.path == "/read":
        try:
            return 200, {}, Path(parse_qs(url.query)["path"][0]).read_bytes()
        except OSError as exc:
            return 403, {}, f"{type(exc).__name__}: {exc}"
    payload = {
        "runtime": "python", "path": url.path, "query": "?" + url.query if url.query else "",
        "raw_path": path, "method": method, "body": body.decode(), "env": env,
        "dataDir": os.environ["DATA_DIR"], "DATA_DIR": os.environ["DATA_DIR"], "environ": sorted(os.environ),
    }
    return 200, {"content-type": "application/json", "x-sample": "handle"}, json.dumps(payload)
