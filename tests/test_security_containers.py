"""Hostile tenants in containers (SPEC section 9, last paragraph): the dockerfile runtime
and process runtimes under `--backend docker`, against a real, private Docker engine.

Each project here is an attacker: it tries to be root, to write its image, to fork
without end, to eat memory, to reach other projects, the daemon and the outside. What it
says it managed is only half the check; the truth comes from the host side: the engine's
inspect of the container, /proc and the cgroup files of its processes on this machine,
the engine's events, the network's settings.

Never skipped: if the engine cannot start here these tests fail loudly (CI runs them).
Nothing is pulled: the projects build FROM the busybox image imported locally.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from docker_engine import BUSYBOX_IMAGE, RUNTIME_BASE_IMAGE
from dockertest import containers, deploy_ok, only_container, running_engine, wait_for
from harness import DaemonProcess

MEMORY_MB, PIDS, CPUS, DISK_MB = 48, 32, 0.5, 16
LIMITS = {
    "TEE_DAEMON_PROJECT_MEMORY_MB": str(MEMORY_MB),
    "TEE_DAEMON_PROJECT_PIDS": str(PIDS),
    "TEE_DAEMON_PROJECT_CPUS": str(CPUS),
    "TEE_DAEMON_PROJECT_DISK_MB": str(DISK_MB),  # /tmp of a container is this big
}
IMAGES = {f"TEE_DAEMON_DOCKER_IMAGE_{rt}": RUNTIME_BASE_IMAGE for rt in ("DENO", "BUN", "NODE", "PYTHON")}
OOM_LINE = f"exceeding its memory limit of {MEMORY_MB} MiB"


# -- the attackers ------------------------------------------------------------------------


def _cgi(body: str) -> str:
    return "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n" + textwrap.dedent(body).lstrip()


HOSTILE_DOCKERFILE = f"""\
FROM {BUSYBOX_IMAGE}
COPY www /www
# Privilege it hopes for at run time: a setuid-root busybox (every applet), USER root.
RUN chmod 755 /www/cgi-bin/* && chmod 4755 /bin/busybox && mkdir -m 1777 /scratch
# A VOLUME: writable space past the read-only root, if the engine gave it a volume.
VOLUME /scratch
# What a build step is given (the cgroup files of cgroup v1, else v2), and a step that
# allocates more than the memory limit.
RUN cg=/sys/fs/cgroup \\
 && echo "build-memory: $(cat $cg/memory/memory.limit_in_bytes 2>/dev/null || cat $cg/memory.max)" \\
 && echo "build-cpu: $(cat $cg/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 $cg/cpu.max)" \\
 && (dd if=/dev/zero of=/dev/null bs=96M count=1 2>/dev/null; echo "build-dd: $?")
USER root
CMD ["sh", "-c", "exec httpd -f -vv -p ${{PORT:-8080}} -h /www"]
"""

HOSTILE_CGI = {
    # Who am I, and can anything make me more?
    "status": _cgi("""
        echo "id=$(id -u):$(id -g)"
        grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
        echo "setuid-busybox=$(/bin/busybox id -u)"
        echo "su=$(su -c 'id -u' root </dev/null 2>&1 | head -n 1)"
        echo "userns=$(unshare -U -r grep CapEff /proc/self/status 2>&1 | head -n 1)"
        echo "mount=$(mount -t tmpfs none /www 2>&1 | head -n 1)"
    """),
    # Write the image's files; then what is meant to be writable, and more than /tmp holds.
    "write": _cgi("""
        for f in /pwned /www/pwned /bin/pwned /etc/passwd; do
          if (echo x >> "$f") 2>/dev/null; then echo "wrote $f"; else echo "refused $f"; fi
        done
        echo x > /tmp/ok && echo "tmp=ok"
        echo x > "$DATA_DIR/ok" && echo "data=ok"
        for d in /tmp /scratch; do
          echo "fill$d=$(dd if=/dev/zero of=$d/fill bs=1M count=64 2>&1 | grep -i 'space' | head -n 1)"
          echo "size$d=$(wc -c < $d/fill)"
          rm -f $d/fill
        done
    """),
    # Start up to 80 processes. ash gives up at the first fork that fails, so the spawner
    # is a subshell; what it started is killed with builtins only (no fork is left).
    "fork": _cgi("""
        rm -f /tmp/pids /tmp/fork.err
        ( i=0; while [ $i -lt 80 ]; do i=$((i+1)); sleep 20 & echo $! >> /tmp/pids; done ) 2> /tmp/fork.err
        n=0
        while read -r p; do kill "$p" 2>/dev/null; n=$((n+1)); done < /tmp/pids
        echo "started=$n"
        while read -r line; do echo "error=$line"; done < /tmp/fork.err
    """),
    # A process of the container allocates more than the limit.
    "oom": _cgi("""
        dd if=/dev/zero of=/dev/null bs=96M count=1 2>/dev/null
        echo "dd=$?"
    """),
    # Connect where the query says (host:port), at most 4 s.
    "connect": _cgi("""
        out=$(timeout 4 wget -q -O - "http://$QUERY_STRING/" 2>&1)
        echo "rc=$? out=$out"
    """),
}

# PID 1 of this one is a shell: it serves with a daemonized httpd and, once a request has
# left /tmp/hog, becomes the allocation itself (the container's main process is killed).
HOG_DOCKERFILE = f"""\
FROM {BUSYBOX_IMAGE}
COPY www /www
RUN chmod 755 /www/cgi-bin/*
COPY pid1 /pid1
CMD ["sh", "/pid1"]
"""
HOG_PID1 = """\
httpd -p "${PORT:-8080}" -h /www
i=0
while [ $i -lt 3000 ]; do  # at most 10 minutes
  [ -e /tmp/hog ] && exec dd if=/dev/zero of=/dev/null bs=96M count=1
  sleep 0.2
  i=$((i+1))
done
"""
HOG_CGI = {"hog": _cgi("touch /tmp/hog && echo armed\n")}


def hostile_files() -> dict[str, bytes]:
    files = {"Dockerfile": HOSTILE_DOCKERFILE.encode(), "www/index.html": b"hostile\n"}
    files.update({f"www/cgi-bin/{k}": v.encode() for k, v in HOSTILE_CGI.items()})
    return files


def hog_files() -> dict[str, bytes]:
    files = {"Dockerfile": HOG_DOCKERFILE.encode(), "pid1": HOG_PID1.encode(), "www/index.html": b"hog\n"}
    files.update({f"www/cgi-bin/{k}": v.encode() for k, v in HOG_CGI.items()})
    return files


# The same attacks from a process runtime (python) run in a container (--backend docker).
HOSTILE_PY = '''\
import os, signal, time
from urllib.parse import urlsplit

async def handle(method, path, headers, body, env):
    route = urlsplit(path).path
    if route == "/status":
        return 200, {}, open("/proc/self/status").read()
    if route == "/write":
        out = []
        for f in ("/pwned", "/usr/pwned", "/etc/passwd"):
            try:
                with open(f, "a") as fh:
                    fh.write("x")
                out.append(f"wrote {f}")
            except OSError as exc:
                out.append(f"refused {f}: {exc.strerror}")
        with open(os.path.join(os.environ["DATA_DIR"], "ok"), "w") as fh:
            fh.write("x")
        out.append("data=ok")
        return 200, {}, "\\n".join(out)
    if route == "/fork":
        children, error = [], ""
        for _ in range(80):
            try:
                pid = os.fork()
            except OSError as exc:
                error = exc.strerror
                break
            if pid == 0:
                time.sleep(20)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        return 200, {}, f"started={len(children)}\\nerror={error}"
    if route == "/oom":
        hog = b"x" * (400 << 20)  # every page written: the kernel must find them
        return 200, {}, str(len(hog))
    return 200, {}, "hostile python"
'''


# -- host-side truth ----------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def host_pids(ctr) -> list[int]:
    """The host pids of every process in the container (the engine's `top`)."""
    top = ctr.top()
    column = top["Titles"].index("PID")
    return [int(row[column]) for row in top["Processes"]]


def cgroup_file(pid: int, v1_controller: str, v1_name: str, v2_name: str) -> str:
    """A cgroup interface file of the process's own cgroup, read on the host."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if v1_controller in controllers.split(","):
            return (Path("/sys/fs/cgroup") / v1_controller / path.lstrip("/") / v1_name).read_text().strip()
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return (Path("/sys/fs/cgroup") / line[3:].lstrip("/") / v2_name).read_text().strip()
    raise AssertionError(f"no {v1_controller} cgroup for pid {pid}")


def written_to_root(ctr) -> list[dict]:
    """The container's changes to its root filesystem, less the mount points the engine
    made for its mounts (and the folders above them)."""
    points = [m["Destination"] for m in ctr.attrs["Mounts"]] + list(ctr.attrs["HostConfig"].get("Tmpfs") or {})
    return [c for c in ctr.diff() or [] if not any(p == c["Path"] or p.startswith(c["Path"].rstrip("/") + "/")
                                                   for p in points)]


def project_log(daemon: DaemonProcess, name: str) -> str:
    return daemon.get(f"/_api/projects/{name}/logs", admin=True).text


def engine_events(client: docker.DockerClient, ctr_id: str, since: int, kinds: list[str]) -> list[dict]:
    events = client.api.events(since=since, until=int(time.time()) + 1, decode=True,
                               filters={"container": [ctr_id], "event": kinds})
    return list(events)


def cgi(daemon: DaemonProcess, name: str, script: str, query: str = "", timeout: float = 30) -> str:
    r = daemon.get(f"/{name}/cgi-bin/{script}" + (f"?{query}" if query else ""), timeout=timeout)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.text


def lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=") if "=" in line.split(":", 1)[0] else line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, docker.DockerClient]]:
    yield from running_engine(tmp_path_factory.mktemp("docker"), ("busybox", "runtime-base"))


@pytest.fixture(scope="module")
def sdaemon(engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    host, _ = engine
    proc = DaemonProcess(tmp_path_factory.mktemp("sdaemon") / "data", env={"DOCKER_HOST": host, **LIMITS}).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def hostile(sdaemon: DaemonProcess, engine) -> str:
    """One hostile Dockerfile project, deployed once for the tests that only attack."""
    deploy_ok(sdaemon, "hostile", hostile_files())
    return "hostile"


# -- the configuration -----------------------------------------------------------------------


def test_container_limits_come_from_the_project_settings() -> None:
    from tee_daemon.run import containers as db
    from tee_daemon.settings import load_settings

    def config(environ: dict[str, str]) -> db.DockerConfig:  # As the daemon hands them in.
        return db.docker_config(load_settings(environ=environ))

    cfg = config(LIMITS)
    assert (cfg.memory, cfg.cpus, cfg.pids, cfg.tmpfs_size, cfg.build_memory) == ("48m", 0.5, 32, "16m", "48m")
    assert (cfg.egress, cfg.build_timeout, cfg.build_timeout_var) == ("allow", 600.0, "TEE_DAEMON_BUILD_TIMEOUT")
    # TEE_DAEMON_DOCKER_* still override them for containers.
    cfg = config({**LIMITS, "TEE_DAEMON_DOCKER_MEMORY": "96m", "TEE_DAEMON_BUILD_TIMEOUT": "60",
                  "TEE_DAEMON_PROJECT_EGRESS": "deny"})
    assert (cfg.memory, cfg.build_memory, cfg.build_timeout, cfg.egress) == ("96m", "96m", 60.0, "deny")
    # A bad value stops the daemon at start-up, saying which variable.
    with pytest.raises(SystemExit, match="TEE_DAEMON_PROJECT_EGRESS"):
        config({"TEE_DAEMON_PROJECT_EGRESS": "sometimes"})
    with pytest.raises(SystemExit, match="TEE_DAEMON_PROJECT_MEMORY_MB"):
        config({"TEE_DAEMON_PROJECT_MEMORY_MB": "lots"})
    facts = db.hardening_facts(config(LIMITS), {"SecurityOptions": ["name=seccomp,profile=default"],
                                                   "PidsLimit": False})
    assert facts["limits"]["memory_mib"] == MEMORY_MB and facts["engine_security"] == ["seccomp"]
    assert "pids_limit" in facts["unenforced"] and "build_identity" in facts["unenforced"]


def test_a_container_never_runs_as_root_nor_binds_the_engine_socket(tmp_path: Path) -> None:
    from tee_daemon.run import containers as db
    from tee_daemon.kernel.errors import DeployFailed

    projects = tmp_path / "projects"
    first = db.container_identity("a", projects)
    assert first[0] > 0 and first == db.container_identity("a", projects)  # Recorded, kept.
    assert db.container_identity("b", projects) != first
    with pytest.raises(DeployFailed):
        db.container_identity("c", projects, type("Identity", (), {"uid": 0, "gid": 0})())
    with pytest.raises(DeployFailed, match="socket"):
        db.check_binds([{"source": "/var/run"}])
    db.check_binds([{"source": str(tmp_path)}])


# -- the dockerfile runtime ---------------------------------------------------------------


def test_runs_as_its_own_unprivileged_user_without_capabilities(sdaemon: DaemonProcess, engine, hostile: str,
                                                                name: str) -> None:
    _, client = engine
    said = lines(cgi(sdaemon, hostile, "status"))
    uid, gid = (int(x) for x in said["id"].split(":"))
    assert uid > 0 and gid > 0, said
    assert said["Uid"].split() == [str(uid)] * 4 and said["Gid"].split() == [str(gid)] * 4, said
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(said[cap], 16) == 0, (cap, said)
    assert said["NoNewPrivs"] == "1" and said["Seccomp"] == "2", said
    assert said["setuid-busybox"] == str(uid), said  # The setuid bit raised nothing.
    assert said["su"] != "0", said
    assert "CapEff" not in said["userns"], said  # No user namespace (and its capabilities) either.
    assert said["mount"], said  # mount failed with a message

    # The host's view: the engine's configuration and every process of the container.
    ctr = only_container(client, hostile)
    cfg, hc = ctr.attrs["Config"], ctr.attrs["HostConfig"]
    assert cfg["User"] == f"{uid}:{gid}"  # Not the image's USER root.
    assert hc["CapDrop"] == ["ALL"] and not hc.get("CapAdd")
    assert "no-new-privileges" in hc["SecurityOpt"]
    assert hc["Privileged"] is False and not hc.get("Devices") and not hc.get("DeviceCgroupRules")
    assert hc["ReadonlyRootfs"] is True
    assert hc["PidMode"] == "" and hc["IpcMode"] == "private" and hc["UTSMode"] == "" and hc["UsernsMode"] == ""
    assert hc["NetworkMode"] == f"tee-{ctr.labels['tee-daemon.daemon']}-{hostile}"
    assert (hc["Memory"], hc["MemorySwap"]) == (MEMORY_MB << 20, MEMORY_MB << 20)
    assert hc["NanoCpus"] == int(CPUS * 1e9) and hc["PidsLimit"] == PIDS
    assert f"size={DISK_MB}m" in hc["Tmpfs"]["/tmp"]
    # Its only mount is its data volume: no bind, and no anonymous volume for the VOLUME.
    assert not hc.get("Binds") and [m["Destination"] for m in ctr.attrs["Mounts"]] == ["/data"]
    assert set(hc["Tmpfs"]) == {"/tmp", "/scratch"}
    assert "docker.sock" not in str(ctr.attrs["Mounts"])
    pids = host_pids(ctr)
    assert pids
    for pid in pids:
        st = proc_status(pid)
        assert st["Uid"].split() == [str(uid)] * 4 and st["Gid"].split() == [str(gid)] * 4, (pid, st["Uid"])
        assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0 and st["NoNewPrivs"] == "1", st

    # The build ran under the project's limits: memory (an allocation above it was
    # killed) and CPU, read by a build step from its own cgroup.
    build_log = (sdaemon.data_dir / "projects" / hostile / "logs" / "build.log").read_text()
    assert f"build-memory: {MEMORY_MB << 20}" in build_log, build_log[-2000:]
    assert f"build-cpu: {int(CPUS * 100_000)}" in build_log, build_log[-2000:]
    assert "build-dd: 137" in build_log, build_log[-2000:]

    # Another project gets another identity.
    other = f"{name}-b"
    deploy_ok(sdaemon, other, hostile_files())
    other_id = lines(cgi(sdaemon, other, "status"))["id"]
    assert other_id != said["id"] and not other_id.startswith("0:"), (other_id, said["id"])


def test_cannot_write_its_root_filesystem(sdaemon: DaemonProcess, engine, hostile: str) -> None:
    _, client = engine
    said = cgi(sdaemon, hostile, "write")
    for f in ("/pwned", "/www/pwned", "/bin/pwned", "/etc/passwd"):
        assert f"refused {f}" in said, said
    assert "wrote" not in said, said
    assert "tmp=ok" in said and "data=ok" in said, said  # What is meant to be writable is.
    got = lines(said)
    for d in ("/tmp", "/scratch"):  # /tmp and the image's VOLUME are size-limited tmpfs...
        assert "No space left on device" in got[f"fill{d}"], said
        assert int(got[f"size{d}"]) <= DISK_MB << 20, said  # ...at the project's disk budget.
    ctr = only_container(client, hostile)
    assert not written_to_root(ctr)  # Host side: nothing changed in the container's root filesystem.


def test_cannot_start_more_processes_than_the_pids_limit(sdaemon: DaemonProcess, engine, hostile: str) -> None:
    _, client = engine
    ctr = only_container(client, hostile)
    assert cgroup_file(ctr.attrs["State"]["Pid"], "pids", "pids.max", "pids.max") == str(PIDS)  # Host side.
    said = cgi(sdaemon, hostile, "fork")
    started = int(lines(said)["started"])
    # httpd, the CGI's shell and the spawning subshell count too: fewer than PIDS got
    # started, and starting the next one failed.
    assert 10 < started < PIDS, said
    assert "can't fork" in said or "Resource temporarily unavailable" in said, said
    # The project got over it: its processes are gone and it serves.
    wait_for(lambda: sdaemon.get(f"/{hostile}/").status_code == 200, what="the project serving again")
    wait_for(lambda: len(host_pids(ctr)) <= 3, timeout=30, what="the spawned processes gone")


def test_out_of_memory_kills_and_the_log_says_why(sdaemon: DaemonProcess, engine, hostile: str, name: str) -> None:
    _, client = engine
    ctr = only_container(client, hostile)
    pid = ctr.attrs["State"]["Pid"]
    assert int(cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max")) == MEMORY_MB << 20
    with contextlib.suppress(FileNotFoundError):  # v1 with swap accounting: no swap on top
        assert int(cgroup_file(pid, "memory", "memory.memsw.limit_in_bytes", "memory.swap.max")) in (
            MEMORY_MB << 20, 0)
    since = int(time.time()) - 1

    # (1) A process of the container allocates above the limit: it is killed, the
    # container serves on, and the log says why.
    assert lines(cgi(sdaemon, hostile, "oom"))["dd"] == "137"
    wait_for(lambda: OOM_LINE in project_log(sdaemon, hostile), what="the out-of-memory line in the log")
    assert "out of memory" in project_log(sdaemon, hostile)
    assert engine_events(client, ctr.id, since, ["oom"])  # Host side: the engine saw the kill.
    assert sdaemon.get(f"/{hostile}/").status_code == 200
    instance = sdaemon.get(f"/_api/projects/{hostile}", admin=True).json()["instance"]
    assert instance["oom_kills"] >= 1 and instance["memory_limit_mib"] == MEMORY_MB, instance

    # (2) The container's main process is the allocation: the container is killed, the
    # engine restarts it, and the log says it was for the memory limit.
    hog = f"{name}-hog"
    deploy_ok(sdaemon, hog, hog_files())
    hog_ctr = only_container(client, hog)
    since = int(time.time()) - 1
    assert "armed" in cgi(sdaemon, hog, "hog")
    text = wait_for(
        lambda: (t := project_log(sdaemon, hog)) and "container exited with code 137" in t and t,
        timeout=30, what="the container's death in the log",
    )
    assert f"container exited with code 137 (killed for {OOM_LINE})" in text, text[-2000:]
    died = engine_events(client, hog_ctr.id, since, ["die"])
    assert died and died[0]["Actor"]["Attributes"]["exitCode"] == "137", died
    wait_for(lambda: only_container(client, hog).attrs["RestartCount"] >= 1, what="the engine's restart")
    wait_for(lambda: sdaemon.get(f"/{hog}/").status_code == 200, timeout=30, what="the hog serving again")
    instance = sdaemon.get(f"/_api/projects/{hog}", admin=True).json()["instance"]
    assert instance["oom_kills"] >= 1 and instance["restarts"] >= 1, instance


def test_cannot_reach_other_projects_or_the_daemon(sdaemon: DaemonProcess, engine, hostile: str, name: str) -> None:
    _, client = engine
    victim = f"{name}-victim"
    deploy_ok(sdaemon, victim, hostile_files())
    attacker, target = only_container(client, hostile), only_container(client, victim)
    (own,) = attacker.attrs["NetworkSettings"]["Networks"].values()
    (theirs,) = target.attrs["NetworkSettings"]["Networks"].values()
    assert own["NetworkID"] != theirs["NetworkID"]
    published = [b["HostPort"] for bs in target.attrs["HostConfig"]["PortBindings"].values() for b in bs]

    def connect(where: str) -> str:
        return cgi(sdaemon, hostile, "connect", where)

    assert "rc=0 out=hostile" in connect(f"{own['IPAddress']}:8080")  # Control: it can reach itself.
    for where in (
        f"{theirs['IPAddress']}:8080",  # the other project's container
        f"127.0.0.1:{published[0]}",  # its loopback port on the host (this loopback is the container's own)
        f"{own['Gateway']}:{published[0]}",  # ... through the host side of its own network
        f"127.0.0.1:{sdaemon.port}",  # the daemon
        f"{own['Gateway']}:{sdaemon.port}",
    ):
        said = connect(where)
        assert "rc=0" not in said and "hostile" not in said, (where, said)


def test_substrate_states_the_limits_and_isolation(sdaemon: DaemonProcess) -> None:
    facts = sdaemon.get("/_api/substrate").json()["runtimes"]["dockerfile"]["facts"]
    assert facts["available"] is True
    container = facts["container"]
    assert container["limits"] == {"memory_mib": MEMORY_MB, "swap_mib": 0, "cpus": CPUS, "pids": PIDS,
                                   "tmp_mib": DISK_MB, "restarts": 10}
    assert container["root_filesystem"] == "read-only" and container["no_new_privileges"] is True
    assert container["egress"] == "allow" and container["build"]["memory_mib"] == MEMORY_MB
    assert {"data_disk", "build_pids"} <= set(container["unenforced"])


# -- egress: allow and deny -----------------------------------------------------------------


class OutsideHost:
    """An HTTP server in a network namespace this test creates, on 198.19.x.y/30 (a
    benchmarking range), routed from the host: "the outside" a project may or may not reach."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{random.randrange(100):02d}"
        self.ns, self.host_if, self.ns_if = f"teeeg{tag}", f"teeegh{tag}", f"teeegn{tag}"
        used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        for _ in range(50):
            b, c = random.randrange(256), random.randrange(0, 256, 4)
            if f"198.19.{b}." not in used:
                break
        self.gw, self.ip = f"198.19.{b}.{c + 1}", f"198.19.{b}.{c + 2}"
        self.server: subprocess.Popen | None = None

    def __enter__(self) -> "OutsideHost":
        commands = (
            ["ip", "netns", "add", self.ns],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if],
            ["ip", "link", "set", self.ns_if, "netns", self.ns],
            ["ip", "addr", "add", f"{self.gw}/30", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            ["ip", "-n", self.ns, "addr", "add", f"{self.ip}/30", "dev", self.ns_if],
            ["ip", "-n", self.ns, "link", "set", self.ns_if, "up"],
            ["ip", "-n", self.ns, "link", "set", "lo", "up"],
            ["ip", "-n", self.ns, "route", "add", "default", "via", self.gw],
        )
        try:
            for cmd in commands:
                subprocess.run(cmd, check=True, capture_output=True)
        except BaseException:
            self.__exit__()
            raise
        code = ("import http.server,socketserver\n"
                "class H(http.server.BaseHTTPRequestHandler):\n"
                "  def do_GET(s):\n"
                "    s.send_response(200); s.end_headers(); s.wfile.write(b'outside-ok')\n"
                "  def log_message(s,*a): pass\n"
                f"socketserver.TCPServer.allow_reuse_address=True\n"
                f"socketserver.TCPServer(('{self.ip}',8000),H).serve_forever()\n")
        try:
            # A session of its own: killing it ends the server too, not only `timeout`.
            self.server = subprocess.Popen(["timeout", "300", "ip", "netns", "exec", self.ns, sys.executable, "-c",
                                            code], start_new_session=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                probe = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c",
                                        f"import socket; socket.create_connection(('{self.ip}', 8000), 1)"],
                                       capture_output=True)
                if probe.returncode == 0:
                    return self
                time.sleep(0.1)
            raise AssertionError("the outside host's server did not start")
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            try:
                os.killpg(self.server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.server.wait(10)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def test_egress_allow_and_deny(engine, sdaemon: DaemonProcess, hostile: str, tmp_path: Path, name: str) -> None:
    host, client = engine
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    d = DaemonProcess(tmp_path / "data",
                      env={"DOCKER_HOST": host, **LIMITS, "TEE_DAEMON_PROJECT_EGRESS": "deny"}).start()
    try:
        deploy_ok(d, name, hostile_files())
        assert d.get(f"/{name}/").text == "hostile\n"  # It serves, through the daemon.
        ctr = only_container(client, name)
        (net_name,) = ctr.attrs["NetworkSettings"]["Networks"]
        net = client.networks.get(net_name)
        assert net.attrs["Internal"] is True and net_name.endswith("-internal")  # Host side: no route out.
        assert not ctr.attrs["HostConfig"]["PortBindings"]  # An internal network publishes nothing.
        sub = d.get("/_api/substrate").json()["runtimes"]["dockerfile"]["facts"]["container"]
        assert sub["egress"].startswith("deny") and sub["build"]["network"].endswith("(internal)")
        with OutsideHost() as outside:
            denied = cgi(d, name, "connect", f"{outside.ip}:8000")
            assert "outside-ok" not in denied and "rc=0" not in denied, denied
            allowed = cgi(sdaemon, hostile, "connect", f"{outside.ip}:8000")
            if forwarding:  # Control: with egress allowed, the same request gets there.
                assert "rc=0 out=outside-ok" in allowed, allowed
        # After a crash the engine restarts it, and the daemon finds it at its address again.
        os.kill(ctr.attrs["State"]["Pid"], signal.SIGKILL)
        wait_for(lambda: only_container(client, name).attrs["RestartCount"] >= 1, what="the engine's restart")
        wait_for(lambda: d.get(f"/{name}/").status_code == 200, timeout=30, what="serving after the restart")
        with d.client() as c:
            assert c.delete(f"/_api/projects/{name}").status_code in (200, 204)
        wait_for(lambda: not containers(client, name, all=True), what="the container removed")
    finally:
        d.stop()


# -- a process runtime in a container (--backend docker) --------------------------------------


def test_process_runtime_container_is_hardened(engine, tmp_path: Path, name: str) -> None:
    host, client = engine
    env = {"DOCKER_HOST": host, **IMAGES, **LIMITS, "TEE_DAEMON_PROJECT_MEMORY_MB": "160"}
    d = DaemonProcess(tmp_path / "data", extra_args=["--backend", "docker"], env=env).start()
    try:
        deploy_ok(d, name, {"app.py": HOSTILE_PY.encode()}, runtime="python")
        status = lines(d.get(f"/{name}/status").text)
        uid = int(status["Uid"].split()[0])
        assert uid > 0 and status["Uid"].split() == [str(uid)] * 4, status
        assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0 and status["NoNewPrivs"] == "1"

        ctr = only_container(client, name)
        hc = ctr.attrs["HostConfig"]
        assert ctr.attrs["Config"]["User"].split(":")[0] == str(uid)
        assert hc["CapDrop"] == ["ALL"] and hc["ReadonlyRootfs"] is True and hc["Privileged"] is False
        assert (hc["Memory"], hc["MemorySwap"], hc["PidsLimit"]) == (160 << 20, 160 << 20, PIDS)
        assert "docker.sock" not in str(ctr.attrs["Mounts"])
        for pid in host_pids(ctr):
            st = proc_status(pid)
            assert st["Uid"].split()[0] == str(uid) and int(st["CapEff"], 16) == 0, st
        data_dir = d.data_dir / "projects" / name / "data"
        assert data_dir.stat().st_uid == uid  # Its data dir on the host is its own.

        written = d.get(f"/{name}/write").text
        assert "wrote" not in written and "refused /pwned: Read-only file system" in written, written
        assert "data=ok" in written and (data_dir / "ok").stat().st_uid == uid
        assert not written_to_root(ctr)

        forked = lines(d.get(f"/{name}/fork", timeout=60).text)
        assert 10 < int(forked["started"]) < PIDS and forked["error"], forked

        since = int(time.time()) - 1
        r = d.get(f"/{name}/oom", timeout=30)
        assert r.status_code >= 500, r.text  # The process was killed mid-request.
        text = wait_for(lambda: (t := project_log(d, name)) and "container exited with code 137" in t and t,
                        timeout=30, what="the container's death in the log")
        assert "killed for exceeding its memory limit of 160 MiB" in text, text[-2000:]
        assert engine_events(client, ctr.id, since, ["oom"])
        wait_for(lambda: d.get(f"/{name}/status").status_code == 200, timeout=30, what="serving again")

        iso = d.get("/_api/substrate").json()["isolation"]
        assert iso["kind"] == "container"
        assert iso["container"]["limits"]["memory_mib"] == 160 and iso["container"]["limits"]["pids"] == PIDS
        assert "data_disk" in iso["container"]["unenforced"]
    finally:
        d.stop()
    for ctr in containers(client, name, all=True):
        ctr.remove(force=True)
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
