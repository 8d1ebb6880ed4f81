"""Each hook exercised through a real daemon with the worked example installed
(tests/thirdparty/tee-runtime-echo), or through the registry where that is the
operation. tests/test_hook_manual.py checks that every hook has a test here named
``test_hook_<hook>_...``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import DaemonProcess
from tee_daemon.kernel.registry import Registry
from tee_daemon.plugin import RuntimeInfo, hookimpl

ECHO_DIST = Path(__file__).parent / "thirdparty" / "tee-runtime-echo"


@pytest.fixture(scope="module")
def echo_daemon(tmp_path_factory: pytest.TempPathFactory):
    """A daemon with the echo runtime pip-installed as a third party would install it."""
    site = tmp_path_factory.mktemp("echo-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
         "--disable-pip-version-check", "--target", str(site), str(ECHO_DIST)],
        check=True, capture_output=True,
    )  # fmt: skip
    proc = DaemonProcess(tmp_path_factory.mktemp("echo") / "data", env={"PYTHONPATH": str(site)}).start()
    yield proc
    proc.stop()


@pytest.fixture
def echo_module(monkeypatch):
    """The echo plugin imported in this process, for registry-level checks."""
    monkeypatch.syspath_prepend(str(ECHO_DIST))
    import tee_runtime_echo

    return tee_runtime_echo


def running(daemon: DaemonProcess) -> int:
    return daemon.get("/_api/substrate").json()["runtimes"]["echo"]["facts"]["running"]


def delete(daemon: DaemonProcess, name: str) -> None:
    with daemon.client() as c:
        assert c.delete(f"/_api/projects/{name}").status_code == 200


def wait_for(check, timeout: float = 20.0) -> None:
    """Stopping a replaced instance waits for its requests to drain: poll for it."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_hook_runtime_describe_publishes_the_runtime(echo_daemon: DaemonProcess):
    entry = echo_daemon.get("/_api/substrate").json()["runtimes"]["echo"]
    assert entry["version"] == "1.0.0"
    assert entry["description"] == "answers every request with the text of echo.txt"
    # The built-ins are still there next to it.
    assert {"static", "node", "python"} <= set(echo_daemon.get("/_api/substrate").json()["runtimes"])


def test_hook_runtime_describe_default_entry_is_used(echo_daemon: DaemonProcess, name: str):
    # The runtime named, no entry: the one runtime_describe declared is used.
    r = echo_daemon.deploy_files(name, {"echo.txt": "default entry"}, runtime="echo")
    assert r.status_code == 201, r.text
    assert r.json()["entry"] == "echo.txt"


def test_hook_runtime_detect_claims_only_what_it_recognises(echo_daemon: DaemonProcess, name: str):
    r = echo_daemon.deploy_files(name, {"echo.txt": "detected"})
    assert r.status_code == 201, r.text
    assert (r.json()["runtime"], r.json()["entry"]) == ("echo", "echo.txt")
    other = echo_daemon.deploy_files(f"{name}-html", {"index.html": "<p>hi</p>"})
    assert other.status_code == 201, other.text
    assert other.json()["runtime"] == "static"  # echo said None for a tree without echo.txt


def test_hook_runtime_detect_priority_orders_the_claims(echo_module, tmp_path: Path):
    registry = Registry(entry_points=False, extra=(echo_module,))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "echo.txt").write_text("x")
    (tree / "index.js").write_text("x")  # node claims it too, at 30 < 45
    assert registry.detect(tree).runtime == "echo"
    (tree / "server.ts").write_text("x")  # deno at 50 > 45
    assert registry.detect(tree).runtime == "deno"


def test_hook_runtime_build_refusals_are_4xx_with_the_plugins_message(echo_daemon: DaemonProcess, name: str):
    assert echo_daemon.deploy_files(name, {"echo.txt": "first"}).status_code == 201
    too_big = echo_daemon.deploy_files(name, {"echo.txt": "x" * 5000})
    assert too_big.status_code == 422, too_big.text
    assert "5000 bytes" in too_big.json()["detail"] and "at most 4096" in too_big.json()["detail"]
    not_text = echo_daemon.deploy_files(name, {"echo.txt": b"\xff\xfe\x00"})
    assert not_text.status_code == 422 and "not UTF-8" in not_text.json()["detail"]
    # The previous version keeps serving.
    assert echo_daemon.get(f"/{name}/").text == "echo: first at /"


