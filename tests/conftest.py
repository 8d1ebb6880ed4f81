from __future__ import annotations

import itertools
import socket
import threading
from pathlib import Path

import pytest

from harness import DaemonProcess

_names = itertools.count()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    """One daemon shared by tests that only add their own uniquely named projects."""
    proc = DaemonProcess(tmp_path_factory.mktemp("daemon") / "data").start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_daemon(tmp_path: Path):
    """A daemon of the test's own, for restarts, crashes and listing tests."""
    procs: list[DaemonProcess] = []

    def start(**kw) -> DaemonProcess:
        proc = DaemonProcess(tmp_path / "data", **kw).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A project name unique within the session."""
    base = request.node.name.lower().replace("_", "-")
    clean = "".join(c for c in base if c.isalnum() or c == "-")[:40].strip("-")
    return f"{clean}-{next(_names)}"


@pytest.fixture
def loopback_listener():
    """A TCP service on the host's loopback (as the daemon or a shared-mode project is)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()
