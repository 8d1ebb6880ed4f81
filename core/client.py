"""The admin API for humans: deploy, ls, promote, redeploy, rollback, rm, logs."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import httpx

from .settings import load_settings

EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_AUTH = 1, 2, 3


class ClientError(Exception):
    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


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
                    f"no admin token: pass --token, set TEE_DAEMON_TOKEN, or run on the daemon's machine ({path} unreadable)",
                    EXIT_AUTH,
                ) from None
    return url.rstrip("/"), token


def _call(args: argparse.Namespace, method: str, path: str, **kwargs) -> dict:
    url, token = _connection(args)
    try:
        response = httpx.request(
            method, url + path, headers={"Authorization": f"Bearer {token}"}, timeout=600, **kwargs
        )
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the daemon at {url}: {exc}", EXIT_UNREACHABLE) from None
    return _answer(response)


def _answer(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:500]}
    if response.status_code == 401:
        raise ClientError("the daemon refused the admin token (401)", EXIT_AUTH)
    if response.status_code >= 400:
        raise ClientError(f"refused ({response.status_code}): {body.get('detail', body)}")
    return body


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    result = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--{what} expects KEY=VALUE, got {key or item!r}")
        result[key] = value
    return result


def pack_folder(folder: Path) -> bytes:
    """A tar.gz of the folder, without .git."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if ".git" in rel.parts:
                continue
            tar.add(path, arcname=rel.as_posix(), recursive=False)
    return buffer.getvalue()


def cmd_deploy(args: argparse.Namespace) -> dict:
    manifest = {
        "name": args.name,
        "runtime": args.runtime,
        "entry": args.entry,
        "env": _pairs(args.env, "env") or None,
        "secrets": _pairs(args.secret, "secret") or None,
    }
    manifest = {k: v for k, v in manifest.items() if v is not None}
    target = args.source
    if Path(target).is_dir():
        data = pack_folder(Path(target))
        return _call(
            args,
            "POST",
            "/_api/projects",
            files={"manifest": (None, json.dumps(manifest)), "files": ("project.tar.gz", data)},
        )
    manifest.update(source=target, ref=args.ref)
    return _call(args, "POST", "/_api/projects", json={k: v for k, v in manifest.items() if v is not None})


def cmd_ls(args: argparse.Namespace) -> dict:
    return _call(args, "GET", "/_api/projects")


def print_result(result: dict) -> None:
    if "projects" in result:
        for p in result["projects"]:
            print(f"{p['name']:<24} {p['mode']:<9} {p['runtime']:<10} v{p['version']:<4} {p['tree_sha1'][:12]}  {p['url']}")
    else:
        print(json.dumps(result, indent=2))


def add_commands(commands: argparse._SubParsersAction) -> None:
    def client_parser(name: str, help: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help)
        p.add_argument("--url", help="daemon URL (TEE_DAEMON_URL; default the local daemon)")
        p.add_argument("--token", help="admin token (TEE_DAEMON_TOKEN; default the local token file)")
        return p

    p = client_parser("deploy", "deploy a folder or a git URL")
    p.add_argument("source", metavar="PATH_OR_GIT_URL")
    p.add_argument("--name", required=True)
    p.add_argument("--ref")
    p.add_argument("--runtime")
    p.add_argument("--entry")
    p.add_argument("--env", action="append", metavar="K=V")
    p.add_argument("--secret", action="append", metavar="K=V")
    p.set_defaults(func=_run(cmd_deploy))

    client_parser("ls", "list projects").set_defaults(func=_run(cmd_ls))
    for name, action in (("promote", "promote"), ("redeploy", "redeploy")):
        p = client_parser(name, f"{name} a project")
        p.add_argument("name")
        p.set_defaults(func=_run(lambda a, action=action: _call(a, "POST", f"/_api/projects/{a.name}/{action}")))
    p = client_parser("rollback", "roll back to the previous or a given version")
    p.add_argument("name")
    p.add_argument("--to", type=int)
    p.set_defaults(
        func=_run(lambda a: _call(a, "POST", f"/_api/projects/{a.name}/rollback", json={"version": a.to}))
    )
    p = client_parser("rm", "delete a project")
    p.add_argument("name")
    p.set_defaults(func=_run(lambda a: _call(a, "DELETE", f"/_api/projects/{a.name}")))


def _run(command):
    def run(args: argparse.Namespace) -> int:
        try:
            print_result(command(args))
            return 0
        except ClientError as exc:
            print(f"tee-daemon: {exc}", file=sys.stderr)
            return exc.code

    return run
