"""Helpers for the hostile-tenant tests (issue 9, SPEC section 9).

A hostile project is one of our own apps that tries an attack from inside its sandbox
and answers, as JSON over HTTP, what it could do. The tests never take its word alone:
they check the truth from the host (files on disk, /proc of the project's processes,
sysctls, markers left outside the sandbox).

* `TOOLKIT`: a Python ASGI app with one route per attack primitive (`attack` calls it).
* `project_processes`: the project's program on the host, found by a marker variable in
  its manifest env (SPEC 9 says the env reaches the program inside the sandbox, and
  nothing else), else by walking the process tree under the admin view's instance pid.
* `Findings`: collects every broken promise of one test, so a failure lists them all.
* `TestHost`: a TCP service in a network namespace this test creates (198.18.0.0/15).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

MARKER_VAR = "HOSTILE_MARKER"

# -- the attacker's toolkit (runs inside the sandbox) ------------------------------------

TOOLKIT = r'''
"""A hostile tenant's toolkit: each route tries one thing and says what happened."""
import ctypes, errno, json, os, socket, sys, threading, time
from urllib.parse import parse_qs

LIBC = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096
CLONE_NEWUSER = 0x10000000
STOLEN = {"count": 0, "headers": []}


def err(exc):
    return {"ok": False, "error": type(exc).__name__, "errno": getattr(exc, "errno", None),
            "errname": errno.errorcode.get(getattr(exc, "errno", None) or 0, ""), "detail": str(exc)[:300]}


def status():
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
                fields[key] = value.split()
    maps = {}
    for name in ("uid_map", "gid_map", "setgroups"):
        try:
            maps[name] = open(f"/proc/self/{name}").read().split()
        except OSError as exc:
            maps[name] = repr(exc)
    become_root = {}
    for what, call in (("setuid", os.setuid), ("setgid", os.setgid)):
        try:
            call(0)
            become_root[what] = "became 0"
        except OSError as exc:
            become_root[what] = repr(exc)
    try:
        os.kill(1, 0)  # The sandbox's init: the one process that holds the mapped root.
        become_root["signal init"] = "allowed"
    except OSError as exc:
        become_root["signal init"] = repr(exc)
    return {"status": fields, **maps, "become_root": become_root, "cwd": os.getcwd(), "prefix": sys.prefix, "base_prefix": sys.base_prefix,
            "environ": sorted(os.environ), "data_dir": os.environ.get("DATA_DIR"),
            "file": os.path.abspath(__file__)}


def mount_point(path):
    """The mount point holding `path` (the longest matching entry of mountinfo)."""
    path = os.path.realpath(path)
    best = "/"
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                best = point
    return best


def remount_rw(path):
    """mount(2) MS_REMOUNT|MS_BIND without MS_RDONLY, then /bin/mount: the issue's item 1."""
    point = mount_point(path)
    tries = []
    for flags in (MS_REMOUNT | MS_BIND, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV):
        if LIBC.mount(b"none", point.encode(), None, flags, None) == 0:
            return {"ok": True, "how": f"mount(2) flags={flags}", "point": point}
        tries.append(errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno())))
    for tool in ("/bin/mount", "/usr/bin/mount"):
        if os.path.exists(tool):
            import subprocess
            done = subprocess.run([tool, "-o", "remount,bind,rw", point], capture_output=True, text=True)
            if done.returncode == 0:
                return {"ok": True, "how": tool, "point": point}
            tries.append(done.stderr.strip()[:200])
            break
    return {"ok": False, "point": point, "tries": tries}


def write(path, text, mode="a"):
    try:
        with open(path, mode) as fh:
            fh.write(text)
        return {"ok": True}
    except OSError as exc:
        return err(exc)


def try_userns():
    """unshare(CLONE_NEWUSER) in a child, so this process stays as it was."""
    pid = os.fork()
    if pid == 0:
        code = 0 if LIBC.unshare(CLONE_NEWUSER) == 0 else 100 + ctypes.get_errno()
        os._exit(code)
    _, code = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(code)
    if code == 0:
        return {"ok": True}
    return {"ok": False, "errno": code - 100, "errname": errno.errorcode.get(code - 100, "")}


def read(path, limit=65536):
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
        return {"ok": True, "text": data.decode("utf-8", "replace")}
    except OSError as exc:
        return err(exc)


def listdir(path):
    try:
        return {"ok": True, "entries": sorted(os.listdir(path))[:500]}
    except OSError as exc:
        return err(exc)


