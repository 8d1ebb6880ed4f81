"""A redeploy under load drops no request: the old version serves until the new one is
healthy, then traffic switches and the old one drains (SPEC section 5)."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest

from test_runtimes import app_files, deploy_ok


@pytest.mark.parametrize("sample", ["deno-hello", "python-asgi", "node-cjs"])
def test_no_failed_request_across_redeploys(daemon, name, sample):
    files = app_files(sample)
    deploy_ok(daemon, name, files, env={"GREETING": "v1"})
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    seen: set[str] = set()
    lock = threading.Lock()

    def hammer() -> None:
        with httpx.Client(base_url=daemon.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.get(f"/{name}/ping")
                    key = str(r.status_code)
                    if r.status_code == 200:
                        with lock:
                            seen.add(r.json()["env"]["GREETING"])
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                with lock:
                    outcomes[key] += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for version in ("v2", "v3", "v4"):
            deploy_ok(daemon, name, files, env={"GREETING": version})
        with daemon.client() as c:
            assert c.post(f"/_api/projects/{name}/rollback").status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert set(outcomes) == {"200"}, outcomes
    assert outcomes["200"] > 50
    assert {"v1", "v4"} <= seen  # Traffic really moved between versions.
    assert daemon.get(f"/{name}/ping").json()["env"]["GREETING"] == "v3"
