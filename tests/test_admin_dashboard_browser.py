"""The admin dashboard (/_admin/) in a real browser (Debian's Chromium via Playwright),
against a daemon of the test's own.

An operator signs in with the token (kept for the tab, never in a URL), sees dev and
attested projects with state, version, runtime, tree, request and error counts, reads
and follows a log, rolls back, deploys a tarball and a folder (with their build and start
output), promotes behind a confirmation that says what promoting means, and deletes.
Hostile values (env, log lines, a deploy's error) render as text. Screenshots go to
test-artifacts/.
"""

from __future__ import annotations

import shutil

import pytest

from browser import chromium
from harness import REPO, TOKEN, make_tar
from tee_daemon.trust import treehash

ARTIFACTS = REPO / "test-artifacts"
HOSTILE = "<img src=x onerror=alert(1)>"
TALKER = (
    "print(" + repr("booting " + HOSTILE) + ", flush=True)\n"
    "async def handle(method, path, headers, body, env):\n"
    "    print('hit ' + path, flush=True)\n"
    "    if path == '/boom':\n"
    "        return 500, {}, b'boom'\n"
    "    return 200, {}, b'talker'\n"
)


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


class Dashboard:
    """A dashboard tab that records dialogs and script errors (a failed request's
    "Failed to load resource" console line is the browser's, not a script error)."""

    def __init__(self, context, base_url: str) -> None:
        self.page = context.new_page()
        self.base = base_url
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("console", self._console)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, msg) -> None:
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            self.errors.append(f"console: {msg.text}")

    def open(self):
        return self.page.goto(self.base + "/_admin/")

    def sign_in(self, token: str = TOKEN) -> None:
        self.page.fill("#token", token)
        self.page.click("#login-form button[type=submit]")

    def row(self, name: str):
        return self.page.locator(f'#projects tbody tr[data-project="{name}"]')

    def cell(self, name: str, index: int) -> str:
        return self.row(name).locator("td").nth(index).inner_text()

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def no_markup_from_values(self) -> None:
        assert self.page.locator("img[src=x]").count() == 0
        assert self.dialogs == [], f"a dialog fired: {self.dialogs}"
        assert self.errors == [], self.errors


def wait_for_text(locator, text: str, timeout: float = 60_000) -> None:
    locator.page.wait_for_function(
        "([el, text]) => el.textContent.includes(text)", arg=[locator.element_handle(), text], timeout=timeout
    )


def wait_for_cell(w: Dashboard, name: str, column: int, text: str) -> None:
    """Until the project's row shows `text` in its `column`-th cell (from 1). A function,
    not an expression string: the page's CSP forbids eval."""
    w.page.wait_for_function(
        "([sel, text]) => { const el = document.querySelector(sel); return !!el && el.textContent === text; }",
        arg=[f'#projects tr[data-project="{name}"] td:nth-child({column})', text],
    )


