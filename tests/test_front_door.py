"""The front door (SPEC section 10): what every client gets from the daemon itself.

Malformed or truncated bodies are 400 JSON on project paths and on the API (never 500);
a tarball nesting long folder names past the system's path limit is a 400 that says why;
project responses cannot widen a service worker's scope or wipe the shared origin's
storage; the daemon's own answers cannot be framed or scripted from a window a project
page opened; public 404s are readable from any origin; HEAD works wherever GET does;
HTML says its charset once; a browser's navigation to an error gets a small HTML page.
"""

from __future__ import annotations

import io
import os
import socket
import tarfile
from pathlib import Path

import httpx
import pytest

from harness import TOKEN

# A project echoing the length of the body it read, and answering with headers a project
# must not be able to send under path routing (in mixed casings).
ECHO = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/javascript"),
        (b"Service-Worker-Allowed", b"/"),
        (b"SERVICE-WORKER-ALLOWED", b"/"),
        (b"Clear-Site-Data", b'"cookies", "storage"'),
        (b"x-kept", b"yes"),
    ]})
    await send({"type": "http.response.body", "body": b"read %d" % len(body)})
'''

BAD_BODY = "malformed or was cut short"


@pytest.fixture(scope="module")
def echo(daemon) -> str:
    name = "front-door-echo"
    r = daemon.deploy_files(name, {"app.py": ECHO})
    assert r.status_code == 201, r.text
    return name


def raw(daemon, request: bytes, *, half_close: bool = True, timeout: float = 10) -> tuple[int, bytes, bytes]:
    """Send bytes as they are; (status, head, body) of the answer."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=timeout) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    length = [ln for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length:")]
                    if length and len(body) >= int(length[0].split(b":")[1]):
                        break
        except TimeoutError:
            pass
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), out[:200]
    return int(head[9:12]), head, body


def post(daemon, path: str, rest: bytes, *, headers: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + headers
        + rest
    )


# -- bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["project", "api"])
@pytest.mark.parametrize(
    "case, cut",  # a body cut short ends with the client's half close
    [
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", False, id="bad-chunk-size"),
        pytest.param(
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nnot-hex\r\nabc\r\n0\r\n\r\n", False, id="bad-second-chunk"
        ),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n10\r\nabc", True, id="chunk-cut-short"),
        pytest.param(b'Content-Length: 100\r\n\r\n{"name": ', True, id="length-cut-short"),
    ],
)
def test_malformed_bodies_are_400_json_never_500(daemon, echo, where, case, cut):
    path = f"/{echo}/upload" if where == "project" else "/_api/projects"
    status, head, body = raw(daemon, post(daemon, path, case), half_close=cut)
    assert status == 400, (head, body)
    assert b"application/json" in head.lower()
    assert BAD_BODY in body.decode()


def test_a_good_chunked_body_still_reaches_the_project(daemon, echo):
    status, _, body = raw(daemon, post(daemon, f"/{echo}/upload", b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), half_close=False)
    assert status == 200 and body == b"read 5"


def test_nested_long_folder_names_are_refused_with_a_reason(daemon, name):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("/".join([f"{i:02d}" + "d" * 198 for i in range(25)]) + "/f.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    r = daemon.deploy_tar(name, buffer.getvalue())
    assert r.status_code == 400, r.text
    assert "path of" in r.json()["detail"] and "bytes" in r.json()["detail"]


def test_tree_hash_of_a_path_past_the_system_limit_is_a_source_error(tmp_path: Path):
    from tee_daemon.kernel.errors import SourceError
    from tee_daemon.trust.treehash import tree_ids

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(25):  # through descriptors: the whole path is never spelled out
            part = f"{i:02d}" + "d" * 198
            os.mkdir(part, dir_fd=fd)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    with pytest.raises(SourceError, match="too long"):
        tree_ids(tmp_path)


# -- project response headers ----------------------------------------------------------


def test_project_responses_cannot_widen_a_service_worker_scope(daemon, echo):
    r = daemon.get(f"/{echo}/sw.js")
    assert r.status_code == 200 and r.headers["x-kept"] == "yes"
    assert "service-worker-allowed" not in r.headers
    assert "clear-site-data" not in r.headers


# -- the daemon's own answers ----------------------------------------------------------


def _attested(daemon, name: str) -> None:
    assert daemon.deploy_files(name, {"index.html": "hi"}).status_code == 201
    with daemon.client() as c:
        assert c.post(f"/_api/projects/{name}/promote").status_code == 200


HTML = {"Accept": "text/html,application/xhtml+xml"}


def test_daemon_pages_cannot_be_framed_or_scripted_from_a_window(daemon, name):
    _attested(daemon, name)
    for path, headers in [
        ("/", HTML),
        (f"/_api/verification/{name}", HTML),
        ("/_api/schema", HTML),
        ("/_api/projects/no-such-project", HTML),
        (f"/_api/projects/{name}", {}),
    ]:
        r = daemon.get(path, headers=headers)
        assert r.headers.get("cross-origin-opener-policy") == "same-origin", path
        assert r.headers.get("x-frame-options") == "DENY", path
        assert r.headers.get("x-content-type-options") == "nosniff", path
        if r.headers["content-type"].startswith("text/html"):
            assert "frame-ancestors 'none'" in r.headers.get("content-security-policy", ""), path


def test_public_404s_are_readable_from_any_origin(daemon, name):
    dev = name + "-dev"
    assert daemon.deploy_files(dev, {"index.html": "hi"}).status_code == 201
    for project in (dev, "no-such-project"):
        for path in (f"/_api/projects/{project}", f"/_api/attest/{project}", f"/_api/verification/{project}"):
            for headers in ({}, {"Origin": "https://verifier.example"}):
                r = daemon.get(path, headers=headers)
                assert r.status_code == 404, path
                assert r.headers.get("access-control-allow-origin") == "*", (path, headers)
                assert r.json()["status_code"] == 404


def test_head_answers_like_get_without_a_body(daemon, name):
    _attested(daemon, name)
    with httpx.Client(base_url=daemon.url, timeout=30) as c:
        for path in ("/_api/health", "/_api/log/checkpoint", f"/_api/projects/{name}", "/_api/substrate", "/_api/schema", "/"):
            got = c.get(path)
            head = c.head(path)
            assert head.status_code == got.status_code == 200, path
            assert head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path
            assert head.headers.get("content-length") == got.headers.get("content-length"), path
        assert c.head("/_api/projects/no-such-project").status_code == 404
        # Where only POST exists, the refusal names what is allowed.
        refused = c.get(f"/_api/projects/{name}/promote")
        assert refused.status_code == 405


def test_html_pages_send_one_charset(daemon, name):
    _attested(daemon, name)
    from tee_daemon.web.viewer import asset_url

    for path, headers in [
        ("/", HTML),
        (f"/_api/verification/{name}", HTML),
        ("/_api/schema", HTML),
        ("/_api/projects/no-such-project", HTML),
        (asset_url("style.css"), {}),
        (asset_url("verify.js"), {}),
    ]:
        r = daemon.get(path, headers=headers)
        assert r.headers["content-type"].lower().count("charset") == 1, (path, r.headers["content-type"])


def test_errors_are_html_for_a_browser_and_json_otherwise(daemon):
    hostile = "<img src=x onerror=alert(1)>"
    r = daemon.get(f"/_api/projects/{hostile}", headers=HTML)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert hostile not in r.text and "&lt;img src=x onerror=alert(1)&gt;" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["cross-origin-opener-policy"] == "same-origin"
    r = daemon.get("/_api/no-such-route", headers=HTML)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    # Programs (and fetch from the verification page) still get JSON.
    for headers in ({}, {"Accept": "application/json"}, {"Accept": "text/html, application/json"}):
        r = daemon.get(f"/_api/projects/{hostile}", headers=headers)
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
        assert r.json()["detail"].startswith("no attested project")


def test_the_proxy_refuses_a_browser_with_a_small_html_page(daemon, echo):
    request = post(daemon, f"/{echo}/form", b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", headers=b"Accept: text/html\r\n")
    status, head, body = raw(daemon, request, half_close=False)
    assert status == 400 and b"content-type: text/html; charset=utf-8" in head.lower()
    assert b"frame-ancestors 'none'" in head and BAD_BODY.encode() in body


def test_an_unknown_project_is_a_small_html_page_for_a_browser(daemon):
    hostile = "<img src=x onerror=alert(1)>"
    r = daemon.get(f"/{hostile}/", headers=HTML)
    assert r.status_code == 404 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert hostile not in r.text and "&lt;img src=x onerror=alert(1)&gt;" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    r = daemon.get(f"/{hostile}/")
    assert r.status_code == 404 and r.json()["detail"] == f"no project named {hostile!r}"
