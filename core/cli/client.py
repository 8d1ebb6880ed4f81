"""The admin API for humans: deploy, ls, versions, promote, redeploy, rollback, rm, logs.

Exit codes: 0 done, 1 the daemon refused (or the request was wrong), 2 the daemon could
not be reached, 3 the admin token was missing or refused, 4 the command line itself was
wrong (unknown command or option, missing argument: see commands.UsageParser). Results
go to stdout (`--json` for the raw API answer); progress, the live build and start
output of a deploy, and errors go to stderr.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from tee_daemon.settings import load_settings

EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_AUTH, EXIT_USAGE = 1, 2, 3, 4
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # the daemon's rule (state/models.py)
DEPLOY_TIMEOUT = 900.0  # a deploy answers once the new version serves: builds take time

# Piped output is never wrapped or truncated: tables stay one line per project.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 100_000)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class ClientError(Exception):
    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


# -- talking to the daemon -------------------------------------------------------------


def _connection(args: argparse.Namespace) -> tuple[str, str]:
    """The daemon URL and token: flags, then environment, then the local daemon."""
    url = args.url or os.environ.get("TEE_DAEMON_URL")
    token = args.token or os.environ.get("TEE_DAEMON_TOKEN")
    if not url or not token:
        settings = load_settings()
        url = url or settings.public_base
        if not token:
            path = settings.data_dir / "admin-token"
            try:
                token = path.read_text().strip()
            except OSError:
                raise ClientError(
                    f"no admin token: pass --token, set TEE_DAEMON_TOKEN, or run this on the daemon's machine "
                    f"as its user ({path} is not readable)",
                    EXIT_AUTH,
                ) from None
    if not token:
        raise ClientError("the admin token is empty: pass --token or set TEE_DAEMON_TOKEN", EXIT_AUTH)
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/"), token


def _client(args: argparse.Namespace, timeout: float = 60.0) -> tuple[httpx.Client, str]:
    url, token = _connection(args)
    client = httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=httpx.Timeout(timeout, connect=10.0),
    )
    return client, url


def _unreachable(url: str, exc: Exception) -> ClientError:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        hint = " Is `tee-daemon serve` running there? (set --url or TEE_DAEMON_URL)"
    elif isinstance(exc, httpx.TimeoutException):
        hint = " The daemon did not answer in time."
    else:
        hint = ""
    return ClientError(f"cannot reach the daemon at {url}: {reason}.{hint}", EXIT_UNREACHABLE)


def _call(args: argparse.Namespace, method: str, path: str, timeout: float = 120.0, **kwargs) -> dict:
    client, url = _client(args, timeout)
    with client:
        try:
            response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
    return _answer(response)


def _answer(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text.strip()[:500] or response.reason_phrase}
    if not isinstance(body, dict):
        body = {"detail": body}
    if response.status_code == 401:
        raise ClientError(
            "the daemon refused the admin token (401): check --token or TEE_DAEMON_TOKEN", EXIT_AUTH
        )
    if response.status_code >= 500:
        raise ClientError(f"the daemon failed ({response.status_code}): {body.get('detail', body)}")
    if response.status_code >= 400:
        raise ClientError(f"refused ({response.status_code}): {body.get('detail', body)}")
    return body


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    result = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--{what} expects KEY=VALUE, got {item.split('=')[0]!r}", EXIT_USAGE)
        result[key] = value
    return result


# -- packing a folder ------------------------------------------------------------------


def _git() -> str | None:
    return shutil.which("git")


class _GitIgnore:
    """Asks git which paths are ignored: `git check-ignore --stdin -z`.

    Inside a git work tree the repository's own rules apply (every .gitignore,
    .git/info/exclude, the user's excludes file); elsewhere a throwaway repository is
    pointed at the folder so its .gitignore files still apply.
    """

    def __init__(self, folder: Path, git: str) -> None:
        self.folder = folder
        self.git = git
        self._tmp: tempfile.TemporaryDirectory | None = None
        inside = subprocess.run(
            [git, "-C", str(folder), "rev-parse", "--is-inside-work-tree"],
            capture_output=True,
            text=True,
        )
        if inside.returncode == 0 and inside.stdout.strip() == "true":
            self.prefix = [git]
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="tee-daemon-ignore-")
            subprocess.run([git, "init", "-q", self._tmp.name], check=True, capture_output=True)
            self.prefix = [git, f"--git-dir={self._tmp.name}/.git", f"--work-tree={folder}"]

    def ignored(self, paths: list[str]) -> set[str]:
        if not paths:
            return set()
        result = subprocess.run(
            [*self.prefix, "check-ignore", "--stdin", "-z"],
            input=b"".join(p.encode() + b"\0" for p in paths),
            cwd=self.folder,
            capture_output=True,
        )
        if result.returncode not in (0, 1):
            raise ClientError(f"git check-ignore failed: {result.stderr.decode(errors='replace').strip()}")
        return {p.decode() for p in result.stdout.split(b"\0") if p}

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


class _PatternIgnore:
    """Without git: every .gitignore's patterns, matched the way git mostly does."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._rules: dict[str, list[tuple[bool, bool, bool, str]]] = {}

    def rules(self, rel_dir: str) -> list[tuple[bool, bool, bool, str]]:
        """(negate, dir_only, anchored, pattern) of `rel_dir`/.gitignore."""
        if rel_dir not in self._rules:
            rules = []
            path = self.folder / rel_dir / ".gitignore"
            lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
            for line in lines:
                line = line.rstrip()
                if not line or line.startswith("#"):
                    continue
                negate = line.startswith("!")
                line = line[1:] if negate else line
                dir_only = line.endswith("/")
                line = line.rstrip("/")
                anchored = "/" in line
                rules.append((negate, dir_only, anchored, line.lstrip("/")))
            self._rules[rel_dir] = rules
        return self._rules[rel_dir]

    def _match(self, rel: str, is_dir: bool) -> bool:
        ignored = False
        parts = rel.split("/")
        base = parts[-1]
        # Deeper .gitignore files are read later, so they win, as in git.
        for depth in range(len(parts)):
            rel_dir = "/".join(parts[:depth])
            target_rel = "/".join(parts[depth:])
            for negate, dir_only, anchored, pattern in self.rules(rel_dir):
                if dir_only and not is_dir:
                    continue
                target = target_rel if anchored else base
                if fnmatch.fnmatchcase(target, pattern):
                    ignored = not negate
        return ignored

    def ignored(self, paths: list[str]) -> set[str]:
        return {p for p in paths if self._match(p.rstrip("/"), p.endswith("/"))}

    def close(self) -> None:
        pass


