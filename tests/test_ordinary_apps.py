"""Ordinary apps (SPEC 11): the command runtime (manifest `command`, project.json,
Procfile) and WSGI apps, each deployed through the real daemon with its real
dependencies from the package registry, and called over HTTP."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from test_runtimes import app_files, build_log, deploy_ok, get_until

START_TIMEOUT = 8  # seconds: the "never listens" case waits this long, not the default 30


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """A daemon of this module's own with a short start timeout (the never-listening test)."""
    from harness import DaemonProcess

    proc = DaemonProcess(
        tmp_path_factory.mktemp("ordinary") / "data", env={"TEE_DAEMON_START_TIMEOUT": str(START_TIMEOUT)}
    ).start()
    yield proc
    proc.stop()


def test_express_with_its_lockfile_from_the_registry(daemon, name):
    project = deploy_ok(daemon, name, app_files("express-hello"), command="node index.js")
    assert project["runtime"] == "command"
    assert project["command"] == "node index.js"
    r = daemon.get(f"/{name}/")
    assert r.status_code == 200 and r.text == "Hello World from Express!"
    assert "express" in r.headers.get("x-powered-by", "").lower()
    r = daemon.get(f"/{name}/users/42?x=1")
    assert r.json() == {"id": "42", "query": {"x": "1"}}
    with daemon.client(admin=False) as c:
        r = c.post(f"/{name}/echo", json={"a": [1, 2]})
    assert r.status_code == 200 and r.json() == {"received": {"a": [1, 2]}}
    assert "added 72 packages" in build_log(daemon, name)  # express's tree, from the lockfile


def test_express_as_its_tutorial_wrote_it_runs_its_start_script(daemon, name):
    """No command, no Procfile: package.json's `start` script is the command (Heroku's
    order), so the Express sample deploys unchanged."""
    project = deploy_ok(daemon, name, app_files("express-hello"))
    assert project["runtime"] == "command" and project["command"] is None
    r = daemon.get(f"/{name}/users/7")
    assert r.status_code == 200 and r.json() == {"id": "7", "query": {}}
    assert "express" in r.headers.get("x-powered-by", "").lower()


def test_express_hello_world_verbatim_listens_where_the_daemon_expects(daemon, name):
    """expressjs.com's hello world as written: `app.listen(3000)`, no start script, no
    Procfile. The node runtime takes index.js; its server listens where the daemon
    expects the project (the port it named is not used: in the sandbox nothing else could
    reach it)."""
    files = app_files("express-hello")
    package = json.loads(files["package.json"])
    package.pop("scripts")
    files["package.json"] = json.dumps(package).encode()
    files["index.js"] = files["index.js"].replace(b"process.env.PORT || 3000", b"3000")
    project = deploy_ok(daemon, name, files)
    assert project["runtime"] == "node"
    r = daemon.get(f"/{name}/users/3")
    assert r.status_code == 200 and r.json() == {"id": "3", "query": {}}


def test_node_entry_that_neither_exports_nor_listens_is_refused_with_the_reason(daemon, name):
    r = daemon.deploy_files(name, {"index.js": b"console.log('nothing to serve')\n"})
    assert r.status_code == 422, r.text
    assert "start an http server" in r.json()["detail"]
    assert daemon.get(f"/{name}/").status_code == 404


def test_fastapi_main_py_as_its_tutorial_wrote_it(daemon, name):
    """FastAPI's tutorial: `app = FastAPI()` in main.py, nothing else. The python runtime
    finds main.py and serves its ASGI app (granian, not uvicorn)."""
    project = deploy_ok(daemon, name, app_files("fastapi-hello"))
    assert project["runtime"] == "python" and project["entry"] == "main.py"
    assert daemon.get(f"/{name}/items/5?q=z").json() == {"item_id": 5, "q": "z"}


def test_hono_from_its_procfile(daemon, name):
    project = deploy_ok(daemon, name, app_files("hono-hello"))
    assert project["runtime"] == "command" and project["command"] is None  # The tree's Procfile decides.
    assert daemon.get(f"/{name}/").text == "Hello Hono!"
    assert daemon.get(f"/{name}/json/ada").json() == {"hello": "ada"}


