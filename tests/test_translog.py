"""The on-disk transparency log: durability, the start-up check, and what it refuses."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tee_daemon.trust import merkle
from tee_daemon.trust.canonical import canonical_json
from tee_daemon.trust.translog import LEAF_FIELDS, LogDamaged, TransparencyLog


def event(n: int, action: str = "deploy") -> dict:
    return {
        "time": 1750377600 + n,
        "project": f"p{n % 3}",
        "action": action,
        "version": n + 1,
        "source": "https://example.org/repo.git",
        "ref": "main",
        "commit": "ab" * 20,
        "tree_sha1": "cd" * 20,
        "tree_sha256": "ef" * 32,
        "runtime": "static",
        "manifest_sha256": f"{n:064x}",
        "secret_names": ["API_KEY"],
        "command": None,
        "image": None,
        "port": None,
        "toolchain": {"tee-daemon": "0.1.0"},
        "lock_sha256": None,
        "deps_tree_sha256": None,
        "pinned": True,
    }


def filled(tmp_path: Path, n: int = 5) -> TransparencyLog:
    log = TransparencyLog(tmp_path / "log.jsonl").open()
    for i in range(n):
        log.append(event(i))
    return log


def test_append_and_reopen_byte_identical(tmp_path: Path) -> None:
    log = filled(tmp_path, 7)
    assert log.size == 7
    before = log.path.read_bytes()
    lines = before.decode().splitlines()
    assert len(lines) == 7 and before.endswith(b"\n")
    for i, line in enumerate(lines):
        ev = json.loads(line)
        assert ev["index"] == i and set(ev) == set(LEAF_FIELDS)
        assert canonical_json(ev).decode() == line
    root = log.root()
    assert root == merkle.root([merkle.leaf_hash(x.encode()) for x in lines])

    again = TransparencyLog(log.path).open()
    assert again.damaged is None and again.recovered is None
    assert again.size == 7 and again.root() == root
    assert again.leaves() == lines and again.leaves(2, 4) == lines[2:4]
    assert log.path.read_bytes() == before

    entry = again.append(event(7, "promote"))
    assert entry.index == 7 and entry.leaf == again.leaves(7)[0]
    assert entry.leaf_hash == merkle.leaf_hash(entry.leaf.encode())
    assert log.path.read_bytes() == before + entry.leaf.encode() + b"\n"
    assert merkle.verify_inclusion(3, 8, again.entry(3).leaf_hash, again.inclusion_proof(3), again.root())
    assert merkle.verify_consistency(7, 8, root, again.root(), again.consistency_proof(7, 8))
    assert again.root(7) == root


def test_torn_tail_recovered(tmp_path: Path) -> None:
    log = filled(tmp_path, 4)
    good = log.path.read_bytes()
    root = log.root()
    with open(log.path, "ab") as f:  # a crash mid-append: half a line, no newline
        f.write(canonical_json({**event(4), "index": 4})[:30])
    again = TransparencyLog(log.path).open()
    assert again.damaged is None
    assert again.recovered and "torn" in again.recovered
    assert again.size == 4 and again.root() == root
    assert log.path.read_bytes() == good
    assert again.append(event(4)).index == 4
    assert TransparencyLog(log.path).open().damaged is None


def test_missing_last_root_recomputed(tmp_path: Path) -> None:
    log = filled(tmp_path, 3)
    roots = log.roots_path.read_bytes()
    log.roots_path.write_bytes(roots[:-65])  # crash between the leaf fsync and the root's
    again = TransparencyLog(log.path).open()
    assert again.damaged is None and again.recovered
    assert log.roots_path.read_bytes() == roots


def _damaged(path: Path) -> str:
    before = (path.read_bytes(), Path(str(path) + ".roots").read_bytes())
    log = TransparencyLog(path).open()
    assert log.damaged, "damage went unnoticed"
    with pytest.raises(LogDamaged):
        log.append(event(99))
    # A damaged log is never rewritten.
    assert (path.read_bytes(), Path(str(path) + ".roots").read_bytes()) == before
    return log.damaged


def test_edited_line_detected(tmp_path: Path) -> None:
    log = filled(tmp_path)
    lines = log.path.read_text().splitlines(keepends=True)
    ev = json.loads(lines[2])
    ev["project"] = "evil"  # still valid, canonical, correctly indexed JSON
    lines[2] = canonical_json(ev).decode() + "\n"
    log.path.write_text("".join(lines))
    assert "root" in _damaged(log.path)


def test_non_canonical_line_detected(tmp_path: Path) -> None:
    log = filled(tmp_path)
    lines = log.path.read_text().splitlines(keepends=True)
    lines[1] = json.dumps(json.loads(lines[1]), indent=1).replace("\n", "") + "\n"
    log.path.write_text("".join(lines))
    assert "canonical" in _damaged(log.path)


def test_truncated_in_the_middle_detected(tmp_path: Path) -> None:
    log = filled(tmp_path)
    data = log.path.read_bytes()
    second = data.index(b"\n") + 1
    log.path.write_bytes(data[: second + 20] + data[data.index(b"\n", second) :])
    assert "JSON" in _damaged(log.path)


def test_file_truncated_at_the_end_detected(tmp_path: Path) -> None:
    log = filled(tmp_path)
    data = log.path.read_bytes()
    log.path.write_bytes(data[: len(data) - 40])  # looks torn, but acknowledged roots remain
    assert "removed" in _damaged(log.path)


def test_deleted_line_detected(tmp_path: Path) -> None:
    log = filled(tmp_path)
    lines = log.path.read_text().splitlines(keepends=True)
    log.path.write_text("".join(lines[:2] + lines[3:]))
    assert "index" in _damaged(log.path)


def test_deleted_last_line_detected(tmp_path: Path) -> None:
    log = filled(tmp_path)
    lines = log.path.read_text().splitlines(keepends=True)
    log.path.write_text("".join(lines[:-1]))
    assert "removed" in _damaged(log.path)


def test_bad_events_refused(tmp_path: Path) -> None:
    log = TransparencyLog(tmp_path / "log.jsonl").open()
    with pytest.raises(ValueError):
        log.append({**event(0), "extra": 1})
    with pytest.raises(ValueError):
        log.append({k: v for k, v in event(0).items() if k != "ref"})
    with pytest.raises(ValueError):
        log.append({**event(0), "action": "explode"})
    with pytest.raises(ValueError):
        log.append({**event(0), "index": 5})
    assert log.size == 0 and log.path.read_bytes() == b""
    ev = event(0)
    del ev["time"]
    assert isinstance(json.loads(log.append(ev).leaf)["time"], int)


def test_concurrent_appends_are_serialized(tmp_path: Path) -> None:
    log = TransparencyLog(tmp_path / "log.jsonl").open()
    threads = [threading.Thread(target=lambda i=i: log.append(event(i))) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    again = TransparencyLog(log.path).open()
    assert again.damaged is None and again.size == 16 and again.root() == log.root()


def test_a_log_of_an_earlier_release_still_opens_and_grows(tmp_path: Path) -> None:
    """Lines written before the SPEC 12 fields existed stay valid; new ones carry them."""
    path = tmp_path / "log.jsonl"
    old = {k: v for k, v in event(0).items() if k not in ("command", "image", "port", "toolchain", "lock_sha256",
                                                           "deps_tree_sha256", "pinned")}
    line = canonical_json({**old, "index": 0})
    path.write_bytes(line + b"\n")
    (tmp_path / "log.jsonl.roots").write_bytes(merkle.leaf_hash(line).hex().encode() + b"\n")
    log = TransparencyLog(path).open()
    assert log.damaged is None and log.size == 1
    entry = log.append(event(1))
    assert set(json.loads(entry.leaf)) == set(LEAF_FIELDS)
    # Only the complete earlier set is accepted: a line missing just one field is damage.
    broken = {k: v for k, v in {**event(0), "index": 0}.items() if k != "pinned"}
    raw = canonical_json(broken)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "log.jsonl").write_bytes(raw + b"\n")
    (tmp_path / "b" / "log.jsonl.roots").write_bytes(merkle.leaf_hash(raw).hex().encode() + b"\n")
    assert "fields wrong" in (TransparencyLog(tmp_path / "b" / "log.jsonl").open().damaged or "")
