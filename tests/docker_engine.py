"""A private Docker engine for the tests, and local base images built with no registry.

Usage (from a fixture; the lead wires it in conftest.py)::

    from docker_engine import docker_engine, ensure_base_images   # tests/ is on sys.path, like harness

    with docker_engine(tmp_path_factory.mktemp("docker")) as docker_host:   # "unix:///tmp/tdk…/docker.sock"
        client = docker.DockerClient(base_url=docker_host)
        images = ensure_base_images(client)     # {"busybox": "tee-daemon/busybox:local", "runtime-base": ...}

What it does on this machine (Debian bookworm VM, root, cgroup v1, kernel with overlayfs):

* starts Debian's ``dockerd`` (package docker.io; ``scripts/setup-system.sh`` installs it)
  with its own ``--data-root`` (under ``tmp_root``), ``--exec-root``/``--pidfile``/socket
  (under a short ``/tmp/tdk*`` dir: unix socket paths must stay < 108 bytes), its own
  ``--config-file`` (so ``/etc/docker/daemon.json`` is never read) and its own bridge
  ``teedk<slot>`` on ``10.<200+slot>.0.1/24`` with user-defined networks carved from
  ``10.<200+slot>.0.0/16``. A slot is an fcntl lock in ``/tmp/tee-docker-engine/``, so
  several engines (parallel test runs of several engineers) never share a bridge or subnet.
* iptables: tried first (``--iptables=true --ip-masq=false``); if the engine does not come up
  with it, it is started again with ``--iptables=false``. Published loopback ports work in
  both modes (docker-proxy). On exit the rules that mention our bridge are deleted.
* storage driver: ``overlay2``, falling back to ``vfs``.
* the runtime-base rootfs tarball is cached machine-wide (``/var/cache/tee-daemon/docker-base``,
  or ``$TEE_DOCKER_CACHE``); ``python tests/docker_engine.py --prepare`` builds it ahead of pytest.
* nothing is ever pulled: images are imported from tarballs built here; ``run_container``
  and ``build_image`` refuse to touch an image that is not already local.

If the engine cannot start, :class:`DockerEngineError` is raised with dockerd's log: callers
must fail, never skip, in CI.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
LOCK_DIR = Path("/tmp/tee-docker-engine")
SLOTS = 48  # bridge teedk0..teedk47, subnets 10.200.0.0/16 .. 10.247.0.0/16

BUSYBOX_IMAGE = "tee-daemon/busybox:local"
RUNTIME_BASE_IMAGE = "tee-daemon/runtime-base:local"
_BUILDER_VERSION = "1"  # bump to force images/rootfs to be rebuilt
_LABEL = "tee-daemon.base-image.key"


class DockerEngineError(RuntimeError):
    """The private Docker engine could not be started (or a base image could not be built)."""


# --------------------------------------------------------------------------------------------
# engine
# --------------------------------------------------------------------------------------------


def _run(cmd: list[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def _which(name: str, *extra: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in extra or ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    out = _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    out = _run(["ip", "-4", "route", "show"], check=False).stdout
    for line in out.splitlines():
        tok = line.split()[0] if line.split() else ""
        if tok and tok != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(tok, strict=False))
    return nets


def _iptables_purge(bridge: str) -> None:
    """Delete every iptables rule (filter and nat) that mentions our bridge."""
    ipt = _which("iptables")
    if not ipt:
        return
    for table in ("filter", "nat"):
        res = _run([ipt, "-w", "-t", table, "-S"], check=False)
        if res.returncode != 0:
            continue
        for line in res.stdout.splitlines():
            words = line.split()
            if words[:1] == ["-A"] and bridge in words:
                _run([ipt, "-w", "-t", table, "-D", *words[1:]], check=False)


def _bridge_delete(bridge: str) -> None:
    _run(["ip", "link", "del", bridge], check=False)


def _cgroup_dirs(parent: str) -> list[Path]:
    """Every cgroup directory named ``parent`` (v1: one per controller; v2: one)."""
    root = Path("/sys/fs/cgroup")
    dirs = [root / parent] + [c / parent for c in root.iterdir() if c.is_dir()] if root.is_dir() else []
    return [d for d in dirs if d.is_dir()]


def _kill_cgroup_tree(parent: str) -> None:
    """SIGKILL everything in the engine's cgroup parent (containers outliving a killed
    dockerd) and remove the empty cgroup directories."""
    for _ in range(3):
        pids = set()
        for d in _cgroup_dirs(parent):
            for procs in d.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(x) for x in procs.read_text().split())
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    for d in _cgroup_dirs(parent):
        for sub in sorted((x for x in d.rglob("*") if x.is_dir()), key=lambda x: len(str(x)), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            d.rmdir()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _kill_by_cmdline(needle: str) -> None:
    """SIGKILL the processes a previous (killed) engine of this slot left: dockerd, its
    containerd and shims all carry the engine's private run dir on their command line."""
    victims = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "cmdline").read_bytes().decode(errors="replace"):
                victims.append(int(proc.name))
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in victims):
        time.sleep(0.05)