def test_flask_served_by_gunicorn_from_its_procfile(daemon, name):
    project = deploy_ok(daemon, name, app_files("flask-hello"))
    assert project["runtime"] == "command"
    r = daemon.get(f"/{name}/")
    assert r.status_code == 200 and "Hello, World from Flask!" in r.text
    assert "gunicorn" in r.headers.get("server", "")
    with daemon.client(admin=False) as c:
        r = c.post(f"/{name}/items/7?q=x", content=b"payload")
    assert r.json() == {"id": 7, "method": "POST", "q": "x", "body": "payload"}


def test_flask_as_wsgi_in_the_python_runtime(daemon, name):
    files = app_files("flask-hello")
    files.pop("Procfile")
    project = deploy_ok(daemon, name, files)
    assert project["runtime"] == "python"
    r = daemon.get(f"/{name}/")
    assert r.status_code == 200 and "Hello, World from Flask!" in r.text
    assert "gunicorn" not in r.headers.get("server", "")
    with daemon.client(admin=False) as c:
        r = c.post(f"/{name}/items/9?q=%C3%A9", content="é".encode())
    assert r.json() == {"id": 9, "method": "POST", "q": "é", "body": "é"}
    assert daemon.get(f"/{name}/missing").status_code == 404


def test_fastapi_with_uvicorn_from_project_json(daemon, name):
    files = app_files("fastapi-hello")
    files["project.json"] = json.dumps({"command": "uvicorn main:app --host $HOST --port $PORT"}).encode()
    project = deploy_ok(daemon, name, files)
    assert project["runtime"] == "command"
    assert project["command"] == "uvicorn main:app --host $HOST --port $PORT"
    assert daemon.get(f"/{name}/").json() == {"message": "Hello World from FastAPI"}
    assert daemon.get(f"/{name}/items/5?q=z").json() == {"item_id": 5, "q": "z"}
    with daemon.client(admin=False) as c:
        r = c.post(f"/{name}/items/", json={"name": "pen", "price": 10})
        assert r.json() == {"name": "pen", "price_with_tax": 12.0}
        assert c.post(f"/{name}/items/", json={"name": "pen"}).status_code == 422
    assert "uvicorn" in daemon.get(f"/{name}/").headers.get("server", "")


def test_procfile_app_sees_port_host_and_the_pinned_toolchains(daemon, name):
    files = app_files("procfile-hello")
    deploy_ok(daemon, name, files)
    body = daemon.get(f"/{name}/p?q=1").json()
    assert body["path"] == "/p?q=1" and body["version"] == "1" and body["port"].isdigit()
    # Which node, npm and python the command gets: the pinned ones, not the system's.
    probe = (
        "import http.server, os, shutil, subprocess, json\n"
        "def run(*a): return subprocess.run(a, capture_output=True, text=True).stdout.strip()\n"
        "info = {t: shutil.which(t) for t in ('node', 'npm', 'deno', 'bun', 'python')}\n"
        "info['node_v'] = run('node', '--version'); info['npm_v'] = run('npm', '--version')\n"
        "info['host'] = os.environ['HOST']\n"
        "info['uid'] = os.getuid(); info['tee_env'] = sorted(k for k in os.environ if k.startswith('TEE'))\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        b = json.dumps(info).encode(); self.send_response(200); self.end_headers(); self.wfile.write(b)\n"
        "http.server.HTTPServer((os.environ['HOST'], int(os.environ['PORT'])), H).serve_forever()\n"
    )
    deploy_ok(daemon, name, {"probe.py": probe}, command="python probe.py")
    info = daemon.get(f"/{name}/").json()
    for tool in ("node", "npm", "deno", "bun", "python"):
        assert info[tool] and "/build/bin/" in info[tool], info
    assert info["node_v"].startswith("v") and info["npm_v"][0].isdigit(), info
    assert info["host"] == "127.0.0.1"
    # Sandboxed as the project: not root, and nothing of the daemon's environment (the
    # relay's TEE_COMMAND included) reaches the command.
    assert info["uid"] != 0 and info["tee_env"] == [], info


