"""Start the real daemon as a subprocess and talk HTTP to it."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-admin-token-" + "x" * 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """`tee-daemon serve` on a free loopback port with its own data dir."""

    def __init__(
        self, data_dir: Path, *, token: str | None = TOKEN, extra_args=(), env=None, allow_insecure: bool = True
    ) -> None:
        self.data_dir = data_dir
        self.token = token
        self.extra_args = list(extra_args) + (["--allow-insecure-sources"] if allow_insecure else [])
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"daemon-{self.port}.log"

    def start(self, timeout: float = 60) -> "DaemonProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEE_DAEMON_")}
        env.update(self.extra_env)
        if self.token:
            env["TEE_DAEMON_TOKEN"] = self.token
        cmd = [
            sys.executable, "-m", "tee_daemon.cli.commands", "serve",
            "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra_args,
        ]  # fmt: skip
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/_api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"daemon did not become healthy:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.log.close()
        # A killed daemon leaves its projects' volumes mounted, its cgroups and firewall
        # chains in place (a restart reuses them): remove them, the test may not restart it.
        if sig == signal.SIGKILL:
            from tee_daemon.run.tenancy import remove_leftovers

            remove_leftovers(self.data_dir.resolve())

    def kill(self) -> None:
        """Crash the daemon and everything it started (as a power cut would)."""
        self.stop(signal.SIGKILL)

    # -- HTTP helpers -------------------------------------------------------------

    def client(self, admin: bool = True) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if admin and self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def deploy_files(self, name: str, files: dict[str, bytes | str], **manifest) -> httpx.Response:
        return self.deploy_tar(name, make_tar(files), **manifest)

    def deploy_tar(self, name: str, data: bytes, **manifest) -> httpx.Response:
        with self.client() as c:
            return c.post(
                "/_api/projects",
                files={"manifest": (None, json.dumps({"name": name, **manifest})), "files": ("p.tar.gz", data)},
            )

    def deploy_git(self, name: str, source: str, **fields) -> httpx.Response:
        with self.client() as c:
            return c.post("/_api/projects", json={"name": name, "source": source, **fields})

    def get(self, path: str, admin: bool = False, **kw) -> httpx.Response:
        with self.client(admin) as c:
            return c.get(path, **kw)


def make_tar(files: dict[str, bytes | str], gz: bool = True, modes: dict[str, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = (modes or {}).get(name, 0o644)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
