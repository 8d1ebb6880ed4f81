"""Per-project origins in a real browser (SPEC section 10): with `--base-domain tee.test`,
a page on `a.tee.test` cannot read `b.tee.test`'s data or its cookie.

Chromium's host resolver maps `*.tee.test` (a reserved name, RFC 2606) to 127.0.0.1 and
every other name to nowhere, so the browser only ever connects to loopback.
"""

from __future__ import annotations


import pytest
from browser import chromium


SECRET = "b-session-secret-7f3a"
VICTIM = f'''
import json


async def handle(method, path, headers, body, env):
    if path.startswith("/login"):
        cookie = "sid={SECRET}; Path=/; HttpOnly; SameSite=Lax"
        return 200, {{"content-type": "text/html", "set-cookie": cookie}}, "<h1>logged in</h1>"
    if path.startswith("/whoami"):
        data = {{"user": "victim", "cookie": headers.get("cookie", "")}}
        return 200, {{"content-type": "application/json"}}, json.dumps(data)
    return 200, {{"content-type": "text/html"}}, "<h1>b</h1>"
'''
ATTACKER = {"index.html": "<!doctype html><title>a</title><h1>a</h1>"}

# Run in a's page: every way a script there could get at b's answers or cookie.
ATTACK = """async ({b, daemon}) => {
  const out = {};
  async function attempt(key, url, init) {
    try {
      const r = await fetch(url, init);
      out[key] = "read:" + r.type + ":" + r.status + ":" + (await r.text());
    } catch (e) { out[key] = "blocked:" + e.name; }
  }
  await attempt("cors", b + "/whoami", {credentials: "include"});
  await attempt("cors_plain", b + "/whoami", {});
  await attempt("no_cors", b + "/whoami", {credentials: "include", mode: "no-cors"});
  // The old path route on the daemon's host: a 308 to b's origin, still cross-origin.
  await attempt("via_daemon_path", daemon + "/b/whoami", {credentials: "include"});
  // On a's host, `/_api/...` is a's own path: not the daemon's API.
  await attempt("api_on_own_host", "/_api/projects", {credentials: "include"});
  out.cookie = document.cookie;
  const frame = document.createElement("iframe");
  frame.src = b + "/whoami";
  document.body.appendChild(frame);
  await new Promise((done) => { frame.onload = done; setTimeout(done, 5000); });
  try { out.frame = "read:" + frame.contentWindow.document.body.innerText; }
  catch (e) { out.frame = "blocked:" + e.name; }
  const w = window.open(b + "/whoami");
  await new Promise((done) => setTimeout(done, 1500));
  try { out.window = "read:" + w.document.body.innerText; }
  catch (e) { out.window = "blocked:" + e.name; }
  try { w.close(); } catch (e) {}
  return out;
}"""


@pytest.fixture(scope="module")
def browser():
    with chromium(
        "--no-proxy-server",                 "--host-resolver-rules=MAP *.tee.test 127.0.0.1, MAP * ~NOTFOUND",
    ) as browser:
        yield browser


def test_a_project_page_cannot_read_another_projects_data_or_cookie(fresh_daemon, browser):
    daemon = fresh_daemon(extra_args=["--base-domain", "tee.test"])
    assert daemon.deploy_files("b", {"app.py": VICTIM}).status_code == 201
    assert daemon.deploy_files("a", ATTACKER).status_code == 201
    a, b = f"http://a.tee.test:{daemon.port}", f"http://b.tee.test:{daemon.port}"

    context = browser.new_context()
    page = context.new_page()
    # The victim logs in to b: b's cookie is set, and b itself sees it (the control).
    assert page.goto(b + "/login").status == 200
    cookies = {c["name"]: c for c in context.cookies(b)}
    assert cookies["sid"]["value"] == SECRET and cookies["sid"]["httpOnly"]
    assert cookies["sid"]["domain"] == "b.tee.test"
    assert page.goto(b + "/whoami").status == 200
    assert SECRET in page.content()

    # Then visits a's page, which tries to read b.
    assert page.goto(a + "/").status == 200
    assert page.locator("h1").inner_text() == "a"
    got = page.evaluate(ATTACK, {"b": b, "daemon": daemon.url})
    for key, value in got.items():
        assert SECRET not in value, (key, value)
        assert '"user": "victim"' not in value, (key, value)
    assert got["cors"] == "blocked:TypeError", got
    assert got["cors_plain"] == "blocked:TypeError", got
    assert got["no_cors"] == "read:opaque:0:", got
    assert got["via_daemon_path"] == "blocked:TypeError", got
    assert got["api_on_own_host"].startswith("read:basic:404:"), got
    assert '"projects"' not in got["api_on_own_host"]
    assert got["cookie"] == "", got
    # A cross-origin frame's document is null (TypeError), a window's throws SecurityError.
    assert got["frame"].startswith("blocked:"), got
    assert got["window"].startswith("blocked:"), got
    # The cookie belongs to b's host alone: a's requests never carried it.
    assert "sid" not in {c["name"] for c in context.cookies(a)}
    context.close()
