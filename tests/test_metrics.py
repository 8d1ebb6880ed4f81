"""`GET /_api/metrics`: admin only, Prometheus text, counts requests, latency, deploys."""

from __future__ import annotations

import asyncio
import re

from tee_daemon.web.metrics import BUCKETS, Metrics, instance_rss

SITE = {"index.html": "<h1>hi</h1>"}


def parse(text: str) -> dict[str, float]:
    """`name{labels} value` lines into a dict; also checks the exposition syntax."""
    samples = {}
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, metric, kind = line.split(" ")
            types[metric] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_]+="(?:[^"\\]|\\.)*",?)*\})? (\S+)', line)
        assert m, f"bad exposition line {line!r}"
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    assert types["tee_daemon_request_duration_seconds"] == "histogram"
    assert types["tee_daemon_requests_total"] == "counter"
    return samples


def test_metrics_need_the_admin_token(daemon):
    assert daemon.get("/_api/metrics").status_code == 401
    with daemon.client() as c:
        c.headers["Authorization"] = "Bearer wrong"
        assert c.get("/_api/metrics").status_code == 401


def test_metrics_count_requests_latency_and_deploys(daemon, name):
    assert daemon.deploy_files(name, SITE).status_code == 201
    with daemon.client(admin=False) as c:
        for _ in range(3):
            assert c.get(f"/{name}/").status_code == 200
        assert c.get(f"/{name}/missing.txt").status_code == 404
    assert daemon.deploy_files(name, SITE, runtime="no-such-runtime").status_code == 400

    r = daemon.get("/_api/metrics", admin=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse(r.text)
    label = f'project="{name}"'
    assert m[f'tee_daemon_requests_total{{{label},status="200"}}'] == 3
    assert m[f'tee_daemon_requests_total{{{label},status="404"}}'] == 1
    assert m[f'tee_daemon_request_duration_seconds_count{{{label}}}'] == 4
    assert m[f'tee_daemon_request_duration_seconds_bucket{{{label},le="+Inf"}}'] == 4
    buckets = [m[f'tee_daemon_request_duration_seconds_bucket{{{label},le="{b!r}"}}'] for b in BUCKETS]
    assert buckets == sorted(buckets), "histogram buckets are cumulative"
    assert m[f'tee_daemon_request_duration_seconds_sum{{{label}}}'] > 0
    assert m[f'tee_daemon_deploys_total{{{label},action="deploy",result="ok"}}'] == 1
    assert m[f'tee_daemon_deploys_total{{{label},action="deploy",result="failed"}}'] == 1
    assert m[f'tee_daemon_project_up{{{label},runtime="static",state="running"}}'] == 1
    assert m[f'tee_daemon_project_version{{{label}}}'] == 1
    assert m["tee_daemon_process_memory_rss_bytes"] > 1_000_000

    with daemon.client() as c:
        assert c.delete(f"/_api/projects/{name}").status_code == 200
    m = parse(daemon.get("/_api/metrics", admin=True).text)
    assert not [key for key in m if key.startswith(f"tee_daemon_project_up{{{label}")]
    assert m[f'tee_daemon_deploys_total{{{label},action="delete",result="ok"}}'] == 1


def test_unit_counting_and_escaping():
    metrics = Metrics()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message):
        pass

    async def main():
        for _ in range(5):
            await metrics.serve(app, 'we"ird\\', {"type": "http"}, None, send)

    asyncio.run(main())
    metrics.restart("p")
    text = metrics.render({})
    m = parse(text)
    assert m['tee_daemon_requests_total{project="we\\"ird\\\\",status="201"}'] == 5
    assert m['tee_daemon_restarts_total{project="p"}'] == 1


def test_rss_of_a_reported_pid():
    import os

    class Fake:
        def describe(self):
            return {"pid": os.getpid()}

    class Silent:
        def describe(self):
            return {}

    assert instance_rss(Fake()) > 1_000_000
    assert instance_rss(Silent()) is None


def test_memory_of_a_process_runtime(daemon, name):
    app = "async def handle(method, path, headers, body, env):\n    return 200, {'content-type': 'text/plain'}, b'hi'\n"
    r = daemon.deploy_files(name, {"app.py": app})
    assert r.status_code == 201, r.text
    assert daemon.get(f"/{name}/").text == "hi"
    m = parse(daemon.get("/_api/metrics", admin=True).text)
    assert m[f'tee_daemon_project_memory_rss_bytes{{project="{name}"}}'] > 1_000_000
    assert m[f'tee_daemon_restarts_total{{project="{name}"}}'] == 0
    assert m[f'tee_daemon_project_up{{project="{name}",runtime="python",state="running"}}'] == 1
    # The operator sees the instance itself; nobody else does.
    shown = daemon.get(f"/_api/projects/{name}", admin=True).json()["instance"]
    assert shown["state"] == "running" and shown["restarts"] == 0 and shown["pid"] > 1


def test_a_crash_is_counted_in_the_restarts_across_versions(daemon, name):
    """Supervision hands each restart to the metrics: a crashed process shows up in
    tee_daemon_restarts_total, and the count stays when a new version is deployed."""
    import time

    app = (
        "import os\n"
        "async def handle(method, path, headers, body, env):\n"
        "    if path.endswith('/crash'):\n"
        "        os._exit(3)\n"
        "    return 200, {'content-type': 'text/plain'}, b'up'\n"
    )
    assert daemon.deploy_files(name, {"app.py": app}).status_code == 201
    assert daemon.get(f"/{name}/").text == "up"
    key = f'tee_daemon_restarts_total{{project="{name}"}}'
    assert parse(daemon.get("/_api/metrics", admin=True).text)[key] == 0
    daemon.get(f"/{name}/crash")  # The process dies mid-request (a 502).
    deadline = time.monotonic() + 20
    while daemon.get(f"/{name}/").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.get(f"/{name}/").text == "up"
    assert parse(daemon.get("/_api/metrics", admin=True).text)[key] == 1
    # A new version starts with no restarts of its own; the counter keeps the history.
    assert daemon.deploy_files(name, {"app.py": app.replace("b'up'", "b'two'")}).status_code == 201
    assert daemon.get(f"/{name}/").text == "two"
    assert parse(daemon.get("/_api/metrics", admin=True).text)[key] == 1
