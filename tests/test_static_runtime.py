"""The static runtime through the daemon: types, folders, validators, ranges, safety."""

from __future__ import annotations

import subprocess

import pytest

from gitserver import make_repo, serve_git

BLOB = bytes(range(256)) * 40  # 10 KiB of every byte value


@pytest.fixture(scope="module")
def site(daemon):
    name = "static-site"
    files = {
        "index.html": "<h1>home</h1>",
        "app.js": "console.log(1)",
        "data.json": "{}",
        "pic.svg": "<svg/>",
        "blob.bin": BLOB,
        "sub/index.html": "sub home",
        "sub/page.html": "page",
        "ünïcode.txt": "unicode",
        ".git/config": "[core] secret",
    }
    assert daemon.deploy_files(name, files).status_code == 201
    return name


@pytest.mark.parametrize(
    "path, kind",
    [
        ("index.html", "text/html; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("data.json", "application/json; charset=utf-8"),
        ("pic.svg", "image/svg+xml; charset=utf-8"),
        ("blob.bin", "application/octet-stream"),
    ],
)
def test_content_types(daemon, site, path, kind):
    r = daemon.get(f"/{site}/{path}")
    assert r.status_code == 200 and r.headers["content-type"] == kind


def test_folders_serve_index_and_redirect_without_slash(daemon, site):
    assert daemon.get(f"/{site}/").text == "<h1>home</h1>"
    assert daemon.get(f"/{site}/sub/").text == "sub home"
    r = daemon.get(f"/{site}/sub")
    assert r.status_code == 301 and r.headers["location"] == f"/{site}/sub/"


def test_unicode_names_and_missing_files(daemon, site):
    assert daemon.get(f"/{site}/%C3%BCn%C3%AFcode.txt").text == "unicode"
    r = daemon.get(f"/{site}/missing.html")
    assert r.status_code == 404 and r.json()["detail"] == "file not found"


@pytest.mark.parametrize("path", [".git/config", ".git/", "sub/../.git/config", "%2e%2e/%2e%2e/etc/passwd", "..%2f..%2fetc/passwd"])
def test_never_git_never_outside(daemon, site, path):
    r = daemon.get(f"/{site}/{path}")
    assert r.status_code == 404
    assert "secret" not in r.text and "root:" not in r.text


def test_etag_and_conditional_get(daemon, site):
    first = daemon.get(f"/{site}/app.js")
    etag = first.headers["etag"]
    again = daemon.get(f"/{site}/app.js", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b""
    since = daemon.get(f"/{site}/app.js", headers={"if-modified-since": first.headers["last-modified"]})
    assert since.status_code == 304
    other = daemon.get(f"/{site}/app.js", headers={"if-none-match": '"nope"'})
    assert other.status_code == 200


def test_range_requests(daemon, site):
    r = daemon.get(f"/{site}/blob.bin", headers={"range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == BLOB[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(BLOB)}"
    assert daemon.get(f"/{site}/blob.bin", headers={"range": "bytes=-5"}).content == BLOB[-5:]
    assert daemon.get(f"/{site}/blob.bin", headers={"range": "bytes=10000-"}).content == BLOB[10000:]
    assert daemon.get(f"/{site}/blob.bin", headers={"range": "bytes=999999-"}).status_code == 416
    whole = daemon.get(f"/{site}/blob.bin")
    assert whole.content == BLOB and whole.headers["accept-ranges"] == "bytes"


def test_head_and_methods(daemon, site):
    with daemon.client(admin=False) as c:
        head = c.head(f"/{site}/blob.bin")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(BLOB)
        post = c.post(f"/{site}/index.html")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


def test_links_inside_the_tree_served_and_links_out_refused(daemon, tmp_path, name):
    """A git source may hold symlinks inside its tree; one leaving it is refused (SPEC 9)."""
    make_repo(tmp_path, "links.git", {"index.html": "ok", "real.txt": "inside"}, symlinks={"inside": "real.txt"})
    make_repo(tmp_path, "out.git", {"index.html": "ok"}, symlinks={"up": "../../../../../../etc/hostname"})
    with serve_git(tmp_path) as base:
        r = daemon.deploy_git(name, f"{base}/links.git")
        out = daemon.deploy_git(f"{name}-out", f"{base}/out.git")
    assert r.status_code == 201, r.text
    assert daemon.get(f"/{name}/inside").text == "inside"
    # The links are still part of the hashed tree, exactly as git sees it.
    tree = subprocess.run(
        ["git", "--git-dir", str(tmp_path / "links.git"), "rev-parse", "main^{tree}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert r.json()["tree_sha1"] == tree
    assert out.status_code == 400 and "leaves the project folder" in out.json()["detail"], out.text


def test_custom_404_page(daemon, name):
    daemon.deploy_files(name, {"index.html": "i", "404.html": "custom missing"})
    r = daemon.get(f"/{name}/nope")
    assert r.status_code == 404 and r.text == "custom missing"


def test_percent_encoded_project_name_routes_to_the_right_path(daemon, site):
    encoded = "".join(f"%{ord(c):02X}" for c in site)
    assert daemon.get(f"/{encoded}/sub/page.html").text == "page"
