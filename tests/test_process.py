"""`ProcessInstance` on its own: environment, readiness, crash restarts, stop, log rotation."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from tee_daemon.run import process, supervision
from tee_daemon.kernel.errors import DeployFailed
from tee_daemon.run.identity import Identity
from tee_daemon_plugins.runtime_python.venv import python_roots  # what a sandboxed python reads

SERVER = """
import os, socket, sys, time, json
print("env:" + json.dumps(sorted(os.environ)), flush=True)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen()
life = float(os.environ.get("LIFE", "0"))
if life:
    time.sleep(life); print("dying now", flush=True); sys.exit(7)
time.sleep(3600)
"""


IDENTITY = Identity(uid=299_001, gid=299_001)  # A project's own uid, as the daemon gives.


def make(tmp_path: Path, code: str = SERVER, settings: process.ProcessSettings | None = None,
         **env) -> process.ProcessInstance:
    port = process.free_port()
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    os.chown(data, IDENTITY.uid, IDENTITY.gid)
    full_env = process.base_env({"APP": "1", **env}, data_dir=data, port=port)
    return process.ProcessInstance(
        identity=IDENTITY,
        label="test",
        argv=[sys.executable, "-c", code],
        env=full_env,
        cwd=tmp_path,
        log_path=tmp_path / "logs" / "app.log",
        port=port,
        read_only=python_roots(),
        read_write=[data],
        settings=settings or process.ProcessSettings(),
    )


def test_environment_is_only_what_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("TEE_DAEMON_TOKEN", "must-not-leak")

    async def main():
        inst = make(tmp_path)
        try:
            await inst.ready(20)
            assert inst.describe()["state"] == "running"
        finally:
            await inst.stop()
        return inst

    inst = asyncio.run(main())
    log = (tmp_path / "logs" / "app.log").read_text()
    names = set(eval(log.split("env:", 1)[1].splitlines()[0]))
    assert "TEE_DAEMON_TOKEN" not in names
    assert {"APP", "DATA_DIR", "HOME", "PORT", "PATH"} <= names
    assert inst.proc.poll() is not None


def test_exit_before_listening_is_a_deploy_failure_with_the_log(tmp_path):
    async def main():
        inst = make(tmp_path, "import sys; print('cannot start: missing thing'); sys.exit(4)")
        try:
            with pytest.raises(DeployFailed) as info:
                await inst.ready(20)
        finally:
            await inst.stop()
        return info.value

    err = asyncio.run(main())
    assert "exit code 4" in err.detail and "cannot start: missing thing" in err.detail
    assert "cannot start" in err.extra["log"]


def test_not_listening_in_time(tmp_path):
    async def main():
        inst = make(tmp_path, "import time; time.sleep(60)")
        try:
            with pytest.raises(DeployFailed, match="was not listening"):
                await inst.ready(0.5)
        finally:
            await inst.stop()
        assert inst.proc.poll() is not None

    asyncio.run(main())


def test_crash_restarts_with_backoff_and_reports_a_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(supervision, "BACKOFF_FIRST", 0.05)
    monkeypatch.setattr(supervision, "CRASH_LOOP_AFTER", 3)
    counted: list[str] = []

    async def main():
        inst = make(tmp_path, LIFE="0.3", settings=process.ProcessSettings(on_restart=counted.append))
        try:
            await inst.ready(20)
            for _ in range(200):
                if inst.restarts >= 3 and inst.state == "crash-loop":
                    break
                await asyncio.sleep(0.05)
            return inst.describe()
        finally:
            await inst.stop()

    facts = asyncio.run(main())
    assert facts["restarts"] >= 3 and facts["state"] == "crash-loop", facts
    assert counted == ["test"] * facts["restarts"]  # Each restart handed to the daemon's counter.
    assert facts["last_exit"] == "exit code 7"
    log = (tmp_path / "logs" / "app.log").read_text()
    assert "restarting in 0.1s" in log and "crash loop" in log


# Serves, then after DEAF seconds stops listening but stays alive (a hung server).
DEAF_SERVER = """
import os, socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen()
time.sleep(float(os.environ["DEAF"])); s.close(); print("deaf now", flush=True)
time.sleep(3600)
"""


def test_alive_but_not_answering_is_restarted(tmp_path):
    counted: list[str] = []
    settings = process.ProcessSettings(health_interval=0.2, health_failures=2, on_restart=counted.append)

    async def main():
        inst = make(tmp_path, DEAF_SERVER, settings=settings, DEAF="1")
        try:
            await inst.ready(20)
            first = inst.proc
            assert await inst.healthy()
            for _ in range(100):  # Deaf after 1 s; ended after 2 failed checks, 0.2 s apart.
                if inst.restarts >= 1 and inst.proc is not first:
                    break
                await asyncio.sleep(0.05)
            assert inst.restarts >= 1 and first.poll() is not None, inst.describe()
            return inst.describe()
        finally:
            await inst.stop()

    facts = asyncio.run(main())
    assert facts["last_exit_reason"] == "health check" and counted[:1] == ["test"], facts
    log = (tmp_path / "logs" / "app.log").read_text()
    assert "deaf now" in log and "did not answer its health check 2 times in a row" in log, log
    assert "stopped by the daemon: it did not answer its health check" in log, log


def test_a_serving_process_is_left_alone_by_the_health_check(tmp_path):
    settings = process.ProcessSettings(health_interval=0.1, health_failures=1)

    async def main():
        inst = make(tmp_path, settings=settings)
        try:
            await inst.ready(20)
            first = inst.proc
            await asyncio.sleep(1.0)  # Ten checks.
            return inst.proc is first and first.poll() is None, inst.restarts
        finally:
            await inst.stop()

    assert asyncio.run(main()) == (True, 0)


def test_stop_kills_everything_the_project_started(tmp_path):
    # The child is started before the port listens, so it exists once `ready` returns.
    code = SERVER.replace("s = socket.socket()", "import subprocess; subprocess.Popen(['sleep', '300']); s = socket.socket()")

    async def main():
        inst = make(tmp_path, code)
        await inst.ready(20)
        # The child may still be between fork and exec (named like its parent): wait.
        deadline = time.monotonic() + 10
        while "sleep" not in [comm(p) for p in descendants(inst.proc.pid)] and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        tree = descendants(inst.proc.pid)
        names = [comm(p) for p in tree]
        await inst.stop()
        await inst.stop()  # Idempotent.
        return tree, names

    tree, names = asyncio.run(main())
    assert "sleep" in names, names  # There was a child to kill.
    # The sandbox's init dies with bwrap and takes its namespace's processes along;
    # give the kernel a (bounded) moment to finish them.
    deadline = time.monotonic() + 10
    while live(tree) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live(tree) == []


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            children = [int(c) for t in os.listdir(f"/proc/{current}/task")
                        for c in Path(f"/proc/{current}/task/{t}/children").read_text().split()]  # fmt: skip
        except OSError:
            continue
        found += children
        todo += children
    return found


def live(pids: list[int]) -> list[int]:
    """Those of `pids` still running (a zombie waits for its reaper)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_rotation(tmp_path):
    log = tmp_path / "app.log"
    for i in range(5):
        log.write_bytes(bytes([65 + i]) * 100)
        assert process.rotate(log, max_bytes=50, keep=3)
    assert log.read_bytes() == b""
    assert (tmp_path / "app.log.1").read_bytes() == b"E" * 100
    assert (tmp_path / "app.log.2").read_bytes() == b"D" * 100
    assert not (tmp_path / "app.log.3").exists()
    assert process.log_files(log) == [tmp_path / "app.log.2", tmp_path / "app.log.1", log]
