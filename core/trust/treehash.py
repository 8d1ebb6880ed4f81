"""The git tree id of a folder, in both of git's object formats (SPEC section 4).

`tree_ids(root)` gives the id `git add -A && git write-tree` would print for the files
under `root`, as SHA-1 and as SHA-256, so anyone can recompute it with stock git:

- regular files are blobs with mode 100644, or 100755 when the owner exec bit is set;
- symlinks are blobs of their target bytes (mode 120000), never followed;
- folders are trees (mode 40000); folders holding no file at any depth are left out,
  because git does not track them;
- any entry named `.git` is left out at every depth. The match ignores case because git
  refuses `.GIT` and friends outright, so no git tree can hold them;
- other file types (sockets, FIFOs, devices) are skipped, as git skips them.

The walk is iterative (a hostile tarball can nest folders deeper than Python's recursion
limit) and each file is read once, in chunks, feeding both hashes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

__all__ = ["TreeIds", "tree_ids"]

_CHUNK = 1 << 20


class TreeIds(msgspec.Struct, frozen=True):
    """A tree id in git's two object formats, as lowercase hex."""

    sha1: str
    sha256: str


# One tree entry: git mode, name (bytes as on disk), raw object id in each format.
_Entry = tuple[bytes, bytes, bytes, bytes]


@dataclass
class _Frame:
    """A folder being hashed: entries still to visit and finished entries."""

    path: bytes
    name: bytes
    todo: list[os.DirEntry[bytes]]
    done: list[_Entry] = field(default_factory=list)


# Decides whether an entry is left out: (names of the folders above it, relative to the
# root; its name; whether it is a folder). Used by depstree for what installers write
# non-deterministically.
Skip = Callable[[list[bytes], bytes, bool], bool]


def tree_ids(root: Path, skip: Skip | None = None) -> TreeIds:
    """The git tree ids (SHA-1 and SHA-256) of the files under `root` (less what `skip`
    leaves out).

    A path too long for the system (a git checkout nesting long names past PATH_MAX)
    is the source's fault: a `SourceError` (400) that says so, not an internal error."""
    try:
        return _tree_ids(root, skip)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        from tee_daemon.kernel.errors import SourceError

        raise SourceError(
            "the source has a path too long for the file system (over 4096 bytes with the "
            "daemon's folder); shorten its nested folder names"
        ) from None


def _tree_ids(root: Path, skip: Skip | None = None) -> TreeIds:
    top = _Frame(os.fsencode(root), b"", _listdir(os.fsencode(root)))
    stack = [top]
    while True:
        frame = stack[-1]
        if frame.todo:
            entry = frame.todo.pop()
            if entry.name.lower() == b".git":
                continue
            st = entry.stat(follow_symlinks=False)
            if skip is not None and skip([f.name for f in stack[1:]], entry.name, stat.S_ISDIR(st.st_mode)):
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(_Frame(entry.path, entry.name, _listdir(entry.path)))
            elif stat.S_ISLNK(st.st_mode):
                frame.done.append((b"120000", entry.name, *_hash_link(entry.path)))
            elif stat.S_ISREG(st.st_mode):
                mode = b"100755" if st.st_mode & stat.S_IXUSR else b"100644"
                frame.done.append((mode, entry.name, *_hash_file(entry.path)))
            continue
        stack.pop()
        ids = _hash_tree(frame.done)
        if not stack:
            return TreeIds(sha1=ids[0].hex(), sha256=ids[1].hex())
        if frame.done:  # git has no way to record an empty folder
            stack[-1].done.append((b"40000", frame.name, *ids))


def _listdir(path: bytes) -> list[os.DirEntry[bytes]]:
    with os.scandir(path) as it:
        return list(it)


def _hash_object(kind: bytes, size: int) -> tuple[hashlib._Hash, hashlib._Hash]:
    header = b"%s %d\0" % (kind, size)
    return hashlib.sha1(header), hashlib.sha256(header)


def _hash_link(path: bytes) -> tuple[bytes, bytes]:
    target = os.readlink(path)
    h1, h256 = _hash_object(b"blob", len(target))
    h1.update(target)
    h256.update(target)
    return h1.digest(), h256.digest()


def _hash_file(path: bytes) -> tuple[bytes, bytes]:
    # O_NOFOLLOW: the entry was a regular file when listed; never let it become a link.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with open(fd, "rb", closefd=True) as f:
        size = os.fstat(f.fileno()).st_size
        h1, h256 = _hash_object(b"blob", size)
        seen = 0
        while chunk := f.read(_CHUNK):
            seen += len(chunk)
            h1.update(chunk)
            h256.update(chunk)
    if seen != size:  # the header already committed to `size`
        raise RuntimeError(f"{os.fsdecode(path)!r} changed size while being hashed")
    return h1.digest(), h256.digest()


def _sort_key(entry: _Entry) -> bytes:
    # git compares a folder's name as if it ended with "/" (so "a.b" < "a/" < "a0").
    return entry[1] + b"/" if entry[0] == b"40000" else entry[1]


def _hash_tree(entries: list[_Entry]) -> tuple[bytes, bytes]:
    entries.sort(key=_sort_key)
    body1 = b"".join(b"%s %s\0%s" % (mode, name, id1) for mode, name, id1, _ in entries)
    body2 = b"".join(b"%s %s\0%s" % (mode, name, id2) for mode, name, _, id2 in entries)
    return (
        hashlib.sha1(b"tree %d\0%s" % (len(body1), body1)).digest(),
        hashlib.sha256(b"tree %d\0%s" % (len(body2), body2)).digest(),
    )