def test_command_field_errors_are_4xx(daemon, name):
    r = daemon.deploy_files(name, {"index.html": "x"}, command="node index.js", runtime="static")
    assert r.status_code == 400 and "command runtime" in r.json()["detail"]
    r = daemon.deploy_files(name, {"Procfile": "worker: python3 job.py\n"})
    assert r.status_code == 422 and "web:" in r.json()["detail"]
    r = daemon.deploy_files(name, {"a.txt": "x"}, runtime="command")
    assert r.status_code == 422 and "needs a command" in r.json()["detail"]
    r = daemon.deploy_files(name, {"a.txt": "x"}, command="a\nb")
    assert r.status_code == 400 and "one line" in r.json()["detail"]


def _previous_keeps_serving(daemon, name: str) -> None:
    r = daemon.get(f"/{name}/")
    assert r.status_code == 200 and r.json()["version"] == "1"


def test_a_command_that_exits_at_once_is_refused_with_its_log(daemon, name):
    deploy_ok(daemon, name, app_files("procfile-hello"))
    r = daemon.deploy_files(name, {"Procfile": "web: echo 'cannot find config.yml' >&2; exit 3\n"})
    assert r.status_code == 422, r.text
    detail = json.dumps(r.json())
    assert "exit code 3" in detail and "cannot find config.yml" in detail
    _previous_keeps_serving(daemon, name)


def test_a_command_that_never_listens_is_refused_with_its_log(daemon, name):
    deploy_ok(daemon, name, app_files("procfile-hello"))
    started = time.monotonic()
    r = daemon.deploy_files(name, {"Procfile": "web: echo 'listening on 3000 (hard-coded)'; sleep 600\n"})
    assert r.status_code == 422, r.text
    assert time.monotonic() - started < START_TIMEOUT + 20
    detail = json.dumps(r.json())
    assert "not listening" in detail and "hard-coded" in detail
    assert "waiting for the command to listen" in detail  # The hint says which PORT/HOST.
    _previous_keeps_serving(daemon, name)


@pytest.mark.parametrize("sample,command", [("procfile-hello", None), ("express-hello", "node index.js")])
def test_redeploy_under_load_drops_no_request(daemon, name, sample, command):
    manifest = {"command": command} if command else {}
    files = app_files(sample)
    deploy_ok(daemon, name, files, **manifest, env={"APP_VERSION": "1"})
    failures: list[str] = []
    served = {"count": 0}
    stop = threading.Event()

    def hammer():
        with httpx.Client(base_url=daemon.url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.get(f"/{name}/")
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    served["count"] += 1
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for round_ in (2, 3):
            deploy_ok(daemon, name, files, **manifest, env={"APP_VERSION": str(round_)})
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert served["count"] > 20
    if sample == "procfile-hello":
        assert daemon.get(f"/{name}/").json()["version"] == "3"


def test_shared_network_command_listens_on_the_daemon_chosen_port(fresh_daemon, name):
    """With TEE_DAEMON_PROJECT_NETWORK=shared there is no relay: the command itself
    listens on the loopback port the daemon picked."""
    d = fresh_daemon(env={"TEE_DAEMON_PROJECT_NETWORK": "shared"})
    deploy_ok(d, name, app_files("procfile-hello"))
    body = get_until(d, f"/{name}/").json()
    assert body["port"] != "8080" and int(body["port"]) > 1024


def test_deno_command_with_deno_json_imports_from_npm(daemon, name):
    """deno.json's imports are cached at build into the project's own Deno cache; the
    command runs from it."""
    project = deploy_ok(daemon, name, app_files("deno-command"), command="deno run --allow-net --allow-env main.ts")
    assert project["runtime"] == "command"
    r = daemon.get(f"/{name}/")
    assert r.status_code == 200 and r.text == "Hello Hono on Deno!"


def test_deno_json_start_task_is_the_command(daemon, name):
    """No command given: deno.json's `tasks.start` is the command, as `deno task start`
    would run it."""
    project = deploy_ok(daemon, name, app_files("deno-command"))
    assert project["runtime"] == "command" and project["command"] is None
    assert daemon.get(f"/{name}/").text == "Hello Hono on Deno!"


WSGI_APP = '''
import time


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("boom in the WSGI app")
    if path.startswith("/stream"):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Kind", "stream")])

        def chunks():
            for i in range(3):
                yield f"chunk {i} at {time.monotonic():.3f}\\n".encode()
                time.sleep(0.3)
        return chunks()
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    seen = {
        "method": environ["REQUEST_METHOD"],
        "path": path.encode("latin-1").decode("utf-8"),
        "query": environ["QUERY_STRING"],
        "script_name": environ["SCRIPT_NAME"],
        "content_type": environ.get("CONTENT_TYPE"),
        "x_multi": environ.get("HTTP_X_MULTI"),
        "body": body.decode(),
    }
    import json
    start_response("201 Created", [("Content-Type", "application/json"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    return [json.dumps(seen).encode()]
'''


def test_a_plain_wsgi_app_streams_and_sees_its_environ(daemon, name):
    deploy_ok(daemon, name, {"app.py": WSGI_APP})
    with daemon.client(admin=False) as c:
        r = c.post(f"/{name}/caf%C3%A9?x=1&y=2", content=b"hello", headers={"content-type": "text/plain", "x-multi": "v1"})
        assert r.status_code == 201, r.text
        assert r.json() == {"method": "POST", "path": "/café", "query": "x=1&y=2", "script_name": "",
                            "content_type": "text/plain", "x_multi": "v1", "body": "hello"}  # fmt: skip
        assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]
        # Chunks arrive as the app yields them, not all at the end.
        arrivals = []
        with c.stream("GET", f"/{name}/stream") as s:
            assert s.headers["x-kind"] == "stream"
            for line in s.iter_lines():
                if line:
                    arrivals.append(time.monotonic())
        assert len(arrivals) == 3 and arrivals[-1] - arrivals[0] > 0.4
        r = c.get(f"/{name}/boom")
        assert r.status_code == 500 and "boom" not in r.text  # The traceback goes to the log only.
    log = daemon.get(f"/_api/projects/{name}/logs", admin=True).text
    assert "boom in the WSGI app" in log


