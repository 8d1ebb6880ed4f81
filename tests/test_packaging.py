"""The wheel holds the whole daemon: every module and page asset of core/ and plugins/.

The source layout maps core/ to `tee_daemon` and plugins/ to `tee_daemon_plugins` with an
explicit package list (pyproject.toml); the editable install the tests use finds any
folder, so a package missing from that list shows only in a real wheel (the daemon's
container image installs one). This builds the wheel and compares file by file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"core": "tee_daemon", "plugins": "tee_daemon_plugins"}
SHIPPED = {".py", ".html", ".js", ".mjs", ".ts", ".css", ".svg", ".bin"}


def test_the_wheel_holds_every_module_and_asset(tmp_path: Path) -> None:
    # From a copy of the checkout's own files: a build/ folder left by an earlier build
    # would otherwise hand setuptools the files the package list forgot.
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    source = tmp_path / "src"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("tee_daemon-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{package}/{path.relative_to(REPO / folder).as_posix()}"
        for folder, package in SOURCES.items()
        for path in (REPO / folder).rglob("*")
        if path.is_file() and path.suffix in SHIPPED and "__pycache__" not in path.parts
    }
    assert expected, "no sources found"
    assert sorted(expected - inside) == []
