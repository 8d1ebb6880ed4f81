"""The viewer and the verification page show what runs beyond the tree (SPEC 12): the
toolchain, whether the project is pinned, the lockfile's digest; an unpinned project is a
warning the page explains, and a bundle whose `pinned` was flipped fails the in-browser
manifest hash."""

from __future__ import annotations

import hashlib
import json

import pytest

from test_deps_attested import NODE_APP, package_json, package_lock
from test_viewer_browser import Watched, attested, browser, context, statuses, verdict  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def projects(daemon) -> dict[str, dict]:
    pinned = {"index.js": NODE_APP, "package.json": package_json(), "package-lock.json": package_lock("2.1.3")}
    loose = {"index.js": NODE_APP, "package.json": package_json()}
    return {
        "deps-page-pinned": {**attested(daemon, "deps-page-pinned", pinned), "files": pinned},
        "deps-page-loose": {**attested(daemon, "deps-page-loose", loose), "files": loose},
    }


def test_viewer_cards_show_toolchain_pinned_and_lockfile(daemon, context, projects):
    w = Watched(context, daemon.url)
    w.goto("/")
    pinned = w.page.locator('li.card[data-project="deps-page-pinned"]')
    pinned.wait_for()
    lock = hashlib.sha256(projects["deps-page-pinned"]["files"]["package-lock.json"].encode()).hexdigest()
    manifest = daemon.get("/_api/projects/deps-page-pinned").json()
    deps = pinned.locator("dd[data-pinned]")
    assert deps.get_attribute("data-pinned") == "true" and deps.locator(".badge.pinned").is_visible()
    assert deps.get_by_text(lock[:16]).is_visible()
    assert pinned.get_by_text(f"node {manifest['toolchain']['node']}").is_visible()
    assert pinned.get_by_text(f"npm {manifest['toolchain']['npm']}").is_visible()
    loose = w.page.locator('li.card[data-project="deps-page-loose"] dd[data-pinned]')
    assert loose.get_attribute("data-pinned") == "false" and loose.get_by_text("NOT pinned").is_visible()
    w.shot("viewer-deps")
    w.clean()


def test_verification_page_passes_pinned_and_warns_unpinned(daemon, context, projects):
    w = Watched(context, daemon.url)
    w.goto("/_api/verification/deps-page-pinned")
    assert verdict(w) == "pass"
    assert w.page.locator("#verdict").get_by_text("not pinned").count() == 0
    got = statuses(w)
    assert got["deps"] == "pass" and got["manifest"] == "pass", got
    lock = daemon.get("/_api/projects/deps-page-pinned").json()["lock_sha256"]
    assert w.page.locator("#manifest").get_by_text(lock).is_visible()
    assert w.page.locator("#manifest").get_by_text("yes: installed from a lockfile").is_visible()

    w.goto("/_api/verification/deps-page-loose")
    assert verdict(w) == "pass"  # no check failed ...
    assert "warn" in w.page.get_attribute("#verdict", "class")  # ... but it is a warning, and says why
    assert w.page.locator("#verdict").get_by_text("dependencies are not pinned").is_visible()
    got = statuses(w)
    assert got["deps"] == "warn" and got["manifest"] == "pass", got
    assert w.page.locator('[data-check="deps"]').get_by_text("NOT pinned").is_visible()
    explained = w.page.locator("#deps-explained")
    assert explained.get_by_text("counterparty").is_visible() and explained.get_by_text("--allow-unpinned").is_visible()
    w.shot("verification-unpinned")
    w.clean()


def test_a_bundle_claiming_pinned_fails_the_manifest_hash(daemon, context, projects):
    w = Watched(context, daemon.url)

    def doctored(route):
        if "application/json" not in (route.request.headers.get("accept") or ""):
            route.continue_()
            return
        response = route.fetch()
        bundle = response.json()
        bundle["manifest"]["pinned"] = True
        route.fulfill(response=response, body=json.dumps(bundle))

    w.page.route("**/_api/verification/deps-page-loose?*", doctored)
    w.goto("/_api/verification/deps-page-loose")
    assert verdict(w) == "fail"
    got = statuses(w)
    assert got["manifest"] == "fail" and got["deps"] == "pass", got
    w.clean()
