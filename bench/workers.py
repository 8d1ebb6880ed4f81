"""`make bench`'s ingress-worker rows (issue 14): does the daemon scale with its workers?

Two daemons (TEE_DAEMON_PROJECT_NETWORK=shared) with TEE_DAEMON_WORKERS=1 and 2, each
serving a Deno hello and a 1 KiB static file, against nginx with worker_processes 1 and
2 (the same upstream keep-alive config, proxying to that daemon's Deno process and
serving the same file). wrk runs with as many threads as the server has workers, in
rounds (1w, nginx 1, 2w, nginx 2, repeated) so drift hits all alike; medians.

Beside them, what the machine allows: a floor row (granian, the daemon's own, serving a
constant from a trivial ASGI app with 1 and 2 workers: no proxying at all), the CPU each
request costs each process (utime+stime from /proc/<pid>/stat before and after the run,
over the requests: ingress workers, supervisor, nginx, the upstream, wrk) and how busy
the machine was (/proc/stat). The verdict on each goal says why from those figures.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

GOAL_OF_NGINX = 0.6  # req/s at c=32, daemon / nginx with as many workers
GOAL_SCALING = 1.6  # req/s at c=32, 2 workers / 1 worker
GOAL_ADDED_P50_MS = 0.100  # p50 at c=1 above the baseline (deno: direct; static: nginx)
COUNTS = (1, 2)
SATURATED = 0.9  # machine busy share from which the machine is the limit
CLK_TCK = os.sysconf("SC_CLK_TCK")

FLOOR_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": b"hello world"})
'''


# -- where the CPU goes ----------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of `pids` and of their children already waited for."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields:
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat; idle and iowait are not busy."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


def _wrk_cpu() -> float:
    """CPU of this process's finished children: around a wrk run, that is wrk's."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _listener_inodes(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found


def _holds(pid: int, sockets: set[str]) -> bool:
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in sockets:
                return True
    except OSError:
        pass
    return False


def daemon_roles(h, daemon) -> dict[str, list[int]]:
    """The daemon's processes by role. upstream: project processes (cwd in a project's
    folder) and theirs; ingress: the processes serving its port that started no other
    process serving it (granian's workers, not the process that handed them the socket);
    supervisor: the rest (the supervisor, granian's main process, sandbox wrappers)."""
    tree = h.tree_pids(daemon.proc.pid)
    projects = str(daemon.data / "projects") + "/"
    upstream: set[int] = set()
    for pid in tree:
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd") + "/"
        except OSError:
            continue
        if cwd.startswith(projects):
            upstream.update(h.tree_pids(pid))
    sockets = _listener_inodes(daemon.port)
    serving = {pid for pid in tree if pid not in upstream and _holds(pid, sockets)}
    parents = {pid: int(f[1]) for pid in serving if (f := _stat(pid))}
    ingress = serving - set(parents.values())
    supervisor = [pid for pid in tree if pid not in upstream and pid not in ingress]
    return {"ingress": sorted(ingress), "supervisor": supervisor, "upstream": sorted(upstream)}


def measure(h, url: str, connections: int, duration: float, threads: int, roles: dict[str, list[int]]) -> dict:
    """One wrk run, with the CPU seconds each role (and wrk) spent and the machine's busy share."""
    before = {role: cpu_seconds(pids) for role, pids in roles.items()}
    wrk_before = _wrk_cpu()
    busy0, total0 = machine_ticks()
    run = h.wrk(url, connections, duration, threads=threads)
    busy1, total1 = machine_ticks()
    run["cpu"] = {role: cpu_seconds(pids) - before[role] for role, pids in roles.items()}
    run["cpu"]["wrk"] = _wrk_cpu() - wrk_before
    run["busy"] = (busy1 - busy0) / max(total1 - total0, 1)
    return run


# -- the servers -----------------------------------------------------------------------------


class Floor:
    """granian (the daemon's) serving FLOOR_APP with `workers` workers on a loopback port."""

    def __init__(self, h, workdir: Path, workers: int) -> None:
        self.h = h  # bench/run.py's helpers
        folder = workdir / "floor"
        folder.mkdir(exist_ok=True)
        (folder / "floor_app.py").write_text(FLOOR_APP)
        self.port = h.free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        cmd = [
            sys.executable, "-m", "granian", "--interface", "asgi", "--workers", str(workers),
            "--host", "127.0.0.1", "--port", str(self.port), "floor_app:app",
        ]  # fmt: skip
        log = open(workdir / f"floor-{workers}w.log", "ab")
        self.proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            h.wait_200(self.url, 30, self.proc)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        self.h.stop_group(self.proc)


