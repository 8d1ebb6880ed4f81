"""Test helpers: bare git repositories served over git's smart HTTP protocol.

`serve_git(root)` runs `git http-backend` as a CGI program behind a small threaded
`http.server` on 127.0.0.1 (ephemeral port) and yields the base URL; the repository in
`root/<name>` is then at `<base>/<name>`. `make_repo` builds commits with plumbing only,
so no work tree or user configuration is involved.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

__all__ = ["serve_git", "make_repo", "git", "GIT_ENV"]

# Isolated from the developer's own git configuration, with fixed identities and dates
# so commit ids are reproducible.
GIT_ENV = {
    "PATH": os.environ.get("PATH", os.defpath),
    "HOME": tempfile.gettempdir(),
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "LC_ALL": "C",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
}


def git(
    *args: str | Path,
    cwd: Path | None = None,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run git in the test environment and return its stripped stdout."""
    out = subprocess.run(
        ["git", *map(str, args)],
        cwd=cwd,
        input=input,
        env={**GIT_ENV, **(env or {})},
        check=True,
        capture_output=True,
    )
    return out.stdout.decode().strip()


class _CgiHandler(BaseHTTPRequestHandler):
    server: _GitServer

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        env = {
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            # Let clients ask for any commit id, as GitHub does (unless told otherwise).
            "GIT_CONFIG_COUNT": "2",
            "GIT_CONFIG_KEY_0": "uploadpack.allowReachableSHA1InWant",
            "GIT_CONFIG_VALUE_0": str(self.server.allow_sha_in_want).lower(),
            "GIT_CONFIG_KEY_1": "uploadpack.allowAnySHA1InWant",
            "GIT_CONFIG_VALUE_1": str(self.server.allow_sha_in_want).lower(),
            "REQUEST_METHOD": self.command,
            "PATH_INFO": unquote(path),
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            # Protocol v2 serves any commit id whatever the config says: a server that
            # refuses them (allow_sha_in_want=False) speaks v0 only.
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")
            if self.server.allow_sha_in_want
            else "",
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        body = self._body()
        env["CONTENT_LENGTH"] = str(len(body))
        result = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        # CGI headers end at the first blank line (git writes CRLF; allow bare LF too).
        ends = [
            (i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := result.stdout.find(sep)) >= 0
        ]
        cut, width = min(ends, default=(len(result.stdout), 0))
        head, payload = result.stdout[:cut], result.stdout[cut + width :]
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_GET

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


class _GitServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, allow_sha_in_want: bool) -> None:
        super().__init__(("127.0.0.1", 0), _CgiHandler)
        self.root = root
        self.allow_sha_in_want = allow_sha_in_want


@contextmanager
def serve_git(root: Path, *, allow_sha_in_want: bool = True) -> Iterator[str]:
    """Serve the bare repositories under `root`; yields e.g. `http://127.0.0.1:4242`.

    With `allow_sha_in_want=False` the server speaks protocol v0 with git's defaults, so
    it refuses commits asked by id unless they are a ref's tip (clients must then fetch
    refs instead)."""
    server = _GitServer(root, allow_sha_in_want)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def make_repo(
    root: Path,
    name: str,
    files: Mapping[str, bytes | str],
    *,
    branch: str = "main",
    tag: str | None = None,
    annotated: bool = True,
    executables: frozenset[str] | set[str] = frozenset(),
    symlinks: Mapping[str, str] | None = None,
    gitlinks: Mapping[str, str] | None = None,
    head: str | None = None,
    message: str = "commit",
    object_format: str = "sha1",
) -> str:
    """Commit exactly `files` (plus `symlinks` and submodule `gitlinks`: path -> commit)
    on `branch` of the bare repository `root/name`, created if missing (HEAD -> main).

    Each call replaces the whole tree; earlier commits stay as parents. Optionally tags
    the commit and points HEAD at `head`. Returns the new commit id.
    """
    repo = root / name
    if not repo.exists():
        git(
            "init",
            "-q",
            "--bare",
            "--template=",
            f"--object-format={object_format}",
            "--initial-branch=main",
            repo,
        )
    index_lines = []
    for path, data in files.items():
        blob = git(
            "hash-object",
            "-w",
            "--stdin",
            cwd=repo,
            input=data.encode() if isinstance(data, str) else data,
        )
        index_lines.append(f"{'100755' if path in executables else '100644'} {blob}\t{path}")
    for path, target in (symlinks or {}).items():
        blob = git("hash-object", "-w", "--stdin", cwd=repo, input=target.encode())
        index_lines.append(f"120000 {blob}\t{path}")
    for path, commit in (gitlinks or {}).items():
        index_lines.append(f"160000 {commit}\t{path}")
    with tempfile.TemporaryDirectory() as tmp:
        index_env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(
            "update-index",
            "--add",
            "--index-info",
            cwd=repo,
            env=index_env,
            input="\n".join(index_lines).encode() + b"\n",
        )
        tree = git("write-tree", cwd=repo, env=index_env)
    parent = (
        subprocess.run(
            ["git", "rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
            cwd=repo,
            env=GIT_ENV,
            capture_output=True,
        )
        .stdout.decode()
        .strip()
    )
    commit = git("commit-tree", tree, *(["-p", parent] if parent else []), "-m", message, cwd=repo)
    git("update-ref", f"refs/heads/{branch}", commit, cwd=repo)
    if tag:
        git("tag", *(["-a", "-m", f"tag {tag}"] if annotated else []), tag, commit, cwd=repo)
    if head:
        git("symbolic-ref", "HEAD", f"refs/heads/{head}", cwd=repo)
    return commit
