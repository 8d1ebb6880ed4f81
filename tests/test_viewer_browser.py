"""The viewer and the verification page in a real browser (Debian's Chromium via Playwright).

Pages render, the in-browser checks pass on a good project and fail on a doctored bundle,
hostile values render as text. Screenshots go to test-artifacts/ for humans to look at.
"""

from __future__ import annotations

import json

import pytest

from harness import REPO
from browser import chromium

ARTIFACTS = REPO / "test-artifacts"
HOSTILE = "<img src=x onerror=alert(1)>"
SITE = {"index.html": "<!doctype html><h1>hello</h1>"}



@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


class Watched:
    """A page that records dialogs, script errors and console errors (CSP reports included)."""

    def __init__(self, context, base_url: str) -> None:
        self.page = context.new_page()
        self.base = base_url
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("console", lambda msg: msg.type == "error" and self.errors.append(f"console: {msg.text}"))

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def goto(self, path: str):
        return self.page.goto(self.base + path)

    def shot(self, name: str, full_page: bool = True) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)

    def fits(self) -> None:
        """Nothing sticks out sideways (the page is usable on a phone)."""
        width = self.page.viewport_size["width"]
        assert self.page.evaluate("document.documentElement.scrollWidth") <= width

    def clean(self) -> None:
        assert self.dialogs == [], f"a dialog fired: {self.dialogs}"
        assert self.errors == [], self.errors


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context
    context.close()


def attested(daemon, name: str, files=SITE, **manifest) -> dict:
    r = daemon.deploy_files(name, files, **manifest)
    assert r.status_code == 201, r.text
    with daemon.client() as c:
        r = c.post(f"/_api/projects/{name}/promote")
    assert r.status_code == 200, r.text
    return r.json()


def verdict(w: Watched) -> str:
    w.page.wait_for_selector("#verdict[data-result]", timeout=20_000)
    return w.page.get_attribute("#verdict", "data-result")


def statuses(w: Watched) -> dict[str, str]:
    return w.page.eval_on_selector_all(
        "#checks li", "els => Object.fromEntries(els.map(e => [e.dataset.check, e.dataset.status]))"
    )


# -- the viewer ------------------------------------------------------------------------


def test_viewer_lists_attested_projects_with_hostile_values_as_text(daemon, context, name):
    attested(daemon, name, env={"GREETING": HOSTILE, "PLAIN": "ok"})
    dev = name + "-dev"
    assert daemon.deploy_files(dev, SITE).status_code == 201

    w = Watched(context, daemon.url)
    response = w.goto("/")
    assert response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    card = w.page.locator(f'li.card[data-project="{name}"]')
    card.wait_for()
    assert card.get_by_text("GREETING=" + HOSTILE).is_visible()
    assert card.locator("img[src=x]").count() == 0
    assert w.page.locator(f'li.card[data-project="{dev}"]').count() == 0, "dev projects are not listed"
    # The links a visitor needs: the app and its verification page.
    assert card.get_by_role("link", name="Open app").get_attribute("href") == f"/{name}/"
    assert card.get_by_role("link", name="Verify").get_attribute("href") == f"/_api/verification/{name}"
    assert card.get_by_text("static", exact=True).is_visible()
    tee = daemon.get("/_api/substrate").json()["tee"]
    if tee != "tdx":
        assert w.page.locator("#tee-banner").is_visible()
    assert w.page.locator("link[rel=stylesheet]").count() == 1
    # Assets come from the daemon itself.
    for el in w.page.eval_on_selector_all("link[href], script[src], img[src]", "els => els.map(e => e.href || e.src)"):
        assert el.startswith(daemon.url + "/"), el
    w.shot("viewer-desktop")
    w.page.set_viewport_size({"width": 390, "height": 844})
    w.shot("viewer-mobile")
    w.fits()
    w.clean()

    # The app link works.
    w.page.set_viewport_size({"width": 1280, "height": 900})
    card.get_by_role("link", name="Open app").click()
    w.page.wait_for_url(f"{daemon.url}/{name}/")
    assert w.page.locator("h1").inner_text() == "hello"