def _servers(h, workdir: Path, notes: list[str], started: list) -> dict:
    """Per worker count: the daemon, its nginx and the floor; every process started
    goes into `started` (the caller stops them). Targets: label -> what `run` measures."""
    targets: dict[str, dict] = {}
    for n in COUNTS:
        daemon = h.Daemon(workdir, f"workers{n}-daemon", h.SHARED, workers=n)
        started.append(daemon)
        deno = h.deploy_hellos(daemon, ["deno"], notes, label=f" ({n} workers)").get("deno")
        static_root, _ = h.deploy_static(daemon, notes)
        if deno is None or static_root is None:
            raise RuntimeError(f"the {n}-worker daemon did not deploy its projects")
        nginx = h.Nginx(workdir, {deno["name"]: deno["port"]}, static_root, workers=n, label=f"nginx-{n}w")
        started.append(nginx)
        floor = Floor(h, workdir, n)
        started.append(floor)
        roles = daemon_roles(h, daemon)
        if len(roles["ingress"]) != n:
            notes.append(f"the {n}-worker daemon serves with {len(roles['ingress'])} ingress processes")
        targets[f"{n}w"] = {
            "urls": {"deno": f"{daemon.url}/{deno['name']}/", "static": f"{daemon.url}/bench-static/file.html"},
            "roles": roles, "threads": n, "direct": f"http://127.0.0.1:{deno['port']}/",
        }  # fmt: skip
        targets[f"nginx{n}"] = {
            "urls": {"deno": f"{nginx.url}/{deno['name']}/", "static": f"{nginx.url}/static/file.html"},
            "roles": {"nginx": h.tree_pids(nginx.proc.pid), "upstream": roles["upstream"]}, "threads": n,
        }  # fmt: skip
        targets[f"floor{n}"] = {
            "urls": {"floor": floor.url}, "roles": {"granian": h.tree_pids(floor.proc.pid)}, "threads": n,
        }  # fmt: skip
    return targets


def run(h, workdir: Path, rounds: int = 3, duration: float = 3.0, connections: int = 32) -> dict:
    """The rows; `h` is bench/run.py (Daemon, Nginx, wrk, deploy_hellos, deploy_static)."""
    notes: list[str] = []
    started: list = []
    c32: dict[tuple[str, str], list[dict]] = {}
    c1: dict[tuple[str, str], list[dict]] = {}
    latency = min(duration, 2.0)
    try:
        targets = _servers(h, workdir, notes, started)
        for t in targets.values():  # Warm the pools and the upstream connections.
            for url in t["urls"].values():
                h.wrk(url, connections, 1, threads=t["threads"])
        # At c=1: the daemon and its baselines (deno: direct, static: nginx; the floor: itself).
        single = [("deno", "direct"), ("deno", "1w"), ("deno", "2w"), ("static", "nginx1"), ("static", "1w"),
                  ("static", "2w"), ("floor", "floor1")]  # fmt: skip
        for _ in range(max(rounds, 1)):
            for label in ("1w", "nginx1", "2w", "nginx2", "floor1", "floor2"):
                t = targets[label]
                for row, url in t["urls"].items():
                    c32.setdefault((row, label), []).append(
                        measure(h, url, connections, duration, t["threads"], t["roles"])
                    )
            for row, label in single:
                t = targets["1w"] if label == "direct" else targets[label]
                url = t["direct"] if label == "direct" else t["urls"][row]
                c1.setdefault((row, label), []).append(measure(h, url, 1, latency, 1, t["roles"]))
    finally:
        for one in reversed(started):
            one.stop()
    for (row, label), runs in [*c32.items(), *c1.items()]:
        for r in runs:
            if r["errors"] or r["socket_errors"]:
                notes.append(f"{row} {label}: non-2xx {r['errors']} socket errors {r['socket_errors']}")
    return {
        "c32": c32, "c1": c1, "notes": notes, "rounds": rounds, "duration": duration, "latency": latency,
        "connections": connections,
    }  # fmt: skip