def list_files(folder: Path) -> list[str]:
    """The folder's files (relative POSIX paths), without .git and what .gitignore excludes."""
    git = _git()
    matcher = _GitIgnore(folder, git) if git else _PatternIgnore(folder)
    files: list[str] = []
    try:
        level = [""]  # directories to list, relative, "" for the root
        while level:
            candidates: list[tuple[str, bool]] = []
            for rel_dir in level:
                try:
                    entries = sorted(os.scandir(folder / rel_dir), key=lambda e: e.name)
                except OSError as exc:
                    raise ClientError(f"cannot read {folder / rel_dir}: {exc.strerror}") from None
                for entry in entries:
                    if entry.name == ".git":
                        continue
                    rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                    candidates.append((rel, entry.is_dir(follow_symlinks=False)))
            ignored = matcher.ignored([rel + "/" if is_dir else rel for rel, is_dir in candidates])
            level = []
            for rel, is_dir in candidates:
                if (rel + "/" if is_dir else rel) in ignored or rel in ignored:
                    continue
                (level if is_dir else files).append(rel)
    finally:
        matcher.close()
    return sorted(files)


def pack_folder(folder: Path, into: IO[bytes]) -> int:
    """Write a tar.gz of the deployable files of `folder` to `into`; the file count."""
    files = list_files(folder)
    if not files:
        raise ClientError(f"{folder} has nothing to deploy (empty, or everything is ignored)")
    with tarfile.open(fileobj=into, mode="w:gz") as tar:
        for rel in files:
            path = folder / rel
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            elif info.issym():
                tar.addfile(info)
            # Sockets, fifos and devices are not deployable: skipped.
    return len(files)


