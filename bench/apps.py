"""`make bench`'s ordinary-app rows (issue 11): the Express and Flask samples of
tests/apps, through the daemon in its default mode (isolated network, sandbox, limits;
the command runtime with its relay) against the same apps run directly on loopback with
the same dependencies and the same command.

Per app:

* deploy→first 200: a first deploy (dependencies fetched from the registry into the
  project's cache) and a redeploy of a changed env (cache hit), against running it
  directly: install + start→200, and start→200 with the dependencies in place;
* req/s and p50 at c=32 with wrk, direct and through the daemon, in interleaved rounds.

Flask is also measured as WSGI in the python runtime (app.py, no Procfile: granian in
the project's process, no gunicorn), through the daemon only.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APPS = REPO / "tests" / "apps"
sys.path.insert(0, str(REPO))

# name -> (sample folder, the command the daemon runs: the same runs directly)
SAMPLES = {
    "express": ("express-hello", "node index.js"),
    "flask": ("flask-hello", "gunicorn --bind $HOST:$PORT --workers 2 app:app"),
}


def files_of(folder: str, drop: tuple[str, ...] = ()) -> dict[str, bytes]:
    root = APPS / folder
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and str(p.relative_to(root)) not in drop
    }


def _install_direct(app: str, folder: Path) -> tuple[dict[str, str], float]:
    """Install the app's dependencies as its runtime would, by hand; its PATH and the
    seconds the install took."""
    from tee_daemon_plugins import toolchain

    t0 = time.monotonic()
    # The operator's network settings (proxy, CA bundle) as the daemon's builds get them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEE_")}
    env.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=str(folder), LANG="C.UTF-8")
    if app == "express":
        npm = toolchain.npm_argv()
        node = toolchain.find("node")
        subprocess.run([*npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=folder, env=env,
                       check=True, capture_output=True, timeout=600)  # fmt: skip
        env["PATH"] = f"{node.parent}:{env['PATH']}"
    else:
        venv = folder / ".venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-input",
             "--disable-pip-version-check", "-q", "-r", str(folder / "requirements.txt")],
            check=True, capture_output=True, timeout=600, env={**env, "PIP_NO_CACHE_DIR": "1"},
        )  # fmt: skip
        env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    return env, time.monotonic() - t0


def _start_direct(command: str, folder: Path, env: dict[str, str], port: int, wait_200) -> tuple[subprocess.Popen, float]:
    env = {**env, "PORT": str(port), "HOST": "127.0.0.1", "NODE_ENV": "production"}
    t0 = time.monotonic()
    proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    t1 = wait_200(f"http://127.0.0.1:{port}/", 60, proc)
    return proc, t1 - t0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run(Daemon, workdir: Path, helpers, rounds: int = 3, duration: float = 3.0, connections: int = 32) -> dict:
    """The rows; `helpers` is bench/run.py (wait_200, wrk, free_port)."""
    rows: dict[str, dict] = {}
    notes: list[str] = []
    daemon = Daemon(workdir, "apps-daemon")  # The default mode: isolated network.
    direct: dict[str, subprocess.Popen] = {}
    try:
        for app, (folder, command) in SAMPLES.items():
            row = rows[app] = {}
            name = f"bench-{app}"
            t0 = time.monotonic()
            r = daemon.deploy(name, files_of(folder), command=command, env={"ROUND": "1"})
            if r.status_code != 201:
                notes.append(f"{app}: deploy failed {r.status_code}: {r.text[:300]}")
                continue
            row["deploy_cold"] = helpers.wait_200(f"{daemon.url}/{name}/", 60) - t0
            t0 = time.monotonic()
            r = daemon.deploy(name, files_of(folder), command=command, env={"ROUND": "2"})
            row["deploy_warm"] = helpers.wait_200(f"{daemon.url}/{name}/", 60) - t0 if r.status_code == 201 else None
            here = workdir / f"direct-{app}"
            shutil.copytree(APPS / folder, here)
            env, row["direct_install"] = _install_direct(app, here)
            port = helpers.free_port()
            direct[app], row["direct_start"] = _start_direct(command, here, env, port, helpers.wait_200)
            row["direct_url"] = f"http://127.0.0.1:{port}/"
            row["daemon_url"] = f"{daemon.url}/{name}/"
        # Flask as WSGI in the python runtime (granian in the project's own process).
        t0 = time.monotonic()
        r = daemon.deploy("bench-flask-wsgi", files_of("flask-hello", drop=("Procfile",)))
        if r.status_code == 201:
            rows["flask (WSGI)"] = {
                "deploy_cold": helpers.wait_200(f"{daemon.url}/bench-flask-wsgi/", 60) - t0,
                "daemon_url": f"{daemon.url}/bench-flask-wsgi/",
            }
        else:
            notes.append(f"flask (WSGI): deploy failed {r.status_code}: {r.text[:300]}")
        # Interleaved rounds: direct then daemon, per app, so both see the same machine.
        for _ in range(rounds):
            for row in rows.values():
                for where in ("direct", "daemon"):
                    url = row.get(f"{where}_url")
                    if url:
                        row.setdefault(where, []).append(helpers.wrk(url, connections, duration))
    finally:
        for proc in direct.values():
            _stop(proc)
        daemon.stop()
    return {"rows": rows, "notes": notes, "connections": connections}


def _median(runs: list[dict] | None, key: str) -> float | None:
    if not runs:
        return None
    return statistics.median(r[key] for r in runs)


def print_rows(result: dict) -> None:
    c = result["connections"]
    print()
    print("Ordinary apps (issue 11): the daemon's default mode vs the same app run directly")
    print(f"{'app':<14}{'deploy→200 cold':>17}{'redeploy→200':>14}{'direct install+start':>22}{'direct start':>14}"
          f"{'req/s direct':>14}{'req/s daemon':>14}{'ratio':>7}{'p50 direct':>12}{'p50 daemon':>12}")  # fmt: skip

    def s(v):
        return f"{v:.2f}s" if isinstance(v, (int, float)) else "-"

    for app, row in result["rows"].items():
        rd, rn = _median(row.get("direct"), "rps"), _median(row.get("daemon"), "rps")
        pd, pn = _median(row.get("direct"), "p50"), _median(row.get("daemon"), "p50")
        install = (row["direct_install"] + row["direct_start"]) if "direct_install" in row else None
        errors = sum(r["errors"] for r in (row.get("daemon") or []) + (row.get("direct") or []))
        print(
            f"{app:<14}{s(row.get('deploy_cold')):>17}{s(row.get('deploy_warm')):>14}{s(install):>22}"
            f"{s(row.get('direct_start')):>14}{(f'{rd:.0f}' if rd else '-'):>14}{(f'{rn:.0f}' if rn else '-'):>14}"
            f"{(f'{rn / rd:.2f}' if rd and rn else '-'):>7}{(f'{pd:.2f}ms' if pd else '-'):>12}"
            f"{(f'{pn:.2f}ms' if pn else '-'):>12}" + (f"  ({errors} non-2xx)" if errors else "")
        )  # fmt: skip
    print(f"(wrk c={c}; cold deploys fetch dependencies from the registry; medians of interleaved rounds)")
    for note in result["notes"]:
        print("note:", note)