# -- the rows --------------------------------------------------------------------------------


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _summary(runs: list[dict]) -> dict:
    """Medians over the rounds: req/s, p50, per role µs of CPU per request and cores, busy."""
    out = {"rps": _median(runs, "rps"), "p50": _median(runs, "p50"), "busy": _median(runs, "busy")}
    out["us"] = {
        role: statistics.median(r["cpu"][role] / max(r["requests"], 1) * 1e6 for r in runs) for role in runs[0]["cpu"]
    }
    out["cores"] = {
        role: statistics.median(r["cpu"][role] / max(r["seconds"], 1e-9) for r in runs) for role in runs[0]["cpu"]
    }
    return out


def _k(v: float) -> str:
    return f"{v / 1000:.1f}k"


def _us(ms: float) -> str:
    return f"{ms * 1000:.0f}µs"


def _why_of_nginx(s: dict, n: dict, floor: dict, cores: int) -> str:
    daemon_us = s["us"]["ingress"] + s["us"]["supervisor"]
    return (
        f"the daemon spends {daemon_us:.1f} µs CPU per request (ingress {s['us']['ingress']:.1f}, supervisor "
        f"{s['us']['supervisor']:.1f}) where nginx spends {n['us']['nginx']:.1f}; a bare granian answering a "
        f"constant spends {floor['us']['granian']:.1f} and reaches {_k(floor['rps'])} = {floor['rps'] / n['rps']:.2f} "
        f"of this nginx; machine {s['busy'] * 100:.0f}% busy of {cores} cores"
    )


def _budget(s: dict, cores: int, threads: int) -> str:
    """Where the machine's cores went during one run, and what the limit was."""
    c = s["cores"]
    daemon = c["ingress"] + c["supervisor"]
    used = s["busy"] * cores
    other = max(used - daemon - c["upstream"] - c["wrk"], 0.0)
    if s["busy"] >= SATURATED:
        state = "saturated"
    elif c["wrk"] >= SATURATED * threads:
        state = "the load generator is the limit"
    else:
        state = "not saturated"
    return (
        f"{cores} cores: wrk {c['wrk']:.2f} + upstream {c['upstream']:.2f} + daemon {daemon:.2f} + other {other:.2f} "
        f"core = {used:.2f} busy: {state}"
    )


NAMES = {"1w": "daemon 1w", "2w": "daemon 2w", "nginx1": "nginx 1", "nginx2": "nginx 2", "floor1": "granian 1w",
         "floor2": "granian 2w"}  # fmt: skip


