"""`make bench`: the daemon's proxy and static serving against the runtimes and nginx.

Starts a daemon on a free loopback port with a throwaway data dir, deploys a hello
handler per runtime (deno, bun, node, python) and one static file, writes an nginx
config (upstream keep-alive to the same runtime processes, and the same static file)
and runs `wrk` against (a) the runtime process directly, (b) nginx, (c) the daemon,
interleaved per runtime so the ratios come from one run. Prints one table.

That daemon runs with TEE_DAEMON_PROJECT_NETWORK=shared (projects on a 127.0.0.1 port,
which wrk and nginx need to reach them directly). The sandbox rows then set a second
daemon in the default mode (SPEC section 9: isolated network over a unix socket, cgroup
limits, volume) against it in the same run: req/s at c=32, added p50 at c=1,
deploy→200 and the cold start after an idle stop, with the goals of issue 9.
The worker rows (bench/workers.py, issue 14) set daemons with 1 and 2 ingress workers
against nginx with as many worker processes, with where each request's CPU goes.

    .venv/bin/python bench/run.py [--duration 5] [--density] [--runtimes deno,bun]
    .venv/bin/python bench/run.py --only-sandbox [--sandbox-runtimes deno,python]
    .venv/bin/python bench/run.py --only-apps     # Express and Flask (bench/apps.py)
    .venv/bin/python bench/run.py --only-workers  # 1 and 2 ingress workers (bench/workers.py)

Needs wrk and nginx (scripts/setup-system.sh, run by `make install`). Nothing is
installed here. Figures on a shared machine move between runs: read the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token-" + "b" * 24

HELLO = {
    "deno": {
        "server.ts": """export default function handler(req: Request): Response {
  const url = new URL(req.url);
  if (url.pathname === "/port") return new Response(Deno.env.get("PORT") ?? "");
  if (url.pathname === "/exit") setTimeout(() => Deno.exit(3), 5);
  return new Response("hello world");
}
"""
    },
    "bun": {
        "index.ts": """export default function handler(req: Request): Response {
  const url = new URL(req.url);
  if (url.pathname === "/port") return new Response(process.env.PORT ?? "");
  if (url.pathname === "/exit") setTimeout(() => process.exit(3), 5);
  return new Response("hello world");
}
"""
    },
    "node": {
        "index.js": """module.exports = (req, res) => {
  if (req.url === "/port") return res.end(process.env.PORT || "");
  if (req.url === "/exit") setTimeout(() => process.exit(3), 5);
  res.setHeader("content-type", "text/plain");
  res.end("hello world");
};
"""
    },
    "python": {
        "app.py": """import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    body = b"hello world"
    if path == "/port":
        body = os.environ.get("PORT", "").encode()
    elif path == "/exit":
        import asyncio
        asyncio.get_running_loop().call_later(0.005, os._exit, 3)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""
    },
}
STATIC_FILE = ("<!doctype html><title>bench</title>\n" + "<p>static bench file</p>\n" * 40).encode()


# -- small helpers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tar(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def wait_200(url: str, timeout: float, proc: subprocess.Popen | None = None) -> float:
    """Poll until `url` answers 200; the moment it did (monotonic)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as c:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
            try:
                if c.get(url).status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            time.sleep(0.005)
    raise RuntimeError(f"{url}: no 200 within {timeout}s")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, connections: int, duration: float, script: str | None = None, threads: int = 1) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": int(done.group(1)) if done else 0,
        "seconds": float(done.group(2)) / (1000 if done.group(3) == "ms" else 1) if done else 0.0,
        "p50": _ms(p50.group(1)) if p50 else float("nan"),
        "p99": _ms(p99.group(1)) if p99 else float("nan"),
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": sock.group(1) if sock else "",
    }


def tree_pss(root_pid: int) -> int:
    """Proportional set size (bytes) of a process and its descendants: shared pages
    (the runtime binaries) counted once overall, unlike a sum of RSS."""
    total = 0
    for pid in tree_pids(root_pid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def tree_pids(root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, stack = [], [root_pid]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def tree_rss(root_pid: int) -> int:
    """Resident memory (bytes) of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * page
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


# -- the pieces under test -------------------------------------------------------------------


