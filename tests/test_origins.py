"""Origins and the front door (SPEC section 10): Host checks, URLs, per-project origins.

Raw HTTP to the real daemon on loopback, with the Host header a browser would send.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from harness import REPO, TOKEN

SITE = {"index.html": "<!doctype html><h1>site</h1>", "sub/page.html": "page"}
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def get(daemon, path: str, host: str | None = None, admin: bool = False, **kw) -> httpx.Response:
    headers = dict(kw.pop("headers", {}))
    if host is not None:
        headers["host"] = host
    if admin:
        headers.update(ADMIN)
    return httpx.get(daemon.url + path, headers=headers, follow_redirects=False, timeout=30, **kw)


def deployed(daemon, name: str) -> dict:
    r = daemon.deploy_files(name, SITE)
    assert r.status_code == 201, r.text
    return r.json()


# -- Host checks ---------------------------------------------------------------------------


def test_only_the_daemons_hosts_are_served_others_get_421(daemon, name):
    deployed(daemon, name)
    for path, admin in (("/_api/health", False), ("/", False), ("/_api/projects", True), (f"/{name}/", False)):
        r = get(daemon, path, host="evil.example", admin=admin)
        assert r.status_code == 421, (path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert "evil.example" in r.json()["detail"]
        assert name not in r.text
        r = get(daemon, path, host=f"evil.example:{daemon.port}", admin=admin)
        assert r.status_code == 421, (path, r.status_code)
    # A change is refused too, before the token is even looked at.
    r = httpx.delete(f"{daemon.url}/_api/projects/{name}", headers={**ADMIN, "host": "evil.example"})
    assert r.status_code == 421
    assert get(daemon, f"/{name}/").status_code == 200

    # The daemon's own hosts, with or without a port, are served.
    for host in ("127.0.0.1", "localhost", "[::1]", "LOCALHOST.", "127.0.0.1:1"):
        for h in {host, host if host.endswith(":1") else f"{host}:{daemon.port}"}:
            r = get(daemon, "/_api/health", host=h)
            assert r.status_code == 200, (h, r.text)
    # X-Forwarded-Host from a peer that is not a trusted proxy is not the host: not
    # refused for it, and not a way around the check either.
    assert get(daemon, "/_api/health", headers={"x-forwarded-host": "evil.example"}).status_code == 200
    r = get(daemon, "/_api/health", host="evil.example", headers={"x-forwarded-host": "localhost"})
    assert r.status_code == 421


def test_the_listing_never_reflects_the_host(daemon, name):
    deployed(daemon, name)
    r = get(daemon, "/_api/projects", host=f"localhost:{daemon.port}", admin=True)
    assert r.status_code == 200
    urls = {p["name"]: p["url"] for p in r.json()["projects"]}
    assert urls[name] == f"{daemon.url}/{name}/"
    assert all(u.startswith(daemon.url + "/") for u in urls.values())


def test_public_url_allowed_hosts_and_trusted_proxies(fresh_daemon, name):
    daemon = fresh_daemon(
        env={
            "TEE_DAEMON_PUBLIC_URL": "https://tee.example.org/",
            "TEE_DAEMON_ALLOWED_HOSTS": "other.example.net, *.wild.example.net, port.example.net:9443",
            "TEE_DAEMON_TRUSTED_PROXIES": "127.0.0.1",
        }
    )
    body = deployed(daemon, name)
    assert body["url"] == f"https://tee.example.org/{name}/"
    with daemon.client() as c:
        promoted = c.post(f"/_api/projects/{name}/promote").json()
    assert promoted["verification_url"] == f"https://tee.example.org/_api/verification/{name}"
    listing = get(daemon, "/_api/projects", admin=True).json()["projects"]
    assert [p["url"] for p in listing] == [f"https://tee.example.org/{name}/"]
    assert get(daemon, "/", host="attacker.example").status_code == 421

    for host in ("tee.example.org", "tee.example.org:443", "other.example.net", "a.wild.example.net", "port.example.net:9443"):
        assert get(daemon, f"/{name}/", host=host).status_code == 200, host
    for host in ("example.org", "x.tee.example.org", "port.example.net:9444", "wild.example.net.evil", "evil.example"):
        assert get(daemon, f"/{name}/", host=host).status_code == 421, host

    # From a trusted proxy the client's host is X-Forwarded-Host: checked, not bypassed.
    assert get(daemon, "/_api/health", host="internal:8080", headers={"x-forwarded-host": "tee.example.org"}).status_code == 200
    assert get(daemon, "/_api/health", headers={"x-forwarded-host": "evil.example"}).status_code == 421


@pytest.mark.parametrize(
    "env",
    [
        {"TEE_DAEMON_PUBLIC_URL": "https://tee.example.org/prefix"},
        {"TEE_DAEMON_PUBLIC_URL": "ftp://tee.example.org"},
        {"TEE_DAEMON_PUBLIC_URL": "tee.example.org"},
        {"TEE_DAEMON_BASE_DOMAIN": "bad_domain..example"},
    ],
)
def test_bad_origin_settings_are_refused(env):
    from tee_daemon.settings import load_settings

    with pytest.raises(SystemExit) as exc:
        load_settings(environ=env)
    assert "TEE_DAEMON_" in str(exc.value)


# -- per-project origins ---------------------------------------------------------------------


@pytest.fixture
def based(fresh_daemon):
    return fresh_daemon(extra_args=["--base-domain", "tee.test"])


def test_base_domain_serves_each_project_at_its_own_host(based):
    a, b = deployed(based, "a"), deployed(based, "b")
    port = based.port
    assert a["url"] == f"http://a.tee.test:{port}/" and b["url"] == f"http://b.tee.test:{port}/"
    listing = get(based, "/_api/projects", admin=True).json()["projects"]
    assert {p["name"]: p["url"] for p in listing} == {"a": a["url"], "b": b["url"]}

    # The whole path is the project's: `/` and `/_api/...` included.
    for host in (f"a.tee.test:{port}", "a.tee.test", "A.TEE.TEST."):
        r = get(based, "/", host=host)
        assert r.status_code == 200 and "<h1>site</h1>" in r.text, host
    assert get(based, "/sub/page.html", host=f"a.tee.test:{port}").text == "page"
    r = get(based, "/_api/health", host=f"a.tee.test:{port}")
    assert r.status_code == 404 and '"status": "ok"' not in r.text and '"tee"' not in r.text
    assert get(based, "/_api/projects", host=f"a.tee.test:{port}", admin=True).status_code == 404
    # `/<name>/` on a project's host is that project's path, not another project.
    assert get(based, "/b/", host=f"a.tee.test:{port}").status_code == 404

    # Unknown projects and deeper names under the base domain are not served.
    assert get(based, "/", host=f"nope.tee.test:{port}").status_code == 404
    assert get(based, "/", host=f"x.a.tee.test:{port}").status_code == 404
    assert get(based, "/", host="evil.example").status_code == 421

    # The daemon's own host keeps the API, the viewer and nothing of any project.
    for host in (None, f"localhost:{port}", f"tee.test:{port}"):
        assert get(based, "/_api/health", host=host).json()["status"] == "ok"


def test_base_domain_redirects_path_routes_to_the_projects_origin(based):
    deployed(based, "a")
    port = based.port
    cases = {
        "/a/sub/page.html?x=1&y=%20z": f"http://a.tee.test:{port}/sub/page.html?x=1&y=%20z",
        "/a/": f"http://a.tee.test:{port}/",
        "/a": f"http://a.tee.test:{port}/",
        "/a?q=1": f"http://a.tee.test:{port}/?q=1",
        "/a/%7Euser/x%2Fy": f"http://a.tee.test:{port}/%7Euser/x%2Fy",
        "/a//evil.example/": f"http://a.tee.test:{port}//evil.example/",
    }
    for path, location in cases.items():
        r = get(based, path)
        assert r.status_code == 308, (path, r.status_code, r.text)
        assert r.headers["location"] == location, path
        assert "<h1>" not in r.text
    r = httpx.post(f"{based.url}/a/form", content=b"x")
    assert r.status_code == 308 and r.headers["location"] == f"http://a.tee.test:{port}/form"
    assert get(based, "/nope/").status_code == 404


def test_base_domain_with_public_url(fresh_daemon):
    daemon = fresh_daemon(env={"TEE_DAEMON_BASE_DOMAIN": "apps.example.org", "TEE_DAEMON_PUBLIC_URL": "https://apps.example.org"})
    body = deployed(daemon, "site")
    assert body["url"] == "https://site.apps.example.org/"
    r = get(daemon, "/site/x?y=1", host="apps.example.org")
    assert r.status_code == 308 and r.headers["location"] == "https://site.apps.example.org/x?y=1"
    assert "<h1>site</h1>" in get(daemon, "/", host="site.apps.example.org").text


def test_base_domain_cli_and_viewer_give_each_projects_url(based, tmp_path):
    deployed(based, "a")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "index.html").write_text("c")
    with based.client() as c:
        assert c.post("/_api/projects/a/promote").status_code == 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEE_DAEMON_")}
    env.update(TEE_DAEMON_URL=based.url, TEE_DAEMON_TOKEN=TOKEN, COLUMNS="200")
    url = f"http://a.tee.test:{based.port}/"
    for args, url in (
        (["deploy", str(tmp_path / "c"), "--name", "c"], f"http://c.tee.test:{based.port}/"),
        (["ls"], url),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "tee_daemon.cli.commands", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert url in result.stdout, (args, result.stdout, result.stderr)
    as_json = subprocess.run(
        [sys.executable, "-m", "tee_daemon.cli.commands", "ls", "--json"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    if as_json.returncode == 0:
        assert url in json.dumps(json.loads(as_json.stdout))
    page = get(based, "/", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert f'href="{url}"' in page.text
    assert 'href="/a/"' not in page.text
