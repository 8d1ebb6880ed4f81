"""Operating the daemon from the command line, as a user would: `tee-daemon` from the
PATH of a fresh login shell (clean environment), against a real daemon.

Covers the launcher `make install` puts on the PATH, usage errors' exit code (distinct
from "daemon unreachable"), the name a deploy takes from its folder or package.json, the
live build and start output of a deploy, and the kept versions (API and CLI).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx

from harness import REPO, TOKEN, free_port

HOME = os.environ.get("HOME", "/root")


def shell(script: str, daemon=None, cwd: Path | None = None, timeout: float = 300, **env: str):
    """`bash -lc script` with a clean environment: what a new terminal has, plus the
    daemon's URL and token as the README says to give them."""
    clean = {"HOME": HOME, "LANG": "C.UTF-8", "TERM": "dumb"}
    if daemon is not None:
        clean.update(TEE_DAEMON_URL=daemon.url, TEE_DAEMON_TOKEN=TOKEN)
    clean.update(env)
    return subprocess.run(
        ["/bin/bash", "-lc", script], env=clean, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_make_install_puts_the_cli_on_the_path():
    """`make install` (the `launcher` step) links tee-daemon into a PATH folder: a new
    login shell with nothing set up finds it and runs this checkout's CLI."""
    found = ok(shell("command -v tee-daemon")).strip()
    assert found, "tee-daemon is not on a login shell's PATH: run `make install`"
    assert Path(found).resolve() == (REPO / ".venv" / "bin" / "tee-daemon").resolve()
    version = ok(shell("tee-daemon --version"))
    assert re.fullmatch(r"tee-daemon \d+\.\d+\.\S+\n", version), version


def test_launcher_script_into_a_chosen_folder(tmp_path):
    bin_dir = tmp_path / "bin"
    ok(shell(f"bash {REPO}/scripts/install-launcher.sh", TEE_DAEMON_BIN_DIR=str(bin_dir)))
    link = bin_dir / "tee-daemon"
    assert link.is_symlink() and link.resolve() == (REPO / ".venv" / "bin" / "tee-daemon").resolve()
    assert ok(shell(f"PATH={bin_dir}:/usr/bin:/bin; tee-daemon --version")).startswith("tee-daemon ")
    # A file of someone else's by that name is not replaced.
    link.unlink()
    link.write_text("#!/bin/sh\necho mine\n")
    again = shell(f"bash {REPO}/scripts/install-launcher.sh", TEE_DAEMON_BIN_DIR=str(bin_dir))
    assert again.returncode == 0 and "left as it is" in again.stderr
    assert link.read_text() == "#!/bin/sh\necho mine\n"


def test_exit_codes_match_the_readme(daemon, tmp_path):
    readme = (REPO / "README.md").read_text()
    assert "1 refused, 2 daemon unreachable, 3 bad token, 4 usage error" in readme

    for line in ("tee-daemon", "tee-daemon no-such-command", "tee-daemon deploy", "tee-daemon versions",
                 "tee-daemon rollback site --to notanumber", "tee-daemon deploy ./x --no-such-flag"):  # fmt: skip
        usage = shell(line, daemon)
        assert usage.returncode == 4, (line, usage.returncode, usage.stderr)
        assert "usage:" in usage.stderr and "Traceback" not in usage.stderr

    down = shell("tee-daemon ls", TEE_DAEMON_URL=f"http://127.0.0.1:{free_port()}", TEE_DAEMON_TOKEN=TOKEN)
    assert down.returncode == 2 and "cannot reach the daemon" in down.stderr

    bad = shell("tee-daemon ls", TEE_DAEMON_URL=daemon.url, TEE_DAEMON_TOKEN="wrong-token")
    assert bad.returncode == 3

    refused = shell("tee-daemon versions no-such-project-here", daemon)
    assert refused.returncode == 1 and "404" in refused.stderr

    # A source that is neither a folder nor a git URL is the user's mistake, not a refusal.
    missing = shell("tee-daemon deploy ./no-such-folder --name x", daemon)
    assert missing.returncode == 4 and "neither a folder nor a git URL" in missing.stderr


def test_deploy_name_defaults_from_the_folder_or_package_json(daemon, name, tmp_path):
    folder = write(tmp_path / name, {"index.html": "<h1>named by its folder</h1>"})
    result = shell(f"tee-daemon deploy ./{name}", daemon, cwd=tmp_path)
    out = ok(result)
    assert f"project name: {name}" in result.stderr
    assert daemon.get(f"/{name}/").text == "<h1>named by its folder</h1>"
    assert out.strip().splitlines()[-1].strip().endswith(f"{daemon.url}/{name}/"), out

    # An invalid folder name, but package.json names the project.
    from_package = f"{name}-pkg"
    write(tmp_path / "My_App", {"package.json": json.dumps({"name": from_package}), "index.html": "pkg"})
    ok(shell("tee-daemon deploy ./My_App --runtime static", daemon, cwd=tmp_path))
    assert daemon.get(f"/{from_package}/").text == "pkg"

    # Neither is valid: a usage error that says what to do, nothing deployed.
    write(tmp_path / "Bad_Name", {"index.html": "x"})
    bad = shell("tee-daemon deploy ./Bad_Name", daemon, cwd=tmp_path)
    assert bad.returncode == 4 and "--name" in bad.stderr
    assert folder.exists()


def test_deploy_shows_build_and_start_output_as_it_happens(daemon, name, tmp_path):
    """The app prints a line, then takes a few seconds before it serves: the line is on
    the CLI's stderr while the deploy is still waiting, and the CLI ends with the URL."""
    marker = f"warming-up-{name}"
    write(
        tmp_path / "app",
        {
            "app.py": (
                "import sys, time\n"
                f"print('{marker}', flush=True)\n"
                "time.sleep(5)\n"
                "async def handle(method, path, headers, body, env):\n"
                "    return 200, {}, b'ready'\n"
            ),
            "requirements.txt": "",
        },
    )
    clean = {"HOME": HOME, "LANG": "C.UTF-8", "TEE_DAEMON_URL": daemon.url, "TEE_DAEMON_TOKEN": TOKEN}
    proc = subprocess.Popen(
        ["/bin/bash", "-lc", f"tee-daemon deploy ./app --name {name}"],
        cwd=tmp_path, env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: dict[str, float] = {}
    lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if marker in line and "marker" not in seen:
                seen["marker"] = time.monotonic()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        stdout = proc.stdout.read()  # type: ignore[union-attr]
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = time.monotonic()
    reader.join(10)
    assert proc.returncode == 0, "".join(lines)
    assert "marker" in seen, f"the start output never showed: {''.join(lines)}"
    # Printed while the deploy was still waiting for the app (it sleeps 5 s).
    assert ended - seen["marker"] > 2.0, ended - seen["marker"]
    assert stdout.strip().splitlines()[-1].strip().endswith(f"{daemon.url}/{name}/"), stdout
    assert daemon.get(f"/{name}/").text == "ready"


def test_versions_api_and_cli(daemon, name):
    for text in ("one", "two", "three"):
        r = daemon.deploy_files(name, {"index.html": text})
        assert r.status_code == 201, r.text
    with daemon.client() as c:
        assert c.post(f"/_api/projects/{name}/rollback", json={"version": 1}).status_code == 200
        answer = c.get(f"/_api/projects/{name}/versions").json()
        project = c.get(f"/_api/projects/{name}").json()
    assert answer["current"] == 1
    versions = answer["versions"]
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert [v["serving"] for v in versions] == [False, False, True]
    assert len({v["tree_sha1"] for v in versions}) == 3
    serving = versions[-1]
    assert serving["tree_sha1"] == project["tree_sha1"] and serving["tree_sha256"] == project["tree_sha256"]
    assert all(v["runtime"] == "static" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", v["created_at"]) for v in versions)

    table = ok(shell(f"tee-daemon versions {name}", daemon))
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
    assert set(rows) == {"v1", "v2", "v3"}
    assert "serving" in rows["v1"] and "serving" not in rows["v3"]
    assert serving["tree_sha1"][:12] in rows["v1"]
    as_json = json.loads(ok(shell(f"tee-daemon versions {name} --json", daemon)))
    assert as_json == answer

    # Admin only; an unknown project is a 404 that says so.
    assert httpx.get(f"{daemon.url}/_api/projects/{name}/versions").status_code == 401
    missing = daemon.get(f"/_api/projects/{name}-nope/versions", admin=True)
    assert missing.status_code == 404 and "no project named" in missing.json()["detail"]


def test_output_stream_is_admin_only_and_checks_the_name(daemon):
    assert httpx.get(f"{daemon.url}/_api/projects/anything/output").status_code == 401
    bad = daemon.get("/_api/projects/Not_A_Name/output", admin=True)
    assert bad.status_code == 400 and "invalid project name" in bad.json()["detail"]
    # A name nobody has deployed yet opens (its first deploy is what it waits for), and
    # leaves no folder behind.
    with daemon.client() as c, c.stream("GET", "/_api/projects/not-deployed-yet/output") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert not (daemon.data_dir / "projects" / "not-deployed-yet").exists()


def test_deploy_dot_and_git_urls_take_their_names(daemon, name, tmp_path):
    folder = write(tmp_path / f"{name}-here", {"index.html": "dot"})
    ok(shell("tee-daemon deploy .", daemon, cwd=folder))
    assert daemon.get(f"/{name}-here/").text == "dot"

    repo = write(tmp_path / f"{name}-repo", {"index.html": "from git"})
    git_env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "T",
               "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.com"}
    ok(shell("git init -q -b main && git add . && git commit -qm one", cwd=repo, **git_env))
    result = shell(f"tee-daemon deploy file://{repo}", daemon)
    ok(result)
    assert f"project name: {name}-repo" in result.stderr
    assert daemon.get(f"/{name}-repo/").text == "from git"