class _ProgressFile:
    """A binary file whose reads advance a progress bar (httpx streams multipart reads)."""

    def __init__(self, file: IO[bytes], on_read: Callable[[int], None], on_end: Callable[[], None]) -> None:
        self.file = file
        self.on_read = on_read
        self.on_end = on_end

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        if data:
            self.on_read(len(data))
        else:
            self.on_end()
        return data

    def seek(self, *args: Any) -> int:
        return self.file.seek(*args)

    def tell(self) -> int:
        return self.file.tell()

    def fileno(self) -> int:
        return self.file.fileno()


def _is_git_url(target: str) -> bool:
    return "://" in target or (target.startswith("git@") and ":" in target)


# -- the commands ----------------------------------------------------------------------


def default_name(target: str, folder: Path | None) -> str | None:
    """The project name when --name is not given: a folder's package.json `name`, else
    the folder's own name (a git URL: the repository's), when it is a valid name."""
    candidates: list[str] = []
    if folder is not None:
        try:
            package = json.loads((folder / "package.json").read_text())
        except (OSError, ValueError):
            package = None
        if isinstance(package, dict) and isinstance(package.get("name"), str):
            candidates.append(package["name"])
        candidates.append(folder.name)
    else:
        last = target.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        candidates.append(last[:-4] if last.endswith(".git") else last)
    return next((c for c in candidates if NAME_RE.fullmatch(c)), None)


def cmd_deploy(args: argparse.Namespace) -> dict:
    target = args.source
    folder = Path(target).expanduser()
    is_folder = folder.is_dir()
    if not is_folder and not _is_git_url(target):
        raise ClientError(f"{target!r} is neither a folder nor a git URL (https://...)", EXIT_USAGE)
    if is_folder:
        folder = folder.resolve()
    name = args.name or default_name(target, folder if is_folder else None)
    if name is None:
        raise ClientError(
            f"cannot take a project name from {target!r} (names are lowercase letters, digits and '-'): "
            "pass --name NAME",
            EXIT_USAGE,
        )
    if not args.name:
        err.print(f"project name: {_escape(name)} (from {'package.json or the folder' if is_folder else 'the URL'}; --name to choose)")
    manifest = {
        "name": name,
        "runtime": args.runtime,
        "entry": args.entry,
        "command": args.command,
        "env": _pairs(args.env, "env") or None,
        "secrets": _pairs(args.secret, "secret") or None,
    }
    manifest = {k: v for k, v in manifest.items() if v is not None}
    if is_folder:
        if args.ref:
            raise ClientError("--ref is for git URLs; a folder is deployed as it is on disk", EXIT_USAGE)
        return _deploy_folder(args, folder, manifest)
    manifest.update(source=target)
    if args.ref:
        manifest["ref"] = args.ref
    client, url = _client(args, DEPLOY_TIMEOUT)
    with client, _LiveOutput(args, name):
        err.print(f"Cloning {_escape(target)} and building {_escape(name)}…")
        try:
            response = client.post("/_api/projects", json=manifest)
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
    return _answer(response)


