"""extract_tarball: good archives unpack faithfully, hostile ones are refused."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tee_daemon.kernel.errors import SourceError
from tee_daemon.state.tarball import extract_tarball


def member(
    name: str,
    data: bytes | None = None,
    *,
    type: bytes = tarfile.REGTYPE,
    mode: int = 0o644,
    linkname: str = "",
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = type
    info.mode = mode
    info.linkname = linkname
    info.uid = info.gid = 12345  # ownership in the archive is ignored
    if data is not None:
        info.size = len(data)
    return info, data


def build(
    *members: tuple[tarfile.TarInfo, bytes | None], gz: bool = False, fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def d(name: str, mode: int = 0o700) -> tuple[tarfile.TarInfo, bytes | None]:
    return member(name, type=tarfile.DIRTYPE, mode=mode)


def link(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    return member(name, type=tarfile.SYMTYPE, linkname=target)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    out = tmp_path / "scratch" / "dest"
    out.mkdir(parents=True)
    return out


def outside_untouched(dest: Path) -> None:
    """Only `dest` may have been written: its parent holds nothing else."""
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest"]


def refused(archive: bytes, dest: Path, match: str, **limits: int) -> None:
    with pytest.raises(SourceError, match=match) as info:
        extract_tarball(io.BytesIO(archive), dest, **limits)
    assert info.value.status_code == 400
    outside_untouched(dest)


# --- good archives ---------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_good_archive(dest: Path, gz: bool, fmt: int) -> None:
    archive = build(
        d("./"),
        d("./app", mode=0o777),
        member("./app/main.py", b"print('hi')\n", mode=0o664),
        member("./app/run.sh", b"#!/bin/sh\n", mode=0o700),
        member("app/lib/deep/util.py", b"x = 1\n"),  # parents made implicitly
        member("app/empty", b""),
        d("app/lib"),  # a folder entry after files inside it is fine
        member("static/index.html", b"<h1>hi</h1>"),
        link("static/main.py", "../app/main.py"),
        link("current", "app"),
        link("self", "."),
        member("h\u00e9llo-\u540d.txt", b"unicode"),
        gz=gz,
        fmt=fmt,
    )
    extract_tarball(io.BytesIO(archive), dest)
    assert (dest / "app/main.py").read_bytes() == b"print('hi')\n"
    assert (dest / "app/lib/deep/util.py").read_bytes() == b"x = 1\n"
    assert (dest / "app/empty").read_bytes() == b""
    assert (dest / "h\u00e9llo-\u540d.txt").read_bytes() == b"unicode"
    assert os.readlink(dest / "static/main.py") == "../app/main.py"
    assert (dest / "static/main.py").read_bytes() == b"print('hi')\n"
    assert os.readlink(dest / "current") == "app"
    mode = lambda rel: stat.S_IMODE(os.lstat(dest / rel).st_mode)  # noqa: E731
    assert mode("app/main.py") == 0o644
    assert mode("app/run.sh") == 0o755
    assert mode("app/lib/deep/util.py") == 0o644
    assert mode("app") == mode("app/lib") == mode("app/lib/deep") == mode("static") == 0o755
    outside_untouched(dest)


def test_empty_archive(dest: Path) -> None:
    extract_tarball(io.BytesIO(build()), dest)
    assert list(dest.iterdir()) == []


def test_unseekable_stream(dest: Path) -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            chunk = self.data.read(min(len(b), 7))  # tiny, uneven reads
            b[: len(chunk)] = chunk
            return len(chunk)

    archive = build(member("a/b.txt", b"x" * 5000), gz=True)
    extract_tarball(Pipe(archive), dest)  # type: ignore[arg-type]
    assert (dest / "a/b.txt").read_bytes() == b"x" * 5000


def test_limits_are_inclusive(dest: Path) -> None:
    archive = build(member("a", b"x" * 10), member("b", b"y" * 10))
    extract_tarball(io.BytesIO(archive), dest, max_bytes=20, max_files=2)


# --- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"hello world", b"PK\x03\x04" + b"\0" * 600, os.urandom(2048)]
)
def test_not_an_archive(dest: Path, data: bytes) -> None:
    refused(data, dest, "not a tar or tar.gz archive")


def test_corrupt_gzip(dest: Path) -> None:
    good = build(member("a", b"x" * 100_000), gz=True)
    refused(good[: len(good) // 2], dest, "corrupt")
    refused(b"\x1f\x8b" + b"garbage" * 100, dest, "corrupt")


def test_truncated_tar(dest: Path) -> None:
    good = build(member("a", os.urandom(100_000)))
    refused(good[:50_000], dest, "corrupt")


@pytest.mark.parametrize("name", ["/etc/passwd", "/tmp/x", "//x"])
def test_absolute_name(dest: Path, name: str) -> None:
    refused(build(member(name, b"x")), dest, "absolute path")


@pytest.mark.parametrize("name", ["../x", "a/../../x", "./../x", "a/b/../../../x", ".."])
def test_dotdot(dest: Path, name: str) -> None:
    refused(build(member(name, b"x")), dest, "escapes the project folder")


def test_dotdot_inside_tree_also_refused(dest: Path) -> None:
    refused(build(member("a/../b", b"x")), dest, "escapes")


@pytest.mark.parametrize("target", ["/etc/passwd", "/"])
def test_absolute_symlink(dest: Path, target: str) -> None:
    refused(build(link("l", target)), dest, "absolute path")


@pytest.mark.parametrize(
    ("name", "target"), [("l", ".."), ("l", "../x"), ("a/b/l", "../../.."), ("a/l", "b/../../../x")]
)
def test_symlink_leaving_tree(dest: Path, name: str, target: str) -> None:
    refused(build(link(name, target)), dest, "leaves the project folder")


def test_symlink_chain_leaving_tree(dest: Path) -> None:
    # Each target stays inside when read alone; followed for real, x is dest's parent.
    archive = build(d("sub"), link("sub/up", ".."), link("sub/x", "up/.."))
    refused(archive, dest, "resolves outside")


@pytest.mark.parametrize(
    "archive",
    [
        build(d("sub"), link("link", "sub"), member("link/x", b"pwned")),
        build(link("link", "sub"), member("link/deeper/x", b"pwned")),
    ],
)
def test_write_through_symlink(dest: Path, archive: bytes) -> None:
    refused(archive, dest, "would be written through a symlink")
    assert not (dest / "sub/x").exists() and not (dest / "sub/deeper").exists()


@pytest.mark.parametrize(
    "archive", [build(link("link", "sub"), d("link")), build(link("link", "sub"), d("link/in"))]
)
def test_folder_over_symlink(dest: Path, archive: bytes) -> None:
    refused(archive, dest, "through a symlink|conflicts")
    assert not (dest / "sub").exists()


def test_never_follows_a_link_that_points_out(dest: Path, tmp_path: Path) -> None:
    # Belt and braces: even a link to outside that already sits in dest is not followed.
    victim = tmp_path / "victim"
    victim.mkdir()
    (dest / "out").symlink_to(victim)
    with pytest.raises(SourceError, match="through a symlink"):
        extract_tarball(io.BytesIO(build(member("out/x", b"pwned"))), dest)
    with pytest.raises(SourceError, match="conflicts"):
        extract_tarball(io.BytesIO(build(d("out"))), dest)
    assert list(victim.iterdir()) == []


def test_symlink_then_file_with_same_name(dest: Path) -> None:
    refused(build(link("l", "a"), member("l", b"x")), dest, "duplicate")


def test_write_through_file(dest: Path) -> None:
    refused(build(member("f", b"x"), member("f/x", b"y")), dest, "through a symlink or file")


def test_duplicate_file_refused(dest: Path) -> None:
    refused(build(member("a", b"1"), member("./a", b"2")), dest, "duplicate")


def test_file_over_folder_refused(dest: Path) -> None:
    refused(build(member("a/b", b"1"), member("a", b"2")), dest, "duplicate or conflicts")


def test_name_too_long(dest: Path) -> None:
    refused(build(member("x" * 300, b"x")), dest, "cannot unpack tarball member")
    refused(build(member("d" * 300 + "/x", b"x")), dest, "cannot unpack tarball member")


def test_hard_link(dest: Path) -> None:
    archive = build(member("a", b"x"), member("b", type=tarfile.LNKTYPE, linkname="a"))
    refused(archive, dest, "hard link")


@pytest.mark.parametrize(
    ("type", "what"),
    [
        (tarfile.CHRTYPE, "device file"),
        (tarfile.BLKTYPE, "device file"),
        (tarfile.FIFOTYPE, "FIFO"),
    ],
)
def test_special_files(dest: Path, type: bytes, what: str) -> None:
    refused(build(member("dev", type=type)), dest, what)


def test_unknown_type(dest: Path) -> None:
    refused(build(member("x", type=b"V")), dest, "unsupported type")


def test_too_many_files(dest: Path) -> None:
    archive = build(*(member(f"f{i}", b"") for i in range(11)))
    refused(archive, dest, "more than 10 members", max_files=10)


def test_too_many_bytes_across_files(dest: Path) -> None:
    archive = build(*(member(f"f{i}", b"x" * 400) for i in range(3)))
    refused(archive, dest, "more than 1000 bytes", max_bytes=1000)


def test_huge_pax_header(dest: Path) -> None:
    info = tarfile.TarInfo("x")
    info.pax_headers = {"comment": "y" * (1 << 20)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b""))
    refused(buf.getvalue(), dest, "extended header")


def _bomb_chunks(size: int) -> Iterator[bytes]:
    info = tarfile.TarInfo("zeros.bin")
    info.size = size
    yield info.tobuf(format=tarfile.GNU_FORMAT)
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        yield zeros
    yield bytes(1024)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """A ~300 KiB gzip of a tar holding one 300 MiB file of zeros."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz:
        for chunk in _bomb_chunks(300 << 20):
            gz.write(chunk)
    return buf.getvalue()


def test_gzip_bomb(dest: Path, gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 1 << 20
    tracemalloc.start()
    start = time.monotonic()
    try:
        refused(gzip_bomb, dest, "more than")
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 2
    assert peak < 8 << 20
    assert sum(p.stat().st_size for p in dest.rglob("*")) <= 100 * 2**20


def test_inflated_stream_is_bounded(dest: Path) -> None:
    # Bytes that are not file data (here big pax headers, each under the per-header cap)
    # still count against a bound on the whole inflated tar stream.
    infos = []
    for i in range(100):
        info = tarfile.TarInfo(f"f{i}")
        info.pax_headers = {"comment": "y" * 60_000}
        infos.append((info, b""))
    refused(
        build(*infos, gz=True), dest, "tar stream is larger than", max_files=100, max_bytes=1000
    )


def test_gzip_of_endless_zeros(dest: Path) -> None:
    # All zeros read as an empty tar: tarfile stops at the end marker without inflating on.
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
        for _ in range(200):
            gz.write(bytes(1 << 20))
    start = time.monotonic()
    extract_tarball(io.BytesIO(buf.getvalue()), dest)
    assert time.monotonic() - start < 1
    assert list(dest.iterdir()) == []
