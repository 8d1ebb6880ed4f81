"""`make bench`: the daemon's proxy and static serving against the runtimes and nginx.

Starts a daemon on a free loopback port with a throwaway data dir, deploys a hello
handler per runtime (deno, bun, node, python) and one static file, writes an nginx
config (upstream keep-alive to the same runtime processes, and the same static file)
and runs `wrk` against (a) the runtime process directly, (b) nginx, (c) the daemon,
interleaved per runtime so the ratios come from one run. Prints one table.

    .venv/bin/python bench/run.py [--duration 5] [--density] [--runtimes deno,bun]

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


def wrk(url: str, connections: int, duration: float, script: str | None = None) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
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
    def __init__(self, workdir: Path, label: str = "daemon", env_extra: dict[str, str] | None = None) -> None:
        self.data = workdir / f"{label}-data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"{label}.log", "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEE_DAEMON_")}
        env["TEE_DAEMON_TOKEN"] = TOKEN
        env.update(env_extra or {})
        cmd = [
            sys.executable, "-m", "tee_daemon.cli", "serve", "--port", str(self.port),
            "--data-dir", str(self.data), "--allow-insecure-sources",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_200(self.url + "/_api/health", 60, self.proc)
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300)

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
    def __init__(self, workdir: Path, upstreams: dict[str, int], static_root: Path | None) -> None:
        self.dir = workdir / "nginx"
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
            f"""{user}worker_processes 1;
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
        wait_200(self.url + "/_health", 10, self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


# -- the table ---------------------------------------------------------------------------------


def fmt_rps(v: float | None) -> str:
    return "-" if v is None else f"{v / 1000:.1f}k"


def fmt_ms(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v * 1000:.0f}µs" if v < 1 else f"{v:.2f}ms"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runtimes", default="deno,bun,node,python")
    parser.add_argument("--density", action="store_true", help="also deploy 100 Deno projects (slow)")
    parser.add_argument("--density-count", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument(
        "--only-connections", action="store_true", help="only the connection rows (silent connections, slow readers)"
    )
    parser.add_argument("--no-connections", action="store_true", help="skip the connection rows")
    args = parser.parse_args(argv)
    if args.only_connections:
        return run_connections(args)

    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench: {tool} is missing; run `make install` (scripts/setup-system.sh)", file=sys.stderr)
            return 2

    workdir = Path(tempfile.mkdtemp(prefix="tee-bench-"))
    started = time.monotonic()
    daemon = Daemon(workdir)
    nginx = None
    rows: list[dict] = []
    notes: list[str] = []
    try:
        available = daemon.runtimes()
        wanted = [r for r in args.runtimes.split(",") if r]
        deployed: dict[str, dict] = {}
        # Deploy-to-first-200 per runtime (the deploy answers once the version serves).
        for runtime in wanted:
            if runtime not in available:
                notes.append(f"{runtime}: runtime plugin not available in this daemon (pending)")
                continue
            name = f"hello-{runtime}"
            t0 = time.monotonic()
            r = daemon.deploy(name, HELLO[runtime], runtime=runtime)
            if r.status_code != 201:
                notes.append(f"{runtime}: deploy failed {r.status_code}: {r.text[:300]}")
                continue
            t1 = wait_200(f"{daemon.url}/{name}/", 30)
            port = int(httpx.get(f"{daemon.url}/{name}/port", timeout=10).text)
            deployed[runtime] = {"name": name, "port": port, "deploy": t1 - t0}
        # A static project: one file.
        t0 = time.monotonic()
        r = daemon.deploy("bench-static", {"index.html": STATIC_FILE, "file.html": STATIC_FILE}, runtime="static")
        static_root = None
        static_deploy = None
        if r.status_code == 201:
            static_deploy = wait_200(f"{daemon.url}/bench-static/file.html", 30) - t0
            static_root = daemon.data / "projects" / "bench-static" / "versions" / "1" / "tree"
        else:
            notes.append(f"static: deploy failed {r.status_code}: {r.text[:300]}")

        nginx = Nginx(workdir, {d["name"]: d["port"] for d in deployed.values()}, static_root)
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

        # Cold start: the project's process exits; time until the daemon serves it again
        # (crash detection, restart with its first backoff step, runtime start-up).
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

        density = run_density(daemon, args) if args.density else None
        rss_total = tree_rss(daemon.proc.pid)
    finally:
        if nginx is not None:
            nginx.stop()
        daemon.stop()

    # Scale to zero: a second daemon, alone on the machine, started as an operator of
    # a dense host would: TEE_DAEMON_IDLE_STOP=1 parks a project after 1 s idle.
    idle_cold: dict[str, list[float]] = {}
    idle_density = None
    idler = None
    try:
        idler = Daemon(workdir, "idle-daemon", {"TEE_DAEMON_IDLE_STOP": str(IDLE_STOP)})
        idle_cold = run_idle_cold(idler, [r for r in wanted if r in deployed], notes)
        if args.density:
            idle_density = run_idle_density(idler, args, notes)
    except RuntimeError as exc:
        notes.append(f"idle-stop daemon: {exc}")
    finally:
        if idler is not None:
            idler.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print_table(rows, args, cold, density, notes, rss_total, time.monotonic() - started, idle_cold, idle_density)
    return 0


IDLE_STOP = 1  # Seconds without a request before the idle-stop daemon parks a process.


def run_idle_cold(daemon: Daemon, runtimes: list[str], notes: list[str]) -> dict[str, list[float]]:
    """Per runtime: deploy, wait until parked, time the first request; three times."""
    out: dict[str, list[float]] = {}
    for runtime in runtimes:
        name = f"idle-{runtime}"
        r = daemon.deploy(name, HELLO[runtime], runtime=runtime)
        if r.status_code != 201:
            notes.append(f"{runtime} (idle stop): deploy failed {r.status_code}: {r.text[:300]}")
            continue
        timings = []
        with httpx.Client(timeout=30) as c:
            c.get(f"{daemon.url}/{name}/")  # Open the connection to the daemon.
            for _ in range(3):
                daemon.wait_parked([name], 15)
                t0 = time.perf_counter()
                r = c.get(f"{daemon.url}/{name}/")
                elapsed = time.perf_counter() - t0
                if r.status_code != 200:
                    notes.append(f"{runtime} (idle stop): cold request answered {r.status_code}: {r.text[:200]}")
                    break
                timings.append(elapsed)
            t0 = time.perf_counter()
            c.get(f"{daemon.url}/{name}/")
            warm = time.perf_counter() - t0
        if timings:
            out[runtime] = sorted(timings) + [warm]
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


def print_table(rows, args, cold, density, notes, rss_total, elapsed, idle_cold=None, idle_density=None) -> None:
    c = args.connections
    print()
    print(f"tee-daemon bench: wrk -t1 -c{c} -d{args.duration:g}s --latency (and -c1), loopback, {os.cpu_count()} cores")
    print()
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
    print("All rows above: always-on daemon (no idle stop).")
    for row in rows:
        bad = [k for k in ("direct", "nginx", "daemon") if row.get(k) and (row[k]["errors"] or row[k]["socket_errors"])]
        for k in bad:
            print(f"  {row['what']} {k}: non-2xx {row[k]['errors']} socket errors {row[k]['socket_errors']}")
    print(f"always-on daemon + project processes RSS at the end: {rss_total / 2**20:.0f} MiB")
    if idle_cold:
        print()
        print(f"IDLE STOP rows: a second daemon with TEE_DAEMON_IDLE_STOP={IDLE_STOP} (scale to zero);")
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
            f"density, ALWAYS-ON (no idle stop): {density['count']} Deno projects deployed in "
            f"{density['deploy']:.1f}s, all running; daemon + project processes RSS "
            f"{density['rss'] / 2**20:.0f} MiB summed, PSS {density['pss'] / 2**20:.0f} MiB; random projects "
            f"(all warm): {fmt_rps(c32['rps'])} req/s at c={c}, p50 {fmt_ms(c1['p50'])} at c=1"
        )
    if idle_density:
        i = idle_density
        print()
        print(
            f"density, IDLE STOP (TEE_DAEMON_IDLE_STOP={IDLE_STOP}): {i['count']} Deno projects deployed in "
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
    for note in notes:
        print("note:", note)
    print(f"(bench took {elapsed:.0f}s)")


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


def main_and_connections(argv: list[str] | None = None) -> int:
    code = main(argv)
    args = sys.argv[1:] if argv is None else argv
    if code == 0 and "--only-connections" not in args and "--no-connections" not in args and "-h" not in args:
        code = run_connections(argparse.Namespace(keep="--keep" in args))
    return code


if __name__ == "__main__":
    sys.exit(main_and_connections())
