"""deps_tree_sha256 is git's SHA-256 tree id of the installed folder minus what installers
write non-deterministically: checked against real git on the same folder with those
paths removed, and for what it must and must not see."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tee_daemon.trust.depstree import deps_tree_sha256, excluded

GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "LC_ALL": "C",
}


def git_sha256_tree(root: Path, scratch: Path) -> str:
    gitdir = scratch / "repo"
    shutil.rmtree(gitdir, ignore_errors=True)
    env = {**GIT_ENV, "GIT_DIR": str(gitdir), "GIT_WORK_TREE": str(root)}
    for args in (["init", "-q", "--object-format=sha256"], ["add", "-A", "-f"], ["write-tree"]):
        out = subprocess.run(["git", *args], env=env, cwd=root, check=True, capture_output=True)
    return out.stdout.decode().strip()


def without_excluded(src: Path, dst: Path, kind: str) -> None:
    """A copy of `src` with the excluded paths removed, by a walk of its own."""

    def walk(s: Path, d: Path, parents: list[bytes]) -> None:
        d.mkdir(parents=True, exist_ok=True)
        for child in sorted(s.iterdir()):
            name = os.fsencode(child.name)
            is_dir = child.is_dir() and not child.is_symlink()
            if excluded(kind, parents, name, is_dir):
                continue
            if child.is_symlink():
                os.symlink(os.readlink(child), d / child.name)
            elif is_dir:
                walk(child, d / child.name, [*parents, name])
            else:
                shutil.copy2(child, d / child.name)

    walk(src, dst, [])


def write(root: Path, rel: str, data: str = "", exe: bool = False) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    path.chmod(0o755 if exe else 0o644)


def node_modules(root: Path) -> Path:
    write(root, "left-pad/package.json", '{"name":"left-pad","version":"1.3.0"}')
    write(root, "left-pad/index.js", "module.exports = (s) => s;\n")
    write(root, "left-pad/bin/pad", "#!/usr/bin/env node\n", exe=True)
    (root / ".bin").mkdir()
    os.symlink("../left-pad/bin/pad", root / ".bin" / "pad")
    write(root, ".package-lock.json", '{"written": "by npm at install time"}')
    return root


def test_node_modules_matches_git_without_the_hidden_lockfile(tmp_path: Path) -> None:
    tree = node_modules(tmp_path / "node_modules")
    ours = deps_tree_sha256(tree, "node_modules")
    copy = tmp_path / "copy"
    without_excluded(tree, copy, "node_modules")
    assert not (copy / ".package-lock.json").exists() and (copy / ".bin" / "pad").is_symlink()
    assert ours == git_sha256_tree(copy, tmp_path)
    assert len(ours) == 64
    # npm rewriting its hidden lockfile, or a timestamp, changes nothing ...
    (tree / ".package-lock.json").write_text('{"written": "again, later"}')
    os.utime(tree / "left-pad" / "index.js", (1, 1))
    assert deps_tree_sha256(tree, "node_modules") == ours
    # ... while one changed byte, a mode bit or a nested .package-lock.json does.
    (tree / "left-pad" / "index.js").write_text("module.exports = (s) => s + 1;\n")
    changed = deps_tree_sha256(tree, "node_modules")
    assert changed != ours
    (tree / "left-pad" / "index.js").chmod(0o755)
    assert deps_tree_sha256(tree, "node_modules") != changed
    write(tree, "left-pad/.package-lock.json", "{}")
    assert deps_tree_sha256(tree, "node_modules") != changed


def test_site_packages_leaves_out_bytecode_and_pip_records(tmp_path: Path) -> None:
    tree = tmp_path / "site-packages"
    write(tree, "six.py", "x = 1\n")
    write(tree, "six-1.16.0.dist-info/METADATA", "Name: six\n")
    write(tree, "six-1.16.0.dist-info/RECORD", "six.py,sha256=abc,6\n__pycache__/six.cpython-311.pyc,,\n")
    write(tree, "six-1.16.0.dist-info/INSTALLER", "pip\n")
    write(tree, "six-1.16.0.dist-info/direct_url.json", '{"url": "file:///home/me/six"}')
    write(tree, "__pycache__/six.cpython-311.pyc", "\x00bytecode with an mtime")
    write(tree, "pkg/mod.pyc", "stray")
    ours = deps_tree_sha256(tree, "site-packages")
    copy = tmp_path / "copy"
    without_excluded(tree, copy, "site-packages")
    assert sorted(p.name for p in copy.rglob("*") if p.is_file()) == ["METADATA", "six.py"]
    assert ours == git_sha256_tree(copy, tmp_path)
    # A RECORD outside a dist-info folder is a package's file like any other.
    write(tree, "pkg/RECORD", "data")
    assert deps_tree_sha256(tree, "site-packages") != ours


def test_deno_dir_keeps_only_fetched_modules(tmp_path: Path) -> None:
    tree = tmp_path / "deno-dir"
    write(tree, "remote/https/jsr.io/abc", "export const x = 1;\n")
    write(tree, "npm/registry.npmjs.org/ms/2.1.3/index.js", "module.exports = 1;\n")
    write(tree, "gen/file/abc.js", "transpiled")
    write(tree, "dep_analysis_cache_v2", "sqlite")
    ours = deps_tree_sha256(tree, "deno-dir")
    write(tree, "gen/file/abc.js", "transpiled again")
    write(tree, "node_analysis_cache_v2", "sqlite")
    write(tree, "npm/registry.npmjs.org/ms/registry.json", '{"versions": "as of today"}')
    assert deps_tree_sha256(tree, "deno-dir") == ours
    copy = tmp_path / "copy"
    without_excluded(tree, copy, "deno-dir")
    assert sorted(p.name for p in copy.iterdir()) == ["npm", "remote"]
    assert ours == git_sha256_tree(copy, tmp_path)


def test_missing_folder_is_none_and_unknown_kind_refused(tmp_path: Path) -> None:
    assert deps_tree_sha256(None, "node_modules") is None
    assert deps_tree_sha256(tmp_path / "absent", "node_modules") is None
    with pytest.raises(ValueError):
        deps_tree_sha256(tmp_path, "vendor")


NAMES = st.sampled_from(
    ["a", "b.js", "__pycache__", "x.pyc", ".package-lock.json", "RECORD", "INSTALLER",
     "pkg.dist-info", "remote", "npm", "gen", "A", "a.b", "a0", "registry.json"]
)  # fmt: skip
PATHS = st.lists(NAMES, min_size=1, max_size=4).map("/".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.dictionaries(PATHS, st.tuples(st.binary(max_size=40), st.booleans()), min_size=1, max_size=12),
    kind=st.sampled_from(["node_modules", "site-packages", "deno-dir"]),
)
def test_any_tree_matches_git_on_its_filtered_copy(tmp_path_factory, files, kind) -> None:
    base = tmp_path_factory.mktemp("prop")
    tree = base / "tree"
    tree.mkdir()
    for rel, (data, exe) in files.items():
        path = tree / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue  # a name used both as a file and as a folder: keep the first
        path.chmod(0o755 if exe else 0o644)
    copy = base / "copy"
    without_excluded(tree, copy, kind)
    ours = deps_tree_sha256(tree, kind)
    if not any(p.is_file() for p in copy.rglob("*")):
        return  # git writes the empty tree; nothing installed to compare
    assert ours == git_sha256_tree(copy, base)
