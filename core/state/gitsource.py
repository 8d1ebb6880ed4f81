"""Fetch one commit of a git repository into a folder, bounded and sandboxed (SPEC 4).

`fetch_git` leaves in `dest` exactly the files of the commit's tree (no `.git`): the git
directory lives in a temporary folder that is removed afterwards. Every refusal or
failure is a `SourceError` (400) whose message never contains URL credentials.

Hardening, since the URL and the repository content come from the requester:
- only https:// (plus http:// and file:// when insecure sources are allowed), enforced
  by git's own `protocol.*.allow` too, so redirects and submodules cannot switch;
- a clean environment: no inherited GIT_* variables, no system or user configuration,
  no terminal prompts, an empty HOME, no hooks, no submodules, fsck of every object;
- checkout ignores the repository's .gitattributes (no eol conversion, `ident` or
  filters), so the files on disk are the blobs byte for byte and their tree id matches
  the commit's tree (except for submodules, which are not fetched);
- a deadline over all git commands and a size bound on the object store while fetching
  and on the work tree while checking out: git is killed as soon as either is exceeded;
- the checked-out tree gets the tarball's rules (SPEC 4 and 9, `check_tree`): no link
  leaving the tree, only files, folders and links, at most `max_files` entries and
  `max_unpacked_bytes` bytes of files. The count and size are also watched while git
  checks out, so a tree of millions of empty files is stopped early.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from tee_daemon.kernel.errors import SourceError
from tee_daemon.state.tarball import check_link_target, check_links_stay_inside

__all__ = ["fetch_git", "check_tree"]

_COMMIT_ID = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_FORMAT_MISMATCH = re.compile(r"mismatched algorithms: client \w+; server (sha1|sha256)")
_USERINFO = re.compile(r"(?<=://)[^/\s]*@")
_POLL = 0.1
# Only these pass from our environment: proxies and CA bundles some hosts need.
_PASSED_ENV = (
    "http_proxy", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
    "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE",
)  # fmt: skip


def fetch_git(
    url: str,
    ref: str | None,
    dest: Path,
    *,
    allow_insecure: bool,
    timeout: float = 120,
    max_bytes: int = 200 * 2**20,
    max_files: int = 10_000,
    max_unpacked_bytes: int = 100 * 2**20,
) -> str:
    """Check out `ref` (branch, tag, full commit id; None: the remote's default branch)
    of `url` into `dest` (missing or empty) and return the full commit id.

    `max_bytes` bounds the object store and the work tree while git runs; `max_files`
    and `max_unpacked_bytes` are the tarball's limits, applied to the checked-out tree.
    Raises SourceError for a refused URL or ref, for any fetch failure, timeout or
    size excess, and for a tree `check_tree` refuses; `dest` may then be left partially
    filled (the caller removes it).
    Raises ValueError if `dest` holds files (a caller bug). Blocks for up to `timeout`.
    """
    scheme = _check_url(url, allow_insecure)
    _check_ref(ref)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} must be missing or empty")  # the caller's bug, not a 400
    with tempfile.TemporaryDirectory(prefix="tee-git-") as tmp:
        git = _Git(Path(tmp), url, scheme, time.monotonic() + timeout, timeout, max_bytes)
        is_sha256_id = ref is not None and len(ref) == 64 and _COMMIT_ID.fullmatch(ref)
        try:
            git.init("sha256" if is_sha256_id else "sha1")
            try:
                commit = _fetch(git, ref)
            except _OtherObjectFormat as exc:  # learnt from the server: redo in its format
                git.init(exc.server_format)
                commit = _fetch(git, ref)
            dest.mkdir(parents=True, exist_ok=True)
            git.run(
                "--work-tree", str(dest), "checkout", "-q", "-f", commit, watch=dest,
                check=lambda: check_tree(dest, max_files, max_unpacked_bytes, complete=False),
            )  # fmt: skip
        except _GitFailed as exc:
            raise SourceError(f"git fetch failed: {exc.summary()}") from None
    check_tree(dest, max_files, max_unpacked_bytes)
    return commit


def check_tree(root: Path, max_files: int, max_bytes: int, *, complete: bool = True) -> None:
    """Refuse a checked-out tree that a tarball with the same entries would be refused for.

    Walks `root` without following links: every symlink must stay inside the tree (its
    target read lexically from the link's folder, then all links resolved together),
    every entry must be a regular file, a folder or a symlink, there may be at most
    `max_files` entries (files, folders and links, as tarball members count) and at most
    `max_bytes` bytes in files. With `complete=False` (while git is still writing),
    entries vanishing mid-walk are skipped and the resolved-links check is left out.
    """
    count = 0
    total = 0
    links: list[str] = []
    folders: list[list[str]] = [[]]
    while folders:
        parts = folders.pop()
        try:
            entries = list(os.scandir(os.path.join(root, *parts)))
        except (FileNotFoundError, NotADirectoryError):
            if complete:
                raise
            continue
        for entry in entries:
            count += 1
            if count > max_files:
                raise SourceError(f"git source has more than {max_files} files and folders")
            rel = [*parts, entry.name]
            name = "/".join(rel)
            try:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    check_link_target(rel, os.readlink(entry.path), name, "git source")
                    links.append(name)
                elif stat.S_ISDIR(info.st_mode):
                    folders.append(rel)
                elif stat.S_ISREG(info.st_mode):
                    total += info.st_size
                    if total > max_bytes:
                        raise SourceError(f"git source checks out to more than {max_bytes} bytes")
                else:
                    raise SourceError(
                        f"git source entry {name!r} is not a regular file, folder or symlink"
                    )
            except FileNotFoundError:
                if complete:
                    raise
    if complete:
        check_links_stay_inside(root, links, "git source")


def redact(text: str) -> str:
    """`text` with the userinfo (user:password@) of any URL in it removed."""
    return _USERINFO.sub("", text)


def _check_url(url: str, allow_insecure: bool) -> str:
    shown = redact(url)
    if not url or url.startswith("-") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise SourceError(f"invalid git URL {shown!r}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "file") and not allow_insecure:
        raise SourceError(
            f"{scheme}:// git sources are refused; use https://, or start the daemon"
            " with --allow-insecure-sources"
        )
    if scheme not in ("https", "http", "file"):
        raise SourceError(
            f"unsupported git URL {shown!r}: only https:// is accepted (http:// and file://"
            " with --allow-insecure-sources)"
        )
    if scheme != "file" and not urlsplit(url).hostname:
        raise SourceError(f"git URL {shown!r} has no host")
    return scheme


def _check_ref(ref: str | None) -> None:
    """git check-ref-format's rules (one-level names allowed), and no option look-alikes."""
    if ref is None or _COMMIT_ID.fullmatch(ref):
        return
    parts = ref.split("/")
    if (
        not ref
        or ref.startswith("-")
        or ref == "@"
        or _BAD_REF_CHARS.search(ref)
        or ".." in ref
        or "@{" in ref
        or ref.endswith(".")
        or any(not p or p.startswith(".") or p.endswith(".lock") for p in parts)
    ):
        raise SourceError(f"invalid git ref {ref!r}: expected a branch, a tag or a full commit id")


def _fetch(git: _Git, ref: str | None) -> str:
    """Fetch what `ref` names, shallowly when the server allows; return the commit id."""
    shallow = ["fetch", "-q", "--depth", "1", "--no-tags", "--no-recurse-submodules"]
    if ref is None or not _COMMIT_ID.fullmatch(ref):
        try:
            git.run(*shallow, "--", git.url, ref or "HEAD", watch=git.gitdir)
        except _GitFailed as exc:
            if "couldn't find remote ref" in exc.stderr:
                what = f"ref {ref!r}" if ref else "a default branch (HEAD)"
                raise SourceError(f"{what} not found in {redact(git.url)}") from None
            raise
        return git.run("rev-parse", "--verify", "FETCH_HEAD^{commit}").strip()

    commit = ref.lower()
    try:
        git.run(*shallow, "--", git.url, commit, watch=git.gitdir)
    except _GitFailed:
        # Servers that refuse unadvertised commit ids: fetch branches and tags, then look.
        git.run(
            "fetch", "-q", "--no-recurse-submodules", "--", git.url,
            "+refs/heads/*:refs/fetched/heads/*", "+refs/tags/*:refs/fetched/tags/*",
            watch=git.gitdir,
        )  # fmt: skip
    try:
        return git.run("rev-parse", "--verify", "-q", f"{commit}^{{commit}}").strip()
    except _GitFailed:
        raise SourceError(f"commit {commit} not found in {redact(git.url)}") from None


class _OtherObjectFormat(Exception):
    """The server's repository uses the other object format (sha1 vs sha256)."""

    def __init__(self, server_format: str) -> None:
        super().__init__(server_format)
        self.server_format = server_format


class _GitFailed(Exception):
    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr

    def summary(self) -> str:
        """git's last stderr line (its fatal error), without credentials."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return redact(lines[-1] if lines else "no error message")[:300]


class _Git:
    """Runs git commands in a sandbox, under one deadline and one size bound."""

    def __init__(
        self, tmp: Path, url: str, scheme: str, deadline: float, timeout: float, max_bytes: int
    ) -> None:
        self.url = url
        self.gitdir = tmp / "repo.git"
        self.deadline = deadline
        self.timeout = timeout
        self.max_bytes = max_bytes
        home = tmp / "home"
        home.mkdir()
        self.env = {k: v for k in _PASSED_ENV if (v := os.environ.get(k)) is not None}
        self.env.update(
            PATH=os.environ.get("PATH", os.defpath),
            HOME=str(home),
            XDG_CONFIG_HOME=str(home),
            LC_ALL="C",
            GIT_TERMINAL_PROMPT="0",
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL="/dev/null",
        )
        allowed = {"https"} | ({scheme} if scheme != "https" else set())
        config = {
            "protocol.allow": "never",
            **{f"protocol.{s}.allow": "always" for s in sorted(allowed)},
            "core.hooksPath": "/dev/null",
            "core.symlinks": "true",
            "core.autocrlf": "false",
            "core.fsmonitor": "false",
            "submodule.recurse": "false",
            "fetch.recurseSubmodules": "false",
            "transfer.fsckObjects": "true",
            "advice.detachedHead": "false",
            "gc.auto": "0",
        }
        self.prefix = ["git"] + [arg for k, v in config.items() for arg in ("-c", f"{k}={v}")]
        self.tmp = tmp

    def init(self, object_format: str) -> None:
        shutil.rmtree(self.gitdir, ignore_errors=True)
        self.run("init", "-q", "--bare", "--template=", f"--object-format={object_format}")
        # Highest-priority attributes: check out blobs verbatim, whatever the repo says.
        (self.gitdir / "info").mkdir(exist_ok=True)
        (self.gitdir / "info" / "attributes").write_text(
            "* -text -eol -ident -filter -working-tree-encoding\n"
        )

    def run(
        self, *args: str, watch: Path | None = None, check: Callable[[], None] | None = None
    ) -> str:
        """Run `git <args>` on our git dir; raise _GitFailed with its stderr on failure.

        The deadline and the size bound on `watch` are checked while git runs, and so is
        `check` (which raises to stop git)."""
        cmd = [*self.prefix, f"--git-dir={self.gitdir}", *args]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                cmd, cwd=self.tmp, env=self.env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True,
            )  # fmt: skip
            try:
                while True:
                    try:
                        proc.wait(timeout=_POLL)
                        break
                    except subprocess.TimeoutExpired:
                        self._check_bounds(watch, check)
                self._check_bounds(watch, check)  # a fast fetch may finish between polls
            except BaseException:
                try:  # git and its helpers (remote-https, index-pack) share the session
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # already gone: the bound was exceeded just as git finished
                proc.wait()
                raise
            out.seek(0)
            err.seek(0)
            if proc.returncode != 0:
                stderr = err.read().decode(errors="replace")
                if m := _FORMAT_MISMATCH.search(stderr):
                    raise _OtherObjectFormat(m[1])
                raise _GitFailed(stderr)
            return out.read().decode(errors="replace")

    def _check_bounds(self, watch: Path | None, check: Callable[[], None] | None) -> None:
        if time.monotonic() > self.deadline:
            raise SourceError(f"git fetch timed out after {self.timeout:g}s")
        if check is not None:
            check()
        if watch is not None and _disk_usage(watch) > self.max_bytes:
            raise SourceError(f"git repository is larger than {self.max_bytes} bytes")


def _disk_usage(root: Path) -> int:
    """Bytes in files under `root`; files vanishing mid-walk (git renames) are skipped."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total