class _LiveOutput:
    """Print the build and start output of a deploy to stderr as the daemon writes it.

    It opens `GET /_api/projects/<name>/output` (everything the project's build steps
    and runs write from then on) and waits for its head before the deploy is sent, so
    no line is missed; it reads in a thread of its own until the deploy has answered.
    A daemon without that endpoint just means no live output.
    """

    READY_WAIT = 10.0  # seconds to wait for the stream's head before deploying anyway
    TAIL_WAIT = 0.6  # after the answer: the daemon polls its log files every 0.2 s

    def __init__(self, args: argparse.Namespace, name: str) -> None:
        self.args, self.name = args, name
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.printed = False
        self.thread = threading.Thread(target=self._run, name="deploy-output", daemon=True)

    def __enter__(self) -> "_LiveOutput":
        self.thread.start()
        self.ready.wait(self.READY_WAIT)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(self.TAIL_WAIT)
        self.stopped.set()  # the daemon thread ends with the process, or on its next chunk

    def _run(self) -> None:
        try:
            client, _ = _client(self.args, 30.0)
            timeout = httpx.Timeout(30.0, connect=10.0, read=None)
            with client, client.stream("GET", f"/_api/projects/{self.name}/output", timeout=timeout) as r:
                self.ready.set()
                if r.status_code != 200:
                    return
                for chunk in r.iter_bytes():
                    if self.stopped.is_set():
                        return
                    if chunk:
                        sys.stderr.write(chunk.decode("utf-8", errors="replace"))
                        sys.stderr.flush()
                        self.printed = True
        except Exception:  # noqa: BLE001 - live output is a courtesy; the deploy reports errors
            pass
        finally:
            self.ready.set()


def _deploy_folder(args: argparse.Namespace, folder: Path, manifest: dict) -> dict:
    with tempfile.TemporaryFile(prefix="tee-daemon-deploy-") as tarball:
        with err.status(f"Packing {folder}…"):
            count = pack_folder(folder, tarball)
        size = tarball.tell()
        tarball.seek(0)
        client, url = _client(args, DEPLOY_TIMEOUT)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        )
        with client, _LiveOutput(args, manifest["name"]):
            with progress:
                task = progress.add_task(f"Uploading {count} file{'s' if count != 1 else ''}", total=size)
                body = _ProgressFile(tarball, lambda n: progress.advance(task, n), lambda: None)
                uploaded = (
                    f"uploaded {count} file{'s' if count != 1 else ''} ({_size(size)}); "
                    f"building and starting {manifest['name']}…"
                )

                def upload() -> Any:
                    # The body is read as it is sent: the bar ends with the upload.
                    return client.post(
                        "/_api/projects",
                        files={
                            "manifest": (None, json.dumps(manifest), "application/json"),
                            "files": ("project.tar.gz", body, "application/gzip"),
                        },
                        extensions={"trace": _after_upload(progress, uploaded)},
                    )

                try:
                    response = upload()
                except httpx.HTTPError as exc:
                    raise _unreachable(url, exc) from None
    return _answer(response)


def _after_upload(progress: Progress, message: str) -> Callable[[str, dict], None]:
    """An httpx trace hook: once the request is sent, the progress bar goes and the
    build and start output (printed as it comes) follows."""
    state = {"done": False}

    def trace(event: str, info: dict) -> None:
        if event == "http11.send_request_body.complete" and not state["done"]:
            state["done"] = True
            progress.stop()
            err.print(_escape(message))

    return trace


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_ls(args: argparse.Namespace) -> dict:
    return _call(args, "GET", "/_api/projects")


def cmd_versions(args: argparse.Namespace) -> dict:
    return _call(args, "GET", f"/_api/projects/{_name(args.name)}/versions")


def cmd_promote(args: argparse.Namespace) -> dict:
    return _call(args, "POST", f"/_api/projects/{_name(args.name)}/promote")


def cmd_redeploy(args: argparse.Namespace) -> dict:
    name = _name(args.name)
    client, url = _client(args, DEPLOY_TIMEOUT)
    with client, _LiveOutput(args, name):
        err.print(f"Fetching {_escape(name)} again…")
        try:
            response = client.post(f"/_api/projects/{name}/redeploy")
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
    return _answer(response)


