"""Path routing puts every project on the daemon's origin (SPEC section 10): in a real
browser (Debian's Chromium via Playwright), a hostile project's page can neither install
a service worker over `/` nor script the daemon's verification page through a window it
opened or a frame it embedded."""

from __future__ import annotations

import json

import pytest
from browser import chromium


FORGED = "FORGED: all checks passed"
# The hostile project: a plain page, and a service worker that would answer every
# request in its scope with a forged page, sent with `Service-Worker-Allowed: /`.
EVIL = '''
SW = b"""
self.addEventListener("install", e => self.skipWaiting());
self.addEventListener("activate", e => e.waitUntil(self.clients.claim()));
self.addEventListener("fetch", e => e.respondWith(new Response("<h1>%s</h1>", {headers: {"content-type": "text/html"}})));
"""

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/sw.js":
        headers = [(b"content-type", b"text/javascript"), (b"Service-Worker-Allowed", b"/")]
        body = SW
    else:
        headers = [(b"content-type", b"text/html; charset=utf-8")]
        body = b"<!doctype html><title>evil</title><h1>a project page</h1>"
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
''' % FORGED


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context
    context.close()


@pytest.fixture(scope="module")
def evil(daemon) -> str:
    r = daemon.deploy_files("origins-evil", {"app.py": EVIL})
    assert r.status_code == 201, r.text
    return "origins-evil"


@pytest.fixture
def victim(daemon, name) -> str:
    assert daemon.deploy_files(name, {"index.html": "<h1>victim</h1>"}).status_code == 201
    with daemon.client() as c:
        assert c.post(f"/_api/projects/{name}/promote").status_code == 200
    return name


def test_a_project_cannot_register_a_service_worker_over_the_daemon(daemon, context, evil, victim):
    page = context.new_page()
    page.goto(f"{daemon.url}/{evil}/")
    outcome = page.evaluate(
        """async () => {
            try {
                const reg = await navigator.serviceWorker.register("sw.js", {scope: "/"});
                return "registered " + reg.scope;
            } catch (e) { return "refused: " + e.name; }
        }"""
    )
    assert outcome.startswith("refused"), outcome
    # Within its own path a service worker still works (so the refusal is the scope's).
    own = page.evaluate(
        """async () => {
            const reg = await navigator.serviceWorker.register("sw.js");
            return reg.scope;
        }"""
    )
    assert own == f"{daemon.url}/{evil}/"
    # The daemon's own pages are still the daemon's, uncontrolled by any worker.
    for path, marker in (("/", "Attested projects"), (f"/_api/verification/{victim}", "Verify")):
        response = page.goto(daemon.url + path)
        assert response.status == 200 and not response.from_service_worker, path
        assert page.evaluate("navigator.serviceWorker.controller") is None, path
        assert FORGED not in page.content()
        assert marker in page.locator("h1").first.inner_text(), path


def test_a_project_page_cannot_script_the_verification_page(daemon, context, evil, victim):
    page = context.new_page()
    page.goto(f"{daemon.url}/{evil}/")
    target = f"/_api/verification/{victim}"
    with context.expect_page() as popup_info:
        page.evaluate(f"window.victim = window.open({json.dumps(target)}, '_blank')")
    popup = popup_info.value
    popup.wait_for_load_state("load")
    popup.wait_for_selector("#verdict[data-result]", timeout=20_000)
    # The opener's handle is severed (Cross-Origin-Opener-Policy): nothing to read or write.
    tried = page.evaluate(
        """(forged) => {
            const out = {closed: window.victim === null || window.victim.closed};
            try { out.title = window.victim.document.title; } catch (e) { out.title = "denied: " + e.name; }
            try { window.victim.document.querySelector("h1").textContent = forged; out.wrote = true; }
            catch (e) { out.wrote = false; }
            return out;
        }""",
        FORGED,
    )
    assert tried["closed"] is True, tried
    assert tried["wrote"] is False and not tried["title"].startswith("Verify"), tried
    # A frame gets nothing either (frame-ancestors 'none', X-Frame-Options: DENY).
    framed = page.evaluate(
        """async ([src, forged]) => {
            const frame = document.createElement("iframe");
            frame.src = src;
            const loaded = new Promise(resolve => { frame.onload = resolve; setTimeout(resolve, 5000); });
            document.body.appendChild(frame);
            await loaded;
            try {
                const doc = frame.contentDocument;
                if (!doc || !doc.querySelector("#verdict")) return "no verification page: " + (doc ? doc.URL : null);
                doc.querySelector("h1").textContent = forged;
                return "scripted";
            } catch (e) { return "denied: " + e.name; }
        }""",
        [target, FORGED],
    )
    assert framed != "scripted", framed
    # Checked from outside the page: the window the project opened shows the real page.
    assert popup.url == daemon.url + target
    assert popup.locator("h1").first.inner_text() == f"Verify {victim}"
    assert FORGED not in popup.content()
    assert popup.evaluate("window.opener") is None