def connect(query):
    try:
        if "path" in query:
            conn = socket.socket(socket.AF_UNIX)
            conn.settimeout(3)
            conn.connect(query["path"])
        else:
            conn = socket.create_connection((query.get("host", "127.0.0.1"), int(query["port"])), timeout=3)
    except OSError as exc:
        return {"connected": False, **err(exc)}
    greeting = b""
    if query.get("recv"):
        conn.settimeout(3)
        try:
            greeting = conn.recv(200)
        except OSError:
            pass
    conn.close()
    return {"connected": True, "greeting": greeting.decode("latin-1")}


def steal(port):
    """Bind the victim's loopback port beside it (SO_REUSEPORT) and answer its requests."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        return err(exc)

    def serve():
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    def answer(conn):
        conn.settimeout(5)
        try:
            while True:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                STOLEN["count"] += 1
                STOLEN["headers"] = (STOLEN["headers"] + [head.decode("latin-1")[:500]])[-5:]
                body = b"stolen"
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\n\r\n" + body)
        except OSError:
            pass
        finally:
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return {"ok": True}


def bind_unix(path):
    out = {}
    try:
        os.unlink(path)
        out["unlinked"] = True
    except OSError as exc:
        out["unlink"] = err(exc)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(path)
        sock.listen(8)
        out["ok"] = True
    except OSError as exc:
        out.update(err(exc))
    return out


def fork_many(n, hold):
    children, failure = [], None
    for _ in range(n):
        try:
            pid = os.fork()
        except OSError as exc:
            failure = err(exc)
            break
        if pid == 0:
            time.sleep(hold)
            os._exit(0)
        children.append(pid)
    started = len(children)
    time.sleep(min(hold, 1.0))
    for pid in children:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
    return {"started": started, "failure": failure}


def alloc(mb):
    chunks = []
    try:
        for _ in range(mb):
            chunk = bytearray(1 << 20)
            for i in range(0, len(chunk), 4096):
                chunk[i] = 1  # Touch every page: RSS, not just address space.
            chunks.append(chunk)
    except MemoryError as exc:
        return {"ok": False, "allocated_mb": len(chunks), "error": "MemoryError"}
    return {"ok": True, "allocated_mb": len(chunks)}


def fill(path, mb):
    written = 0
    block = os.urandom(1 << 20)
    try:
        with open(path, "wb") as fh:
            for _ in range(mb):
                fh.write(block)
                fh.flush()
                written += 1
            os.fsync(fh.fileno())
    except OSError as exc:
        return {"written_mb": written, **err(exc)}
    return {"ok": True, "written_mb": written}


SPINNERS = []


def spin(procs, seconds):
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pass
            os._exit(0)
        SPINNERS.append(pid)
    return {"ok": True, "spinners": procs}


def spun():
    """Wait for the spinners; the CPU seconds they used (their rusage)."""
    cpu = 0.0
    for pid in SPINNERS:
        _, _, usage = os.wait4(pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
    SPINNERS.clear()
    return {"cpu_seconds": cpu}


def site_packages():
    import site
    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def plant_pth(code):
    """A .pth in every site-packages this interpreter uses: the issue's item 4."""
    out = []
    for folder in site_packages():
        target = os.path.join(folder, "zz_hostile.pth")
        result = write(target, "import os; " + code + "\n", "w")
        if not result["ok"]:
            result["remount"] = remount_rw(folder)
            if result["remount"]["ok"]:
                result = {**write(target, "import os; " + code + "\n", "w"), "remount": result["remount"]}
        out.append({"folder": folder, **result})
    return out