def test_viewer_source_links_for_github_like_urls():
    from tee_daemon.web.viewer import source_link

    c = "a" * 40
    assert source_link("https://github.com/o/r.git", c) == f"https://github.com/o/r/tree/{c}"
    assert source_link("https://user:pw@github.com/o/r", c) == f"https://github.com/o/r/tree/{c}"
    assert source_link("https://gitlab.com/g/sub/r.git", c) == f"https://gitlab.com/g/sub/r/-/tree/{c}"
    assert source_link("https://codeberg.org/o/r", c) == f"https://codeberg.org/o/r/src/commit/{c}"
    assert source_link("http://github.com/o/r", c) is None
    assert source_link("file:///srv/r", c) is None
    assert source_link("https://github.com/o/r", "main") is None
    assert source_link("https://github.com/o/r", None) is None


def test_empty_viewer_explains_how_to_start(fresh_daemon, context):
    d = fresh_daemon()
    w = Watched(context, d.url)
    assert w.goto("/").status == 200
    assert w.page.get_by_text("Nothing is attested on this daemon yet").is_visible()
    w.shot("viewer-empty")
    w.clean()


# -- the verification page -------------------------------------------------------------


def test_verification_page_passes_on_a_good_project(daemon, context, name):
    attested(daemon, name, env={"GREETING": HOSTILE})
    w = Watched(context, daemon.url)
    response = w.goto(f"/_api/verification/{name}")
    assert response.status == 200
    assert verdict(w) == "pass"
    got = statuses(w)
    for check in ("report-data", "quote-format", "rtmr3", "event-digests", "app-identity", "preimage", "manifest",
                  "checkpoint-note", "checkpoint-sig", "latest"):  # fmt: skip
        assert got.get(check) == "pass", (check, got)
    assert [k for k in got if k.startswith("inclusion-")], got
    assert all(v in ("pass", "info", "warn") for v in got.values()), got
    assert got["quote-signature"] == "info"
    tee = daemon.get("/_api/substrate").json()["tee"]
    assert got["tee"] == ("info" if tee == "tdx" else "warn")
    # The manifest table shows the hostile env value as text, and the command line to go further.
    assert w.page.locator("#manifest").get_by_text("GREETING=" + HOSTILE).is_visible()
    cmd = w.page.locator("#verify-cmd").inner_text()
    assert cmd.startswith(f"tee-daemon verify {daemon.url} {name}")
    assert w.page.locator(".timeline li").count() >= 1
    w.shot("verification-pass")
    w.page.set_viewport_size({"width": 390, "height": 844})
    w.shot("verification-mobile")
    w.fits()
    w.clean()


def _flip_hex(s: str, at: int) -> str:
    return s[:at] + ("0" if s[at] != "0" else "1") + s[at + 1 :]


def _doctor_report_data(b):
    b["attestation"]["quote"] = _flip_hex(b["attestation"]["quote"], 2 * 568 + 5)


def _doctor_leaf(b):
    entry = b["audit"]["entries"][0]
    entry["leaf"] = entry["leaf"].replace('"action":"promote"', '"action":"deploy"')


def _doctor_manifest(b):
    b["manifest"]["env"] = {"GREETING": "changed"}


def _doctor_signature(b):
    cp = b["audit"]["checkpoint"]
    sig = bytearray(__import__("base64").b64decode(cp["signature"]))
    sig[0] ^= 1
    cp["signature"] = __import__("base64").b64encode(bytes(sig)).decode()


def _doctor_event_digest(b):
    events = json.loads(b["attestation"]["event_log"])
    events[1]["digest"] = _flip_hex(events[1]["digest"], 0)
    b["attestation"]["event_log"] = json.dumps(events)


def _doctor_event_removed(b):
    events = json.loads(b["attestation"]["event_log"])
    del events[1]
    b["attestation"]["event_log"] = json.dumps(events)


def _doctor_proof(b):
    proof = b["audit"]["entries"][-1]["inclusion_proof"]
    if proof:
        proof[0] = _flip_hex(proof[0], 0)
    else:  # a one-leaf log: claim a bigger tree instead
        b["audit"]["entries"][-1]["inclusion_proof"] = ["00" * 32]


