"""An ASGI file server for one immutable version folder.

Never serves `.git` or anything a link points to outside the folder; answers GET and
HEAD with ETag / Last-Modified validation and single byte ranges. Since a version
folder never changes, each path is resolved once and its headers (and the bytes of a
small file) are kept; larger files go out through the ASGI `http.response.pathsend`
extension when the server offers it (granian does), so the kernel copies them.
"""

from __future__ import annotations

import email.utils
import json
import mimetypes
import os
import stat
from pathlib import Path
from urllib.parse import quote

from tee_daemon.plugin import Receive, Scope, Send, error_body

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


class _File:
    """What serving one file needs, computed once: a version folder never changes."""

    __slots__ = ("real", "size", "mtime", "etag", "headers", "whole", "body")

    def __init__(self, real: str, st: os.stat_result, body: bytes | None) -> None:
        self.real = real
        self.size = st.st_size
        self.mtime = st.st_mtime
        self.etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'.encode()
        self.body = body
        self.headers = [
            (b"content-type", content_type(real).encode()),
            (b"etag", self.etag),
            (b"last-modified", email.utils.formatdate(st.st_mtime, usegmt=True).encode()),
            (b"accept-ranges", b"bytes"),
            (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
        ]
        self.whole = [*self.headers, (b"content-length", str(self.size).encode())]  # a plain 200


_PATH_SAFE = "/!$&'()*+,;=:@~"  # sub-delims, ':' and '@' stay as they are in a path
ADD_SLASH = "add-slash"  # A folder asked for without its trailing slash.
SMALL_FILE = 64 * 1024  # Files up to this size are kept in memory...
CACHE_BYTES = 32 * 2**20  # ...up to this many bytes per version.
CACHE_ENTRIES = 8192


class StaticFiles:
    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self._cache: dict[str, _File | str | None] = {}
        self._cached_bytes = 0
        self.not_found_page = self._lookup("/404.html")

    def ingress_spec(self) -> tuple[str, list]:
        """How an ingress worker serves the same folder itself (each has its own cache)."""
        return f"{type(self).__module__}:{type(self).__qualname__}", [self.root]

    def _resolve(self, rel: str) -> tuple[str, os.stat_result] | None:
        """The real path and stat of `rel` if it is safely inside the root."""
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if any(p == ".." or p == ".git" or "\x00" in p for p in parts):
            return None
        real = os.path.realpath(os.path.join(self.root, *parts))
        if real != self.root and not real.startswith(self.root + os.sep):
            return None  # A link that leaves the tree.
        if ".git" in real[len(self.root) :].split(os.sep):
            return None  # A link into .git.
        try:
            return real, os.stat(real)
        except OSError:
            return None

    def _lookup(self, path: str) -> _File | str | None:
        """The file `path` serves (a folder's index.html), ADD_SLASH, or None; cached."""
        try:
            return self._cache[path]
        except KeyError:
            pass
        found = self._resolve(path)
        if found and stat.S_ISDIR(found[1].st_mode):
            found = self._resolve(path + "/index.html") if path.endswith("/") else None
            entry: _File | str | None = ADD_SLASH if not path.endswith("/") else None
        else:
            entry = None
        if found and stat.S_ISREG(found[1].st_mode):
            entry = _File(found[0], found[1], self._small_body(*found))
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()  # Crude but bounded: hostile URL sprays cannot grow it.
        self._cache[path] = entry
        return entry

    def _small_body(self, real: str, st: os.stat_result) -> bytes | None:
        if st.st_size > SMALL_FILE or self._cached_bytes + st.st_size > CACHE_BYTES:
            return None
        with open(real, "rb") as fh:
            body = fh.read(SMALL_FILE + 1)
        if len(body) != st.st_size:
            return None
        self._cached_bytes += len(body)
        return body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await _error(send, 404, "this project serves static files over HTTP only")
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _error(send, 405, "static projects answer GET and HEAD only", allow=True)
            return
        path = scope["path"] or "/"
        entry = self._lookup(path)
        if entry is ADD_SLASH:
            # Relative links in index.html resolve against the folder, so add the slash.
            # The folder's name goes out percent-encoded: control characters in a file
            # name must not reach the header (the front server would answer 500).
            location = scope.get("root_path", "") + quote(path + "/", safe=_PATH_SAFE)
            if scope.get("query_string"):
                location += "?" + scope["query_string"].decode("latin-1")
            await _redirect(send, location)
        elif isinstance(entry, _File):
            await self._send_file(scope, send, entry)
        elif isinstance(self.not_found_page, _File):
            await self._send_file(scope, send, self.not_found_page, status=404)
        else:
            await _error(send, 404, "file not found")

    async def _send_file(self, scope: Scope, send: Send, f: _File, status: int = 200) -> None:
        start, length, headers = 0, f.size, f.whole
        # Only the headers an answer depends on; their names are lower case (ASGI).
        request = {k: v for k, v in scope["headers"] if k in _CONDITIONS} if status == 200 else None
        if request:
            if _not_modified(request, f.etag, f.mtime):
                await send({"type": "http.response.start", "status": 304, "headers": list(f.headers)})
                await send({"type": "http.response.body", "body": b""})
                return
            range_header = request.get(b"range")
            if range_header and _if_range_ok(request, f.etag):
                wanted = parse_range(range_header.decode("latin-1"), f.size)
                if wanted == "bad":
                    headers = [*f.headers, (b"content-range", f"bytes */{f.size}".encode())]
                    await send({"type": "http.response.start", "status": 416, "headers": headers})
                    await send({"type": "http.response.body", "body": b""})
                    return
                if wanted:
                    start, end = wanted  # type: ignore[misc]
                    length = end - start + 1
                    status = 206
                    headers = [
                        *f.headers,
                        (b"content-range", f"bytes {start}-{end}/{f.size}".encode()),
                        (b"content-length", str(length).encode()),
                    ]
        # A copy: whoever relays the message may add to its headers.
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        if scope["method"] == "HEAD" or length == 0:
            await send({"type": "http.response.body", "body": b""})
        elif f.body is not None:
            await send({"type": "http.response.body", "body": f.body[start : start + length]})
        elif status != 206 and "http.response.pathsend" in scope.get("extensions", {}):
            await send({"type": "http.response.pathsend", "path": f.real})
        else:
            await _send_slice(send, f.real, start, length)


# The request headers an answer depends on.
_CONDITIONS = frozenset({b"if-none-match", b"if-modified-since", b"range", b"if-range"})


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
    body = json.dumps(error_body(status, detail)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if allow:
        headers.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
