"""Git and tarball sources through the deploy API, hostile inputs included."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile

import pytest

from gitserver import make_repo, serve_git
from harness import make_tar


@pytest.fixture(scope="module")
def git_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    with serve_git(root) as base:
        yield root, base


def tree_of(repo, rev: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repo), "rev-parse", f"{rev}^{{tree}}"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_git_branch_tag_and_commit(daemon, git_server, name):
    root, base = git_server
    first = make_repo(root, f"{name}.git", {"index.html": "one", "a/b.txt": "b"}, tag="v1")
    second = make_repo(root, f"{name}.git", {"index.html": "two"})
    url = f"{base}/{name}.git"

    r = daemon.deploy_git(name, url, ref="main")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["commit"] == second and body["ref"] == "main" and body["source"] == url
    assert body["tree_sha1"] == tree_of(root / f"{name}.git", second)
    assert daemon.get(f"/{name}/").text == "two"

    assert daemon.deploy_git(name, url, ref="v1").json()["commit"] == first
    assert daemon.get(f"/{name}/").text == "one"
    assert daemon.deploy_git(name, url, ref=second).json()["commit"] == second
    assert daemon.get(f"/{name}/").text == "two"


def test_redeploy_reports_changed(daemon, git_server, name):
    root, base = git_server
    make_repo(root, f"{name}.git", {"index.html": "one"})
    assert daemon.deploy_git(name, f"{base}/{name}.git", ref="main").status_code == 201
    with daemon.client() as c:
        same = c.post(f"/_api/projects/{name}/redeploy").json()
        assert same["changed"] is False and same["version"] == 1
        make_repo(root, f"{name}.git", {"index.html": "newer"})
        changed = c.post(f"/_api/projects/{name}/redeploy").json()
        assert changed["changed"] is True and changed["version"] == 2
    assert daemon.get(f"/{name}/").text == "newer"


def test_redeploy_of_tarball_project_refused(daemon, name):
    daemon.deploy_files(name, {"index.html": "x"})
    with daemon.client() as c:
        r = c.post(f"/_api/projects/{name}/redeploy")
    assert r.status_code == 400 and "tarball" in r.json()["detail"]


def test_unknown_ref_and_unreachable_repo(daemon, git_server, name):
    root, base = git_server
    make_repo(root, f"{name}.git", {"index.html": "x"})
    r = daemon.deploy_git(name, f"{base}/{name}.git", ref="no-such-branch")
    assert r.status_code == 400 and r.json()["detail"]
    r = daemon.deploy_git(name, f"{base}/missing.git")
    assert r.status_code == 400 and r.json()["detail"]


def test_insecure_sources_need_the_flag(fresh_daemon, git_server, tmp_path):
    root, base = git_server
    make_repo(root, "plain.git", {"index.html": "x"})
    strict = fresh_daemon(allow_insecure=False)
    for url in (f"{base}/plain.git", f"file://{root}/plain.git"):
        r = strict.deploy_git("plain", url)
        assert r.status_code == 400 and "insecure" in r.json()["detail"]
    for url in ("ssh://host/x.git", "ext::sh -c id", "-uploadpack=id"):
        assert strict.deploy_git("plain", url).status_code == 400


def hostile(members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name, kind=tarfile.REGTYPE, data=b"x", linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


@pytest.mark.parametrize(
    "members, word",
    [
        ([member("../escape.txt")], ".."),
        ([member("/etc/owned")], "absolute"),
        ([member("a/../../x")], ".."),
        ([member("link", tarfile.SYMTYPE, linkname="/etc/passwd")], "link"),
        ([member("link", tarfile.SYMTYPE, linkname="../../outside")], "link"),
        ([member("index.html"), member("hard", tarfile.LNKTYPE, linkname="index.html")], "link"),
        ([member("dev", tarfile.CHRTYPE)], "device"),
        ([member("fifo", tarfile.FIFOTYPE)], ""),
    ],
)
def test_hostile_tarballs_refused(daemon, name, members, word):
    r = daemon.deploy_tar(name, hostile(members))
    assert r.status_code == 400, r.text
    assert word in r.json()["detail"].lower()
    assert daemon.get(f"/_api/projects/{name}", admin=True).status_code == 404
    assert not list((daemon.data_dir / "scratch").iterdir())


def test_not_a_tarball(daemon, name):
    r = daemon.deploy_tar(name, b"this is not an archive at all")
    assert r.status_code == 400 and "tar" in r.json()["detail"]


def test_archive_bomb_refused(fresh_daemon, name):
    proc = fresh_daemon(env={"TEE_DAEMON_MAX_UNPACKED_BYTES": str(2**20)})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 64 * 2**20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    bomb = gzip.compress(buffer.getvalue(), compresslevel=9)
    assert len(bomb) < 2**20  # Small on the wire, 64 MiB unpacked.
    r = proc.deploy_tar(name, bomb)
    assert r.status_code == 400 and "more than" in r.json()["detail"]


def test_file_count_limit(fresh_daemon, name):
    proc = fresh_daemon(env={"TEE_DAEMON_MAX_FILES": "20"})
    r = proc.deploy_files(name, {f"f{i}.txt": "x" for i in range(30)})
    assert r.status_code == 400 and "more than 20" in r.json()["detail"]
    assert proc.deploy_files(name, {f"f{i}.txt": "x" for i in range(10)}).status_code == 201


def test_oversized_upload_is_413(fresh_daemon, name):
    proc = fresh_daemon(env={"TEE_DAEMON_MAX_UPLOAD_BYTES": str(2**20)})
    payload = make_tar({"big.bin": bytes(range(256)) * 16384}, gz=False)  # 4 MiB
    r = proc.deploy_tar(name, payload)
    assert r.status_code == 413 and r.json()["status_code"] == 413


def test_manifest_part_must_be_valid(daemon, name):
    with daemon.client() as c:
        r = c.post("/_api/projects", files={"manifest": (None, "{oops"), "files": ("p.tar", make_tar({"a": "b"}))})
        assert r.status_code == 400 and "JSON" in r.json()["detail"]
        r = c.post(
            "/_api/projects",
            files={"manifest": (None, json.dumps({"name": name, "env": {"BAD NAME": "x"}})), "files": ("p.tar", make_tar({"a": "b"}))},
        )
        assert r.status_code == 400 and "env" in r.json()["detail"]
