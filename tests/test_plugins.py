"""The microkernel: third-party runtimes from entry points, collisions, precedence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import DaemonProcess

from tee_daemon.kernel import hookspecs
from tee_daemon.kernel.errors import UserError
from tee_daemon.kernel.registry import PluginCollision, Registry
from tee_daemon.kernel.contract import Detection, RuntimeInfo

THIRDPARTY = Path(__file__).parent / "thirdparty"


def install(dist: str, target: Path) -> Path:
    """pip-install a distribution kept under tests/thirdparty into its own folder."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
         "--disable-pip-version-check", "--target", str(target), str(THIRDPARTY / dist)],
        check=True, capture_output=True,
    )  # fmt: skip
    return target


def test_third_party_runtime_deploys_without_core_changes(tmp_path):
    site = install("tee-runtime-echo", tmp_path / "site")
    proc = DaemonProcess(tmp_path / "data", env={"PYTHONPATH": str(site)}).start()
    try:
        assert proc.get("/_api/substrate").json()["runtimes"]["echo"]["version"] == "1.0.0"
        # Detected by its own detect hook, with no runtime named in the manifest.
        r = proc.deploy_files("hello", {"echo.txt": "hi there"}, env={"GREETING": "hey"})
        assert r.status_code == 201, r.text
        assert r.json()["runtime"] == "echo" and r.json()["entry"] == "echo.txt"
        assert proc.get("/hello/some/path").text == "hey: hi there at /some/path"
    finally:
        proc.stop()


def test_runtime_name_collision_fails_loudly(tmp_path):
    site = install("tee-runtime-clash", tmp_path / "site")
    proc = DaemonProcess(tmp_path / "data", env={"PYTHONPATH": str(site)})
    with pytest.raises(RuntimeError) as failure:
        proc.start(timeout=30)
    assert "runtime 'static' is provided by both" in str(failure.value)


class Claim:
    """An in-process plugin claiming every tree for a runtime at a given priority."""

    def __init__(self, name: str, priority: int) -> None:
        self.__name__ = f"claim-{name}"
        self.name, self.priority = name, priority

    @hookspecs.hookimpl
    def runtime_describe(self):
        return [RuntimeInfo(name=self.name, detect_priority=self.priority)]

    @hookspecs.hookimpl
    def runtime_detect(self, tree):
        return Detection(runtime=self.name)


def test_detection_precedence_is_explicit(tmp_path):
    registry = Registry(entry_points=False, extra=(Claim("low", 5), Claim("high", 99)))
    assert registry.detect(tmp_path).runtime == "high"
    assert Registry(entry_points=False, extra=(Claim("low", 5),)).detect(tmp_path).runtime == "low"


def test_builtin_detection_order(tmp_path):
    """SPEC section 5: Dockerfile, server.ts, index.ts, index.js, app.py, else static."""
    registry = Registry(entry_points=False)
    order = [("Dockerfile", "dockerfile"), ("server.ts", "deno"), ("index.ts", "bun"), ("index.js", "node"), ("app.py", "python")]
    for i, (filename, runtime) in enumerate(order):
        tree = tmp_path / f"t{i}"
        tree.mkdir()
        for later, _ in order[i:]:
            (tree / later).write_text("x")
        assert registry.detect(tree).runtime == runtime, filename
    empty = tmp_path / "empty"
    empty.mkdir()
    assert registry.detect(empty).runtime == "static"


def test_plugin_registered_twice_refused():
    plugin = Claim("twice", 1)
    with pytest.raises(PluginCollision):
        Registry(entry_points=False, extra=(plugin, plugin))


def test_unknown_runtime_message_lists_the_known_ones():
    with pytest.raises(UserError, match="available: .*static"):
        Registry(entry_points=False).start(type("Ctx", (), {"runtime": "cobol"})())
