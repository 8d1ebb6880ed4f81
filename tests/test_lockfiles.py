"""When a requirements.txt pins (every requirement `==` with a hash), and which npm
lockfile counts: the rules behind `pinned` and `lock_sha256` (SPEC 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tee_daemon.trust.lockfiles import npm_lockfile, requirements_pinned

H = "--hash=sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text",
    [
        f"six==1.16.0 {H}\n",
        f"# pinned\nsix==1.16.0 \\\n    {H} \\\n    {H}\nidna==3.7 {H}  # a comment\n",
        f"--index-url https://pypi.org/simple\nrequests[socks]==2.32.3 {H}\n",
        f"--require-hashes\nsix==1.16.0 {H}\n",
    ],
)
def test_pinned(text: str) -> None:
    assert requirements_pinned(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# nothing\n",
        "six\n",
        "six==1.16.0\n",
        f"six>=1.16 {H}\n",
        f"six==1.16.0 {H}\nidna==3.7\n",
        f"-r other.txt\nsix==1.16.0 {H}\n",
        f"-e ./local\nsix==1.16.0 {H}\n",
        f"https://example.org/six.whl {H}\n",
        f"-c constraints.txt\nsix==1.16.0 {H}\n",
    ],
)
def test_not_pinned(text: str) -> None:
    assert not requirements_pinned(text)


def test_npm_lockfile_order_and_links(tmp_path: Path) -> None:
    assert npm_lockfile(tmp_path) is None
    (tmp_path / "package-lock.json").write_text("{}")
    assert npm_lockfile(tmp_path).name == "package-lock.json"
    (tmp_path / "npm-shrinkwrap.json").write_text("{}")
    assert npm_lockfile(tmp_path).name == "npm-shrinkwrap.json"  # npm's precedence
    (tmp_path / "npm-shrinkwrap.json").unlink()
    (tmp_path / "npm-shrinkwrap.json").symlink_to("/etc/hostname")
    assert npm_lockfile(tmp_path).name == "package-lock.json"  # a link is never followed


def test_verify_deps_check_reads_the_four_fields() -> None:
    from tee_daemon.cli.verify import check_deps

    base = {"toolchain": {"node": "1", "tee-daemon": "0.1.0"}, "lock_sha256": "aa" * 32, "deps_tree_sha256": "bb" * 32}
    by_name = lambda checks: {c.name: c for c in checks}  # noqa: E731
    assert by_name(check_deps({**base, "pinned": True}, False))["deps"].ok
    assert not by_name(check_deps({**base, "pinned": False}, False))["deps"].ok
    assert by_name(check_deps({**base, "pinned": False}, True))["deps"].ok  # --allow-unpinned
    # Pinned without a lockfile for what it installed is a claim nothing backs.
    assert not by_name(check_deps({**base, "lock_sha256": None, "pinned": True}, True))["deps"].ok
    assert by_name(check_deps({**base, "lock_sha256": None, "deps_tree_sha256": None, "pinned": True}, False))["deps"].ok
    assert not by_name(check_deps({"pinned": True}, False))["toolchain"].ok  # no toolchain recorded
