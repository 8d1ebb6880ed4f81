"""The process runtimes (deno, bun, node, python) through the real daemon over HTTP."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from harness import TOKEN

APPS = Path(__file__).parent / "apps"
ENV = {"GREETING": "hi there"}
SECRETS = {"API_KEY": "s3cret-value"}
# Everything a project process may find in its environment besides its manifest env.
ALLOWED_ENV = {"DATA_DIR", "HOME", "PORT", "LISTEN_UNIX", "HOST", "PATH", "LANG", "TMPDIR", "PWD", "SHLVL", "_"}
ALLOWED_ENV |= {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "DENO_DIR", "NO_COLOR", "DENO_NO_UPDATE_CHECK"}
ALLOWED_ENV |= {"BUN_RUNTIME_TRANSPILER_CACHE_PATH", "DO_NOT_TRACK"}

SAMPLES = {
    "deno-hello": "deno",
    "bun-hello": "bun",
    "node-cjs": "node",
    "node-esm": "node",
    "python-asgi": "python",
    "python-handle": "python",
}


def app_files(sample: str) -> dict[str, bytes]:
    root = APPS / sample
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def deploy_ok(daemon, name: str, files: dict, **manifest) -> dict:
    r = daemon.deploy_files(name, files, **manifest)
    assert r.status_code == 201, r.text
    return r.json()


def get_until(daemon, path: str, want: int = 200, timeout: float = 15) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = daemon.get(path)
            if r.status_code == want:
                return r
        except httpx.HTTPError:
            r = None
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: no {want} within {timeout}s (last: {r and r.status_code} {r and r.text[:300]})")
        time.sleep(0.1)


def build_log(daemon, name: str) -> str:
    return (daemon.data_dir / "projects" / name / "logs" / "build.log").read_text()


# -- the handler contract -------------------------------------------------------------


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_handler_contract(daemon, name, sample):
    project = deploy_ok(daemon, name, app_files(sample), env=ENV, secrets=SECRETS)
    assert project["runtime"] == SAMPLES[sample]  # Autodetected from the entry file.

    r = daemon.get(f"/{name}/some/path?q=3&x=a%20b")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["runtime"] == SAMPLES[sample]
    assert body["path"] == "/some/path"
    assert body["query"] == "?q=3&x=a%20b"
    assert body["env"]["GREETING"] == "hi there"
    assert body["env"]["API_KEY"] == "s3cret-value"  # Secrets merged into env...
    assert "API_KEY" in body["environ"]  # ...and in the process environment.
    data_dir = daemon.data_dir / "projects" / name / "volume" / "data"
    assert Path(body["DATA_DIR"]) == data_dir
    assert Path(body["dataDir"]) == data_dir
    # Nothing of the daemon's environment, above all not its admin token.
    assert "TEE_DAEMON_TOKEN" not in body["environ"]
    assert TOKEN not in r.text
    stray = set(body["environ"]) - ALLOWED_ENV - set(ENV) - set(SECRETS)
    assert not stray, f"unexpected variables in the project's environment: {stray}"

    # The data dir is writable and survives a redeploy.
    assert daemon.get(f"/{name}/count").json() == {"count": 1}
    assert daemon.get(f"/{name}/count").json() == {"count": 2}
    assert deploy_ok(daemon, name, app_files(sample), env=ENV, secrets=SECRETS)["version"] == 2
    assert daemon.get(f"/{name}/count").json() == {"count": 3}


def test_python_handle_details(daemon, name):
    deploy_ok(daemon, name, app_files("python-handle"))
    r = daemon.get(f"/{name}/p?q=3")
    assert r.headers["x-sample"] == "handle"
    assert r.json()["raw_path"] == "/p?q=3"
    with daemon.client() as c:
        r = c.post(f"/{name}/echo", content=b"payload")
    assert r.json()["method"] == "POST" and r.json()["body"] == "payload"


def test_deno_json_imports(daemon, name):
    project = deploy_ok(daemon, name, app_files("deno-imports"))
    assert project["runtime"] == "deno"
    assert daemon.get(f"/{name}/?who=tee").text == "hello tee"


# -- dependencies -------------------------------------------------------------------------


def test_npm_dependencies_installed_and_cached(daemon, name):
    files = app_files("node-deps")
    deploy_ok(daemon, name, files)
    body = daemon.get(f"/{name}/").json()
    assert body["five"] is True and body["word"] is False
    assert "/cache/node/deps/" in body["resolved"]
    assert build_log(daemon, name).count("installing dependencies") == 1

    # A code-only change reuses the cached install.
    files["index.js"] = files["index.js"].replace(b"five: isNumber", b"five2: isNumber")
    deploy_ok(daemon, name, files)
    assert daemon.get(f"/{name}/").json()["five2"] is True
    log = build_log(daemon, name)
    assert log.count("installing dependencies") == 1
    assert log.count("dependencies from cache") == 1


def test_pip_requirements_in_own_venv_and_cached(daemon, name):
    files = app_files("python-deps")
    deploy_ok(daemon, name, files)
    doc, module_file, prefix = daemon.get(f"/{name}/").text.splitlines()
    assert doc == "a = 1"
    assert "/cache/python/deps/" in module_file and "/cache/python/deps/" in prefix
    files["app.py"] += b"\n# a code-only change\n"
    deploy_ok(daemon, name, files)
    assert daemon.get(f"/{name}/").status_code == 200
    log = build_log(daemon, name)
    assert log.count("installing dependencies") == 1
    assert log.count("dependencies from cache") == 1


# -- autodetection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files, runtime",
    [
        ({"server.ts": "export default () => new Response('d')", "index.js": "module.exports=()=>{}"}, "deno"),
        ({"index.ts": "export default () => new Response('b')", "index.js": "module.exports=()=>{}"}, "bun"),
        ({"index.js": "module.exports=(q,s)=>s.end('n')", "app.py": "x = 1"}, "node"),
        ({"app.py": "async def handle(m, p, h, b, e):\n    return 200, {}, b'p'\n", "index.html": "x"}, "python"),
    ],
)
def test_autodetection(daemon, name, files, runtime):
    project = deploy_ok(daemon, name, files)
    assert project["runtime"] == runtime
    assert daemon.get(f"/{name}/").text == runtime[0]


# -- side by side and isolation -------------------------------------------------------------


def test_two_projects_of_one_runtime(daemon, name):
    a, b = f"{name}-a", f"{name}-b"
    deploy_ok(daemon, a, app_files("deno-hello"), env={"GREETING": "from a"})
    deploy_ok(daemon, b, app_files("deno-hello"), env={"GREETING": "from b"})
    for _ in range(3):
        assert daemon.get(f"/{a}/").json()["env"]["GREETING"] == "from a"
        assert daemon.get(f"/{b}/").json()["env"]["GREETING"] == "from b"
    assert daemon.get(f"/{a}/count").json() == {"count": 1}
    assert daemon.get(f"/{b}/count").json() == {"count": 1}


def test_a_project_cannot_read_another_projects_data(daemon, name):
    assert shutil.which("bwrap"), "bubblewrap is installed by scripts/setup-system.sh"
    facts = daemon.get("/_api/substrate").json()["isolation"]
    assert facts["kind"] == "bubblewrap"
    victim, snoop = f"{name}-v", f"{name}-s"
    deploy_ok(daemon, victim, app_files("python-handle"))
    assert daemon.get(f"/{victim}/count").json() == {"count": 1}
    secret_file = daemon.data_dir / "projects" / victim / "volume" / "data" / "count.txt"
    assert secret_file.exists()

    deploy_ok(daemon, snoop, app_files("python-handle"))
    for target in (secret_file, daemon.data_dir / "admin-token", daemon.data_dir / "projects" / victim / "project.json"):
        r = daemon.get(f"/{snoop}/read", params={"path": str(target)})
        assert r.status_code == 403, (target, r.text)
    # Its own data is readable; so is its tree.
    own = daemon.data_dir / "projects" / snoop / "volume" / "data"
    daemon.get(f"/{snoop}/count")
    assert daemon.get(f"/{snoop}/read", params={"path": str(own / "count.txt")}).text == "1"

    # Deno's permission flags say the same thing independently of the sandbox.
    deno = f"{name}-d"
    deploy_ok(daemon, deno, app_files("deno-hello"))
    r = daemon.get(f"/{deno}/read", params={"path": str(secret_file)})
    assert r.status_code == 403 and ("NotCapable" in r.text or "PermissionDenied" in r.text or "NotFound" in r.text)


# -- failures, crashes, logs ----------------------------------------------------------------

BROKEN = {
    "deno": {"server.ts": "throw new Error('boom at import time');\nexport default () => new Response('x');"},
    "node": {"index.js": "throw new Error('boom at import time');"},
    "python": {"app.py": "raise RuntimeError('boom at import time')\n"},
    "bun": {"index.ts": "throw new Error('boom at import time');\nexport default () => new Response('x');"},
}
GOOD = {"deno": "deno-hello", "node": "node-cjs", "python": "python-handle", "bun": "bun-hello"}


@pytest.mark.parametrize("runtime", sorted(BROKEN))
def test_import_time_crash_keeps_previous_version(daemon, name, runtime):
    deploy_ok(daemon, name, app_files(GOOD[runtime]))
    r = daemon.deploy_files(name, BROKEN[runtime])
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert "boom at import time" in detail
    assert r.json()["status_code"] == r.status_code
    # The previous version keeps serving.
    body = daemon.get(f"/{name}/x").json()
    assert body["runtime"] == runtime and body["path"] == "/x"
    with daemon.client() as c:
        assert c.get(f"/_api/projects/{name}").json()["version"] == 1


def test_entry_without_handler_is_a_clear_error(daemon, name):
    r = daemon.deploy_files(name, {"app.py": "x = 1\n"})
    assert r.status_code == 422, r.text
    assert "neither an ASGI `app` nor" in r.json()["detail"]


@pytest.mark.parametrize("sample", ["deno-hello", "node-esm", "python-asgi", "bun-hello"])
def test_restart_after_crash(daemon, name, sample):
    deploy_ok(daemon, name, app_files(sample))
    assert daemon.get(f"/{name}/count").json() == {"count": 1}
    try:
        daemon.get(f"/{name}/crash")
    except httpx.HTTPError:
        pass  # The process may die before answering.
    time.sleep(0.1)
    r = get_until(daemon, f"/{name}/count", timeout=10)
    assert r.json()["count"] >= 2
    with daemon.client() as c:
        logs = c.get(f"/_api/projects/{name}/logs").text
    assert "exit code 3" in logs and "restarting" in logs


def test_logs_plain_and_follow(daemon, name):
    deploy_ok(daemon, name, app_files("node-cjs"))
    daemon.get(f"/{name}/first-hit")
    with daemon.client() as c:
        r = c.get(f"/_api/projects/{name}/logs")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        assert "hit /first-hit" in r.text
        assert c.get(f"/_api/projects/{name}/logs", params={"lines": 1}).text.count("\n") <= 1
        # Anonymous and unknown are refused.
        assert daemon.get(f"/_api/projects/{name}/logs", admin=False).status_code == 401
        assert c.get("/_api/projects/no-such-project-x/logs").status_code == 404

        seen = b""
        with c.stream("GET", f"/_api/projects/{name}/logs", params={"follow": 1}) as stream:
            assert stream.status_code == 200
            chunks = stream.iter_bytes()
            deadline = time.monotonic() + 15
            hit_sent = False
            while b"hit /while-following" not in seen:
                assert time.monotonic() < deadline, seen[-500:]
                if not hit_sent and b"hit /first-hit" in seen:
                    daemon.get(f"/{name}/while-following")
                    hit_sent = True
                seen += next(chunks)
    assert daemon.get(f"/{name}/still-up").status_code == 200


def test_daemon_restart_serves_projects_again(fresh_daemon):
    daemon = fresh_daemon()
    for sample in ("deno-hello", "python-handle", "node-esm"):
        deploy_ok(daemon, sample, app_files(sample))
        assert daemon.get(f"/{sample}/count").json() == {"count": 1}
    daemon.stop()
    daemon = fresh_daemon()
    for sample in ("deno-hello", "python-handle", "node-esm"):
        assert daemon.get(f"/{sample}/count").json() == {"count": 2}
    # A crashed daemon takes its project processes with it; the next start serves them.
    daemon.kill()
    daemon = fresh_daemon()
    for sample in ("deno-hello", "python-handle", "node-esm"):
        assert daemon.get(f"/{sample}/count").json() == {"count": 3}


def test_substrate_reports_runtime_versions(daemon):
    facts = daemon.get("/_api/substrate").json()
    for runtime in ("deno", "bun", "node", "python"):
        assert facts["runtimes"][runtime]["version"], runtime
    assert facts["isolation"]["kind"] in ("bubblewrap", "none")



def test_percent_encoded_name_and_path_reach_the_handler(daemon, name):
    deploy_ok(daemon, name, app_files("deno-hello"))
    encoded = "".join(f"%{ord(c):02X}" for c in name)
    body = daemon.get(f"/{encoded}/a%20b/c?x=1").json()
    assert body["path"] == "/a%20b/c" and body["query"] == "?x=1"
    assert daemon.get(f"/{name}/a%20b/c").json()["path"] == "/a%20b/c"
