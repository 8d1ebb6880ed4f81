"""A project's build code must not be able to plant files that other projects' builds read.

`pip install -r requirements.txt` runs a package's build backend (arbitrary code from the
requester). It may write its own install folder, but nothing shared with other projects:
a shared pip cache would let it plant wheels another project's install then trusts.
"""

from __future__ import annotations

import io
import tarfile

import pytest

MARKER = "planted-by-build-backend"

BACKEND = f'''
import os, pathlib, socket

def _plant():
    home = pathlib.Path(os.environ["HOME"])  # this install's own folder: cache/python/deps/<key>
    targets = [os.environ.get("PIP_CACHE_DIR"), home.parent.parent / "pip-cache", home.parent]
    for folder in filter(None, targets):
        try:
            pathlib.Path(folder, "{MARKER}").write_text("x")
        except OSError:
            pass

def _probe_daemon():
    # The daemon's port on the host's loopback, written in by the test.
    port = PROBE_PORT
    if not port:
        return "no probe"
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        return "DAEMON-REACHED"
    except OSError as exc:
        return "unreachable " + type(exc).__name__

def get_requires_for_build_wheel(config_settings=None):
    _plant()
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("this package only probes its build environment: " + _probe_daemon())
'''


def _sdist(probe_port: int = 0) -> bytes:
    files = {
        "evil-0.1/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "evil-0.1/backend.py": BACKEND.replace("PROBE_PORT", str(probe_port)),
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


def _deploy_evil(daemon, name: str, probe_port: int = 0):
    """A python project whose requirements.txt builds a package of its own tree (pip
    runs its build backend: the project's code, in the build sandbox)."""
    tree = daemon.data_dir / "projects" / name / "versions" / "1" / "tree"
    files = {
        "app.py": "async def handle(m, p, h, b, e):\n    return 200, {}, b'ok'\n",
        "requirements.txt": f"evil @ file://{tree}/vendor/evil-0.1.tar.gz\n",
        "vendor/evil-0.1.tar.gz": _sdist(probe_port),
    }
    r = daemon.deploy_files(name, files)
    # The build fails (the backend refuses to build): its message says it really ran.
    assert r.status_code == 422, r.text
    assert "this package only probes its build environment" in r.text, r.text
    return r


def test_pip_build_code_cannot_write_a_cache_shared_with_other_projects(daemon, name):
    _deploy_evil(daemon, name)
    planted = [p for p in (daemon.data_dir / "cache").rglob(MARKER)]
    planted += [p for p in (daemon.data_dir / "projects").glob(f"*/cache/{MARKER}")]
    assert planted == [], f"build code wrote into a shared cache: {planted}"


@pytest.mark.parametrize("egress", ["allow", "deny"])
def test_build_code_cannot_reach_the_daemon(fresh_daemon, name, egress):
    """Builds run the project's code too: with either egress setting they go out through
    the project's own link, never the host's network where the daemon listens."""
    daemon = fresh_daemon(env={"TEE_DAEMON_PROJECT_EGRESS": egress})
    r = _deploy_evil(daemon, name, probe_port=daemon.port)
    assert "DAEMON-REACHED" not in r.text and "unreachable" in r.text, r.text
