"""An ASGI file server for one immutable version folder.

Never serves `.git` or anything a link points to outside the folder; answers GET and
HEAD with ETag / Last-Modified validation and single byte ranges. Whole files go out
through the ASGI `http.response.pathsend` extension when the server offers it (granian
does), so the kernel copies them, not Python.
"""

from __future__ import annotations

import email.utils
import json
import mimetypes
import os
import stat
from pathlib import Path

from tee_daemon.runtime import Receive, Scope, Send

CHUNK = 256 * 1024
TEXT_TYPES = ("text/", "application/javascript", "application/json", "image/svg+xml")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("application/manifest+json", ".webmanifest")


def content_type(path: str) -> str:
    kind, encoding = mimetypes.guess_type(path, strict=False)
    if kind is None or encoding is not None:
        # A .gz or unknown file is served as bytes, never decoded by the browser.
        return "application/octet-stream"
    if kind.startswith(TEXT_TYPES):
        return f"{kind}; charset=utf-8"
    return kind


def parse_range(header: str, size: int) -> tuple[int, int] | None | str:
    """One `bytes=` range as (start, end inclusive); None to ignore; "bad" for 416."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # Multiple ranges: serving the whole file is allowed (RFC 9110 14.2).
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            length = int(last)
            if length <= 0:
                return "bad"
            return max(0, size - length), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or start >= size or end < start:
        return "bad"
    return start, min(end, size - 1)


class StaticFiles:
    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.not_found_page = self._resolve("404.html")

    def _resolve(self, rel: str) -> tuple[str, os.stat_result] | None:
        """The real path and stat of `rel` if it is a file safely inside the root."""
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if any(p == ".." or p == ".git" or "\x00" in p for p in parts):
            return None
        candidate = os.path.join(self.root, *parts)
        real = os.path.realpath(candidate)
        if real != self.root and not real.startswith(self.root + os.sep):
            return None  # A link that leaves the tree.
        if ".git" in real[len(self.root) :].split(os.sep):
            return None  # A link into .git.
        try:
            st = os.stat(real)
        except OSError:
            return None
        return real, st

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await _error(send, 404, "this project serves static files over HTTP only")
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _error(send, 405, "static projects answer GET and HEAD only", allow=True)
            return
        path = scope["path"] or "/"
        found = self._resolve(path)
        if found and stat.S_ISDIR(found[1].st_mode):
            if not path.endswith("/"):
                # Relative links in index.html resolve against the folder, so add the slash.
                location = scope.get("root_path", "") + path + "/"
                if scope.get("query_string"):
                    location += "?" + scope["query_string"].decode("latin-1")
                await _redirect(send, location)
                return
            found = self._resolve(path + "/index.html")
        if not found or not stat.S_ISREG(found[1].st_mode):
            if self.not_found_page:
                await self._send_file(scope, send, *self.not_found_page, status=404)
            else:
                await _error(send, 404, "file not found")
            return
        await self._send_file(scope, send, *found)

    async def _send_file(
        self, scope: Scope, send: Send, real: str, st: os.stat_result, status: int = 200
    ) -> None:
        size = st.st_size
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'.encode()
        headers = [
            (b"content-type", content_type(real).encode()),
            (b"etag", etag),
            (b"last-modified", email.utils.formatdate(st.st_mtime, usegmt=True).encode()),
            (b"accept-ranges", b"bytes"),
            (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
        ]
        request = {k.lower(): v for k, v in scope["headers"]}
        if status == 200 and _not_modified(request, etag, st.st_mtime):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        start, end = 0, size - 1
        range_header = request.get(b"range")
        if status == 200 and range_header and _if_range_ok(request, etag):
            wanted = parse_range(range_header.decode("latin-1"), size)
            if wanted == "bad":
                headers.append((b"content-range", f"bytes */{size}".encode()))
                await send({"type": "http.response.start", "status": 416, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
            if wanted:
                start, end = wanted  # type: ignore[misc]
                status = 206
                headers.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
        length = max(0, end - start + 1)
        headers.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if scope["method"] == "HEAD" or length == 0:
            await send({"type": "http.response.body", "body": b""})
        elif status != 206 and "http.response.pathsend" in scope.get("extensions", {}):
            await send({"type": "http.response.pathsend", "path": real})
        else:
            await _send_slice(send, real, start, length)


def _not_modified(request: dict, etag: bytes, mtime: float) -> bool:
    if b"if-none-match" in request:
        tags = [t.strip() for t in request[b"if-none-match"].split(b",")]
        return b"*" in tags or etag in tags or b"W/" + etag in tags
    since = request.get(b"if-modified-since")
    if not since:
        return False
    try:
        parsed = email.utils.parsedate_to_datetime(since.decode("latin-1"))
    except (TypeError, ValueError):
        return False  # An unparseable date is ignored (RFC 9110 13.1.3).
    return int(mtime) <= parsed.timestamp()


def _if_range_ok(request: dict, etag: bytes) -> bool:
    condition = request.get(b"if-range")
    return condition is None or condition.strip() == etag


async def _send_slice(send: Send, real: str, start: int, length: int) -> None:
    with open(real, "rb") as fh:
        fh.seek(start)
        while length > 0:
            chunk = fh.read(min(CHUNK, length))
            if not chunk:
                break
            length -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": length > 0})
    if length > 0:  # The file shrank under us; end the body rather than hang.
        await send({"type": "http.response.body", "body": b""})


async def _redirect(send: Send, location: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 301,
            "headers": [(b"location", location.encode("latin-1", "replace")), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _error(send: Send, status: int, detail: str, allow: bool = False) -> None:
    body = json.dumps({"status_code": status, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if allow:
        headers.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