def test_dashboard_operates_the_daemon(fresh_daemon, browser, tmp_path):
    d = fresh_daemon()
    for text in ("<h1>one</h1>", "<h1>two</h1>"):
        r = d.deploy_files("site", {"index.html": text}, env={"DESC": HOSTILE})
        assert r.status_code == 201, r.text
    assert d.deploy_files("talker", {"app.py": TALKER, "requirements.txt": ""}).status_code == 201
    with d.client(admin=False) as c:
        for _ in range(3):
            assert c.get("/site/").status_code == 200
        for _ in range(2):
            assert c.get("/talker/boom").status_code == 500

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    w = Dashboard(context, d.url)
    response = w.open()
    assert response.status == 200
    headers = response.headers
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert TOKEN not in w.page.content(), "the page itself holds no secret"
    assert w.page.locator("#login").is_visible() and not w.page.locator("#app").is_visible()
    w.shot("admin-sign-in")

    # A wrong token is refused and not kept.
    w.sign_in("not-the-token")
    w.page.locator("#login-error").wait_for()
    assert "refused" in w.page.locator("#login-error").inner_text()
    assert w.page.evaluate("sessionStorage.length") == 0

    w.sign_in()
    w.row("talker").wait_for()
    assert TOKEN not in w.page.url
    assert w.page.evaluate("Object.values(sessionStorage)") == [TOKEN]
    assert w.page.evaluate("localStorage.length") == 0
    # Name, Mode, State, Version, Runtime, Tree, Requests, Errors
    site = d.get("/_api/projects/site", admin=True).json()
    assert [w.cell("site", i) for i in range(6)] == ["site", "dev", "serving", "v2", "static", site["tree_sha1"][:12]]
    assert int(w.cell("site", 6)) >= 3 and w.cell("site", 7) == "0"
    assert w.cell("talker", 2) == "serving" and w.cell("talker", 4) == "python"
    assert int(w.cell("talker", 6)) >= 2 and int(w.cell("talker", 7)) >= 2
    w.shot("admin-projects")

    # The talker's log, with its hostile line as text; then followed live.
    w.row("talker").get_by_role("button", name="Open").click()
    log = w.page.locator("#log")
    wait_for_text(log, "booting " + HOSTILE)
    w.page.click("#follow")
    wait_for_text(log, "booting")  # the follow starts with the recent lines
    with d.client(admin=False) as c:
        assert c.get("/talker/live-line").status_code == 200
    wait_for_text(log, "hit /live-line")
    w.shot("admin-log")
    w.page.click("#follow")  # stop following

    # The site's facts and versions; roll back to v1.
    w.row("site").get_by_role("button", name="Open").click()
    facts = w.page.locator("#detail-facts")
    wait_for_text(facts, "DESC=" + HOSTILE)
    versions = w.page.locator("#versions tbody tr")
    versions.nth(1).wait_for()
    assert versions.count() == 2
    assert "serving" in versions.nth(0).inner_text() and "v2" in versions.nth(0).inner_text()
    w.page.get_by_role("button", name="Roll back to v1").click()
    wait_for_text(w.page.locator("#status"), "serves v1 again")
    assert d.get("/_api/projects/site", admin=True).json()["version"] == 1
    assert d.get("/site/").text == "<h1>one</h1>"
    wait_for_cell(w, "site", 4, "v1")

    # Deploy a tarball: the name comes from the file's.
    tarball = tmp_path / "uploaded.tar.gz"
    tarball.write_bytes(make_tar({"index.html": "<h1>from the browser</h1>"}))
    w.page.set_input_files("#deploy-tarball", str(tarball))
    w.page.click("#deploy-form button[type=submit]")
    state = w.page.locator("#deploy-state")
    wait_for_text(state, "Deployed uploaded v1")
    assert d.get("/uploaded/").text == "<h1>from the browser</h1>"
    w.row("uploaded").wait_for()

    # Deploy a folder: packed in the browser; its start output shows while it deploys.
    folder = tmp_path / "folder-app"
    folder.mkdir()
    (folder / "app.py").write_text(
        "print('folder app starting', flush=True)\n"
        "async def handle(method, path, headers, body, env):\n"
        "    return 200, {}, b'from a folder'\n"
    )
    (folder / "requirements.txt").write_text("")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.txt").write_text("nested")
    (folder / ".gitignore").write_text("secret.txt\nbuild/\n*.log\n!keep.log\n")
    expected = tmp_path / "expected-tree"
    shutil.copytree(folder, expected)
    # Left out as `tee-daemon deploy` leaves them out: .git and what .gitignore says.
    for rel, text in {"secret.txt": "private", "build/out.js": "generated", "debug.log": "noise",
                      ".git/HEAD": "ref: refs/heads/main\n", "sub/keep.log": "kept"}.items():  # fmt: skip
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    (expected / "sub" / "keep.log").write_text("kept")
    w.page.set_input_files("#deploy-folder", str(folder))
    w.page.fill("#deploy-name", "")
    w.page.click("#deploy-form button[type=submit]")
    wait_for_text(state, "Deployed folder-app v1", timeout=120_000)
    assert "folder app starting" in w.page.locator("#deploy-output").inner_text()
    assert d.get("/folder-app/").text == "from a folder"
    deployed = d.get("/_api/projects/folder-app", admin=True).json()
    assert deployed["tree_sha1"] == treehash.tree_ids(expected).sha1, "the folder was packed with what it should leave out"
    w.shot("admin-deployed")

    # A deploy that fails says why, with its hostile log line as text; nothing else changes.
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(make_tar({"app.py": f"raise SystemExit({HOSTILE!r})\n"}))
    w.page.set_input_files("#deploy-tarball", str(broken))
    w.page.fill("#deploy-name", "")
    w.page.click("#deploy-form button[type=submit]")
    wait_for_text(state, "Deploy failed", timeout=120_000)
    assert HOSTILE in state.inner_text() or HOSTILE in w.page.locator("#deploy-output").inner_text()

    # Promote asks first and says what it means; cancelling changes nothing.
    w.row("site").get_by_role("button", name="Promote").click()
    dialog = w.page.locator("#confirm")
    dialog.wait_for()
    words = dialog.inner_text()
    for phrase in ("cannot be undone", "append-only transparency log", "without a token"):
        assert phrase in words, words
    w.shot("admin-promote-confirm")
    w.page.click("#confirm-cancel")
    assert d.get("/_api/projects/site", admin=True).json()["mode"] == "dev"
    w.row("site").get_by_role("button", name="Promote").click()
    w.page.click("#confirm-ok")
    wait_for_cell(w, "site", 2, "attested")
    assert d.get("/_api/projects/site").json()["mode"] == "attested"

    # Delete, confirmed.
    w.row("talker").get_by_role("button", name="Delete").click()
    w.page.click("#confirm-ok")
    w.row("talker").wait_for(state="detached")
    assert d.get("/_api/projects/talker", admin=True).status_code == 404

    # The token lasts for the tab: a reload keeps it, another tab has to paste it.
    w.page.reload()
    w.row("site").wait_for()
    other = context.new_page()
    other.goto(d.url + "/_admin/")
    assert other.locator("#login").is_visible()
    # Forgetting it signs the tab out.
    w.page.click("#logout")
    assert w.page.locator("#login").is_visible() and w.page.evaluate("sessionStorage.length") == 0

    w.page.set_viewport_size({"width": 390, "height": 844})
    w.sign_in()
    w.row("site").wait_for()
    w.shot("admin-mobile")
    w.no_markup_from_values()
    context.close()


