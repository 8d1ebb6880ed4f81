"""Unpack an uploaded tarball into a scratch folder, refusing anything hostile (SPEC 4).

Only regular files, folders and symlinks that stay inside the tree are accepted. Every
refusal is a `SourceError` (400) naming the problem. On refusal `dest` may be left
partially filled (the caller removes it), but nothing is ever written outside it:

- each parent folder is opened with O_NOFOLLOW from a descriptor of `dest`, so a member
  can never be written through a symlink or a `..` (both also refused by name up front);
- files are created with O_EXCL, so a second member with the same name (or a file where
  a folder or link already is) is refused: duplicates are an error, not "last one wins".
  A folder member may repeat, or follow files already unpacked inside it;
- sizes are enforced while streaming: the unpacked bytes actually written, the raw tar
  stream after gunzip (so junk cannot make us inflate forever), and pax/GNU long-name
  headers, which tarfile would otherwise read whole into memory.

Permissions are normalised (0644 or 0755 for files, by the owner exec bit; 0755 for
folders); owners, times and other mode bits in the archive are ignored.
"""

from __future__ import annotations

import errno
import gzip
import os
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO, cast

from tee_daemon.kernel.errors import SourceError

__all__ = ["extract_tarball", "check_link_target", "check_links_stay_inside"]

_CHUNK = 1 << 16
# The longest member path accepted, in bytes. Linux refuses paths over PATH_MAX (4096)
# whole, and the tree is used under the data dir's own prefix (a version folder, the
# sandbox's mount point), so a tree with longer paths could be unpacked through
# descriptors but never hashed, copied or served.
MAX_PATH_BYTES = 2048
_BLOCK = 512
_MAX_META = 1 << 16  # one pax or GNU long-name header; real ones are a few hundred bytes
_STREAM_OVERHEAD = 16 << 10  # allowance per member for headers and padding in the stream
_META_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


def extract_tarball(
    src: BinaryIO, dest: Path, *, max_bytes: int = 100 * 2**20, max_files: int = 10_000
) -> None:
    """Unpack the plain or gzip tar read from `src` into the existing folder `dest`."""
    stream = _open_stream(src, limit=max_bytes + (max_files + 1) * _STREAM_OVERHEAD)
    budget = _Budget(max_bytes)
    links: list[str] = []
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # tarfile and gzip only call read(n) on these streams, whatever their stubs say.
        fileobj = cast(BinaryIO, stream)
        with tarfile.open(fileobj=fileobj, mode="r|", tarinfo=_BoundedTarInfo) as archive:
            for count, member in enumerate(archive, start=1):
                if count > max_files:
                    raise SourceError(f"tarball has more than {max_files} members")
                _extract_member(archive, member, dest_fd, budget, links)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise SourceError(f"corrupt tar archive: {exc}") from None
    except RecursionError:  # a long chain of extended headers
        raise SourceError("corrupt tar archive: too many chained headers") from None
    finally:
        os.close(dest_fd)
    check_links_stay_inside(dest, links)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses oversized pax/GNU headers before tarfile reads them whole into memory."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and self.size > _MAX_META:
            raise SourceError(f"tar extended header of {self.size} bytes is too large")
        member: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
        return member


class _Budget:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.left = max_bytes

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise SourceError(f"tarball unpacks to more than {self.max_bytes} bytes")