def _pool_bridges(pool: str) -> list[str]:
    """Linux bridges whose IPv4 address lies in the engine's pool (user-defined networks)."""
    net = ipaddress.ip_network(pool)
    out = _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split()
        name = parts[1] if len(parts) > 1 else ""
        if not (name.startswith("br-") or name.startswith("teedk")):
            continue  # never touch an interface that is not a docker/engine bridge
        if "inet" in parts and ipaddress.ip_interface(parts[parts.index("inet") + 1]).ip in net:
            names.append(name)
    return names


def _reclaim_slot(k: int) -> None:
    """Clean up after an engine of slot ``k`` whose owner died without tearing it down."""
    state = LOCK_DIR / f"slot-{k}.json"
    if state.is_file():
        with contextlib.suppress(Exception):
            st = json.loads(state.read_text())
            sock = Path(st["run_dir"]) / "docker.sock"
            if _alive(int(st["pid"])) and sock.exists():
                # dockerd still answers: let it remove its containers and networks itself.
                _remove_all_containers(f"unix://{sock}", timeout=10)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(st["pid"]), signal.SIGTERM)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and _alive(int(st["pid"])):
                    time.sleep(0.05)
            _kill_by_cmdline(st["run_dir"])
            for base in (st["data_root"], st["run_dir"]):
                for mp in _mounts_under(Path(base)):
                    _run(["umount", "-l", mp], check=False)
            shutil.rmtree(st["run_dir"], ignore_errors=True)
        state.unlink(missing_ok=True)
    _kill_cgroup_tree(f"teedk{k}")
    for br in {f"teedk{k}", *_pool_bridges(f"10.{200 + k}.0.0/16")}:
        _iptables_purge(br)
        _bridge_delete(br)


