"""tree_ids must agree with `git add -A && git write-tree`, in both object formats."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tee_daemon.trust.treehash import TreeIds, tree_ids

GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "LC_ALL": "C",
}


def git_tree_ids(root: Path, scratch: Path) -> TreeIds:
    """What real git says, with the repositories kept outside `root`."""
    ids = {}
    for fmt in ("sha1", "sha256"):
        gitdir = scratch / f"repo-{fmt}"
        shutil.rmtree(gitdir, ignore_errors=True)
        env = {**GIT_ENV, "GIT_DIR": str(gitdir), "GIT_WORK_TREE": str(root)}
        for args in (["init", "-q", f"--object-format={fmt}"], ["add", "-A", "-f"], ["write-tree"]):
            out = subprocess.run(["git", *args], env=env, cwd=root, check=True, capture_output=True)
        ids[fmt] = out.stdout.decode().strip()
    return TreeIds(**ids)


def write(root: Path, rel: str, data: bytes | str = b"", exe: bool = False) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(0o755 if exe else 0o644)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    return root


def check(root: Path, scratch: Path) -> TreeIds:
    ours = tree_ids(root)
    assert ours == git_tree_ids(root, scratch)
    assert len(ours.sha1) == 40 and len(ours.sha256) == 64
    return ours


def test_mixed_tree(tree: Path, tmp_path: Path) -> None:
    write(tree, "README.md", "hello\n")
    write(tree, "bin/run.sh", "#!/bin/sh\necho hi\n", exe=True)
    write(tree, "src/lib/deep/x.py", "x = 1\n")
    write(tree, "src/empty.txt", b"")
    write(tree, "src/group-exec", "g", exe=False)
    (tree / "src/group-exec").chmod(0o654)  # only the owner bit counts
    write(tree, "src/owner-exec", "o")
    (tree / "src/owner-exec").chmod(0o744)
    (tree / "empty-dir").mkdir()
    (tree / "nested-empty/a/b").mkdir(parents=True)
    write(tree, "héllo/ünïcødé-名前.txt", "unicode\n")
    write(tree, "bytes.bin", bytes(range(256)) * 10)
    check(tree, tmp_path)


def test_sort_rule(tree: Path, tmp_path: Path) -> None:
    # "a.b" < "a/" (folder) < "a0", while a file "a" sorts before "a-b"; git's order.
    for name in ("a.b", "a-b", "a0", "a_", "b"):
        write(tree, name, name)
    write(tree, "a/inner", "inner")
    write(tree, "ab/inner", "x")
    write(tree, "ab.txt", "y")
    write(tree, "ab-c/z", "z")
    check(tree, tmp_path)
    # Same names, but "a" a file and "a.b" a folder.
    other = tmp_path / "other"
    write(other, "a", "file")
    write(other, "a.b/c", "c")
    write(other, "a-b", "d")
    check(other, tmp_path)


def test_symlinks_not_followed(tree: Path, tmp_path: Path) -> None:
    write(tree, "target.txt", "target\n")
    write(tree, "dir/file", "f")
    (tree / "link-file").symlink_to("target.txt")
    (tree / "link-dir").symlink_to("dir")
    (tree / "dangling").symlink_to("does/not/exist")
    (tree / "outside").symlink_to("/etc/passwd")
    (tree / "dir/up").symlink_to("..")
    ours = check(tree, tmp_path)
    # Changing the target of a followed link must not change anything: not followed.
    write(tree, "dir/file", "changed")
    assert tree_ids(tree) != ours


def test_dot_git_excluded_everywhere(tree: Path, tmp_path: Path) -> None:
    write(tree, "keep.txt", "keep")
    write(tree, "sub/keep.txt", "keep")
    before = check(tree, tmp_path)
    write(tree, ".git/config", "[core]\n")
    write(tree, ".git/objects/xx", b"\0" * 100)
    write(tree, "sub/.git/HEAD", "ref: refs/heads/main\n")
    write(tree, "only-git/.git/x", "x")  # a folder holding only .git is empty to git
    assert check(tree, tmp_path) == before
    # A .git file (as in a submodule checkout) is excluded too.
    shutil.rmtree(tree / "sub/.git")
    write(tree, "sub/.git", "gitdir: ../x\n")
    assert check(tree, tmp_path) == before
    # git refuses these spellings outright; we leave them out.
    write(tree, ".GIT/x", "x")
    write(tree, "sub/.Git/y", "y")
    assert tree_ids(tree) == before


def test_empty_tree(tree: Path, tmp_path: Path) -> None:
    (tree / "a/b").mkdir(parents=True)
    ids = check(tree, tmp_path)
    assert ids.sha1 == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's empty tree


def test_large_file_streamed(tree: Path, tmp_path: Path) -> None:
    with open(tree / "big.bin", "wb") as f:
        for i in range(5):  # several chunks of 1 MiB, not a multiple of the chunk size
            f.write(os.urandom(1 << 20) + bytes([i]) * 1000)
    check(tree, tmp_path)


def test_fifo_skipped(tree: Path, tmp_path: Path) -> None:
    write(tree, "f", "f")
    before = tree_ids(tree)
    os.mkfifo(tree / "pipe")
    assert tree_ids(tree) == before


def test_deep_nesting(tree: Path, tmp_path: Path) -> None:
    # Deeper than Python's recursion limit: the walk must not recurse.
    levels = [tree]
    for _ in range(1100):  # os.makedirs itself recurses, so make one level at a time
        levels.append(levels[-1] / "d")
        levels[-1].mkdir()
    (levels[-1] / "f").write_bytes(b"x")
    try:
        check(tree, tmp_path)
    finally:  # shutil.rmtree (and so pytest's cleanup) recurses too: unwind by hand
        (levels[-1] / "f").unlink()
        for level in reversed(levels[1:]):
            level.rmdir()


_names = st.text(alphabet="ab.-_0é名", min_size=1, max_size=4).filter(
    lambda s: s not in (".", "..")
)
_trees = st.recursive(
    st.one_of(st.binary(max_size=30), st.tuples(st.binary(max_size=30), st.just("x"))),
    lambda children: st.dictionaries(_names, children, max_size=5),
    max_leaves=20,
)


def _materialize(root: Path, node: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    assert isinstance(node, dict)
    for name, child in node.items():
        if isinstance(child, dict):
            _materialize(root / name, child)
        elif isinstance(child, tuple):
            write(root, name, child[0], exe=True)
        else:
            write(root, name, child)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shape=st.dictionaries(_names, _trees, max_size=6))
def test_random_trees(tmp_path: Path, shape: dict[str, object]) -> None:
    root = tmp_path / "random"
    shutil.rmtree(root, ignore_errors=True)
    _materialize(root, shape)
    assert tree_ids(root) == git_tree_ids(root, tmp_path)