def cmd_rollback(args: argparse.Namespace) -> dict:
    body = {"version": args.to} if args.to is not None else {}
    return _call(args, "POST", f"/_api/projects/{_name(args.name)}/rollback", timeout=DEPLOY_TIMEOUT, json=body)


def cmd_rm(args: argparse.Namespace) -> dict:
    return _call(args, "DELETE", f"/_api/projects/{_name(args.name)}")


def cmd_logs(args: argparse.Namespace) -> dict | None:
    client, url = _client(args, 30.0)
    params = {"follow": "1"} if args.follow else {}
    timeout = httpx.Timeout(30.0, connect=10.0, read=None if args.follow else 30.0)
    with client:
        try:
            with client.stream("GET", f"/_api/projects/{_name(args.name)}/logs", params=params, timeout=timeout) as r:
                if r.status_code >= 400:
                    r.read()
                    _answer(r)
                stdout = sys.stdout.buffer
                for chunk in r.iter_bytes():
                    stdout.write(chunk)
                    stdout.flush()
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
    return None


def _name(name: str) -> str:
    # Names are [a-z0-9-]; anything else could only make a confusing path.
    if not name or any(c in name for c in "/?#%") or name.startswith("."):
        raise ClientError(f"invalid project name {name!r}")
    return name


# -- printing --------------------------------------------------------------------------


def _short(value: str | None, n: int = 12) -> str:
    return value[:n] if value else "-"


def _when(iso: str | None) -> str:
    return iso.replace("T", " ").replace("Z", " UTC") if iso else "-"


def print_projects(projects: list[dict]) -> None:
    if not projects:
        out.print("No projects yet. Deploy one with: tee-daemon deploy ./folder")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "MODE", "RUNTIME", "VERSION", "COMMIT", "TREE", "CHANGED", "URL"):
        table.add_column(column, no_wrap=column in ("NAME", "URL", "TREE", "COMMIT"), overflow="fold")
    for p in projects:
        mode = p.get("mode", "-")
        table.add_row(
            _escape(p["name"]),
            "[green]attested[/]" if mode == "attested" else _escape(mode),
            _escape(p.get("runtime") or "-"),
            f"v{_escape(p.get('version'))}",
            _escape(_short(p.get("commit"))),
            _escape(_short(p.get("tree_sha1"))),
            _escape(_when(p.get("last_changed_at"))),
            _escape(p.get("url") or "-"),
        )
    out.print(table)


def print_versions(answer: dict) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("VERSION", "SERVING", "CREATED", "RUNTIME", "TREE", "COMMIT", "SOURCE"):
        table.add_column(column, no_wrap=True)
    for v in answer.get("versions", []):
        table.add_row(
            f"v{_escape(v.get('version'))}",
            "[green]serving[/]" if v.get("serving") else "-",
            _escape(_when(v.get("created_at"))),
            _escape(v.get("runtime") or "-"),
            _escape(_short(v.get("tree_sha1"))),
            _escape(_short(v.get("commit"))),
            _escape(v.get("source") or "-"),
        )
    out.print(table)


def _escape(value: Any) -> str:
    from rich.markup import escape

    return escape(str(value))


def _summary(verb: str, p: dict) -> None:
    name = _escape(p.get("name"))
    out.print(
        f"{verb} [bold]{name}[/] v{p.get('version')} ({_escape(p.get('runtime'))}, {p.get('mode')}), "
        f"tree {_short(p.get('tree_sha1'))}"
    )
    if p.get("url"):
        out.print(f"  app:    {_escape(p['url'])}")
    if p.get("mode") == "attested" and p.get("verification_url"):
        verification = _escape(p["verification_url"])
        out.print(f"  verify: {verification}")
    elif p.get("mode") == "attested" and p.get("url"):  # a daemon from before verification_url
        base = p["url"].rstrip("/").rsplit("/", 1)[0]
        out.print(f"  verify: {_escape(base)}/_api/verification/{name}")


