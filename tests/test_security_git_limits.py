"""Attacks through git sources (SPEC 4 and 9): the tarball's rules hold for git too.

A hostile repository served over loopback HTTP tries to smuggle out a link to the host's
files, to check out more files or more bytes than the limits, or to make the daemon fetch
a submodule; each deploy answers 400 naming the problem and leaves no project behind.
Then a batch of deliberately slow git servers must not hold up a tarball deploy of an
unrelated project.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gitserver import make_repo, serve_git
from harness import DaemonProcess
from tee_daemon.state import gitsource
from tee_daemon.state.deploy import GIT_FETCH_CONCURRENCY
from tee_daemon.kernel.errors import SourceError

MAX_FILES = 50
MAX_BYTES = 2**20


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("hostile-repos")
    with serve_git(root) as base:
        yield root, base


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon with low source limits, so the over-limit repositories stay small."""
    proc = DaemonProcess(
        tmp_path_factory.mktemp("limited") / "data",
        env={"TEE_DAEMON_MAX_FILES": str(MAX_FILES), "TEE_DAEMON_MAX_UNPACKED_BYTES": str(MAX_BYTES)},
    ).start()
    yield proc
    proc.stop()


def refused(proc: DaemonProcess, name: str, url: str) -> str:
    """Deploy `url` as `name`, expect a 400, check no project exists; return the detail."""
    r = proc.deploy_git(name, url, ref="main")
    assert r.status_code == 400, r.text
    assert proc.get(f"/_api/projects/{name}", admin=True).status_code == 404
    return r.json()["detail"]


# --- links leaving the tree --------------------------------------------------------------


@pytest.mark.parametrize(
    "links, words",
    [
        ({"passwd": "/etc/passwd"}, ["'passwd'", "absolute", "/etc/passwd"]),
        ({"docs/up": "../../etc/passwd"}, ["'docs/up'", "leaves the project folder"]),
        # Each target stays inside when read alone; the chain climbs out.
        ({"sub/up": "..", "sub/out": "up/../.."}, ["resolves outside the project folder"]),
        ({"sub/up": "..", "escape": "sub/up/../etc"}, ["resolves outside the project folder"]),
    ],
    ids=["absolute", "dotdot", "chain", "chain-via-parent"],
)
def test_links_leaving_the_tree_refused(limited, repos, name, links, words):
    root, base = repos
    make_repo(root, f"{name}.git", {"index.html": "<h1>hi</h1>", "docs/a.txt": "a", "sub/b.txt": "b"}, symlinks=links)
    detail = refused(limited, name, f"{base}/{name}.git")
    assert "symlink" in detail
    for word in words:
        assert word in detail, detail


def test_links_inside_the_tree_accepted(limited, repos, name):
    root, base = repos
    links = {"home.html": "index.html", "docs/up": "../index.html", "docs/self": ".", "dangling": "nothing/here"}
    make_repo(root, f"{name}.git", {"index.html": "<h1>hi</h1>", "docs/a.txt": "a"}, symlinks=links)
    r = limited.deploy_git(name, f"{base}/{name}.git", ref="main")
    assert r.status_code == 201, r.text
    assert limited.get(f"/{name}/index.html").text == "<h1>hi</h1>"


# --- file count and size -----------------------------------------------------------------


def test_more_files_than_the_limit_refused(limited, repos, name):
    root, base = repos
    make_repo(root, f"{name}.git", {f"f{i}.txt": "x" for i in range(MAX_FILES + 10)})
    detail = refused(limited, name, f"{base}/{name}.git")
    assert f"more than {MAX_FILES} files" in detail, detail


def test_files_within_the_limit_accepted(limited, repos, name):
    root, base = repos
    make_repo(root, f"{name}.git", {f"f{i}.txt": "x" for i in range(MAX_FILES - 10)})
    r = limited.deploy_git(name, f"{base}/{name}.git", ref="main")
    assert r.status_code == 201, r.text


def test_more_files_in_folders_refused(limited, repos, name):
    # Folders count as tarball members do: 20 folders of 2 files are 60 entries.
    root, base = repos
    make_repo(root, f"{name}.git", {f"d{i}/{j}.txt": "x" for i in range(20) for j in range(2)})
    detail = refused(limited, name, f"{base}/{name}.git")
    assert f"more than {MAX_FILES} files" in detail, detail


def test_more_bytes_than_the_limit_refused(limited, repos, name):
    # Zeros compress to almost nothing: small in the pack, well over the limit checked out,
    # and far below the git object store bound (TEE_DAEMON's max_git_bytes).
    root, base = repos
    make_repo(root, f"{name}.git", {"index.html": "hi", "zeros.bin": bytes(4 * MAX_BYTES)})
    detail = refused(limited, name, f"{base}/{name}.git")
    assert f"more than {MAX_BYTES} bytes" in detail, detail