def print_rows(result: dict) -> None:
    cores = os.cpu_count() or 1
    c32 = {key: _summary(runs) for key, runs in result["c32"].items()}
    c1 = {key: _summary(runs) for key, runs in result["c1"].items()}
    conns = result["connections"]
    print()
    print(
        f"INGRESS WORKERS (issue 14): daemons with TEE_DAEMON_WORKERS=1 and 2 (shared network) against nginx with "
        f"worker_processes 1 and 2, {cores} cores;"
    )
    print(
        f"wrk -c{conns} -d{result['duration']:g}s with a thread per server worker (-t1, -t2); "
        f"{result['rounds']} rounds of 1w, nginx 1, 2w, nginx 2, floor 1w, floor 2w: medians"
    )
    head = (
        f"{'req/s at c=' + str(conns):<30}{'daemon 1w':>10}{'nginx 1':>9}{'ratio':>7}{'daemon 2w':>12}{'nginx 2':>9}"
        f"{'ratio':>7}{'2w/1w':>8}{'nginx 2/1':>11}"
    )
    print(head)
    print("-" * len(head))
    for row, what in (("deno", "deno hello"), ("static", "static 1 KiB file")):
        w1, n1, w2, n2 = (c32[(row, label)]["rps"] for label in ("1w", "nginx1", "2w", "nginx2"))
        print(
            f"{what:<30}{_k(w1):>10}{_k(n1):>9}{w1 / n1:>7.2f}{_k(w2):>12}{_k(n2):>9}{w2 / n2:>7.2f}{w2 / w1:>8.2f}"
            f"{n2 / n1:>11.2f}"
        )
    f1, f2 = c32[("floor", "floor1")], c32[("floor", "floor2")]
    floor_scaling = f2["rps"] / f1["rps"]
    print(f"{'floor: bare granian, constant':<30}{_k(f1['rps']):>10}{'':>16}{_k(f2['rps']):>12}{'':>16}"
          f"{floor_scaling:>8.2f}")

    print()
    print(f"CPU per request at c={conns} in µs (cores busy), medians; other = machine busy - the processes listed")
    head = f"{'':<22}{'server':>15}{'supervisor':>15}{'upstream':>15}{'wrk':>15}{'other':>8}{'machine':>9}"
    print(head)
    print("-" * len(head))
    for (row, label), s in c32.items():
        server = "ingress" if "ingress" in s["us"] else "nginx" if "nginx" in s["us"] else "granian"

        def cell(role: str) -> str:
            return f"{s['us'][role]:.1f} ({s['cores'][role]:.2f})" if role in s["us"] else "-"

        listed = sum(s["cores"].values())
        print(
            f"{row + ' ' + NAMES[label]:<22}{cell(server):>15}{cell('supervisor'):>15}{cell('upstream'):>15}"
            f"{cell('wrk'):>15}"
            f"{max(s['busy'] * cores - listed, 0):>8.2f}{s['busy'] * 100:>8.0f}%"
        )
    print("server = the daemon's ingress workers, nginx's processes, or the floor's granian")

    print()
    print(f"p50 at c=1 (wrk -t1 -c1 -d{result['latency']:g}s)")
    base = {"deno": ("direct", "direct"), "static": ("nginx1", "nginx 1")}
    for row, (label, name) in base.items():
        print(
            f"  {row:<8}{name} {_us(c1[(row, label)]['p50'])}, 1w {_us(c1[(row, '1w')]['p50'])}, "
            f"2w {_us(c1[(row, '2w')]['p50'])}"
        )
    print(f"  floor   bare granian 1 worker {_us(c1[('floor', 'floor1')]['p50'])}")

    verdicts: list[tuple[str, bool, str]] = []
    floor_by = {1: f1, 2: f2}
    for row in ("deno", "static"):
        for n in COUNTS:
            s, ng = c32[(row, f"{n}w")], c32[(row, f"nginx{n}")]
            ratio = s["rps"] / ng["rps"]
            verdicts.append((
                f"{row} {n}w {ratio:.2f} of nginx {n} at c={conns} (goal >= {GOAL_OF_NGINX})",
                ratio >= GOAL_OF_NGINX, _why_of_nginx(s, ng, floor_by[n], cores),
            ))  # fmt: skip
    for row in ("deno", "static"):
        w1, w2 = c32[(row, "1w")], c32[(row, "2w")]
        n1, n2 = c32[(row, "nginx1")], c32[(row, "nginx2")]
        scaling = w2["rps"] / w1["rps"]
        verdicts.append((
            f"{row} 2w {scaling:.2f}x the 1w (goal >= {GOAL_SCALING}x)", scaling >= GOAL_SCALING,
            f"{_budget(w2, cores, 2)} (2w run); the 1w run kept {w1['busy'] * cores:.2f} cores busy already; "
            f"nginx 2/1 {n2['rps'] / n1['rps']:.2f}x, bare granian 2/1 {f2['rps'] / f1['rps']:.2f}x",
        ))  # fmt: skip
    for row, (label, name) in base.items():
        for n in COUNTS:
            s, b = c1[(row, f"{n}w")], c1[(row, label)]
            added = s["p50"] - b["p50"]
            floor = c1[("floor", "floor1")]["p50"]
            verdicts.append((
                f"{row} {n}w added p50 at c=1 {_us(added)} over {name} (goal <= {_us(GOAL_ADDED_P50_MS)})",
                added <= GOAL_ADDED_P50_MS,
                f"a bare granian answering a constant has p50 {_us(floor)}, {_us(floor - b['p50'])} above {name} "
                f"before any proxying; at c=1 each request costs the daemon "
                f"{s['us']['ingress'] + s['us']['supervisor']:.0f} µs CPU (ingress {s['us']['ingress']:.0f})",
            ))  # fmt: skip
    print()
    for what, ok, why in verdicts:
        print(f"{'met' if ok else 'NOT MET':>8}  {what}" + ("" if ok else f"\n{'':>10}why: {why}"))
    met = sum(ok for _, ok, _ in verdicts)
    print(f"worker goals: {met} of {len(verdicts)} met")
    for note in result["notes"]:
        print("note:", note)
