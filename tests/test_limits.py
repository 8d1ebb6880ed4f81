"""Per-project cgroup limits (SPEC 9), against the real kernel: needs root and cgroups."""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tee_daemon.run import limits
from tee_daemon.run.limits import Cgroups, Limits, Unit

SUPPORT = limits.probe()
if isinstance(SUPPORT, str):
    # On a developer's machine without cgroups this is a skip; in CI it would hide
    # unenforced limits.
    if os.environ.get("CI"):
        raise RuntimeError(f"cgroup limits do not work on this CI machine: {SUPPORT}")
    pytestmark = pytest.mark.skip(reason=f"no cgroup limits here: {SUPPORT}")

_keys = itertools.count()


@pytest.fixture
def make():
    """Cgroups with a key of their own per test; everything is killed and removed after."""
    made: list[Cgroups] = []

    def make(key: str | None = None, **kw) -> Cgroups:
        cg = Cgroups(key or f"test-{os.getpid()}-{next(_keys)}", Limits(**kw))
        made.append(cg)
        return cg

    yield make
    for cg in made:
        cg.close()


def spawn(unit: Unit, argv: list[str], **kw) -> subprocess.Popen:
    """Start argv inside the unit, the way the sandbox spawner does."""
    fds = unit.procs_fds()
    try:
        return subprocess.Popen(argv, preexec_fn=functools.partial(limits.join, fds), **kw)
    finally:
        for fd in fds:
            os.close(fd)


