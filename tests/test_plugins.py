"""The microkernel: third-party runtimes from entry points, collisions, precedence."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def probe_daemon(tmp_path_factory):
    """A daemon with tests/thirdparty/tee-runtime-probe installed (see its docstring)."""
    root = tmp_path_factory.mktemp("probe")
    site = install("tee-runtime-probe", root / "site")
    proc = DaemonProcess(root / "data", env={"PYTHONPATH": str(site)}).start()
    proc.site = site
    yield proc
    proc.stop()


def probe_deploy(daemon, name: str, text: str) -> dict:
    r = daemon.deploy_files(name, {"probe.txt": text})
    assert r.status_code == 201, r.text
    assert r.json()["runtime"] == "probe"
    return daemon.get(f"/{name}/").json()


def test_contexts_carry_kept_versions_folders_daemon_id_and_backend(probe_daemon, tmp_path):
    """What plugins used to compute from core's disk layout or read from the daemon's
    environment comes in the build and start contexts."""
    name = "probe-ctx"
    first = probe_deploy(probe_daemon, name, "v1")
    assert first["build"]["kept_versions"] == [1] and first["start"]["kept_versions"] == [1]
    for n in range(2, 8):
        seen = probe_deploy(probe_daemon, name, f"v{n}")
    # Core keeps 5 versions: the build and the start of v7 already know 1 and 2 go.
    assert seen["build"]["version"] == seen["start"]["version"] == 7
    assert seen["build"]["kept_versions"] == seen["start"]["kept_versions"] == [3, 4, 5, 6, 7]
    kept = [v["version"] for v in probe_daemon.get(f"/_api/projects/{name}/versions", admin=True).json()["versions"]]
    assert sorted(kept) == [3, 4, 5, 6, 7]

    project_dir = probe_daemon.data_dir / "projects" / name
    for facts in (seen["build"], seen["start"]):
        assert facts["backend"] == "process"
        folders = facts["folders"]
        assert folders["project_dir"] == str(project_dir)
        assert folders["logs_dir"] == str(project_dir / "logs")
        assert folders["cache_dir"] == str(project_dir / "cache")
        # The data dir is the project's (on its own volume when the daemon makes them).
        assert folders["data_dir"] in (str(project_dir / "data"), str(project_dir / "volume" / "data"))
        assert Path(folders["data_dir"]).is_dir() and Path(folders["logs_dir"]).is_dir()

    # The daemon id is short, the same for builds and starts, kept across a restart of
    # the daemon (names on a shared engine must survive it), and another data dir's differs.
    daemon_id = seen["start"]["daemon_id"]
    assert daemon_id and len(daemon_id) <= 16 and seen["build"]["daemon_id"] == daemon_id
    probe_daemon.stop()
    probe_daemon.start()
    restarted = probe_daemon.get(f"/{name}/").json()
    assert restarted["start"]["daemon_id"] == daemon_id
    assert restarted["start"]["kept_versions"] == [3, 4, 5, 6, 7]
    other = DaemonProcess(tmp_path / "data", env={"PYTHONPATH": str(probe_daemon.site)}).start()
    try:
        assert probe_deploy(other, name, "v1")["start"]["daemon_id"] != daemon_id
    finally:
        other.stop()


def test_a_plugin_cannot_overwrite_core_substrate_facts(probe_daemon, tmp_path):
    """A plugin's runtime_substrate answer is shown under its runtime's name only: the
    TEE mode, the isolation in force, the backend and other runtimes stay core's."""
    facts = probe_daemon.get("/_api/substrate").json()
    answer = facts["runtimes"]["probe"]["facts"]  # the plugin's answer, whole, where it belongs
    assert answer["tee"] == "tdx" and answer["isolation"]["kind"] == "none" and answer["engine"]
    assert facts["runtimes"]["probe"]["version"] == "1.0.0"
    # The same daemon without the plugin says the same about everything core owns.
    plain = DaemonProcess(tmp_path / "data").start()
    try:
        core = plain.get("/_api/substrate").json()
    finally:
        plain.stop()
    assert facts["tee"] == core["tee"] != answer["tee"]
    assert "forged" not in json.dumps(facts["tee_info"])
    assert facts["backend"] == core["backend"] == "process"
    assert facts["isolation"]["kind"] == core["isolation"]["kind"] != "none"
    assert facts["runtimes"]["python"] == core["runtimes"]["python"]
    assert "engine" not in facts


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


class Facts:
    """An in-process plugin with `runtimes` and a substrate answer."""

    def __init__(self, label: str, runtimes: tuple[str, ...], answer) -> None:
        self.__name__ = f"facts-{label}"
        self.runtimes, self.answer = runtimes, answer

    @hookspecs.hookimpl
    def runtime_describe(self):
        return [RuntimeInfo(name=n, version="9.9") for n in self.runtimes]

    @hookspecs.hookimpl
    def runtime_substrate(self):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_substrate_facts_are_nested_under_each_runtime_of_their_plugin():
    registry = Registry(entry_points=False, extra=(
        Facts("pair", ("alpha", "beta"), {"tee": "forged", "engine": "pair 2"}),
        Facts("quiet", ("gamma",), None),
        Facts("ownerless", (), {"tee": "forged too"}),
        Facts("broken", ("delta",), RuntimeError("secret-ish detail")),
    ))  # fmt: skip
    runtimes = registry.runtime_facts()
    # One plugin's answer under each runtime it declared, beside what it described.
    assert runtimes["alpha"] == runtimes["beta"] == {
        "version": "9.9", "description": "", "facts": {"tee": "forged", "engine": "pair 2"},
    }  # fmt: skip
    assert runtimes["gamma"] == {"version": "9.9", "description": ""}  # nothing to show
    # A plugin that declares no runtime has nowhere to put facts: they are not shown.
    assert "forged too" not in json.dumps(runtimes)
    # A plugin whose hook raises: the others still answer, and its error says where to look.
    assert "daemon's log" in runtimes["delta"]["facts"]["error"]
    assert "secret-ish" not in json.dumps(runtimes)
    assert {"alpha", "beta", "gamma", "static", "python"} <= set(runtimes)


def test_plugin_registered_twice_refused():
    plugin = Claim("twice", 1)
    with pytest.raises(PluginCollision):
        Registry(entry_points=False, extra=(plugin, plugin))


def test_unknown_runtime_message_lists_the_known_ones():
    with pytest.raises(UserError, match="available: .*static"):
        Registry(entry_points=False).start(type("Ctx", (), {"runtime": "cobol"})())