def route(path, q):
    if path == "/status":
        return status()
    if path == "/remount":
        return remount_rw(q["path"])
    if path == "/write":
        return write(q["path"], q.get("text", "hostile\n"), q.get("mode", "a"))
    if path == "/remount-write":
        first = write(q["path"], q.get("text", "hostile\n"), q.get("mode", "a"))
        if first["ok"]:
            return {"wrote": True, "remount": None}
        mounted = remount_rw(q["path"])
        again = write(q["path"], q.get("text", "hostile\n"), q.get("mode", "a")) if mounted["ok"] else first
        return {"wrote": again["ok"], "remount": mounted, "write": again}
    if path == "/userns":
        return try_userns()
    if path == "/read":
        return read(q["path"])
    if path == "/listdir":
        return listdir(q["path"])
    if path == "/connect":
        return connect(q)
    if path == "/steal":
        return steal(int(q["port"]))
    if path == "/stolen":
        return STOLEN
    if path == "/bind-unix":
        return bind_unix(q["path"])
    if path == "/fork":
        return fork_many(int(q["n"]), float(q.get("hold", "3")))
    if path == "/alloc":
        return alloc(int(q["mb"]))
    if path == "/fill":
        return fill(q["path"], int(q["mb"]))
    if path == "/rm":
        try:
            os.unlink(q["path"])
            return {"ok": True}
        except OSError as exc:
            return err(exc)
    if path == "/spin":
        return spin(int(q["procs"]), float(q["seconds"]))
    if path == "/spun":
        return spun()
    if path == "/site-packages":
        return {"folders": site_packages(), "pth": sorted(
            f for d in site_packages() for f in os.listdir(d) if f.endswith(".pth"))}
    if path == "/plant-pth":
        return {"planted": plant_pth(q["code"])}
    if path == "/env":
        return {k: os.environ.get(k) for k in q.get("keys", "").split(",") if k}
    return {"ok": True, "role": os.environ.get("HOSTILE_ROLE", "")}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    try:
        payload = route(scope["path"], query)
    except Exception as exc:
        payload = {"toolkit_error": repr(exc)}
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
'''


def new_marker(name: str) -> str:
    return f"{name}-{secrets.token_hex(6)}"


def deploy(daemon, name: str, files: dict | None = None, *, env: dict | None = None, **manifest) -> str:
    """Deploy a hostile project (the toolkit unless `files` say otherwise) with a marker
    variable in its env; returns the marker. Fails the test when the deploy fails."""
    marker = new_marker(name)
    r = daemon.deploy_files(name, files if files is not None else {"app.py": TOOLKIT},
                            env={MARKER_VAR: marker, **(env or {})}, **manifest)  # fmt: skip
    assert r.status_code == 201, f"deploying {name} failed: {r.status_code} {r.text[:2000]}"
    return marker


def attack(daemon, project: str, route: str, /, *, timeout: float = 30, **query) -> dict:
    """Call one route of a hostile project; its JSON answer."""
    with httpx.Client(base_url=daemon.url, timeout=timeout) as c:
        r = c.get(f"/{project}{route}", params=query)
    assert r.status_code == 200, f"{project}{route}: {r.status_code} {r.text[:500]}"
    return r.json()


def admin_view(daemon, name: str) -> dict:
    r = daemon.get(f"/_api/projects/{name}", admin=True)
    assert r.status_code == 200, r.text
    return r.json()


# -- the host's view of a project's processes ------------------------------------------------


def _proc_status(pid: int) -> dict[str, list[str]] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key] = value.split()
    return out


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("latin-1")] = value.decode("latin-1")
    return env


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _proc_status(pid)
        if st and st.get("PPid"):
            kids.setdefault(int(st["PPid"][0]), []).append(pid)
    return kids


def descendants(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += kids.get(current, [])
    return out


def is_sandbox_tool(pid: int) -> bool:
    """bwrap itself (outside, or as the sandbox's pid 1): not the project's program."""
    exe = _exe(pid)
    return os.path.basename(exe) in {"bwrap", "bubblewrap"}


def marked_pids(marker: str) -> list[int]:
    """Every host process whose environment carries this project's marker."""
    return [pid for pid in _all_pids() if _environ(pid).get(MARKER_VAR) == marker]


def project_processes(daemon, name: str, marker: str) -> list[dict]:
    """The project's program as the host sees it: pid, exe, uid/gid (real, effective,
    saved, fs), CapEff, NoNewPrivs. Found by its env marker, else (should a sandbox hand
    the env over some other way) as the non-bwrap descendants of the admin view's pid."""
    pids = [pid for pid in marked_pids(marker) if not is_sandbox_tool(pid)]
    if not pids:
        top = (admin_view(daemon, name).get("instance") or {}).get("pid")
        if top:
            pids = [pid for pid in descendants(int(top)) if not is_sandbox_tool(pid)]
    out = []
    for pid in pids:
        st = _proc_status(pid)
        if st is None:
            continue
        out.append({
            "pid": pid, "exe": _exe(pid), "uid": [int(x) for x in st["Uid"]], "gid": [int(x) for x in st["Gid"]],
            "CapEff": st.get("CapEff", ["?"])[0], "NoNewPrivs": st.get("NoNewPrivs", ["?"])[0],
        })  # fmt: skip
    assert out, (
        f"could not find {name}'s process on the host (neither a process with {MARKER_VAR}={marker} "
        "in its environment nor a non-bwrap descendant of the admin view's instance pid)"
    )
    return out


def host_uid(daemon, name: str, marker: str) -> tuple[int, int]:
    """The project's (uid, gid) on the host; every process of it must agree."""
    procs = project_processes(daemon, name, marker)
    ids = {(p["uid"][1], p["gid"][1]) for p in procs}
    assert len(ids) == 1, f"{name}'s processes run under several identities: {procs}"
    return ids.pop()


def mount_options(pid: int, path: str) -> str | None:
    """The options of the mount holding `path`, as the process `pid` sees its mounts
    (read from the host: /proc/<pid>/mountinfo)."""
    best, options = "", None
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        point = fields[4].replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, options = point, fields[5]
    return options


# -- files ---------------------------------------------------------------------------------


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under `root` (files by content, links by target, folders by name)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def compile_preload(source: str, out: Path) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "gcc is needed to build the LD_PRELOAD library (scripts/setup-system.sh installs it)"
    src = out.with_suffix(".c")
    src.write_text(source)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(src)], check=True, capture_output=True)
    return out


# -- one list of failures per test ---------------------------------------------------------------


class Findings:
    """What an attack achieved; `check()` fails with all of it at once."""

    def __init__(self, attack: str) -> None:
        self.attack = attack
        self.items: list[str] = []

    def expect(self, ok: bool, message: str) -> bool:
        if not ok:
            self.items.append(message)
        return ok

    def check(self) -> None:
        if self.items:
            lines = "\n".join(f"  - {item}" for item in self.items)
            raise AssertionError(f"{self.attack}: the attack got through:\n{lines}")


# -- a test host in a network namespace of the test's own ------------------------------------------

# Benchmarking range (RFC 2544), never routed on the internet; nothing else is ever used.
TEST_NET_HOST_SIDE = "198.19.254.1"
TEST_NET_PEER = "198.19.254.2"
TEST_NET_PREFIX = 30


class TestHost:
    """A TCP service at 198.19.254.2 in a network namespace the test creates, linked to the
    host's namespace by a veth pair (198.19.254.1 on the host's side). It greets every
    connection with a fixed line and counts them."""

    __test__ = False  # Not a pytest class.
    GREETING = "hello-from-the-test-host"

    def __init__(self, port: int = 8765) -> None:
        tag = secrets.token_hex(3)
        self.ns = f"tee-test-{tag}"
        self.veth_host, self.veth_peer = f"tth{tag}", f"ttp{tag}"
        self.port = port
        self.address = TEST_NET_PEER
        self.server: subprocess.Popen | None = None

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    def __enter__(self) -> "TestHost":
        assert shutil.which("ip"), "iproute2 is needed for the egress test host"
        self._ip("netns", "add", self.ns)
        try:
            self._ip("link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_peer)
            self._ip("link", "set", self.veth_peer, "netns", self.ns)
            self._ip("addr", "add", f"{TEST_NET_HOST_SIDE}/{TEST_NET_PREFIX}", "dev", self.veth_host)
            self._ip("link", "set", self.veth_host, "up")
            self._ip("-n", self.ns, "addr", "add", f"{TEST_NET_PEER}/{TEST_NET_PREFIX}", "dev", self.veth_peer)
            self._ip("-n", self.ns, "link", "set", self.veth_peer, "up")
            self._ip("-n", self.ns, "link", "set", "lo", "up")
            self._ip("-n", self.ns, "route", "add", "default", "via", TEST_NET_HOST_SIDE)
            server = textwrap.dedent(f"""
                import socket
                s = socket.create_server(({TEST_NET_PEER!r}, {self.port}))
                print("ready", flush=True)
                while True:
                    c, _ = s.accept()
                    try:
                        c.sendall(b"{self.GREETING}\\n")
                    finally:
                        c.close()
            """)
            self.server = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-c", server],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            line = self.server.stdout.readline()  # type: ignore[union-attr]
            assert line.strip() == b"ready", f"the test host did not start: {line!r}"
        except BaseException:
            self.__exit__()
            raise
        return self

    def reachable_from_host(self) -> bool:
        import socket

        try:
            with socket.create_connection((self.address, self.port), timeout=3) as conn:
                return conn.recv(100).startswith(self.GREETING.encode())
        except OSError:
            return False

    def __exit__(self, *exc) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait(5)
        subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=10)


def wait_for(predicate, timeout: float, pause: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(pause)


def dumps(value) -> str:
    return json.dumps(value, sort_keys=True)[:1500]
