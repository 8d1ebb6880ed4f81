"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by
Playwright, never a browser download; the flags keep it off this machine's closed
network (no background connections)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = os.environ.get("TEE_DAEMON_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

# Never skipped: `make test` installs Chromium (scripts/setup-system.sh), so a missing
# browser is a broken setup and must fail loudly.
if not Path(CHROMIUM).exists():
    raise RuntimeError(f"{CHROMIUM} missing: run scripts/setup-system.sh")


@contextmanager
def chromium(*extra_flags: str):
    """A launched browser (Playwright's Browser) with `FLAGS` plus `extra_flags`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*FLAGS, *extra_flags])
        try:
            yield browser
        finally:
            browser.close()
