"""The human CLI client: the real `tee-daemon` console script against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness import TOKEN, free_port

CLI = str(Path(sys.executable).parent / "tee-daemon")
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "T",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "T",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def run(daemon, *args: str, token: str | None = None, env: dict | None = None, timeout: float = 300):
    full = {k: v for k, v in os.environ.items() if not k.startswith("TEE_DAEMON_")}
    full.update(TEE_DAEMON_URL=daemon.url if daemon else "http://127.0.0.1:9", TEE_DAEMON_TOKEN=token or TOKEN)
    full.update(GIT_ENV)
    full.update(env or {})
    return subprocess.run([CLI, *args], env=full, capture_output=True, text=True, timeout=timeout)


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env={**os.environ, **GIT_ENV}
    ).stdout


PROJECT = {
    "index.html": "<h1>home</h1>",
    "keep.txt": "kept",
    ".gitignore": "secret.txt\nbuild/\n*.log\n!important.log\n",
    "secret.txt": "do not upload",
    "build/out.js": "generated",
    "debug.log": "noise",
    "important.log": "kept too",
    "sub/.gitignore": "local-only\n",
    "sub/local-only": "nope",
    "sub/page.html": "sub page",
    ".git/config": "not a real repo",
}


def check_packed(daemon, name: str) -> None:
    with httpx.Client(base_url=daemon.url) as c:
        for path in ("index.html", "keep.txt", "important.log", "sub/page.html", ".gitignore"):
            assert c.get(f"/{name}/{path}").status_code == 200, path
        for path in ("secret.txt", "build/out.js", "debug.log", "sub/local-only", ".git/config"):
            assert c.get(f"/{name}/{path}").status_code == 404, path


@pytest.mark.parametrize("how", ["plain-folder", "git-work-tree", "no-git-on-path"])
def test_deploy_a_folder_skips_git_and_ignored_files(daemon, name, tmp_path, how):
    folder = write(tmp_path / "site", PROJECT)
    env = {}
    if how == "git-work-tree":
        (folder / ".git" / "config").unlink()
        (folder / ".git").rmdir()
        git(folder, "init", "-q")
        git(folder, "add", "index.html")
        git(folder, "commit", "-qm", "first")
    elif how == "no-git-on-path":
        env["PATH"] = str(Path(sys.executable).parent)
    result = run(daemon, "deploy", str(folder), "--name", name, "--env", "GREETING=hi", env=env)
    out = ok(result)
    assert f"Deployed {name} v1 (static, dev)" in out
    assert f"{daemon.url}/{name}/" in out
    check_packed(daemon, name)
    manifest = daemon.get(f"/_api/projects/{name}", admin=True).json()
    assert manifest["env"] == {"GREETING": "hi"}


def test_deploy_from_git_then_redeploy_rollback_promote_ls_rm(daemon, name, tmp_path):
    repo = write(tmp_path / "repo", {"index.html": "one"})
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    url = f"file://{repo}"

    out = ok(run(daemon, "deploy", url, "--name", name, "--ref", "main"))
    assert f"Deployed {name} v1" in out
    assert "unchanged" in ok(run(daemon, "redeploy", name))

    (repo / "index.html").write_text("two")
    git(repo, "commit", "-qam", "two")
    assert f"Redeployed {name} v2" in ok(run(daemon, "redeploy", name))
    assert httpx.get(f"{daemon.url}/{name}/").text == "two"

    assert f"Rolled back: {name} v1" in ok(run(daemon, "rollback", name))
    assert httpx.get(f"{daemon.url}/{name}/").text == "one"
    assert f"{name} v2" in ok(run(daemon, "rollback", name, "--to", "2"))

    out = ok(run(daemon, "promote", name))
    assert f"Promoted {name} v2" in out and "attested" in out
    assert f"{daemon.url}/_api/verification/{name}" in out
    again = run(daemon, "promote", name)
    assert again.returncode == 1 and "already attested" in again.stderr

    table = ok(run(daemon, "ls"))
    header = table.splitlines()[0].split()
    assert header[:4] == ["NAME", "MODE", "RUNTIME", "VERSION"]
    row = next(line for line in table.splitlines() if line.startswith(name + " "))
    assert row.split()[1:4] == ["attested", "static", "v2"]
    listed = json.loads(ok(run(daemon, "ls", "--json")))
    assert any(p["name"] == name and p["mode"] == "attested" for p in listed["projects"])

    assert f"Deleted {name}" in ok(run(daemon, "rm", name))
    gone = run(daemon, "rm", name)
    assert gone.returncode == 1 and "404" in gone.stderr


def test_logs_and_follow(daemon, name, tmp_path):
    app = (
        "import sys\n"
        "print('booted', flush=True)\n"
        "async def handle(method, path, headers, body, env):\n"
        "    print('served', path, flush=True)\n"
        "    return 200, {'content-type': 'text/plain'}, b'ok'\n"
    )
    folder = write(tmp_path / "app", {"app.py": app})
    ok(run(daemon, "deploy", str(folder), "--name", name))
    assert httpx.get(f"{daemon.url}/{name}/first").text == "ok"
    deadline = time.monotonic() + 20
    while "served /first" not in (out := ok(run(daemon, "logs", name))) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "served /first" in out

    env = {k: v for k, v in os.environ.items() if not k.startswith("TEE_DAEMON_")}
    env.update(TEE_DAEMON_URL=daemon.url, TEE_DAEMON_TOKEN=TOKEN)
    follower = subprocess.Popen([CLI, "logs", name, "-f"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert httpx.get(f"{daemon.url}/{name}/second").text == "ok"
        seen = b""
        deadline = time.monotonic() + 20
        os.set_blocking(follower.stdout.fileno(), False)
        while b"served /second" not in seen and time.monotonic() < deadline:
            chunk = follower.stdout.read()
            seen += chunk or b""
            time.sleep(0.1)
        assert b"served /second" in seen
        assert follower.poll() is None, "logs -f keeps following"
    finally:
        follower.terminate()
        follower.wait(10)


def test_clear_errors_and_exit_codes(daemon, name, tmp_path):
    folder = write(tmp_path / "site", {"index.html": "x"})

    down = run(None, "ls", env={"TEE_DAEMON_URL": f"http://127.0.0.1:{free_port()}"})
    assert down.returncode == 2
    assert "cannot reach the daemon" in down.stderr and "Traceback" not in down.stderr

    bad = run(daemon, "ls", token="wrong-token")
    assert bad.returncode == 3 and "refused the admin token" in bad.stderr

    # A wrong command line is a usage error (4), never "unreachable" (2).
    for argv in (["deploy"], ["no-such-command"], ["rollback", name, "--to", "x"], ["ls", "--no-such-flag"]):
        usage = run(daemon, *argv)
        assert usage.returncode == 4 and "usage:" in usage.stderr, (argv, usage.returncode, usage.stderr)

    refused = run(daemon, "deploy", str(folder), "--name", "Bad_Name")
    assert refused.returncode == 1 and "invalid project name" in refused.stderr

    broken = write(tmp_path / "broken", {"app.py": "raise SystemExit('broken on purpose')\n"})
    failed = run(daemon, "deploy", str(broken), "--name", name)
    assert failed.returncode == 1 and "refused (4" in failed.stderr, failed.stderr

    # What the command line itself gets wrong, caught before any request: usage errors too.
    missing = run(daemon, "deploy", str(tmp_path / "nope"), "--name", name)
    assert missing.returncode == 4 and "neither a folder nor a git URL" in missing.stderr

    pair = run(daemon, "deploy", str(folder), "--name", name, "--env", "NOEQUALS")
    assert pair.returncode == 4 and "KEY=VALUE" in pair.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "nothing to deploy" in run(daemon, "deploy", str(empty), "--name", name).stderr

    unknown = run(daemon, "promote", name + "-missing")
    assert unknown.returncode == 1 and "404" in unknown.stderr


def test_pattern_matcher_without_git(tmp_path):
    from tee_daemon.cli.client import _PatternIgnore

    write(tmp_path, {".gitignore": "# comment\n*.pyc\n/top-only\nnode_modules/\n!keep.pyc\ndocs/**/*.tmp\n"})
    m = _PatternIgnore(tmp_path)
    assert m.ignored(["a.pyc", "x/b.pyc", "keep.pyc", "top-only", "x/top-only", "node_modules/", "node_modules"]) == {
        "a.pyc", "x/b.pyc", "top-only", "node_modules/",
    }  # fmt: skip
    assert m.ignored(["docs/a/b.tmp"]) == {"docs/a/b.tmp"}