def python(unit: Unit, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = spawn(unit, [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def in_unit(pid: int, unit: Unit) -> bool:
    """Whether /proc/<pid>/cgroup puts the process in the unit in every hierarchy."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    mine = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            mine[c] = path
    for controller, group in unit.dirs.items():
        path = mine["" if unit.version == "v2" else controller]
        if not str(group).endswith(path.rstrip("/")) or path == "/":
            return False
    return True


def test_probe_describes_the_machine():
    assert SUPPORT.version in ("v1", "v2")
    assert set(SUPPORT.dirs) == {"memory", "cpu", "pids"}
    # The limits hang under the daemon's own cgroup, wherever that is.
    for controller, own in SUPPORT.dirs.items():
        assert (own / "cgroup.procs").is_file()


def test_child_lands_in_the_unit(make):
    cg = make()
    unit = cg.unit("site", "v1-100")
    proc = spawn(unit, ["sleep", "30"])
    try:
        assert in_unit(proc.pid, unit)
        assert unit.pids() == [proc.pid]
        # The daemon itself stays where it was.
        assert not in_unit(os.getpid(), unit)
    finally:
        proc.kill()
        proc.wait()
    facts = cg.facts()
    assert facts["version"] == SUPPORT.version
    assert facts["limits"] == {"memory_mb": 512, "cpus": 1.0, "pids": 256, "disk_mb": 1024}
    assert set(facts["where"]) == {"memory", "cpu", "pids"}


def test_join_works_after_dropping_privileges(make):
    # subprocess runs preexec_fn after switching user=/group=: the descriptors opened by
    # root still let the unprivileged child move itself.
    unit = make().unit("site", "v1-101")
    proc = spawn(unit, ["sleep", "30"], user=65534, group=65534, extra_groups=[])
    try:
        assert in_unit(proc.pid, unit)
    finally:
        proc.kill()
        proc.wait()


def test_memory_hog_is_oom_killed(make):
    unit = make(memory_mb=64).unit("hog", "v1-1")
    assert unit.oom_kills() == 0
    done = python(
        unit,
        """
        chunks = []
        for _ in range(16):  # 16 x 8 MiB: twice the limit, every page touched
            chunks.append(b"x" * (8 << 20))
        print("survived")
        """,
    )
    assert done.returncode == -9, done
    assert "survived" not in done.stdout
    assert unit.oom_kills() >= 1


def test_pids_bound_process_creation(make):
    unit = make(pids=16).unit("bomb", "v1-1")
    done = python(
        unit,
        """
        import subprocess
        started, error = [], None
        for _ in range(100):
            try:
                started.append(subprocess.Popen(["sleep", "30"]))
            except OSError as e:
                error = e.errno
                break
        print(len(started), error)
        for p in started:
            p.kill()
            p.wait()
        """,
    )
    count, error = done.stdout.split()
    # The python process itself is one of the 16.
    assert 0 < int(count) < 16
    assert error == str(__import__("errno").EAGAIN)


def test_cpu_quota(make):
    unit = make(cpus=0.5).unit("busy", "v1-1")
    group = unit.dirs["cpu"]
    if unit.version == "v2":
        assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
    else:
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (group / "cpu.cfs_period_us").read_text().strip() == "100000"
    done = python(
        unit,
        """
        import time
        start = time.monotonic()
        while time.monotonic() - start < 1.5:
            pass
        print(time.process_time() / (time.monotonic() - start))
        """,
    )
    share = float(done.stdout)
    assert 0.3 < share < 0.7, share


def test_remove_kills_and_leaves_nothing(make):
    cg = make()
    unit = cg.unit("gone", "build")
    # A shell that keeps forking: remove() must get its children too.
    proc = spawn(unit, ["sh", "-c", "while true; do sleep 30 & sleep 0.01; done"])
    try:
        deadline = time.monotonic() + 10
        while len(unit.pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(unit.pids()) >= 3
        unit.remove()
        assert proc.wait(timeout=10) == -9
    finally:
        proc.kill()
        proc.wait()
    assert not any(d.exists() for d in unit.hierarchies)
    # Reusing the name makes a fresh unit; forget() removes the project's subtree.
    again = cg.unit("gone", "build")
    assert all(d.is_dir() for d in again.hierarchies)
    cg.forget("gone")
    assert not any(d.parent.exists() for d in again.hierarchies)


def test_same_key_cleans_what_a_killed_daemon_left(make):
    key = f"test-{os.getpid()}-leftover"
    first = make(key)
    old = first.unit("site", "v1-1")
    empty = first.unit("other", "v1-2")
    proc = spawn(old, ["sleep", "60"])
    try:
        # The first daemon "dies" without cleaning up; the next one with its key takes over.
        second = make(key)
        assert proc.wait(timeout=10) == -9
    finally:
        proc.kill()
        proc.wait()
    assert not any(d.exists() for d in old.hierarchies + empty.hierarchies)
    assert all(d.is_dir() and not list(_subdirs(d)) for d in second.hierarchies)


def _subdirs(path: Path):
    return (p for p in path.iterdir() if p.is_dir())


def test_names_cannot_escape():
    with pytest.raises(ValueError):
        Cgroups("../x", Limits())
    for bad in ("..", "a/b", "memory.max", "", "-x"):
        with pytest.raises(ValueError):
            limits._check_name("unit", bad)


# v2 on a machine that only has v1 limits: the unified hierarchy here offers only hugetlb,
# which is enough to exercise delegation, the leaf move ("no internal processes"), "0"
# written to cgroup.procs, cgroup.kill and the cleanup of leftovers. The limits
# themselves are covered by the tests above whichever version this machine uses.

UNIFIED = Path("/sys/fs/cgroup/unified")

V2_SCRIPT = """
import json, os, subprocess, functools, sys
from pathlib import Path
from tee_daemon.run import limits

top = Path(sys.argv[1])
(top / "cgroup.procs").write_text("0")  # this process is "the daemon", in its own group
helper = subprocess.Popen(["sleep", "60"])  # a process sharing the daemon's group
support = limits._v2_support(["hugetlb"])
cg = limits.Cgroups("v2test", limits.Limits(), support=support)
unit = cg.unit("site", "v1-1")
fds = unit.procs_fds()
child = subprocess.Popen(["sleep", "60"], preexec_fn=functools.partial(limits.join, fds))
for fd in fds:
    os.close(fd)
out = {
    "own": str(support.dirs["hugetlb"]),
    "root": cg.facts()["where"]["hugetlb"],
    "me": Path("/proc/self/cgroup").read_text(),
    "helper": Path(f"/proc/{helper.pid}/cgroup").read_text(),
    "child": Path(f"/proc/{child.pid}/cgroup").read_text(),
    "unit_pids": unit.pids(),
    "child_pid": child.pid,
}
# A second daemon with the same key (started from inside the leaf) kills the leftover.
again = limits.Cgroups("v2test", limits.Limits(), support=limits._v2_support(["hugetlb"]))
out["child_rc"] = child.wait(timeout=10)
out["again_root"] = again.facts()["where"]["hugetlb"]
unit2 = again.unit("site", "v1-2")
fds = unit2.procs_fds()
grandchild = subprocess.Popen(["sleep", "60"], preexec_fn=functools.partial(limits.join, fds))
for fd in fds:
    os.close(fd)
unit2.remove()
out["grandchild_rc"] = grandchild.wait(timeout=10)
out["unit2_gone"] = not any(d.exists() for d in unit2.hierarchies)
again.close()
out["root_gone"] = not Path(out["root"]).exists()
helper.kill()
print(json.dumps(out))
"""


@pytest.fixture
def v2_parent():
    """A group in the unified hierarchy whose children can get hugetlb."""
    if not (UNIFIED / "cgroup.controllers").exists() or "hugetlb" not in (UNIFIED / "cgroup.controllers").read_text().split():
        pytest.skip("no cgroup2 hierarchy with hugetlb here")
    enabled = "hugetlb" in (UNIFIED / "cgroup.subtree_control").read_text().split()
    if not enabled:
        (UNIFIED / "cgroup.subtree_control").write_text("+hugetlb")
    top = UNIFIED / f"tee-limits-test-{os.getpid()}"
    top.mkdir()
    yield top
    limits._destroy(top, time.monotonic() + 10)
    if not enabled:
        try:
            (UNIFIED / "cgroup.subtree_control").write_text("-hugetlb")
        except OSError:
            pass  # someone else's group uses it meanwhile


def test_v2_delegation_and_leaf(v2_parent: Path):
    done = subprocess.run(
        [sys.executable, "-c", V2_SCRIPT, str(v2_parent)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    rel = "/" + str(v2_parent.relative_to(UNIFIED))
    assert out["own"] == str(v2_parent)
    # The daemon's group could not delegate while holding processes: they moved to a leaf
    # (helpers included), and the daemon's groups sit beside it.
    assert f"0::{rel}/leaf\n" in out["me"]
    assert f"0::{rel}/leaf\n" in out["helper"]
    assert out["root"] == f"{v2_parent}/tee-daemon-v2test"
    assert f"0::{rel}/tee-daemon-v2test/site/v1-1\n" in out["child"]
    assert out["unit_pids"] == [out["child_pid"]]
    # The restarted daemon ran from inside the leaf yet found and cleaned the same root.
    assert out["child_rc"] == -9
    assert out["again_root"] == out["root"]
    assert out["grandchild_rc"] == -9
    assert out["unit2_gone"] and out["root_gone"]
    assert sorted(p.name for p in v2_parent.iterdir() if p.is_dir()) == ["leaf"]
