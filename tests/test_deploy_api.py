"""The deploy API against the real daemon over HTTP (SPEC sections 2 to 5)."""

from __future__ import annotations

import json
import os
import re
import stat
import time

import httpx
import pytest

from harness import make_tar

SITE = {"index.html": "<h1>v1</h1>", "css/site.css": "body{}", "docs/index.html": "docs"}


def test_health_and_substrate(daemon):
    assert daemon.get("/_api/health").json() == {"status": "ok", "tee": "simulated"}
    assert daemon.get("/", headers={"accept": "application/json"}).json()["tee"] == "simulated"
    facts = daemon.get("/_api/substrate").json()
    assert facts["daemon"] == "tee-daemon"
    assert facts["backend"] == "process"
    assert "static" in facts["runtimes"]


def test_openapi_schema_served(daemon):
    r = daemon.get("/_api/schema/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert "/_api/projects" in paths and "/_api/health" in paths
    assert paths["/_api/projects"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in paths["/_api/health"]["get"]
    page = daemon.get("/_api/schema", headers={"accept": "text/html"})
    assert page.status_code == 200 and "/_api/projects/{name}/promote" in page.text
    # A CVM may have no internet: the viewer loads nothing from elsewhere (its examples
    # may name an https git source as text; no link, script, style or image leaves).
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page.text, re.I)
    assert "cdn" not in page.text.lower() and "<script" not in page.text.lower()


def test_deploy_tarball_serve_list_delete(daemon, name):
    r = daemon.deploy_files(name, SITE)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == name and body["runtime"] == "static" and body["mode"] == "dev"
    assert body["version"] == 1 and body["source"] == "tarball" and body["commit"] is None
    assert len(body["tree_sha1"]) == 40 and len(body["tree_sha256"]) == 64
    assert body["url"].endswith(f"/{name}/")

    assert daemon.get(f"/{name}/").text == "<h1>v1</h1>"
    assert daemon.get(f"/{name}/css/site.css").headers["content-type"].startswith("text/css")
    with daemon.client() as c:
        names = [p["name"] for p in c.get("/_api/projects").json()["projects"]]
        assert name in names
        assert c.delete(f"/_api/projects/{name}").status_code == 200
        assert c.delete(f"/_api/projects/{name}").status_code == 404
    assert daemon.get(f"/{name}/").status_code == 404


def test_dev_projects_hidden_from_the_public(daemon, name):
    assert daemon.deploy_files(name, SITE).status_code == 201
    anonymous = [p["name"] for p in daemon.get("/", headers={"accept": "application/json"}).json()["projects"]]
    assert name not in anonymous
    assert daemon.get(f"/_api/projects/{name}").status_code == 404
    shown = daemon.get(f"/_api/projects/{name}", admin=True)
    assert shown.status_code == 200 and shown.json()["mode"] == "dev"
    admin_root = daemon.get("/", admin=True, headers={"accept": "application/json"}).json()
    assert name in [p["name"] for p in admin_root["projects"]]


def test_auth_required_and_json_errors(daemon, name):
    for method, path in [
        ("GET", "/_api/projects"),
        ("POST", "/_api/projects"),
        ("POST", f"/_api/projects/{name}/promote"),
        ("POST", f"/_api/projects/{name}/rollback"),
        ("DELETE", f"/_api/projects/{name}"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"}, {"Authorization": "Basic x"}):
            r = httpx.request(method, daemon.url + path, headers=headers)
            assert r.status_code == 401, (method, path, headers)
            assert r.json()["status_code"] == 401
            assert daemon.token not in r.text


def test_redeploy_to_existing_name_makes_new_version_and_rollback(daemon, name):
    assert daemon.deploy_files(name, {"index.html": "one"}).json()["version"] == 1
    assert daemon.deploy_files(name, {"index.html": "two"}).json()["version"] == 2
    assert daemon.get(f"/{name}/").text == "two"
    with daemon.client() as c:
        r = c.post(f"/_api/projects/{name}/rollback")
        assert r.status_code == 200 and r.json()["version"] == 1
        assert daemon.get(f"/{name}/").text == "one"
        r = c.post(f"/_api/projects/{name}/rollback", json={"version": 2})
        assert r.json()["version"] == 2
        assert daemon.get(f"/{name}/").text == "two"
        r = c.post(f"/_api/projects/{name}/rollback", json={"version": 99})
        assert r.status_code == 404 and "not kept" in r.json()["detail"]


def test_only_last_five_versions_kept(daemon, name):
    for i in range(1, 8):
        assert daemon.deploy_files(name, {"index.html": f"v{i}"}).status_code == 201
    with daemon.client() as c:
        assert c.post(f"/_api/projects/{name}/rollback", json={"version": 2}).status_code == 404
        assert c.post(f"/_api/projects/{name}/rollback", json={"version": 3}).status_code == 200
    folder = daemon.data_dir / "projects" / name / "versions"
    deadline = time.monotonic() + 10  # Old versions go once the replaced one has drained.
    while sorted(os.listdir(folder)) != ["3", "4", "5", "6", "7"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(os.listdir(folder)) == ["3", "4", "5", "6", "7"]


def test_manifest_cannot_ask_for_attested(daemon, name):
    r = daemon.deploy_files(name, SITE, mode="attested")
    assert r.status_code == 400 and "promote" in r.json()["detail"]
    assert daemon.get(f"/_api/projects/{name}", admin=True).status_code == 404


@pytest.mark.parametrize(
    "bad", ["", "-lead", "UPPER", "a_b", "a/b", "..", "a" * 64, "é", "a b", "_api"]
)
def test_bad_names_refused(daemon, bad):
    r = daemon.deploy_files(bad, SITE)
    assert r.status_code == 400, r.text
    assert "name" in r.json()["detail"]


def test_unknown_runtime_refused(daemon, name):
    r = daemon.deploy_files(name, SITE, runtime="cobol")
    assert r.status_code == 400 and "cobol" in r.json()["detail"]


def test_project_json_merged_under_api_fields(daemon, name):
    files = {
        "project.json": json.dumps({"runtime": "static", "env": {"A": "from-file", "B": "file"}}),
        "index.html": "x",
    }
    body = daemon.deploy_files(name, files, env={"B": "api"}).json()
    assert body["env"] == {"A": "from-file", "B": "api"}
    assert body["runtime"] == "static"


def test_project_json_unknown_runtime_refused(daemon, name):
    r = daemon.deploy_files(name, {"project.json": '{"runtime": "nope"}', "index.html": "x"})
    assert r.status_code == 400 and "nope" in r.json()["detail"]


def test_secrets_only_by_name(daemon, name):
    body = daemon.deploy_files(name, SITE, secrets={"API_KEY": "s3cr3t-value-123"}).json()
    assert body["secret_names"] == ["API_KEY"]
    assert "s3cr3t-value-123" not in json.dumps(body)
    assert "s3cr3t-value-123" not in daemon.get(f"/_api/projects/{name}", admin=True).text


def test_project_record_is_private(daemon, name):
    daemon.deploy_files(name, SITE, secrets={"K": "v"})
    record = daemon.data_dir / "projects" / name / "project.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "body, content_type, status",
    [
        (b"{not json", "application/json", 400),
        (b"[]", "application/json", 400),
        (b'{"name": "x", "source": 5}', "application/json", 400),
        (b'{"name": "x", "unknown": 1}', "application/json", 400),
        (b"hello", "text/plain", 415),
        (b"--zzz\r\ngarbage", "multipart/form-data; boundary=zzz", 400),
    ],
)
def test_malformed_requests(daemon, body, content_type, status):
    with daemon.client() as c:
        r = c.post("/_api/projects", content=body, headers={"content-type": content_type})
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_multipart_missing_parts(daemon, name):
    with daemon.client() as c:
        r = c.post("/_api/projects", files={"manifest": (None, json.dumps({"name": name}))})
        assert r.status_code == 400 and "files" in r.json()["detail"]
        r = c.post("/_api/projects", files={"files": ("p.tar", make_tar(SITE))})
        assert r.status_code == 400 and "manifest" in r.json()["detail"]


def test_json_deploy_needs_source(daemon, name):
    with daemon.client() as c:
        r = c.post("/_api/projects", json={"name": name})
    assert r.status_code == 400 and "source" in r.json()["detail"]


def test_unknown_project_path_is_json_404(daemon):
    r = daemon.get("/no-such-project/x")
    assert r.status_code == 404 and r.json()["status_code"] == 404


def test_name_without_slash_redirects(daemon, name):
    daemon.deploy_files(name, SITE)
    r = daemon.get(f"/{name}?q=1")
    assert r.status_code == 308 and r.headers["location"] == f"/{name}/?q=1"


def test_failed_deploy_keeps_previous_version(daemon, name):
    assert daemon.deploy_files(name, {"index.html": "good"}).status_code == 201
    bad = daemon.deploy_files(name, {"../evil": "x"})
    assert bad.status_code == 400
    assert daemon.get(f"/{name}/").text == "good"
    assert daemon.get(f"/_api/projects/{name}", admin=True).json()["version"] == 1


@pytest.mark.parametrize("body", [b"{bad", b'{"version": "two"}', b'{"to": 1}', b"[1]"])
def test_malformed_rollback_bodies(daemon, name, body):
    daemon.deploy_files(name, {"index.html": "1"})
    daemon.deploy_files(name, {"index.html": "2"})
    with daemon.client() as c:
        r = c.post(f"/_api/projects/{name}/rollback", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"]
    assert daemon.get(f"/{name}/").text == "2"