def test_bytes_summed_over_files_refused(limited, repos, name):
    root, base = repos
    make_repo(root, f"{name}.git", {f"part{i}.bin": bytes([i]) * (MAX_BYTES // 4) for i in range(5)})
    detail = refused(limited, name, f"{base}/{name}.git")
    assert f"more than {MAX_BYTES} bytes" in detail, detail


def test_special_files_refused_by_the_checker(tmp_path):
    # git cannot store FIFOs or devices; the checker refuses them all the same.
    (tmp_path / "ok.txt").write_text("ok")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(SourceError, match="'pipe' is not a regular file"):
        gitsource.check_tree(tmp_path, max_files=10, max_bytes=100)


# --- submodules --------------------------------------------------------------------------


def test_submodule_never_fetched(limited, repos, name):
    """.gitmodules points at a loopback listener: not a single connection may arrive."""
    root, base = repos
    sub = make_repo(root, f"{name}-sub.git", {"secret.txt": "from the submodule"})
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/sub.git"
    gitmodules = f'[submodule "vendor"]\n\tpath = vendor\n\turl = {url}\n'
    make_repo(
        root, f"{name}.git", {".gitmodules": gitmodules, "index.html": "hi"}, gitlinks={"vendor": sub}
    )
    try:
        r = limited.deploy_git(name, f"{base}/{name}.git", ref="main")
        assert r.status_code == 201, r.text
        with pytest.raises(TimeoutError):
            listener.accept()[0].close()
    finally:
        listener.close()
    assert limited.get(f"/{name}/vendor/secret.txt").status_code == 404


# --- slow sources ------------------------------------------------------------------------


class TricklingServer:
    """Accepts HTTP connections and answers one byte of headers per half second, never
    finishing. Stops by itself after `lifetime` seconds (or on `stop()`)."""

    def __init__(self, lifetime: float) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.deadline = time.monotonic() + lifetime
        self.stopped = threading.Event()
        self.connections = 0
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            thread = threading.Thread(target=self._trickle, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)
        self.listener.close()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not self.stopped.wait(0.5) and time.monotonic() < self.deadline:
                    conn.sendall(b"z")
            except OSError:
                pass  # the client gave up

    def stop(self) -> None:
        self.stopped.set()
        self.acceptor.join()
        for thread in self.threads:
            thread.join()


def test_slow_git_sources_do_not_delay_other_deploys(tmp_path, name):
    default_pool = min(32, (os.cpu_count() or 1) + 4)  # asyncio.to_thread's executor
    slow_count = max(GIT_FETCH_CONCURRENCY, default_pool) + 3
    proc = DaemonProcess(tmp_path / "data", env={"TEE_DAEMON_GIT_TIMEOUT": "60"}).start()
    server = TricklingServer(lifetime=60)
    results: dict[str, httpx.Response | Exception] = {}

    def deploy_git(project: str) -> None:
        try:
            results[project] = proc.deploy_git(project, f"http://127.0.0.1:{server.port}/{project}.git")
        except Exception as exc:  # reported by the assertions below
            results[project] = exc

    slow = [threading.Thread(target=deploy_git, args=(f"{name}-slow{i}",)) for i in range(slow_count)]
    try:
        for thread in slow:
            thread.start()
        # Every fetch slot (the daemon's, or asyncio's shared pool before the fix) is taken.
        deadline = time.monotonic() + 20
        while server.connections < min(GIT_FETCH_CONCURRENCY, default_pool) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)
        assert server.connections >= min(GIT_FETCH_CONCURRENCY, default_pool)

        fast: dict[str, object] = {}

        def deploy_tarball() -> None:
            start = time.monotonic()
            try:
                fast["response"] = proc.deploy_files(name, {"index.html": "<h1>fast</h1>"})
            except Exception as exc:
                fast["response"] = exc
            fast["seconds"] = time.monotonic() - start

        tarball = threading.Thread(target=deploy_tarball)
        tarball.start()
        tarball.join(timeout=10)
        assert not tarball.is_alive(), "the tarball deploy waited behind the slow git sources"
        response = fast["response"]
        assert isinstance(response, httpx.Response) and response.status_code == 201, response
        assert fast["seconds"] < 5, fast
        assert all(thread.is_alive() for thread in slow), "a slow source finished before the check"
        assert proc.get(f"/{name}/").text == "<h1>fast</h1>"
    finally:
        server.stop()  # the slow fetches fail at once; queued ones find the port closed
        for thread in slow:
            thread.join(timeout=90)
        if "tarball" in locals():
            tarball.join(timeout=90)
        proc.stop()
    for project, result in results.items():
        assert isinstance(result, httpx.Response) and result.status_code == 400, (project, result)