HANDLER = "async def handle(method, path, headers, body, env):\n    return 200, {}, b'ok'\n"


def wait_for_state(w: Dashboard, name: str, shown: str, timeout: float = 90) -> None:
    """Refresh the dashboard until the project's State cell says `shown`."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        w.page.click("#refresh")
        w.page.wait_for_timeout(500)
        if w.cell(name, 2) == shown:
            return
        assert time.monotonic() < deadline, f"{name} shows {w.cell(name, 2)!r}, not {shown!r}"


def test_dashboard_shows_parked_projects(fresh_daemon, browser):
    d = fresh_daemon(env={"TEE_DAEMON_IDLE_STOP": "1"})
    assert d.deploy_files("sleepy", {"app.py": HANDLER, "requirements.txt": ""}).status_code == 201
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    w = Dashboard(context, d.url)
    w.open()
    w.sign_in()
    w.row("sleepy").wait_for()
    wait_for_state(w, "sleepy", "parked")
    assert d.get("/_api/projects/sleepy", admin=True).json()["instance"]["state"] == "idle"
    w.shot("admin-parked")
    w.no_markup_from_values()
    context.close()


def test_dashboard_shows_crash_looping_projects(fresh_daemon, browser):
    d = fresh_daemon()
    # Serves, then dies 2 s after every start: restarted with backoff until it is a loop.
    crashing = "import os, threading\nthreading.Timer(2.0, lambda: os._exit(3)).start()\n" + HANDLER
    assert d.deploy_files("crashy", {"app.py": crashing, "requirements.txt": ""}).status_code == 201
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    w = Dashboard(context, d.url)
    w.open()
    w.sign_in()
    w.row("crashy").wait_for()
    wait_for_state(w, "crashy", "crash-looping")
    w.row("crashy").get_by_role("button", name="Open").click()
    wait_for_text(w.page.locator("#log"), "crash loop")
    w.shot("admin-crash-loop")
    w.no_markup_from_values()
    context.close()