CRASHER = '''
import http.server, os, threading

# How many times the command started, kept in the data dir (pids repeat in a new namespace).
counter = os.path.join(os.environ["DATA_DIR"], "starts")
starts = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
open(counter, "w").write(str(starts))

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(starts).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path == "/exit":
            threading.Timer(0.05, os._exit, (3,)).start()

http.server.HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), H).serve_forever()
'''


def test_a_command_that_crashes_after_serving_is_restarted(daemon, name):
    deploy_ok(daemon, name, {"server.py": CRASHER, "Procfile": "web: python3 server.py\n"})
    first = daemon.get(f"/{name}/").text
    assert first == "1"
    assert daemon.get(f"/{name}/exit").status_code == 200
    deadline = time.monotonic() + 20
    while True:  # The relay exits with the command's status; the daemon starts both again.
        r = daemon.get(f"/{name}/")
        if r.status_code == 200 and r.text == "2":
            break
        assert time.monotonic() < deadline, (r.status_code, r.text[:200])
        time.sleep(0.2)
    log = daemon.get(f"/_api/projects/{name}/logs", admin=True).text
    assert "exit code 3" in log or "status 3" in log, log[-2000:]


def test_cli_deploys_a_folder_with_its_command(daemon, name):
    """`tee-daemon deploy ./folder --command ...`, as the README shows it."""
    from test_client import ok, run
    from test_runtimes import APPS

    out = ok(run(daemon, "deploy", str(APPS / "procfile-hello"), "--name", name, "--command", "python3 server.py", "--json"))
    assert json.loads(out)["command"] == "python3 server.py"
    assert daemon.get(f"/{name}/").json()["version"] == "1"


def test_fastify_listening_on_localhost(daemon, name):
    """Fastify binds `localhost` by default (::1 or 127.0.0.1, as the resolver says):
    the relay finds it on either loopback address."""
    deploy_ok(daemon, name, app_files("fastify-hello"), command="node index.js")
    r = daemon.get(f"/{name}/")
    assert r.status_code == 200 and r.json() == {"hello": "world"}


IPV6_ONLY = '''
import http.server, os, socket

class Server(http.server.HTTPServer):
    address_family = socket.AF_INET6

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "4")
        self.end_headers()
        self.wfile.write(b"ipv6")

Server(("::1", int(os.environ["PORT"])), H).serve_forever()
'''


def test_an_app_on_the_ipv6_loopback_is_found(daemon, name):
    deploy_ok(daemon, name, {"server.py": IPV6_ONLY}, command="python3 server.py")
    assert daemon.get(f"/{name}/").text == "ipv6"