@contextlib.contextmanager
def _slot() -> Iterator[int]:
    """Hold an exclusive per-slot lock for the engine's lifetime."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    used = _used_networks()
    for k in range(SLOTS):
        f = open(LOCK_DIR / f"slot-{k}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        net = ipaddress.ip_network(f"10.{200 + k}.0.0/16")
        # Leftovers of a killed run of ours: we hold its lock now, so reclaim them.
        if ((LOCK_DIR / f"slot-{k}.json").exists() or Path(f"/sys/class/net/teedk{k}").exists()
                or _pool_bridges(str(net))):
            _reclaim_slot(k)
            used = _used_networks()
        if any(net.overlaps(u) for u in used):
            f.close()
            continue
        try:
            yield k
        finally:
            f.close()
        return
    raise DockerEngineError(f"no free docker-engine slot (all {SLOTS} locked or their 10.x/16 in use)")


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _explain(reason: str, log: Path | None = None) -> DockerEngineError:
    msg = [
        "",
        "=" * 78,
        f"DOCKER ENGINE UNAVAILABLE: {reason}",
        "The tests start their own dockerd (Debian package docker.io) as root.",
        "Install it with: scripts/setup-system.sh   (as root)",
    ]
    if log is not None:
        msg += [f"--- last lines of {log} ---", _tail(log)]
    msg.append("=" * 78)
    return DockerEngineError("\n".join(msg))


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            mp = line.split()[1].replace("\\040", " ")
            if mp.startswith(prefix):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def _start_dockerd(
    dockerd: str,
    data_root: Path,
    run_dir: Path,
    bridge: str,
    pool: str,
    storage_driver: str,
    iptables: bool,
    log: Path,
    timeout: float,
) -> tuple[subprocess.Popen[bytes], str]:
    import docker  # docker-py, a project dependency

    sock = run_dir / "docker.sock"
    host = f"unix://{sock}"
    config = run_dir / "daemon.json"
    config.write_text(json.dumps({"default-address-pools": [{"base": pool, "size": 24}]}))
    cmd = [
        dockerd,
        f"--config-file={config}",
        f"--data-root={data_root}",
        f"--exec-root={run_dir / 'exec'}",
        f"--pidfile={run_dir / 'docker.pid'}",
        f"--host={host}",
        f"--bridge={bridge}",
        f"--storage-driver={storage_driver}",
        f"--iptables={'true' if iptables else 'false'}",
        f"--cgroup-parent={bridge}",
        "--ip-masq=false",
        "--ip-forward=false",
        "--userland-proxy=true",
        "--shutdown-timeout=2",
        "--log-level=warn",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    with open(log, "ab") as lf:
        lf.write(f"\n+ {' '.join(cmd)}\n".encode())
        lf.flush()
        proc = subprocess.Popen(
            cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _explain(f"dockerd exited with code {proc.returncode} "
                           f"(storage={storage_driver}, iptables={iptables})", log)
        if sock.exists():
            try:
                client = docker.DockerClient(base_url=host, timeout=5)
                try:
                    if client.ping():
                        info = client.info()
                        if info.get("Driver") != storage_driver:
                            raise _explain(f"dockerd came up with driver {info.get('Driver')}", log)
                        return proc, host
                finally:
                    client.close()
            except DockerEngineError:
                _stop_process(proc)
                raise
            except Exception as e:  # noqa: BLE001 - not up yet
                last = e
        time.sleep(0.1)
    _stop_process(proc)
    raise _explain(f"dockerd did not answer a ping within {timeout:.0f}s ({last!r})", log)


@contextlib.contextmanager
def docker_engine(
    tmp_root: Path,
    *,
    iptables: bool | None = None,
    storage_driver: str | None = None,
    timeout: float = 60.0,
) -> Iterator[str]:
    """Start a private dockerd; yield its ``DOCKER_HOST`` (``unix:///…/docker.sock``); stop it.

    ``iptables``/``storage_driver`` None means: try iptables then without; overlay2 then vfs.
    The engine's log is ``tmp_root/dockerd.log``. Raises :class:`DockerEngineError`.
    """
    if os.geteuid() != 0:
        raise _explain("not running as root (dockerd needs root here; rootless is not set up)")
    dockerd = _which("dockerd")
    if not dockerd:
        raise _explain("dockerd not found")
    for tool in ("containerd", "runc", "ip"):
        if not _which(tool):
            raise _explain(f"{tool} not found")

    tmp_root = Path(tmp_root).resolve()
    tmp_root.mkdir(parents=True, exist_ok=True)
    data_root = tmp_root / "docker-data"
    data_root.mkdir(exist_ok=True)
    log = tmp_root / "dockerd.log"

    with _slot() as k:
        bridge = f"teedk{k}"
        gw = f"10.{200 + k}.0.1/24"
        pool = f"10.{200 + k}.0.0/16"
        run_dir = Path(tempfile.mkdtemp(prefix="tdk", dir="/tmp"))
        proc: subprocess.Popen[bytes] | None = None
        try:
            for cmd in (["ip", "link", "add", "name", bridge, "type", "bridge"],
                        ["ip", "addr", "add", gw, "dev", bridge],
                        ["ip", "link", "set", bridge, "up"]):
                res = _run(cmd, check=False)
                if res.returncode != 0:
                    raise _explain(f"{' '.join(cmd)} failed: {res.stderr.strip()}")

            ipt_ok = _which("iptables") is not None and _run(
                [_which("iptables") or "iptables", "-w", "-S"], check=False).returncode == 0
            ipt_modes = [iptables] if iptables is not None else ([True, False] if ipt_ok else [False])
            drivers = [storage_driver] if storage_driver else ["overlay2", "vfs"]
            errors: list[str] = []
            host = ""
            for drv in drivers:
                for ipt in ipt_modes:
                    try:
                        proc, host = _start_dockerd(dockerd, data_root, run_dir, bridge, pool,
                                                    drv, ipt, log, timeout)
                        break
                    except DockerEngineError as e:
                        errors.append(str(e))
                        _iptables_purge(bridge)
                        # a failed start may leave state that confuses the next attempt
                        for mp in _mounts_under(data_root):
                            _run(["umount", "-l", mp], check=False)
                        shutil.rmtree(data_root, ignore_errors=True)
                        data_root.mkdir(exist_ok=True)
                        shutil.rmtree(run_dir / "exec", ignore_errors=True)
                if proc is not None:
                    break
            if proc is None:
                raise DockerEngineError("\n".join(errors))
            (LOCK_DIR / f"slot-{k}.json").write_text(json.dumps(
                {"pid": proc.pid, "run_dir": str(run_dir), "data_root": str(data_root),
                 "bridges": [bridge]}))
            (tmp_root / "dockerd.mode").write_text(
                f"host={host}\nbridge={bridge} {gw}\npool={pool}\nlog={log}\n")
            yield host
        finally:
            extra_bridges: list[str] = []
            if proc is not None:
                extra_bridges = _remove_all_containers(host)
                _stop_process(proc)
            for mp in _mounts_under(data_root) + _mounts_under(run_dir):
                _run(["umount", "-l", mp], check=False)
            for br in {bridge, *extra_bridges, *_pool_bridges(pool)}:
                _iptables_purge(br)
                if Path(f"/sys/class/net/{br}").exists():
                    _bridge_delete(br)
            _kill_cgroup_tree(bridge)
            shutil.rmtree(run_dir, ignore_errors=True)
            (LOCK_DIR / f"slot-{k}.json").unlink(missing_ok=True)


def _remove_all_containers(host: str, timeout: int = 30) -> list[str]:
    """Remove every container and user-defined network (dockerd leaves their br-* bridges
    and iptables rules on the host otherwise). Returns the Linux bridge names of those
    networks so the caller can make sure they are gone after dockerd stopped."""
    bridges: list[str] = []
    with contextlib.suppress(Exception):
        import docker

        client = docker.DockerClient(base_url=host, timeout=timeout)
        for c in client.containers.list(all=True):
            with contextlib.suppress(Exception):
                c.remove(force=True)
        for n in client.networks.list():
            if n.name in ("bridge", "host", "none") or n.attrs.get("Driver") != "bridge":
                continue
            opts = n.attrs.get("Options") or {}
            bridges.append(opts.get("com.docker.network.bridge.name") or f"br-{n.id[:12]}")
            with contextlib.suppress(Exception):
                n.remove()
        client.close()
    return bridges


# --------------------------------------------------------------------------------------------
# images (never pulled)
# --------------------------------------------------------------------------------------------


def _image_key(client: Any, tag: str) -> str | None:
    import docker

    try:
        img = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    return (img.labels or {}).get(_LABEL)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _import_tar(client: Any, data: bytes | Path, tag: str, key: str, changes: list[str]) -> str:
    repo, _, tagname = tag.rpartition(":")
    changes = [*changes, f'LABEL {_LABEL}="{key}"']
    if isinstance(data, Path):
        client.api.import_image_from_file(str(data), repository=repo, tag=tagname, changes=changes)
    else:
        client.api.import_image_from_data(data, repository=repo, tag=tagname, changes=changes)
    img = client.images.get(tag)
    if (img.labels or {}).get(_LABEL) != key:
        raise DockerEngineError(f"imported {tag} but its label is {img.labels!r}")
    return img.id


def busybox_rootfs_tar(busybox: str = "/bin/busybox") -> bytes:
    """A rootfs tar: Debian's static busybox as /bin/busybox plus a symlink per applet."""
    path = Path(busybox)
    if not path.is_file():
        raise DockerEngineError(f"{busybox} missing: install busybox-static (scripts/setup-system.sh)")
    data = path.read_bytes()
    applets = sorted(set(subprocess.run([busybox, "--list"], check=True, capture_output=True,
                                        text=True).stdout.split()) - {"busybox"})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        def add(name: str, *, kind: bytes = tarfile.REGTYPE, mode: int = 0o755,
                body: bytes = b"", link: str = "") -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = kind, mode, 0
            if link:
                ti.linkname = link
            ti.size = len(body) if kind == tarfile.REGTYPE else 0
            t.addfile(ti, io.BytesIO(body) if kind == tarfile.REGTYPE else None)

        for d in ("bin", "etc", "dev", "proc", "sys", "root", "var", "var/www", "usr", "usr/bin"):
            add(d, kind=tarfile.DIRTYPE)
        add("tmp", kind=tarfile.DIRTYPE, mode=0o1777)
        add("bin/busybox", body=data)
        for a in applets:
            add(f"bin/{a}", kind=tarfile.SYMTYPE, link="busybox")
        add("usr/bin/env", kind=tarfile.SYMTYPE, link="/bin/busybox")
        add("etc/passwd", mode=0o644,
            body=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        add("etc/group", mode=0o644, body=b"root:x:0:\nnogroup:x:65534:\n")
        add("etc/hosts", mode=0o644, body=b"127.0.0.1 localhost\n")
        add("var/www/index.html", mode=0o644, body=b"hello from tee-daemon/busybox\n")
    return buf.getvalue()


def _debian_mirror() -> tuple[str, str]:
    """(suite, mirror URI) of the machine's configured Debian mirror."""
    suite = "bookworm"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                suite = line.split("=", 1)[1].strip().strip('"') or suite
    mirror = "http://deb.debian.org/debian"
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for src in candidates:
        with contextlib.suppress(OSError):
            for line in src.read_text().splitlines():
                w = line.split()
                if w[:1] == ["URIs:"] and len(w) > 1 and not w[1].rstrip("/").endswith("-security"):
                    return suite, w[1]
                if w[:1] == ["deb"] and len(w) > 2 and "security" not in w[1] + w[2]:
                    uri = w[2] if w[1].startswith("[") else w[1]
                    return suite, uri
    return suite, mirror


RUNTIME_BASE_PACKAGES = ("ca-certificates", "python3-minimal", "python3-venv")


MACHINE_CACHE = Path("/var/cache/tee-daemon/docker-base")


def default_cache_dir() -> Path:
    """``$TEE_DOCKER_CACHE``; else the machine-wide ``/var/cache/tee-daemon/docker-base``
    (survives fresh clones, so CI after a session is warm); else ``$REPO/.cache/docker-base``."""
    env = os.environ.get("TEE_DOCKER_CACHE")
    if env:
        return Path(env)
    try:
        MACHINE_CACHE.mkdir(parents=True, exist_ok=True)
        if os.access(MACHINE_CACHE, os.W_OK):
            return MACHINE_CACHE
    except OSError:
        pass
    return REPO / ".cache" / "docker-base"


def runtime_base_rootfs(cache_dir: Path | None = None) -> Path:
    """Debian minbase rootfs tarball (glibc, libstdc++, python3), built once by debootstrap.

    Cached as ``<cache_dir>/runtime-base-<suite>-<key>.tar`` (see :func:`default_cache_dir`).
    Cold: ~30 s on an idle machine, ~2 min under load (debootstrap from the configured
    mirror: dpkg unpack/configure dominates, not the download); warm: nothing to do.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    suite, mirror = _debian_mirror()
    key = hashlib.sha256(f"{_BUILDER_VERSION}|{suite}|{','.join(RUNTIME_BASE_PACKAGES)}"
                         .encode()).hexdigest()[:12]
    out = cache_dir / f"runtime-base-{suite}-{key}.tar"
    if out.is_file():
        return out
    debootstrap = _which("debootstrap")
    if not debootstrap:
        raise DockerEngineError("debootstrap missing: run scripts/setup-system.sh")
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if out.is_file():
            return out
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir))
        try:
            root = work / "root"
            debs = cache_dir / "debs"  # downloaded .debs, reused by the next cold build
            debs.mkdir(exist_ok=True)
            res = subprocess.run(
                [debootstrap, "--variant=minbase", f"--include={','.join(RUNTIME_BASE_PACKAGES)}",
                 f"--cache-dir={debs}",
                 suite, str(root), mirror],
                capture_output=True, text=True,
            )
            if res.returncode != 0:
                raise DockerEngineError(
                    f"debootstrap {suite} from {mirror} failed ({res.returncode}):\n"
                    + "\n".join((res.stdout + res.stderr).splitlines()[-40:]))
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                         "usr/share/man", "usr/share/info", "usr/share/locale"):
                p = root / junk
                if p.is_dir():
                    for child in p.iterdir():
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child)
                        else:
                            child.unlink()
            tmp_tar = work / "rootfs.tar"
            # No device nodes or /proc, /sys contents: the engine provides those.
            res = subprocess.run(
                ["tar", "-C", str(root), "--numeric-owner", "--exclude=./dev/*",
                 "--exclude=./proc/*", "--exclude=./sys/*", "-cf", str(tmp_tar), "."],
                capture_output=True, text=True)
            if res.returncode != 0:
                raise DockerEngineError(f"tar of the rootfs failed: {res.stderr}")
            os.replace(tmp_tar, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


def ensure_base_images(
    client: Any,
    cache_dir: Path | None = None,
    names: tuple[str, ...] = ("busybox", "runtime-base"),
) -> dict[str, str]:
    """Import the local base images (those in ``names``) if missing or stale; return {name: tag}.

    * ``busybox``      -> ``tee-daemon/busybox:local``: Debian's static busybox + applet links,
      ``/var/www/index.html``; ``CMD ["sh"]``.
    * ``runtime-base`` -> ``tee-daemon/runtime-base:local``: Debian minbase (glibc, libstdc++,
      libgcc) + python3 + ca-certificates. deno/node/bun are dynamically linked against
      exactly those libs, so the host binaries (see scripts/runtime-paths.sh) run in it when
      bind-mounted read-only.
    Nothing is pulled from any registry.
    """
    images: dict[str, str] = {}

    if "busybox" in names:
        images["busybox"] = _ensure_busybox(client)
    if "runtime-base" in names:
        images["runtime-base"] = _ensure_runtime_base(client, cache_dir)
    return images


def _ensure_busybox(client: Any) -> str:
    bb_key = hashlib.sha256(
        (_BUILDER_VERSION + _sha256_file(Path("/bin/busybox"))).encode()
        if Path("/bin/busybox").is_file() else b"missing").hexdigest()[:16]
    if _image_key(client, BUSYBOX_IMAGE) != bb_key:
        _import_tar(client, busybox_rootfs_tar(), BUSYBOX_IMAGE, bb_key,
                    ["ENV PATH=/bin:/usr/bin", 'CMD ["sh"]'])
    return BUSYBOX_IMAGE


def _ensure_runtime_base(client: Any, cache_dir: Path | None) -> str:
    tar = runtime_base_rootfs(cache_dir)
    rb_key = tar.stem.rsplit("-", 1)[-1] + "-" + str(tar.stat().st_size)
    if _image_key(client, RUNTIME_BASE_IMAGE) != rb_key:
        _import_tar(client, tar, RUNTIME_BASE_IMAGE, rb_key, [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            'CMD ["/bin/bash"]',
        ])
    return RUNTIME_BASE_IMAGE


# --------------------------------------------------------------------------------------------
# no-pull helpers
# --------------------------------------------------------------------------------------------


def _require_local(client: Any, image: str) -> None:
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise DockerEngineError(
            f"image {image!r} is not local; nothing may be pulled here (use ensure_base_images)"
        ) from None


def run_container(client: Any, image: str, command: Any = None, **kwargs: Any) -> Any:
    """Like ``client.containers.run`` but never pulls (docker-py's run pulls on ImageNotFound).

    Detached (``detach=True``) returns the Container; otherwise waits (``wait_timeout`` s,
    default 120), returns its stdout
    bytes, removes it, and raises ``docker.errors.ContainerError`` on a non-zero exit.
    """
    import docker

    _require_local(client, image)
    wait_timeout = kwargs.pop("wait_timeout", 120)
    detach = kwargs.pop("detach", False)
    remove = kwargs.pop("remove", not detach)
    container = client.containers.create(image, command, **kwargs)
    try:
        container.start()
        if detach:
            return container
        status = container.wait(timeout=wait_timeout)["StatusCode"]
        out = container.logs(stdout=True, stderr=False)
        if status != 0:
            err = container.logs(stdout=False, stderr=True)
            raise docker.errors.ContainerError(container, status, command, image, err)
        return out
    finally:
        if remove and not detach:
            with contextlib.suppress(Exception):
                container.remove(force=True)


def build_image(client: Any, path: str | Path, tag: str, **kwargs: Any) -> Any:
    """``docker build`` with ``pull=False``; the FROM image must already be local."""
    kwargs.setdefault("rm", True)
    kwargs.setdefault("forcerm", True)
    image, _logs = client.images.build(path=str(path), tag=tag, pull=False, **kwargs)
    return image


def _main(argv: list[str]) -> int:
    """``python tests/docker_engine.py --prepare``: build the cached runtime-base rootfs
    (no engine needed; a Makefile step before pytest). Without arguments: start an
    engine, import both images, echo in busybox, stop; print timings."""
    import docker

    t0 = time.monotonic()
    if argv[1:2] == ["--prepare"]:
        tar = runtime_base_rootfs()
        print(f"runtime-base rootfs: {tar} ({time.monotonic() - t0:.1f}s)", file=sys.stderr)
        return 0
    with docker_engine(Path(tempfile.mkdtemp(prefix="tee-docker-"))) as h:
        t1 = time.monotonic()
        cl = docker.DockerClient(base_url=h)
        print("engine up", h, f"{t1 - t0:.2f}s", file=sys.stderr)
        print(ensure_base_images(cl), f"{time.monotonic() - t1:.2f}s", file=sys.stderr)
        print(run_container(cl, BUSYBOX_IMAGE, ["echo", "ok"]))
        cl.close()
    print(f"total {time.monotonic() - t0:.2f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
