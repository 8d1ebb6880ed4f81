"""The id of an installed dependency tree, `deps_tree_sha256` (SPEC section 12).

It is the git tree id, in git's SHA-256 object format, of the installed folder
(`node_modules`, a venv's `site-packages`, a Deno module cache), computed exactly as
`treehash` does for sources (file modes normalised to git's 100644/100755/120000, links
never followed, empty folders left out, timestamps and owners never hashed), after
leaving out what installers write that does not follow from the lockfile:

- any folder named `__pycache__` and any file ending in `.pyc`: bytecode pip compiles
  at install time (it embeds the source's mtime), and that Python may write later;
- `.package-lock.json` at the top of `node_modules`: npm's hidden lockfile, a cache of
  what it installed that npm rewrites (the real lockfile's digest is `lock_sha256`);
- in a `*.dist-info` folder, `RECORD`, `INSTALLER` and `direct_url.json`: pip's record of
  the files it wrote (it lists the `.pyc` files), the installer's name, and the local
  path or URL a package came from;
- in a Deno module cache, everything but `remote/` and `npm/` (the fetched modules):
  `gen/` and the `*_cache_v*` databases are transpiler output and SQLite files that
  Deno rewrites whenever it runs; and under `npm/`, each package's `registry.json` (the
  registry's package document as fetched that day: it grows with every release).

So an auditor who installs the same lockfile with the same toolchain into an empty
folder gets the same id, and can recompute it with stock git on a copy of the folder
with those paths removed (`git init --object-format=sha256 && git add -A -f &&
git write-tree`). The verifier imports this module (`tee-daemon verify --deps`).
"""

from __future__ import annotations

from pathlib import Path

from tee_daemon.trust.treehash import tree_ids

__all__ = ["EXCLUDED", "deps_tree_sha256", "excluded"]

# For the README and the verifier's output: what the id leaves out, in words.
EXCLUDED = (
    "__pycache__/ and *.pyc",
    "node_modules/.package-lock.json",
    "*.dist-info/RECORD, INSTALLER, direct_url.json",
    "a Deno cache's files outside remote/ and npm/, and npm/**/registry.json",
)

_DIST_INFO_SKIP = frozenset({b"RECORD", b"INSTALLER", b"direct_url.json"})
_DENO_KEEP = frozenset({b"remote", b"npm"})


def excluded(kind: str, parents: list[bytes], name: bytes, is_dir: bool) -> bool:
    """Whether an entry (below the folders `parents`, relative to the root) is left out.

    `kind` is what the root is: "node_modules", "site-packages" or "deno-dir".
    """
    if is_dir and name == b"__pycache__":
        return True
    if not is_dir and name.endswith(b".pyc"):
        return True
    if kind == "node_modules" and not parents and name == b".package-lock.json":
        return True
    if not is_dir and parents and parents[-1].endswith(b".dist-info") and name in _DIST_INFO_SKIP:
        return True
    if kind == "deno-dir" and not parents and name not in _DENO_KEEP:
        return True
    if kind == "deno-dir" and not is_dir and parents[:1] == [b"npm"] and name == b"registry.json":
        return True
    return False


def deps_tree_sha256(root: Path | None, kind: str) -> str | None:
    """The installed tree's id (64 hex), or None when there is no such folder."""
    if root is None or not root.is_dir() or root.is_symlink():
        return None
    if kind not in ("node_modules", "site-packages", "deno-dir"):
        raise ValueError(f"unknown dependency tree kind {kind!r}")
    return tree_ids(root, lambda parents, name, is_dir: excluded(kind, parents, name, is_dir)).sha256