def test_hook_runtime_build_writes_the_build_dir_and_the_build_log(echo_daemon: DaemonProcess, name: str):
    r = echo_daemon.deploy_files(name, {"echo.txt": "  built text  \n"})
    assert r.status_code == 201, r.text
    version = r.json()["version"]
    # What start serves is what build left (stripped), not the raw tree.
    assert echo_daemon.get(f"/{name}/").text == "echo: built text at /"
    log = (echo_daemon.data_dir / "projects" / name / "logs" / "build.log").read_text()
    assert f"echo: built 10 characters for version {version}" in log


def test_hook_runtime_start_gets_the_project_env(echo_daemon: DaemonProcess, name: str):
    r = echo_daemon.deploy_files(name, {"echo.txt": "hello"}, env={"GREETING": "hey"})
    assert r.status_code == 201, r.text
    assert echo_daemon.get(f"/{name}/").text == "hey: hello at /"
    r = echo_daemon.deploy_files(name, {"echo.txt": "hello"}, env={"GREETING": "hi"})
    assert r.status_code == 201, r.text
    assert echo_daemon.get(f"/{name}/").text == "hi: hello at /"


def test_hook_runtime_forward_sees_the_path_inside_the_project(echo_daemon: DaemonProcess, name: str):
    assert echo_daemon.deploy_files(name, {"echo.txt": "p"}).status_code == 201
    assert echo_daemon.get(f"/{name}/some/path").text == "echo: p at /some/path"
    assert echo_daemon.get(f"/{name}/").text == "echo: p at /"


def test_hook_runtime_stop_follows_each_replaced_and_deleted_instance(echo_daemon: DaemonProcess, name: str):
    before = running(echo_daemon)
    assert echo_daemon.deploy_files(name, {"echo.txt": "one"}).status_code == 201
    assert running(echo_daemon) == before + 1
    for text in ("two", "three"):
        assert echo_daemon.deploy_files(name, {"echo.txt": text}).status_code == 201
        assert echo_daemon.get(f"/{name}/").text == f"echo: {text} at /"
    # Each replaced instance, once drained, was stopped and handed to runtime_stop.
    wait_for(lambda: running(echo_daemon) == before + 1)
    delete(echo_daemon, name)
    assert running(echo_daemon) == before


def test_hook_runtime_forget_drops_what_the_runtime_kept(echo_daemon: DaemonProcess, name: str):
    assert echo_daemon.deploy_files(name, {"echo.txt": "count"}).status_code == 201
    counts = [echo_daemon.get(f"/{name}/").headers["x-echo-request"] for _ in range(2)]
    assert counts == ["1", "2"]
    # Kept across versions (a redeploy stops the old instance but forgets nothing)...
    assert echo_daemon.deploy_files(name, {"echo.txt": "count again"}).status_code == 201
    assert echo_daemon.get(f"/{name}/").headers["x-echo-request"] == "3"
    # ... and dropped when the project is deleted.
    delete(echo_daemon, name)
    assert echo_daemon.deploy_files(name, {"echo.txt": "count"}).status_code == 201
    assert echo_daemon.get(f"/{name}/").headers["x-echo-request"] == "1"


def test_hook_runtime_substrate_facts_are_nested_under_the_runtime(echo_daemon: DaemonProcess, name: str):
    assert echo_daemon.deploy_files(name, {"echo.txt": "up"}).status_code == 201
    # Public: asked without the admin token. (Counts are compared within one answer:
    # an instance replaced by another test may still be draining.)
    facts = echo_daemon.get("/_api/substrate", admin=False).json()
    echo = facts["runtimes"]["echo"]
    assert set(echo["facts"]) == {"running"} and echo["facts"]["running"] >= 1
    assert "running" not in facts  # never merged into core's own fields
    assert "facts" not in facts["runtimes"]["static"]  # one plugin's answer is not another's


class Overreach:
    """A plugin whose substrate answer names core's own fields."""

    __name__ = "overreach"

    @hookimpl
    def runtime_describe(self):
        return [RuntimeInfo(name="overreach")]

    @hookimpl
    def runtime_substrate(self):
        return {"tee": "real-tdx", "isolation": "none"}


def test_hook_runtime_substrate_cannot_overwrite_core_fields():
    registry = Registry(entry_points=False, extra=(Overreach(),))
    runtimes = registry.runtime_facts()
    # Only runtime names at this level, the answer inside the plugin's own entry.
    assert set(runtimes) == set(registry.runtimes)
    assert runtimes["overreach"]["facts"] == {"tee": "real-tdx", "isolation": "none"}
