"""A project's build code must not be able to plant files that other projects' builds read.

`pip install -r requirements.txt` runs a package's build backend (arbitrary code from the
requester). It may write its own install folder, but nothing shared with other projects:
a shared pip cache would let it plant wheels another project's install then trusts.
"""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

MARKER = "planted-by-build-backend"

BACKEND = f'''
import os, pathlib

def _plant():
    home = pathlib.Path(os.environ["HOME"])  # this install's own folder: cache/python/deps/<key>
    targets = [os.environ.get("PIP_CACHE_DIR"), home.parent.parent / "pip-cache", home.parent]
    for folder in filter(None, targets):
        try:
            pathlib.Path(folder, "{MARKER}").write_text("x")
        except OSError:
            pass

def get_requires_for_build_wheel(config_settings=None):
    _plant()
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("this package only probes its build environment")
'''


def _sdist() -> bytes:
    files = {
        "evil-0.1/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "evil-0.1/backend.py": BACKEND,
        "evil-0.1/PKG-INFO": "Metadata-Version: 2.1\nName: evil\nVersion: 0.1\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def sdist_server(tmp_path: Path):
    (tmp_path / "evil-0.1.tar.gz").write_bytes(_sdist())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/evil-0.1.tar.gz"
    server.shutdown()


def test_pip_build_code_cannot_write_a_cache_shared_with_other_projects(daemon, name, sdist_server):
    files = {
        "app.py": "async def handle(m, p, h, b, e):\n    return 200, {}, b'ok'\n",
        "requirements.txt": f"evil @ {sdist_server}\n",
    }
    r = daemon.deploy_files(name, files)
    # The build fails (the backend refuses to build); what matters is what it left behind.
    assert r.status_code >= 400
    planted = [p for p in (daemon.data_dir / "cache").rglob(MARKER)]
    assert planted == [], f"build code wrote into a shared cache: {planted}"