class _Prefixed:
    """A stream with some already-read bytes put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO | _Counted) -> None:
        self.head = head
        self.rest = rest

    def read(self, n: int) -> bytes:
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        return self.rest.read(n)


class _Counted:
    """Refuses to deliver more than `limit` bytes in total (the inflated tar stream)."""

    def __init__(self, raw: BinaryIO | gzip.GzipFile | _Prefixed, limit: int) -> None:
        self.raw = raw
        self.limit = limit
        self.total = 0

    def read(self, n: int) -> bytes:
        data = self.raw.read(min(n, _CHUNK))  # GzipFile inflates at most n bytes per read
        self.total += len(data)
        if self.total > self.limit:
            raise SourceError(f"tar stream is larger than {self.limit} bytes")
        return data


def _read_exactly(stream: _Prefixed | _Counted, n: int) -> bytes:
    out = b""
    while len(out) < n and (chunk := stream.read(n - len(out))):
        out += chunk
    return out


def _open_stream(src: BinaryIO, limit: int) -> _Prefixed:
    """The tar stream, gunzipped if needed, after checking what the bytes are."""
    magic = _read_exactly(_Prefixed(b"", src), 2)
    raw = _Prefixed(magic, src)
    inner: _Prefixed | gzip.GzipFile = raw
    if magic == b"\x1f\x8b":
        inner = gzip.GzipFile(fileobj=cast(BinaryIO, raw), mode="rb")
    counted = _Counted(inner, limit)
    try:
        first = _read_exactly(counted, _BLOCK)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise SourceError(f"corrupt gzip stream: {exc}") from None
    # ustar, pax and GNU headers all carry "ustar" at offset 257; all zeros is the
    # end-of-archive marker of an empty tar.
    if len(first) != _BLOCK or (first[257:262] != b"ustar" and first.count(0) != _BLOCK):
        raise SourceError("not a tar or tar.gz archive")
    return _Prefixed(first, counted)


def _parts(name: str) -> list[str]:
    """The path components of a member name, refusing names that leave the tree."""
    if name.startswith("/"):
        raise SourceError(f"tarball member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SourceError(f"tarball member {name!r} escapes the project folder")
    if "\0" in name:
        raise SourceError(f"tarball member {name!r} has a NUL byte in its name")
    size = len("/".join(parts).encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES:
        raise SourceError(
            f"tarball member {name[:60]!r}... has a path of {size} bytes; at most {MAX_PATH_BYTES} are allowed"
        )
    return parts


def _extract_member(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    dest_fd: int,
    budget: _Budget,
    links: list[str],
) -> None:
    name = member.name
    parts = _parts(name)
    if member.islnk():
        raise SourceError(f"tarball member {name!r} is a hard link (not allowed)")
    if member.ischr() or member.isblk():
        raise SourceError(f"tarball member {name!r} is a device file (not allowed)")
    if member.isfifo():
        raise SourceError(f"tarball member {name!r} is a FIFO (not allowed)")
    if member.issparse():
        raise SourceError(f"tarball member {name!r} is a sparse file (not supported)")
    if not (member.isreg() or member.isdir() or member.issym()):
        raise SourceError(f"tarball member {name!r} has an unsupported type")
    if not parts:
        if member.isdir():
            return  # "./": the root folder itself
        raise SourceError(f"tarball member {name!r} has an empty name")
    if member.issym():
        check_link_target(parts, member.linkname, name)

    parent = _open_parent(dest_fd, parts, name)
    leaf = parts[-1]
    try:
        if member.isdir():
            _make_dir(parent, leaf, name)
        elif member.issym():
            os.symlink(member.linkname, leaf, dir_fd=parent)
            links.append("/".join(parts))
        else:
            _write_file(archive, member, parent, leaf, budget)
    except FileExistsError:
        raise SourceError(
            f"tarball member {name!r} is a duplicate or conflicts with another"
        ) from None
    except ValueError as exc:  # e.g. NUL in a pax link target
        raise SourceError(f"tarball member {name!r} is invalid: {exc}") from None
    except OSError as exc:  # e.g. a name too long for the file system
        raise SourceError(f"cannot unpack tarball member {name!r}: {exc.strerror}") from None
    finally:
        os.close(parent)


def _open_parent(dest_fd: int, parts: list[str], name: str) -> int:
    """A descriptor of the member's folder, creating real folders, never following links."""
    fd = os.dup(dest_fd)
    for part in parts[:-1]:
        try:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                created = True
            except FileExistsError:
                created = False
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise SourceError(
                    f"tarball member {name!r} would be written through a symlink or file ({part!r})"
                ) from None
            raise SourceError(f"cannot unpack tarball member {name!r}: {exc.strerror}") from None
        finally:
            os.close(fd)
        fd = child
        if created:
            os.fchmod(fd, 0o755)  # not left to the umask
    return fd


def _make_dir(parent: int, leaf: str, name: str) -> None:
    try:
        os.mkdir(leaf, 0o755, dir_fd=parent)
    except FileExistsError:
        pass  # a repeated folder, or one already made for earlier members: fine
    try:
        fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError:
        raise SourceError(f"tarball member {name!r} conflicts with a file or link") from None
    try:
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)


def _write_file(
    archive: tarfile.TarFile, member: tarfile.TarInfo, parent: int, leaf: str, budget: _Budget
) -> None:
    if member.size > budget.left:  # refuse early on the header's word...
        budget.spend(member.size)
    data = archive.extractfile(member)
    assert data is not None  # regular files always have data
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(leaf, flags, 0o600, dir_fd=parent), "wb") as out:
        while chunk := data.read(_CHUNK):
            budget.spend(len(chunk))  # ...and on the bytes actually written
            out.write(chunk)
        os.fchmod(out.fileno(), 0o755 if member.mode & 0o100 else 0o644)


def check_link_target(parts: list[str], target: str, name: str, what: str = "tarball") -> None:
    """Refuse link targets that are absolute or climb above the tree, read lexically.

    `parts` are the link's path components; `what` names the source in messages. The
    same rules serve tarballs and git checkouts (gitsource.check_tree).
    """
    if not target:
        raise SourceError(f"{what} symlink {name!r} has an empty target")
    if target.startswith("/"):
        raise SourceError(f"{what} symlink {name!r} points to an absolute path {target!r}")
    where = parts[:-1]
    for part in target.split("/"):
        if part == "..":
            if not where:
                raise SourceError(f"{what} symlink {name!r} -> {target!r} leaves the project folder")
            where.pop()
        elif part not in ("", "."):
            where.append(part)


def check_links_stay_inside(dest: Path, links: list[str], what: str = "tarball") -> None:
    """Once every link exists, resolve each for real: chains of links can climb out even
    when each target looks harmless on its own (`sub/up -> ..`, then `sub/x -> up/..`)."""
    root = os.path.realpath(dest)
    for rel in links:
        real = os.path.realpath(os.path.join(root, rel))
        if real != root and not real.startswith(root + os.sep):
            raise SourceError(f"{what} symlink {rel!r} resolves outside the project folder")
