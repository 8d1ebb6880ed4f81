"""fetch_git against real git servers (smart HTTP via git http-backend, and file://)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gitserver import git, make_repo, serve_git

from tee_daemon.state import gitsource
from tee_daemon.kernel.errors import SourceError
from tee_daemon.state.gitsource import fetch_git, redact
from tee_daemon.trust.treehash import tree_ids

FILES = {
    "README.md": "# demo\n",
    "app/server.ts": "export default () => new Response('hi')\n",
    "app/run.sh": "#!/bin/sh\necho run\n",
    "h\u00e9llo.txt": "unicode\n",
    "empty": "",
}


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bare repositories shared by the tests (read-only once built)."""
    root = tmp_path_factory.mktemp("repos")
    return root


@pytest.fixture(scope="module")
def demo(repos: Path) -> dict[str, str]:
    """demo.git: v1 (annotated tag), v2 (lightweight tag) on main, a `dev` branch."""
    c1 = make_repo(
        repos,
        "demo.git",
        FILES,
        executables={"app/run.sh"},
        symlinks={"link": "app/run.sh"},
        tag="v1",
    )
    c2 = make_repo(repos, "demo.git", {**FILES, "README.md": "# v2\n"}, tag="v2", annotated=False)
    dev = make_repo(repos, "demo.git", {"dev.txt": "dev\n"}, branch="dev")
    return {"v1": c1, "main": c2, "dev": dev}


@pytest.fixture(scope="module")
def base_url(repos: Path) -> Iterator[str]:
    with serve_git(repos) as url:
        yield url


def tree_of(repos: Path, repo: str, commit: str) -> str:
    return git("rev-parse", f"{commit}^{{tree}}", cwd=repos / repo)


def fetch(url: str, ref: str | None, dest: Path, **kw: object) -> str:
    kw.setdefault("allow_insecure", True)
    return fetch_git(url, ref, dest, **kw)  # type: ignore[arg-type]


def check_checkout(dest: Path, repos: Path, repo: str, commit: str) -> None:
    assert not (dest / ".git").exists()
    assert tree_ids(dest).sha1 == tree_of(repos, repo, commit)


# --- refs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expect"),
    [
        ("main", "main"),
        (None, "main"),
        ("dev", "dev"),
        ("v1", "v1"),
        ("v2", "main"),
        ("refs/heads/dev", "dev"),
    ],
)
def test_refs(
    base_url: str, repos: Path, demo: dict[str, str], tmp_path: Path, ref: str | None, expect: str
) -> None:
    dest = tmp_path / "out"
    commit = fetch(f"{base_url}/demo.git", ref, dest)
    assert commit == demo[expect]
    check_checkout(dest, repos, "demo.git", commit)


def test_checkout_content(base_url: str, demo: dict[str, str], tmp_path: Path) -> None:
    dest = tmp_path / "out"
    fetch(f"{base_url}/demo.git", "v1", dest)
    names = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert names == sorted(
        ["README.md", "app", "app/server.ts", "app/run.sh", "h\u00e9llo.txt", "empty", "link"]
    )
    assert (dest / "README.md").read_text() == "# demo\n"
    assert os.access(dest / "app/run.sh", os.X_OK)
    assert not os.access(dest / "app/server.ts", os.X_OK)
    assert os.readlink(dest / "link") == "app/run.sh"


@pytest.mark.parametrize("which", ["v1", "main", "dev"])
def test_commit_id(
    base_url: str, repos: Path, demo: dict[str, str], tmp_path: Path, which: str
) -> None:
    dest = tmp_path / "out"
    assert fetch(f"{base_url}/demo.git", demo[which], dest) == demo[which]
    check_checkout(dest, repos, "demo.git", demo[which])


def test_commit_id_uppercase(base_url: str, demo: dict[str, str], tmp_path: Path) -> None:
    assert fetch(f"{base_url}/demo.git", demo["v1"].upper(), tmp_path / "out") == demo["v1"]