def printer(command: str, args: argparse.Namespace) -> Callable[[Any], None]:
    def show(result: Any) -> None:
        if result is None:
            return
        if getattr(args, "json", False):
            print(json.dumps(result, indent=2))
        elif command == "ls":
            print_projects(result.get("projects", []))
        elif command == "versions":
            print_versions(result)
        elif command == "deploy":
            _summary("Deployed", result)
        elif command == "promote":
            _summary("Promoted", result)
            out.print("  Every change to it is now recorded in the transparency log.")
        elif command == "redeploy":
            if result.get("changed"):
                _summary("Redeployed", result)
            else:
                out.print(
                    f"{_escape(result.get('name'))} is unchanged (commit {_short(result.get('commit'))}): "
                    f"still serving v{result.get('version')}"
                )
        elif command == "rollback":
            _summary("Rolled back:", result)
        elif command == "rm":
            out.print(f"Deleted {_escape(result.get('deleted', args.name))}")
        else:
            print(json.dumps(result, indent=2))

    return show


# -- the argument parser ---------------------------------------------------------------


def add_commands(commands: argparse._SubParsersAction) -> None:
    def client_parser(name: str, help: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=help)
        p.add_argument("--url", help="daemon URL (TEE_DAEMON_URL; default the local daemon)")
        p.add_argument("--token", help="admin token (TEE_DAEMON_TOKEN; default the local token file)")
        if json_flag:
            p.add_argument("--json", action="store_true", help="print the API's JSON answer")
        return p

    p = client_parser("deploy", "deploy a folder (packed without .git and .gitignored files) or a git URL")
    p.add_argument("source", metavar="PATH_OR_GIT_URL")
    p.add_argument(
        "--name", help="project name: lowercase letters, digits and '-' (default: package.json's name, else the folder's)"
    )
    p.add_argument("--ref", help="git branch, tag or commit (git URLs only)")
    p.add_argument("--runtime", help="deno, bun, node, python, static, dockerfile or command (default: detected)")
    p.add_argument("--entry", help="entry file (default: the runtime's)")
    p.add_argument(
        "--command", help="the command that starts the app on $PORT, e.g. 'node index.js' (the command runtime)"
    )
    p.add_argument("--env", action="append", metavar="K=V", help="public configuration (repeatable)")
    p.add_argument("--secret", action="append", metavar="K=V", help="private value, never published (repeatable)")
    p.set_defaults(func=_run("deploy", cmd_deploy))

    client_parser("ls", "list projects").set_defaults(func=_run("ls", cmd_ls))

    p = client_parser("versions", "list a project's kept versions and which one serves")
    p.add_argument("name")
    p.set_defaults(func=_run("versions", cmd_versions))

    p = client_parser("promote", "make a project attested: publish its manifest, log and quote")
    p.add_argument("name")
    p.set_defaults(func=_run("promote", cmd_promote))

    p = client_parser("redeploy", "fetch the same git ref again; a new version if it changed")
    p.add_argument("name")
    p.set_defaults(func=_run("redeploy", cmd_redeploy))

    p = client_parser("rollback", "serve the previous (or a given) version again")
    p.add_argument("name")
    p.add_argument("--to", type=int, metavar="VERSION", help="the version to serve (default: the previous one)")
    p.set_defaults(func=_run("rollback", cmd_rollback))

    p = client_parser("rm", "delete a project and its data")
    p.add_argument("name")
    p.set_defaults(func=_run("rm", cmd_rm))

    p = client_parser("logs", "print a project's stdout and stderr", json_flag=False)
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until interrupted")
    p.set_defaults(func=_run("logs", cmd_logs))


def _run(command: str, action: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            printer(command, args)(action(args))
            return 0
        except ClientError as exc:
            err.print(f"[bold red]tee-daemon {command}:[/] {_escape(exc)}")
            return exc.code
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            return 0

    return run