@pytest.mark.parametrize(
    "doctor, failing",
    [
        (_doctor_report_data, "report-data"),
        (_doctor_leaf, "inclusion-"),
        (_doctor_manifest, "manifest"),
        (_doctor_signature, "checkpoint-sig"),
        (_doctor_proof, "inclusion-"),
        (_doctor_event_digest, "event-digests"),
        (_doctor_event_removed, "rtmr3"),
    ],
    ids=["report-data", "leaf", "manifest", "signature", "proof", "event-digest", "event-removed"],
)
def test_verification_page_fails_on_a_doctored_bundle(daemon, context, name, doctor, failing, request):
    attested(daemon, name)
    w = Watched(context, daemon.url)

    def doctored(route):
        if "application/json" not in (route.request.headers.get("accept") or ""):
            route.continue_()
            return
        response = route.fetch()
        bundle = response.json()
        doctor(bundle)
        route.fulfill(response=response, body=json.dumps(bundle))

    w.page.route(f"**/_api/verification/{name}?*", doctored)
    w.goto(f"/_api/verification/{name}")
    assert verdict(w) == "fail"
    got = statuses(w)
    bad = [k for k, v in got.items() if v == "fail"]
    assert any(k.startswith(failing) for k in bad), got
    assert w.page.locator("#verdict h2").inner_text().endswith("failed")
    w.shot(f"verification-doctored-{request.node.callspec.id}")
    w.clean()


def test_replayed_quote_fails_the_nonce_check(daemon, context, name):
    attested(daemon, name)
    old = daemon.get(f"/_api/verification/{name}?nonce=" + "11" * 32).text
    w = Watched(context, daemon.url)
    w.page.route(
        f"**/_api/verification/{name}?*",
        lambda route: route.fulfill(body=old, content_type="application/json")
        if "application/json" in (route.request.headers.get("accept") or "")
        else route.continue_(),
    )
    w.goto(f"/_api/verification/{name}")
    assert verdict(w) == "fail"
    assert statuses(w)["preimage"] == "fail"
    assert w.page.locator('[data-check="preimage"]').get_by_text("nonce is").is_visible()
    w.clean()


def test_second_visit_checks_consistency_with_the_first(daemon, context, name):
    attested(daemon, name, files={"index.html": "one"})
    w = Watched(context, daemon.url)
    w.goto(f"/_api/verification/{name}")
    assert verdict(w) == "pass"
    assert statuses(w)["consistency"] == "info"
    # A new version of an attested project grows the log.
    assert daemon.deploy_files(name, {"index.html": "two"}).status_code == 201
    w.goto(f"/_api/verification/{name}")
    assert verdict(w) == "pass"
    assert statuses(w)["consistency"] == "pass"
    assert w.page.locator(".timeline li").count() == 2
    w.shot("verification-second-visit")

    # A log that forgot what this browser saw is flagged.
    w.page.evaluate(
        """() => { for (const k of Object.keys(localStorage)) {
             const v = JSON.parse(localStorage.getItem(k)); v.root = "00".repeat(32);
             localStorage.setItem(k, JSON.stringify(v)); } }"""
    )
    w.goto(f"/_api/verification/{name}")
    assert verdict(w) == "fail"
    assert statuses(w)["consistency"] == "fail"
    w.clean()


def test_name_edges_and_unknown_projects(daemon, context):
    longest = "0" + "-9" * 31  # 63 characters: the longest name there is
    attested(daemon, longest)
    w = Watched(context, daemon.url)
    w.goto("/")
    assert w.page.locator(f'li.card[data-project="{longest}"] h2').inner_text() == longest
    w.goto(f"/_api/verification/{longest}")
    assert verdict(w) == "pass"
    assert w.page.locator("h1").inner_text() == f"Verify {longest}"
    # Unknown and hostile names: a 404, never a page that echoes markup.
    response = w.goto("/_api/verification/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    assert response.status == 404
    assert w.page.locator("img[src=x]").count() == 0
    assert w.dialogs == []


def test_assets_are_served_and_unknown_ones_404(daemon):
    r = daemon.get("/_api/assets/style.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert daemon.get("/_api/assets/verify.js").headers["content-type"].startswith("text/javascript")
    assert daemon.get("/_api/assets/nope.js").status_code == 404
    assert daemon.get("/_api/assets/..%2Fviewer.py").status_code == 404