def test_commit_id_without_sha_in_want(
    repos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server refusing unadvertised ids: the shallow fetch fails, the full fetch finds it.
    old = make_repo(repos, "history.git", {"a": "1"})
    make_repo(repos, "history.git", {"a": "2"})
    calls: list[tuple[str, ...]] = []
    real_run = gitsource._Git.run

    def spy(self: gitsource._Git, *args: str, **kw: Any) -> str:
        calls.append(args)
        return real_run(self, *args, **kw)

    monkeypatch.setattr(gitsource._Git, "run", spy)
    with serve_git(repos, allow_sha_in_want=False) as url:
        assert fetch(f"{url}/history.git", old, tmp_path / "out") == old
    assert any("+refs/heads/*:refs/fetched/heads/*" in call for call in calls)
    assert (tmp_path / "out/a").read_text() == "1"
    check_checkout(tmp_path / "out", repos, "history.git", old)


def test_default_branch_not_main(repos: Path, base_url: str, tmp_path: Path) -> None:
    make_repo(repos, "trunk.git", {"a": "main"})
    commit = make_repo(repos, "trunk.git", {"a": "trunk"}, branch="trunk", head="trunk")
    assert fetch(f"{base_url}/trunk.git", None, tmp_path / "out") == commit
    assert (tmp_path / "out/a").read_text() == "trunk"


def test_unknown_ref(base_url: str, demo: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="ref 'nope' not found in http://127.0.0.1"):
        fetch(f"{base_url}/demo.git", "nope", tmp_path / "out")


def test_unknown_commit(base_url: str, demo: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=f"commit {'ab' * 20} not found"):
        fetch(f"{base_url}/demo.git", "ab" * 20, tmp_path / "out")


def test_unknown_repository(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="git fetch failed"):
        fetch(f"{base_url}/missing.git", "main", tmp_path / "out")


def test_empty_repository(repos: Path, base_url: str, tmp_path: Path) -> None:
    git("init", "-q", "--bare", repos / "empty.git")
    with pytest.raises(SourceError, match="default branch .* not found|git fetch failed"):
        fetch(f"{base_url}/empty.git", None, tmp_path / "out")


@pytest.mark.parametrize(
    "ref",
    ["-u", "--upload-pack=touch /tmp/x", "a..b", "a b", "a~1", "HEAD^", "a:b", "a?", "a*",
     "a[b", "a\\b", "@{-1}", "x@{u}", "@", ".hidden", "a/.b", "x.lock", "a//b", "/a", "a/",
     "a.", "", "a\nb"],
)  # fmt: skip
def test_bad_ref(base_url: str, tmp_path: Path, ref: str) -> None:
    with pytest.raises(SourceError, match="invalid git ref"):
        fetch(f"{base_url}/demo.git", ref, tmp_path / "out")


# --- URLs ------------------------------------------------------------------------------


def test_http_needs_allow_insecure(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="--allow-insecure-sources") as info:
        fetch_git(f"{base_url}/demo.git", "main", tmp_path / "out", allow_insecure=False)
    assert info.value.status_code == 400
    assert not (tmp_path / "out").exists()


def test_file_url(repos: Path, demo: dict[str, str], tmp_path: Path) -> None:
    url = (repos / "demo.git").as_uri()
    with pytest.raises(SourceError, match="--allow-insecure-sources"):
        fetch_git(url, "main", tmp_path / "refused", allow_insecure=False)
    for ref in ("main", "v1", demo["v1"], None):
        dest = tmp_path / f"out-{ref}"
        commit = fetch(url, ref, dest)
        check_checkout(dest, repos, "demo.git", commit)


@pytest.mark.parametrize(
    "url",
    [
        "ssh://git@example.com/x.git",
        "git@example.com:x.git",
        "git://example.com/x.git",
        "ext::sh -c touch% /tmp/pwned",
        "fd::3",
        "-u",
        "--upload-pack=touch /tmp/pwned",
        "/srv/repo.git",
        "./repo",
        "https::https://example.com/x",
        "HTTPS ://example.com/x",
        "https://",
        "ftp://example.com/x.git",
        "https://example.com/x.git\n--upload-pack=x",
    ],
)
@pytest.mark.parametrize("allow_insecure", [False, True])
def test_refused_urls(url: str, allow_insecure: bool, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="git URL|no host"):
        fetch_git(url, "main", tmp_path / "out", allow_insecure=allow_insecure)
    assert not (tmp_path / "out").exists()


def test_credentials_never_echoed(base_url: str, tmp_path: Path) -> None:
    host = base_url.removeprefix("http://")
    for url in (f"http://alice:s3cr3t@{host}/missing.git", f"http://tok%40en:p@ss@{host}/demo.git"):
        for ref in ("main", "nope", "ab" * 20):
            with pytest.raises(SourceError) as info:
                fetch(url, ref if "missing" in url else "nope", tmp_path / "out")
            assert "s3cr3t" not in info.value.detail and "p@ss" not in info.value.detail
            assert "alice" not in info.value.detail and "tok" not in info.value.detail
    with pytest.raises(SourceError) as info:
        fetch_git("ssh://bob:hunter2@example.com/x", "main", tmp_path / "out", allow_insecure=True)
    assert "hunter2" not in info.value.detail


def test_redact() -> None:
    assert (
        redact("fatal: https://u:p@h/x and http://t@h2/y") == "fatal: https://h/x and http://h2/y"
    )
    assert redact("https://u:p@ss@h/x") == "https://h/x"


# --- bounds and hardening --------------------------------------------------------------


def test_too_large(repos: Path, base_url: str, tmp_path: Path) -> None:
    make_repo(repos, "big.git", {"blob.bin": os.urandom(3 << 20)})
    with pytest.raises(SourceError, match="larger than 1048576 bytes"):
        fetch(f"{base_url}/big.git", "main", tmp_path / "out", max_bytes=1 << 20)
    assert fetch(f"{base_url}/big.git", "main", tmp_path / "ok", max_bytes=8 << 20)


def test_work_tree_too_large(repos: Path, base_url: str, tmp_path: Path) -> None:
    # Compresses to almost nothing in the pack; the checked-out work tree is what is big.
    make_repo(repos, "zeros.git", {"zeros.bin": bytes(20 << 20)})
    with pytest.raises(SourceError, match="larger than"):
        fetch(f"{base_url}/zeros.git", "main", tmp_path / "out", max_bytes=4 << 20)


def test_timeout(tmp_path: Path) -> None:
    # A server that accepts connections and never answers.
    listener = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(listener.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(SourceError, match="timed out after 1s"):
            fetch(
                f"http://127.0.0.1:{listener.getsockname()[1]}/x.git",
                "main",
                tmp_path / "out",
                timeout=1,
            )
        assert time.monotonic() - start < 5
    finally:
        stop.set()
        thread.join()
        for conn in conns:
            conn.close()
        listener.close()


def test_submodule_not_recursed(repos: Path, base_url: str, tmp_path: Path) -> None:
    sub = make_repo(repos, "sub.git", {"secret.txt": "from the submodule\n"})
    gitmodules = f'[submodule "vendor"]\n\tpath = vendor\n\turl = {base_url}/sub.git\n'
    commit = make_repo(
        repos, "withsub.git", {".gitmodules": gitmodules, "main.txt": "m"}, gitlinks={"vendor": sub}
    )
    dest = tmp_path / "out"
    assert fetch(f"{base_url}/withsub.git", "main", dest) == commit
    assert (dest / "main.txt").read_text() == "m"
    assert not list(dest.rglob("secret.txt"))
    assert not (dest / "vendor").exists() or not any((dest / "vendor").iterdir())


def test_attributes_ignored(repos: Path, base_url: str, tmp_path: Path) -> None:
    # eol conversion and ident expansion would change the bytes and so the tree id.
    attrs = "* text eol=crlf\nid.txt ident\n*.bin filter=evil\n"
    files = {".gitattributes": attrs, "a.txt": "one\ntwo\n", "id.txt": "$Id$\n", "x.bin": "x\n"}
    commit = make_repo(repos, "attrs.git", files)
    dest = tmp_path / "out"
    fetch(f"{base_url}/attrs.git", "main", dest)
    assert (dest / "a.txt").read_bytes() == b"one\ntwo\n"
    assert (dest / "id.txt").read_bytes() == b"$Id$\n"
    check_checkout(dest, repos, "attrs.git", commit)


def test_sha256_repository(repos: Path, base_url: str, tmp_path: Path) -> None:
    commit = make_repo(repos, "s256.git", {"a.txt": "sha256\n"}, object_format="sha256")
    assert len(commit) == 64
    for ref in ("main", commit, None):
        dest = tmp_path / f"out-{ref}"
        assert fetch(f"{base_url}/s256.git", ref, dest) == commit
        assert tree_ids(dest).sha256 == tree_of(repos, "s256.git", commit)


def test_git_environment_ignored(
    base_url: str, demo: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inherited GIT_* variables must not redirect or alter the fetch.
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'core.hooksPath'='/tmp/evil'")
    monkeypatch.setenv("GIT_TRACE", str(tmp_path / "trace"))
    assert fetch(f"{base_url}/demo.git", "main", tmp_path / "out") == demo["main"]
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "trace").exists()


def test_dest_must_be_empty(base_url: str, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out/x").write_text("x")
    with pytest.raises(ValueError):
        fetch(f"{base_url}/demo.git", "main", tmp_path / "out")


def test_existing_empty_dest(base_url: str, demo: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    assert fetch(f"{base_url}/demo.git", "main", tmp_path / "out") == demo["main"]
