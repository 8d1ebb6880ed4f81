"""The verification page is HTML served by the API: it needs the same protective headers as
the viewer (CSP, nosniff, no framing), and since one URL answers JSON or HTML by Accept,
both answers must say `Vary: Accept` so a shared cache never hands one for the other."""

from __future__ import annotations


def test_verification_page_has_the_viewer_security_headers(daemon, name):
    assert daemon.deploy_files(name, {"index.html": "hi"}).status_code == 201
    with daemon.client() as c:
        assert c.post(f"/_api/projects/{name}/promote").status_code == 200
    page = daemon.get(f"/_api/verification/{name}", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers.get("content-security-policy", "")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers.get("x-content-type-options") == "nosniff"
    assert "accept" in page.headers.get("vary", "").lower()
    bundle = daemon.get(f"/_api/verification/{name}", headers={"Accept": "application/json"})
    assert bundle.status_code == 200 and bundle.json()["name"] == name
    assert "accept" in bundle.headers.get("vary", "").lower()