class Daemon:
    def __init__(
        self, workdir: Path, label: str = "daemon", env_extra: dict[str, str] | None = None, workers: int | None = None
    ) -> None:
        self.data = workdir / f"{label}-data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"{label}.log", "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEE_DAEMON_")}
        env["TEE_DAEMON_TOKEN"] = TOKEN
        env.update(env_extra or {})
        if workers is not None:  # Else the daemon's default: one ingress worker per core.
            env["TEE_DAEMON_WORKERS"] = str(workers)
        cmd = [
            sys.executable, "-m", "tee_daemon.cli.commands", "serve", "--port", str(self.port),
            "--data-dir", str(self.data), "--allow-insecure-sources",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300)
        try:
            wait_200(self.url + "/_api/health", 60, self.proc)
        except RuntimeError:
            self.stop()  # One that never answered is not left running.
            raise

    def deploy(self, name: str, files: dict, **manifest) -> httpx.Response:
        return self.client.post(
            "/_api/projects",
            files={"manifest": (None, json.dumps({"name": name, **manifest})), "files": ("p.tar.gz", make_tar(files))},
        )

    def runtimes(self) -> dict:
        try:
            return self.client.get("/_api/substrate").json().get("runtimes", {})
        except (httpx.HTTPError, ValueError):
            return {}

    def memory_gauges(self) -> dict[str, int]:
        """Per project resident memory from `/_api/metrics`: a parked project has none."""
        text = self.client.get("/_api/metrics").text
        found = {}
        for m in re.finditer(r'^tee_daemon_project_memory_rss_bytes\{project="([^"]+)"\} (\d+)', text, re.M):
            found[m.group(1)] = int(m.group(2))
        return found

    def with_processes(self, names: list[str]) -> set[str]:
        """Those of `names` with a runtime process (not bwrap) whose cwd is in the
        project's folder: one scan of the daemon's process tree."""
        roots = {str(self.data / "projects" / n) + "/": n for n in names}
        found = set()
        for pid in tree_pids(self.proc.pid)[1:]:
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd") + "/"
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm == "bwrap":
                continue
            for root, name in roots.items():
                if cwd.startswith(root):
                    found.add(name)
        return found

    def wait_parked(self, names: list[str], timeout: float) -> float:
        """Wait until none of `names` has a process (its memory gauge gone from
        `/_api/metrics` and no process in its folder); returns the seconds it took."""
        start = time.monotonic()
        while True:
            gauges = self.memory_gauges()
            if not any(n in gauges for n in names) and not self.with_processes(names):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                running = [n for n in names if n in gauges]
                raise RuntimeError(f"{len(running)} of {len(names)} projects still run after {timeout:g}s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.client.close()


class Nginx:
    def __init__(
        self, workdir: Path, upstreams: dict[str, int], static_root: Path | None, workers: int = 1, label: str = "nginx"
    ) -> None:
        self.dir = workdir / label
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        blocks = "\n".join(
            f"  upstream up_{name} {{ server 127.0.0.1:{port}; keepalive 64; }}" for name, port in upstreams.items()
        )
        locations = "\n".join(
            f"""    location /{name}/ {{
      proxy_pass http://up_{name}/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }}"""
            for name in upstreams
        )
        if static_root is not None:
            locations += f"\n    location /static/ {{ alias {static_root}/; }}"
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (self.dir / "nginx.conf").write_text(
            f"""{user}worker_processes {workers};
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path {self.dir}/body;
  proxy_temp_path {self.dir}/proxy;
  fastcgi_temp_path {self.dir}/fcgi;
  uwsgi_temp_path {self.dir}/uwsgi;
  scgi_temp_path {self.dir}/scgi;
{blocks}
  server {{
    listen 127.0.0.1:{self.port};
    location = /_health {{ return 200 "ok"; }}
{locations}
  }}
}}
"""
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [nginx, "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "stderr.log", "ab"),
            start_new_session=True,
        )
        try:
            wait_200(self.url + "/_health", 10, self.proc)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        stop_group(self.proc, signal.SIGQUIT)  # nginx's graceful stop


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a server started in a session of its own, with its children (bounded)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- the table ---------------------------------------------------------------------------------


def fmt_rps(v: float | None) -> str:
    return "-" if v is None else f"{v / 1000:.1f}k"


def fmt_ms(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v * 1000:.0f}µs" if v < 1 else f"{v:.2f}ms"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


SHARED = {"TEE_DAEMON_PROJECT_NETWORK": "shared"}  # The opt-in mode: a 127.0.0.1 port per project.
# Issue 9's goals for the default mode against the shared one.
GOAL_RPS_RATIO = 0.90  # req/s at c=32: at most 10 % fewer
GOAL_ADDED_P50_MS = 0.050  # p50 at c=1: at most 50 µs more
GOAL_DEPLOY_MS = {"deno": 300.0}  # deploy→first 200 in the default mode


def deploy_hellos(
    daemon: Daemon, runtimes: list[str], notes: list[str], prefix: str = "hello", label: str = ""
) -> dict:
    """Deploy each runtime's hello handler as `<prefix>-<runtime>`; per runtime its name,
    the seconds from the POST to the first 200 through the daemon (the deploy answers
    once the version serves), and its port (None when isolated: it has a unix socket)."""
    deployed: dict[str, dict] = {}
    for runtime in runtimes:
        name = f"{prefix}-{runtime}"
        t0 = time.monotonic()
        r = daemon.deploy(name, HELLO[runtime], runtime=runtime)
        if r.status_code != 201:
            notes.append(f"{runtime}{label}: deploy failed {r.status_code}: {r.text[:300]}")
            continue
        t1 = wait_200(f"{daemon.url}/{name}/", 30)
        port = httpx.get(f"{daemon.url}/{name}/port", timeout=10).text.strip()
        deployed[runtime] = {"name": name, "port": int(port) if port.isdigit() else None, "deploy": t1 - t0}
    return deployed


def deploy_static(daemon: Daemon, notes: list[str]) -> tuple[Path | None, float | None]:
    """Deploy the static project (`/bench-static/file.html`); the folder its files are
    in (nginx serves the same) and the seconds to the first 200, or None twice."""
    t0 = time.monotonic()
    r = daemon.deploy("bench-static", {"index.html": STATIC_FILE, "file.html": STATIC_FILE}, runtime="static")
    if r.status_code != 201:
        notes.append(f"static: deploy failed {r.status_code}: {r.text[:300]}")
        return None, None
    deployed = wait_200(f"{daemon.url}/bench-static/file.html", 30) - t0
    return daemon.data / "projects" / "bench-static" / "versions" / "1" / "tree", deployed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runtimes", default="deno,bun,node,python")
    parser.add_argument("--density", action="store_true", help="also deploy 100 Deno projects (slow)")
    parser.add_argument("--density-count", type=int, default=100)
    parser.add_argument(
        "--sandbox-runtimes", default="deno,python", help="runtimes of the sandbox rows ('' for none)"
    )
    parser.add_argument("--sandbox-rounds", type=int, default=4, help="interleaved wrk rounds per sandbox row")
    parser.add_argument("--sandbox-duration", type=float, default=3.0, help="seconds per sandbox wrk run")
    parser.add_argument("--deploy-samples", type=int, default=5, help="deploys per mode for the sandbox deploy→200")
    parser.add_argument(
        "--only-sandbox", action="store_true", help="only the sandbox rows (no nginx table, static, crash restarts)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument(
        "--only-connections", action="store_true", help="only the connection rows (silent connections, slow readers)"
    )
    parser.add_argument("--no-connections", action="store_true", help="skip the connection rows")
    parser.add_argument(
        "--only-apps", action="store_true", help="only the ordinary-app rows (Express, Flask: daemon vs direct)"
    )
    parser.add_argument("--no-apps", action="store_true", help="skip the ordinary-app rows")
    parser.add_argument(
        "--only-workers", action="store_true", help="only the ingress-worker rows (1 and 2 workers against nginx)"
    )
    parser.add_argument("--no-workers", action="store_true", help="skip the ingress-worker rows")
    parser.add_argument("--workers-rounds", type=int, default=3, help="interleaved rounds of the worker rows")
    parser.add_argument("--workers-duration", type=float, default=3.0, help="seconds per worker-row wrk run at c=32")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only_connections:
        return run_connections(args)
    if args.only_apps:
        return run_apps(args)

    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench: {tool} is missing; run `make install` (scripts/setup-system.sh)", file=sys.stderr)
            return 2
    if args.only_workers:
        return run_workers(args)

    workdir = Path(tempfile.mkdtemp(prefix="tee-bench-"))
    started = time.monotonic()
    # The main table's daemon shares the network: wrk and nginx reach its projects' ports.
    daemon = Daemon(workdir, env_extra=SHARED)
    started_nginx: list[Nginx] = []
    isolated = None
    sandbox = None
    rows: list[dict] = []
    notes: list[str] = []
    cold: dict[str, float] = {}
    sandbox_runtimes = [r for r in args.sandbox_runtimes.split(",") if r]
    try:
        available = daemon.runtimes()
        wanted = sandbox_runtimes if args.only_sandbox else [r for r in args.runtimes.split(",") if r]
        for runtime in [r for r in wanted if r not in available]:
            notes.append(f"{runtime}: runtime plugin not available in this daemon (pending)")
        deployed = deploy_hellos(daemon, [r for r in wanted if r in available], notes)
        if not args.only_sandbox:
            rows = run_table(daemon, deployed, workdir, args, notes, started_nginx)
        isolated = Daemon(workdir, "isolated-daemon")  # The default mode (SPEC section 9).
        compared = [r for r in sandbox_runtimes if r in deployed]
        sandbox = run_sandbox(daemon, isolated, deployed, rows, compared, args, notes)
        if not args.only_sandbox:
            cold = run_restarts(daemon, deployed, notes)
        # Always-on density in the default mode, as an operator gets it.
        density = run_density(isolated, args) if args.density else None
        rss_total = tree_rss(daemon.proc.pid)
    finally:
        for nginx in started_nginx:
            nginx.stop()
        if isolated is not None:
            isolated.stop()
        daemon.stop()

    # Scale to zero: a second daemon, alone on the machine, started as an operator of
    # a dense host would: TEE_DAEMON_IDLE_STOP=1 parks a project after 1 s idle, in the
    # default mode. For the sandbox rows, its cold starts in turn with those of the same
    # daemon in the shared mode (stopped before the density run).
    idle_cold: dict[str, list[float]] = {}
    idle_cold_shared: dict[str, list[float]] = {}
    idle_density = None
    idler = idler_shared = None
    try:
        idle_env = {"TEE_DAEMON_IDLE_STOP": str(IDLE_STOP)}
        runtimes = [r for r in wanted if r in deployed]
        compared = [r for r in runtimes if r in sandbox_runtimes]
        idler = Daemon(workdir, "idle-daemon", idle_env)
        plan = [(idler, runtimes)]
        if compared:
            idler_shared = Daemon(workdir, "idle-shared-daemon", {**idle_env, **SHARED})
            plan.append((idler_shared, compared))
        found = run_idle_cold(plan, notes)
        idle_cold, idle_cold_shared = found[0], (found[1] if compared else {})
        if idler_shared is not None:
            idler_shared.stop()
            idler_shared = None
        if args.density:
            idle_density = run_idle_density(idler, args, notes)
    except RuntimeError as exc:
        notes.append(f"idle-stop daemon: {exc}")
    finally:
        for one in (idler_shared, idler):
            if one is not None:
                one.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print_table(rows, args, cold, density, rss_total, idle_cold, idle_density)
    print_sandbox(sandbox, idle_cold, idle_cold_shared, args)
    for note in notes:
        print("note:", note)
    print(f"(bench took {time.monotonic() - started:.0f}s)")
    return 0


def run_table(daemon: Daemon, deployed: dict, workdir: Path, args, notes: list[str], started: list) -> list[dict]:
    """The main table: per runtime, direct vs nginx vs daemon at c=32 and c=1, then the
    static file. The nginx it starts goes into `started` (the caller stops it)."""
    rows: list = []
    static_root, static_deploy = deploy_static(daemon, notes)
    nginx = Nginx(workdir, {d["name"]: d["port"] for d in deployed.values()}, static_root)
    started.append(nginx)
    d, c = args.duration, args.connections
    for runtime, info in deployed.items():
        name = info["name"]
        direct = f"http://127.0.0.1:{info['port']}/"
        via_nginx = f"{nginx.url}/{name}/"
        via_daemon = f"{daemon.url}/{name}/"
        for url in (direct, via_nginx, via_daemon):  # warm the pools
            wrk(url, c, 1)
        row = {"what": f"{runtime} hello"}
        row["direct"] = wrk(direct, c, d)
        row["nginx"] = wrk(via_nginx, c, d)
        row["daemon"] = wrk(via_daemon, c, d)
        row["direct1"] = wrk(direct, 1, d)
        row["nginx1"] = wrk(via_nginx, 1, d)
        row["daemon1"] = wrk(via_daemon, 1, d)
        row["deploy"] = info["deploy"]
        rows.append(row)
    if static_root is not None:
        via_nginx = f"{nginx.url}/static/file.html"
        via_daemon = f"{daemon.url}/bench-static/file.html"
        wrk(via_nginx, c, 1)
        wrk(via_daemon, c, 1)
        row = {"what": f"static {len(STATIC_FILE)} B file"}
        row["nginx"] = wrk(via_nginx, c, d)
        row["daemon"] = wrk(via_daemon, c, d)
        row["nginx1"] = wrk(via_nginx, 1, d)
        row["daemon1"] = wrk(via_daemon, 1, d)
        row["deploy"] = static_deploy
        rows.append(row)
    return rows


def run_restarts(daemon: Daemon, deployed: dict, notes: list[str]) -> dict[str, float]:
    """Cold start: the project's process exits; time until the daemon serves it again
    (crash detection, restart with its first backoff step, runtime start-up)."""
    cold: dict[str, float] = {}
    for runtime, info in deployed.items():
        name = info["name"]
        try:
            httpx.get(f"{daemon.url}/{name}/exit", timeout=5)
        except httpx.HTTPError:
            pass
        t0 = time.monotonic()
        time.sleep(0.05)  # let it exit
        try:
            cold[runtime] = wait_200(f"{daemon.url}/{name}/", 30) - t0
        except RuntimeError as exc:
            notes.append(f"{runtime}: no restart after exit: {exc}")
    return cold


def run_sandbox(shared: Daemon, isolated: Daemon, deployed: dict, rows: list, runtimes: list[str], args, notes) -> dict:
    """The cost of the sandbox: the same hello projects through a daemon in the default
    mode (`isolated`) and through the shared-network one (`shared`, which already
    serves `deployed`), interleaved round by round so both see the same machine.

    Per runtime: median req/s at c=32 and p50 at c=1 over `--sandbox-rounds`, the
    direct p50 (the main table's, else measured here) for the added p50, and
    `--deploy-samples` deploy→200 times per mode (the extra projects deleted again)."""
    facts = {}
    try:
        facts = isolated.client.get("/_api/substrate").json().get("isolation", {})
    except (httpx.HTTPError, ValueError):
        pass
    if facts.get("network_mode") != "isolated":
        notes.append(f"sandbox rows: the default-mode daemon reports network {facts.get('network_mode')!r}")
    result: dict = {"facts": facts, "rounds": args.sandbox_rounds, "duration": args.sandbox_duration, "runtimes": {}}
    mine = deploy_hellos(isolated, runtimes, notes, label=" (default mode)")
    deploys = {rt: {"shared": [deployed[rt]["deploy"]], "isolated": [mine[rt]["deploy"]]} for rt in mine}
    for i in range(1, args.deploy_samples):
        for mode, daemon in (("isolated", isolated), ("shared", shared))[:: 1 if i % 2 else -1]:
            got = deploy_hellos(daemon, list(deploys), notes, prefix=f"deploy{i}", label=f" ({mode})")
            for rt, info in got.items():
                deploys[rt][mode].append(info["deploy"])
                daemon.client.delete(f"/_api/projects/{info['name']}")
    c, d = args.connections, args.sandbox_duration
    for rt in deploys:
        urls = {"shared": f"{shared.url}/{deployed[rt]['name']}/", "isolated": f"{isolated.url}/{mine[rt]['name']}/"}
        for url in urls.values():  # warm the pools
            wrk(url, c, 1)
        runs: dict[str, dict[str, list]] = {mode: {"c32": [], "c1": []} for mode in urls}
        for rnd in range(max(args.sandbox_rounds, 1)):
            order = list(urls) if rnd % 2 == 0 else list(urls)[::-1]
            for mode in order:
                runs[mode]["c32"].append(wrk(urls[mode], c, d))
            for mode in order:
                runs[mode]["c1"].append(wrk(urls[mode], 1, d))
        direct1 = next((row["direct1"]["p50"] for row in rows if row["what"] == f"{rt} hello"), None)
        if direct1 is None and deployed[rt]["port"]:
            direct1 = wrk(f"http://127.0.0.1:{deployed[rt]['port']}/", 1, d)["p50"]
        entry: dict = {"direct_p50": direct1, "deploy": deploys[rt]}
        for mode, got in runs.items():
            entry[mode] = {
                "rps": statistics.median(r["rps"] for r in got["c32"]),
                "p50": statistics.median(r["p50"] for r in got["c1"]),
            }
        # Round by round (the two modes measured back to back): the ratio and the delta.
        pairs = list(zip(runs["shared"]["c32"], runs["isolated"]["c32"]))
        entry["ratios"] = [b["rps"] / a["rps"] if a["rps"] else 0.0 for a, b in pairs]
        entry["deltas"] = [b["p50"] - a["p50"] for a, b in zip(runs["shared"]["c1"], runs["isolated"]["c1"])]
        for mode, got in runs.items():
            for r in got["c32"] + got["c1"]:
                if r["errors"] or r["socket_errors"]:
                    notes.append(f"sandbox {rt} {mode}: non-2xx {r['errors']} socket errors {r['socket_errors']}")
        result["runtimes"][rt] = entry
    return result


IDLE_STOP = 1  # Seconds without a request before the idle-stop daemon parks a process.


def run_idle_cold(daemons: list[tuple[Daemon, list[str]]], notes: list[str], samples: int = 3) -> list[dict]:
    """Per runtime: deploy, wait until parked, time the first request; `samples` times.
    Each daemon with its runtimes; a runtime on several daemons is sampled on each in
    turn, so they see the same machine. Per daemon: runtime -> sorted timings + warm."""
    out: list[dict[str, list[float]]] = [{} for _ in daemons]
    for runtime in dict.fromkeys(r for _, runtimes in daemons for r in runtimes):
        name = f"idle-{runtime}"
        on = []
        for i, (daemon, runtimes) in enumerate(daemons):
            if runtime not in runtimes:
                continue
            r = daemon.deploy(name, HELLO[runtime], runtime=runtime)
            if r.status_code != 201:
                notes.append(f"{runtime} (idle stop): deploy failed {r.status_code}: {r.text[:300]}")
                continue
            c = httpx.Client(timeout=30)
            c.get(f"{daemon.url}/{name}/")  # Open the connection to the daemon.
            on.append((i, daemon, c, []))
        try:
            for k in range(samples):
                for i, daemon, c, timings in on:
                    if len(timings) < k:
                        continue  # An earlier sample failed.
                    daemon.wait_parked([name], 15)
                    t0 = time.perf_counter()
                    r = c.get(f"{daemon.url}/{name}/")
                    elapsed = time.perf_counter() - t0
                    if r.status_code != 200:
                        notes.append(f"{runtime} (idle stop): cold request answered {r.status_code}: {r.text[:200]}")
                        continue
                    timings.append(elapsed)
            for i, daemon, c, timings in on:
                t0 = time.perf_counter()
                c.get(f"{daemon.url}/{name}/")
                warm = time.perf_counter() - t0
                if len(timings) == samples:
                    out[i][runtime] = sorted(timings) + [warm]
        finally:
            for entry in on:
                entry[2].close()
    return out


def random_paths_script(names: list[str]) -> Path:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    paths = ", ".join(f'"/{n}/"' for n in names)
    script.write_text(
        f"local paths = {{{paths}}}\nrequest = function()\n  return wrk.format(nil, paths[math.random(#paths)])\nend\n"
    )
    return script


def deploy_many(daemon: Daemon, count: int) -> tuple[list[str], float]:
    """Deploy `count` Deno hello projects; the names that deployed and the time it took."""
    t0 = time.monotonic()
    names = []
    for i in range(count):
        name = f"dens-{i:03d}"
        if daemon.deploy(name, HELLO["deno"], runtime="deno").status_code == 201:
            names.append(name)
    return names, time.monotonic() - t0


def run_idle_density(daemon: Daemon, args, notes: list[str]) -> dict:
    """100 Deno projects on the idle-stop daemon: memory with all parked, then wake a
    random 20: their first (cold) request, steady latency and req/s, memory."""
    names, deploy_seconds = deploy_many(daemon, args.density_count)
    parked_after = daemon.wait_parked(names, 30)
    result: dict = {"count": len(names), "deploy": deploy_seconds, "parked_after": parked_after}
    result["rss_parked"] = tree_rss(daemon.proc.pid)
    result["pss_parked"] = tree_pss(daemon.proc.pid)
    awake = random.Random(20).sample(names, min(20, len(names)))
    first = []
    with httpx.Client(base_url=daemon.url, timeout=30) as c:
        c.get("/_api/health")
        for name in awake:
            t = time.perf_counter()
            r = c.get(f"/{name}/")
            first.append(time.perf_counter() - t)
            if r.status_code != 200:
                notes.append(f"idle density: {name} first request answered {r.status_code}")
        script = random_paths_script(awake)
        duration = min(args.duration, 3.0)
        result["c1"] = wrk(daemon.url, 1, duration, str(script))
        result["c32"] = wrk(daemon.url, args.connections, duration, str(script))
        script.unlink()
        for name in awake:  # Still within the idle time: all 20 awake, the rest parked.
            c.get(f"/{name}/")
    result["rss_awake"] = tree_rss(daemon.proc.pid)
    result["pss_awake"] = tree_pss(daemon.proc.pid)
    result["running"] = len(daemon.memory_gauges())
    result["awake"] = len(awake)
    result["first_p50"] = statistics.median(first)
    result["first_max"] = max(first)
    return result


def run_density(daemon: Daemon, args) -> dict:
    names, deploy_seconds = deploy_many(daemon, args.density_count)
    time.sleep(2)
    rss = tree_rss(daemon.proc.pid)
    pss = tree_pss(daemon.proc.pid)
    script = random_paths_script(names)
    duration = min(args.duration, 3.0)
    random_c32 = wrk(daemon.url, args.connections, duration, str(script))
    random_c1 = wrk(daemon.url, 1, duration, str(script))
    script.unlink()
    return {"count": len(names), "rss": rss, "pss": pss, "deploy": deploy_seconds, "c32": random_c32, "c1": random_c1}


def print_table(rows, args, cold, density, rss_total, idle_cold=None, idle_density=None) -> None:
    c = args.connections
    print()
    print(f"tee-daemon bench: wrk -t1 -c{c} -d{args.duration:g}s --latency (and -c1), loopback, {os.cpu_count()} cores")
    print()
    if not rows:
        print("(main table skipped: --only-sandbox)")
    else:
        head = (
            f"{'':<22}{'direct':>9}{'nginx':>9}{'daemon':>9}{'d/nginx':>9}"
            f"{'p50 c1 direct':>15}{'nginx':>9}{'daemon':>9}{'added':>9}{'deploy→200':>12}{'restart':>9}"
        )
        print(head)
        print("-" * len(head))
        for row in rows:
            direct = row.get("direct")
            nginx, daemon = row["nginx"], row["daemon"]
            d1, n1, m1 = row.get("direct1"), row["nginx1"], row["daemon1"]
            added = m1["p50"] - d1["p50"] if d1 else None
            runtime = row["what"].split()[0]
            print(
                f"{row['what']:<22}{fmt_rps(direct['rps'] if direct else None):>9}{fmt_rps(nginx['rps']):>9}"
                f"{fmt_rps(daemon['rps']):>9}{fmt_ratio(daemon['rps'], nginx['rps']):>9}"
                f"{fmt_ms(d1['p50'] if d1 else None):>15}{fmt_ms(n1['p50']):>9}{fmt_ms(m1['p50']):>9}"
                f"{fmt_ms(added):>9}{fmt_ms(row['deploy'] * 1000) if row.get('deploy') else '-':>12}"
                f"{fmt_ms(cold[runtime] * 1000) if runtime in cold else '-':>9}"
            )
        print()
        print("req/s at c=" + str(c) + "; p50 latency at c=1; added = daemon p50 - direct p50 at c=1;")
        print("deploy→200 = POST /_api/projects until the first 200 through the daemon;")
        print("restart = the project's process exits (crash), until the daemon serves it again.")
        print("All rows above: always-on daemon (no idle stop), TEE_DAEMON_PROJECT_NETWORK=shared (projects on a")
        print("127.0.0.1 port, which direct and nginx need); the default mode's cost: SANDBOX rows below.")
        for row in rows:
            bad = [
                k for k in ("direct", "nginx", "daemon") if row.get(k) and (row[k]["errors"] or row[k]["socket_errors"])
            ]
            for k in bad:
                print(f"  {row['what']} {k}: non-2xx {row[k]['errors']} socket errors {row[k]['socket_errors']}")
        print(f"always-on (shared) daemon + project processes RSS at the end: {rss_total / 2**20:.0f} MiB")
    if idle_cold:
        print()
        print(f"IDLE STOP rows: a daemon in the default mode (isolated, limits), TEE_DAEMON_IDLE_STOP={IDLE_STOP};")
        print("cold start = project parked (no process), time of its first request, which starts it.")
        head = f"{'idle stop':<22}{'cold median':>13}{'min':>10}{'max':>10}{'then warm':>11}"
        print(head)
        print("-" * len(head))
        for runtime, (lo, mid, hi, warm) in idle_cold.items():
            print(
                f"{runtime + ' hello':<22}{fmt_ms(mid * 1000):>13}{fmt_ms(lo * 1000):>10}{fmt_ms(hi * 1000):>10}"
                f"{fmt_ms(warm * 1000):>11}"
            )
    if density:
        c32, c1 = density["c32"], density["c1"]
        print()
        print(
            f"density, ALWAYS-ON (no idle stop, default mode): {density['count']} Deno projects deployed in "
            f"{density['deploy']:.1f}s, all running; daemon + project processes RSS "
            f"{density['rss'] / 2**20:.0f} MiB summed, PSS {density['pss'] / 2**20:.0f} MiB; random projects "
            f"(all warm): {fmt_rps(c32['rps'])} req/s at c={c}, p50 {fmt_ms(c1['p50'])} at c=1"
        )
    if idle_density:
        i = idle_density
        print()
        print(
            f"density, IDLE STOP (TEE_DAEMON_IDLE_STOP={IDLE_STOP}, default mode): {i['count']} Deno projects "
            f"deployed in "
            f"{i['deploy']:.1f}s; all parked {i['parked_after']:.1f}s later"
        )
        print(
            f"  all {i['count']} parked: daemon + project processes RSS {i['rss_parked'] / 2**20:.0f} MiB "
            f"summed, PSS {i['pss_parked'] / 2**20:.0f} MiB"
        )
        print(
            f"  woke a random {i['awake']}: first (cold) request p50 {fmt_ms(i['first_p50'] * 1000)}, "
            f"max {fmt_ms(i['first_max'] * 1000)}"
        )
        print(
            f"  then over those {i['awake']}, warm: steady p50 {fmt_ms(i['c1']['p50'])} at c=1, "
            f"{fmt_rps(i['c32']['rps'])} req/s at c={c}"
            + (f" (non-2xx {i['c32']['errors']}, socket errors {i['c32']['socket_errors']})"
               if i['c32']['errors'] or i['c32']['socket_errors'] else "")
        )
        print(
            f"  {i['running']} running, rest parked: daemon + project processes RSS "
            f"{i['rss_awake'] / 2**20:.0f} MiB summed, PSS {i['pss_awake'] / 2**20:.0f} MiB"
        )


def signed_us(ms: float) -> str:
    return f"{ms * 1000:+.0f}µs"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else "met" if ok else "NOT MET"


def print_sandbox(sandbox: dict | None, idle_cold: dict, idle_cold_shared: dict, args) -> None:
    """The sandbox rows: default mode against the shared network, with issue 9's goals."""
    if not sandbox or not sandbox["runtimes"]:
        return
    limits = sandbox["facts"].get("limits", {})
    egress = sandbox["facts"].get("egress", "?")
    print()
    print(
        "SANDBOX rows (issue 9): the DEFAULT mode (own network namespace served over a unix socket, egress "
        f"{egress} via veth+NAT; cgroup limits {limits.get('memory_mb', '?')} MiB, {limits.get('cpus', '?')} CPU, "
        f"{limits.get('pids', '?')} pids; a {limits.get('disk_mb', '?')} MiB loop volume for data and /tmp)"
    )
    print(
        "against a daemon with TEE_DAEMON_PROJECT_NETWORK=shared (a 127.0.0.1 port; the same limits and volume), "
        f"same run; wrk -d{sandbox['duration']:g}s, the two back to back, {sandbox['rounds']} rounds: medians, and"
    )
    print("in [ ] the range of the rounds' ratios and p50 differences")
    head = f"{'':<38}{'shared':>10}{'default':>10}{'default vs shared':>24}   {'goal':<22}{'goal met':>9}"
    print(head)
    print("-" * len(head))
    verdicts: list[tuple[str, bool]] = []

    def line(what: str, shared: str, default: str, versus: str, goal: str = "-", ok: bool | None = None) -> None:
        print(f"{what:<38}{shared:>10}{default:>10}{versus:>24}   {goal:<22}{_met(ok):>9}")
        if ok is not None:
            verdicts.append((what, ok))

    for rt, e in sandbox["runtimes"].items():
        sh, iso = e["shared"], e["isolated"]
        ratio = statistics.median(e["ratios"])
        line(
            f"{rt} req/s at c={args.connections}", fmt_rps(sh["rps"]), fmt_rps(iso["rps"]),
            f"{ratio:.2f} [{min(e['ratios']):.2f}-{max(e['ratios']):.2f}]",
            f">= {GOAL_RPS_RATIO:.2f} of shared", ratio >= GOAL_RPS_RATIO,
        )  # fmt: skip
        delta = statistics.median(e["deltas"])
        versus = f"{signed_us(delta)} [{signed_us(min(e['deltas']))},{signed_us(max(e['deltas']))}]"
        direct = e["direct_p50"]
        if direct is not None:
            line(
                f"{rt} added p50 at c=1 (direct {fmt_ms(direct)})", signed_us(sh["p50"] - direct),
                signed_us(iso["p50"] - direct), versus, f"<= +{fmt_ms(GOAL_ADDED_P50_MS)}", delta <= GOAL_ADDED_P50_MS,
            )  # fmt: skip
        else:
            line(
                f"{rt} p50 at c=1", fmt_ms(sh["p50"]), fmt_ms(iso["p50"]), versus,
                f"<= +{fmt_ms(GOAL_ADDED_P50_MS)}", delta <= GOAL_ADDED_P50_MS,
            )  # fmt: skip
        dep_sh, dep_iso = (statistics.median(e["deploy"][m]) * 1000 for m in ("shared", "isolated"))
        goal = GOAL_DEPLOY_MS.get(rt)
        samples = len(e["deploy"]["isolated"])
        line(
            f"{rt} deploy→200 (median of {samples})", fmt_ms(dep_sh), fmt_ms(dep_iso),
            f"{'+' if dep_iso >= dep_sh else '-'}{fmt_ms(abs(dep_iso - dep_sh))}",
            f"< {goal:.0f}ms (default mode)" if goal else "-", dep_iso < goal if goal else None,
        )  # fmt: skip
        print(
            f"{'':<38}deploys, default mode: "
            + ", ".join(fmt_ms(t * 1000) for t in e["deploy"]["isolated"])
            + "; shared: " + ", ".join(fmt_ms(t * 1000) for t in e["deploy"]["shared"])
        )  # fmt: skip
        if rt in idle_cold or rt in idle_cold_shared:
            lo = idle_cold_shared.get(rt)
            hi = idle_cold.get(rt)
            line(
                f"{rt} cold start after idle stop",
                fmt_ms(lo[1] * 1000) if lo else "-",
                fmt_ms(hi[1] * 1000) if hi else "-",
                f"{'+' if hi[1] >= lo[1] else '-'}{fmt_ms(abs(hi[1] - lo[1]) * 1000)}" if lo and hi else "-",
            )  # fmt: skip
    print("added p50 = p50 through that daemon - p50 straight to the (shared) project's port, at c=1;")
    print("deploy→200 = POST /_api/projects until the first 200; cold start = median of 3 first requests to a")
    print(f"parked project (TEE_DAEMON_IDLE_STOP={IDLE_STOP}; a daemon per mode, sampled in turn).")
    missed = [what for what, ok in verdicts if not ok]
    print(
        f"sandbox goals: {len(verdicts) - len(missed)} of {len(verdicts)} met"
        + (f"; NOT met: {'; '.join(missed)}" if missed else "")
    )


def run_connections(args) -> int:
    """The front-door rows (bench/connections.py): silent connections and slow readers."""
    import connections

    workdir = Path(tempfile.mkdtemp(prefix="tee-bench-conn-"))
    started = time.monotonic()
    try:
        connections.print_rows(connections.run(Daemon, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"(connection rows took {time.monotonic() - started:.0f}s)")
    return 0


def run_apps(args) -> int:
    """The ordinary-app rows (bench/apps.py): Express and Flask, daemon against direct."""
    import apps

    for tool in ("wrk",):
        if not shutil.which(tool):
            print(f"bench: {tool} is missing; run `make install` (scripts/setup-system.sh)", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="tee-bench-apps-"))
    started = time.monotonic()
    try:
        apps.print_rows(apps.run(Daemon, workdir, sys.modules[__name__], duration=getattr(args, "sandbox_duration", 3.0)))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"(app rows took {time.monotonic() - started:.0f}s)")
    return 0


def run_workers(args) -> int:
    """The ingress-worker rows (bench/workers.py): 1 and 2 workers against nginx with as
    many worker processes, a bare granian floor, and where each request's CPU goes."""
    import workers

    workdir = Path(tempfile.mkdtemp(prefix="tee-bench-workers-"))
    started = time.monotonic()
    try:
        here = sys.modules[__name__]
        workers.print_rows(workers.run(here, workdir, args.workers_rounds, args.workers_duration, args.connections))
    except RuntimeError as exc:  # A server that did not start: the other rows still run.
        print(f"note: worker rows: {exc}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"(worker rows took {time.monotonic() - started:.0f}s)")
    return 0


def main_and_connections(argv: list[str] | None = None) -> int:
    code = main(argv)
    args = sys.argv[1:] if argv is None else argv
    only = {"--only-connections", "--only-sandbox", "--only-apps", "--only-workers", "-h"}
    if code == 0 and not (only | {"--no-workers"}).intersection(args):
        code = run_workers(parse_args(argv))
    if code == 0 and not (only | {"--no-connections"}).intersection(args):
        code = run_connections(argparse.Namespace(keep="--keep" in args))
    if code == 0 and not (only | {"--no-apps"}).intersection(args):
        code = run_apps(argparse.Namespace(keep="--keep" in args))
    return code


if __name__ == "__main__":
    sys.exit(main_and_connections())
