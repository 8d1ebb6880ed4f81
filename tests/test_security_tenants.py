"""Hostile tenants get nothing (issue 9 items 1-6 and 8, SPEC section 9).

Each test is one attack of the issue, tried by a project of our own from inside its
sandbox; the test then checks from the host what the attack achieved: the tree on disk,
the project's processes in the host's /proc, host sysctls, markers outside the sandbox,
who answered the victim's requests. Item 7 (limits) is in test_security_limits.py; item 9
(git sources) is tested elsewhere.

The daemons here run with default settings unless a test says otherwise (the network
is `isolated` by default, egress allowed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import hostile
from harness import DaemonProcess
from hostile import TOOLKIT, Findings, attack, admin_view, deploy, dumps

FIRST_PROJECT_ID = 200_000  # The daemon allocates project uids/gids from here up.
SYSCTL = "/proc/sys/kernel/printk_ratelimit_burst"  # Global, harmless; restored if changed.


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    """One daemon with default settings for the attacks that need no restart."""
    proc = DaemonProcess(tmp_path_factory.mktemp("tenants") / "data").start()
    yield proc
    proc.stop()


def tree_of(daemon, name: str, version: int = 1) -> Path:
    return daemon.data_dir / "projects" / name / "versions" / str(version) / "tree"


def data_of(daemon, name: str) -> Path:
    return daemon.data_dir / "projects" / name / "data"


def simulator_socket(daemon) -> str | None:
    """Where the daemon's TEE simulator listens (it says so in its log at start)."""
    found = re.findall(r"started the TEE simulator at (\S+)", daemon.log_path.read_text(errors="replace"))
    return found[-1] if found else None


# -- item 1: root with every capability; remount the tree, write host sysctls ---------------


def test_item1_a_project_is_an_unprivileged_identity_of_its_own(daemon, name):
    """The attack: read its identity, remount its read-only tree (and /usr, the daemon's
    venv) writable and write into the tree, write a host sysctl, make a user namespace.
    From the host: the tree is unchanged, the sysctl unchanged, the process runs as a uid
    and gid that are not 0 and not another project's, with CapEff 0 and no_new_privs,
    and every one of those mounts is still read-only as the process sees it."""
    a, b = f"{name}-a", f"{name}-b"
    marker_a = deploy(daemon, a)
    marker_b = deploy(daemon, b)
    tree = tree_of(daemon, a)
    before = hostile.tree_digest(tree)
    sysctl_before = Path(SYSCTL).read_text()
    found = Findings("item 1 (root in the sandbox, remount, sysctl)")
    try:
        me = attack(daemon, a, "/status")
        tree_inside = os.path.dirname(me["file"])  # The sandbox may show the tree at another path.
        wrote_app = attack(daemon, a, "/remount-write", path=f"{tree_inside}/app.py", text="\n# tampered\n")
        wrote_new = attack(daemon, a, "/remount-write", path=f"{tree_inside}/planted.txt", mode="w")
        usr = attack(daemon, a, "/remount", path="/usr")
        venv = attack(daemon, a, "/remount", path=me["prefix"])
        python = attack(daemon, a, "/remount", path=me["base_prefix"])
        sysctl = attack(daemon, a, "/remount-write", path=SYSCTL, text=str(int(sysctl_before) + 1), mode="w")
        userns = attack(daemon, a, "/userns")
        sysctl_after = Path(SYSCTL).read_text()
    finally:
        if Path(SYSCTL).read_text() != sysctl_before:
            Path(SYSCTL).write_text(sysctl_before)  # Undo the attack on the host.

    # The truth on the host.
    after = hostile.tree_digest(tree)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    found.expect(not changed, f"the project changed its attested tree on disk: {changed} "
                 f"(app.py write: {dumps(wrote_app)}, new file: {dumps(wrote_new)})")  # fmt: skip
    found.expect(sysctl_after == sysctl_before, f"the project wrote the host sysctl {SYSCTL}: "
                 f"{sysctl_before.strip()} -> {sysctl_after.strip()}")  # fmt: skip
    procs_a = hostile.project_processes(daemon, a, marker_a)
    procs_b = hostile.project_processes(daemon, b, marker_b)
    for proc in procs_a:
        ids = f"uid {proc['uid']} gid {proc['gid']} (real, effective, saved, fs), pid {proc['pid']} {proc['exe']}"
        if found.expect(0 not in proc["uid"] + proc["gid"], f"{a}'s program runs as root on the host: {ids}"):
            found.expect(min(proc["uid"] + proc["gid"]) >= FIRST_PROJECT_ID, f"{a}'s identity is not from "
                         f"the daemon's project range (>= {FIRST_PROJECT_ID}): {ids}")  # fmt: skip
        found.expect(int(proc["CapEff"], 16) == 0, f"{a}'s process has capabilities (CapEff {proc['CapEff']})")
        found.expect(proc["NoNewPrivs"] == "1", f"{a}'s process lacks no_new_privs: {proc}")
    uids_a = {u for p in procs_a for u in p["uid"]}
    uids_b = {u for p in procs_b for u in p["uid"]}
    gids_a = {g for p in procs_a for g in p["gid"]}
    gids_b = {g for p in procs_b for g in p["gid"]}
    found.expect(not uids_a & uids_b, f"two projects share a host uid: {a} {uids_a}, {b} {uids_b}")
    found.expect(not gids_a & gids_b, f"two projects share a host gid: {a} {gids_a}, {b} {gids_b}")
    pid = procs_a[0]["pid"]
    mounts = {"its tree": tree_inside, "/usr": "/usr", "the daemon's venv": me["prefix"],
              "the daemon's interpreter": me["base_prefix"]}  # fmt: skip
    for what, path in mounts.items():
        options = hostile.mount_options(pid, path)
        found.expect(options is not None and "ro" in options.split(","), f"{what} ({path}) is mounted "
                     f"{options!r} in the project's namespace after the attack")  # fmt: skip

    # What the project itself saw.
    uid, gid = procs_a[0]["uid"][1], procs_a[0]["gid"][1]
    # The project's ids are mapped to themselves. Root is mapped too, for bwrap alone
    # (it builds the mounts as root before the program starts): the program must never
    # be able to use it: not its uid, no capabilities, no way to become 0, no way to
    # touch the one process (bwrap's init) that holds it.
    found.expect([str(uid), str(uid), "1"] in _triples(me["uid_map"]), f"the sandbox's uid_map is "
                 f"{me['uid_map']}: the project's uid {uid} is not mapped to itself")  # fmt: skip
    found.expect([str(gid), str(gid), "1"] in _triples(me["gid_map"]), f"the sandbox's gid_map is "
                 f"{me['gid_map']}: the project's gid {gid} is not mapped to itself")  # fmt: skip
    others = [t for t in _triples(me["uid_map"]) + _triples(me["gid_map"]) if t[0] not in (str(uid), str(gid), "0")]
    found.expect(not others, f"other ids are mapped into the sandbox: {others}")
    found.expect(set(me["status"]["Uid"]) == {str(uid)} and set(me["status"]["Gid"]) == {str(gid)},
                 f"the program's ids inside are {me['status']['Uid']} / {me['status']['Gid']}")  # fmt: skip
    for field in ("CapPrm", "CapBnd", "CapAmb"):
        found.expect(int(me["status"][field][0], 16) == 0, f"{field} inside is {me['status'][field]}")
    for what, outcome in me["become_root"].items():
        found.expect(outcome.startswith("PermissionError"), f"the project tried {what} and got: {outcome}")
    found.expect(int(me["status"]["CapEff"][0], 16) == 0, f"CapEff inside is {me['status']['CapEff']}")
    found.expect(me["status"]["NoNewPrivs"] == ["1"], f"NoNewPrivs inside is {me['status']['NoNewPrivs']}")
    for what, result in (("/usr", usr), ("the daemon's venv", venv), ("the daemon's interpreter", python)):
        found.expect(not result["ok"], f"the project remounted {what} writable: {dumps(result)}")
    found.expect(not sysctl.get("wrote"), f"the project could write {SYSCTL}: {dumps(sysctl)}")
    found.expect(not userns["ok"], "the project created a nested user namespace (capabilities again)")
    found.check()


def _triples(flat: list[str]) -> list[list[str]]:
    return [flat[i : i + 3] for i in range(0, len(flat), 3)]


# -- item 2: the manifest's env is bwrap's env --------------------------------------------

PRELOAD_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void note(const char *path, const char *line) {
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0666);
    if (fd >= 0) { (void)!write(fd, line, strlen(line)); close(fd); }
}

static void capeff(char *out, size_t size) {
    char buf[4096] = {0};
    int fd = open("/proc/self/status", O_RDONLY);
    snprintf(out, size, "?");
    if (fd < 0) return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    char *at = n > 0 ? strstr(buf, "CapEff:") : NULL;
    if (at) sscanf(at + 7, "%32s", out);
}

__attribute__((constructor)) static void loaded(void) {
    char exe[512] = {0}, caps[40], line[1200], path[1024];
    if (readlink("/proc/self/exe", exe, sizeof exe - 1) < 0) strcpy(exe, "?");
    capeff(caps, sizeof caps);
    int secret = open(ROOT_SECRET, O_RDONLY);
    snprintf(line, sizeof line, "loaded into %s (pid %d, uid %d, CapEff %s); TEE root secret %s\n",
             exe, (int)getpid(), (int)getuid(), caps, secret >= 0 ? "OPENED" : "not readable");
    if (secret >= 0) close(secret);
    note(OUTSIDE "/preload-marker", line);   /* only reachable outside the sandbox */
    const char *data = getenv("DATA_DIR");
    if (data) { snprintf(path, sizeof path, "%s/preload.log", data); note(path, line); }
}
"""


def test_item2_ld_preload_in_project_env_never_runs_outside_the_sandbox(daemon, name, tmp_path):
    """The attack: project.json's env sets LD_PRELOAD to a library in the tree. Loaded by
    anything outside the sandbox (bwrap), it writes a marker into a host folder the
    sandbox cannot see and reports whether it could open the TEE simulator's root secret.
    From the host: no marker, no process outside the sandbox carries the variable, while
    the program inside does get it (the env is the project's, just not bwrap's)."""
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o777)
    outside.chmod(0o777)
    root_secret = daemon.data_dir / "tee-simulator" / "root-secret"
    lib = hostile.compile_preload(
        f'#define OUTSIDE "{outside}"\n#define ROOT_SECRET "{root_secret}"\n' + PRELOAD_C, tmp_path / "evil.so"
    )
    tree = tree_of(daemon, name)
    project_json = {"env": {"LD_PRELOAD": f"{tree}/evil.so ./evil.so", "HOSTILE_ROLE": "preloader"}}
    files = {"app.py": TOOLKIT, "evil.so": lib.read_bytes(), "project.json": json.dumps(project_json)}
    found = Findings("item 2 (LD_PRELOAD from project.json)")
    marker = hostile.new_marker(name)
    r = daemon.deploy_files(name, files, env={hostile.MARKER_VAR: marker})
    if r.status_code != 201:
        # Refusing such a variable outright is also safe, if it is said clearly.
        assert 400 <= r.status_code < 500 and "LD_PRELOAD" in r.text, r.text
    else:
        seen = attack(daemon, name, "/env", keys="LD_PRELOAD")
        found.expect(bool(seen.get("LD_PRELOAD")), "the project's own program did not get its LD_PRELOAD (the env "
                     "must reach the program inside the sandbox)")  # fmt: skip
        for pid in hostile.marked_pids(marker):
            env = hostile._environ(pid)
            found.expect(not hostile.is_sandbox_tool(pid) or "LD_PRELOAD" not in env, f"bwrap (pid {pid}, "
                         f"outside the sandbox) runs with the project's LD_PRELOAD={env.get('LD_PRELOAD')}")  # fmt: skip
    marker_file = outside / "preload-marker"
    found.expect(not marker_file.exists(), "the project's library ran outside the sandbox: "
                 + (marker_file.read_text().strip() if marker_file.exists() else ""))  # fmt: skip
    inside_log = data_of(daemon, name) / "preload.log"
    if inside_log.exists():
        lines = inside_log.read_text().splitlines()
        strays = [line for line in lines if "bwrap" in line]
        found.expect(not strays, f"the project's library was loaded into bwrap: {strays}")
        # Inside the sandbox it may load, but never with capabilities (e.g. into a helper
        # that drops privileges only after its libraries are loaded).
        privileged = [line for line in lines if not re.search(r"CapEff 0+\)", line)]
        found.expect(not privileged, f"the project's library ran with capabilities: {privileged}")
        found.expect(all("OPENED" not in line for line in lines),
                     f"the project's library opened the TEE simulator's root secret: {lines}")  # fmt: skip
    found.check()


# -- item 3: links in the build folder widen the sandbox at the next start -------------------

NODE_ATTACKER = r"""
// A hostile Node tenant: replaces its build's node_modules link, then reads what it gets.
const fs = require("node:fs");
const net = require("node:net");
const path = require("node:path");
const { execFileSync } = require("node:child_process");

function tryIt(fn) {
  try { return { ok: true, value: fn() }; } catch (e) { return { ok: false, error: String(e).slice(0, 300) }; }
}

function mountPoint(p) {
  // The longest mount point of /proc/self/mountinfo holding p.
  let best = "/";
  for (const line of fs.readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const point = (line.split(" ")[4] ?? "").replaceAll("\\040", " ");
    if ((p === point || p.startsWith(point.replace(/\/$/, "") + "/")) && point.length > best.length) best = point;
  }
  return best;
}

function plant(target) {
  const link = path.join(__dirname, "node_modules");
  const swap = () => {
    fs.rmSync(link, { recursive: true, force: true });
    fs.symlinkSync(target, link);
    return link;
  };
  const first = tryIt(swap);
  if (first.ok) return { planted: true, link };
  const point = mountPoint(fs.realpathSync(__dirname));
  const remount = tryIt(() => execFileSync("mount", ["-o", "remount,bind,rw", point], { stdio: "pipe" }).toString());
  const again = remount.ok ? tryIt(swap) : first;
  return { planted: again.ok, link, first, remount, again };
}

function connectUnix(p) {
  return new Promise((resolve) => {
    const sock = net.connect({ path: p });
    const timer = setTimeout(() => { sock.destroy(); resolve({ connected: false, error: "timeout" }); }, 3000);
    sock.on("connect", () => { clearTimeout(timer); sock.destroy(); resolve({ connected: true }); });
    sock.on("error", (e) => { clearTimeout(timer); resolve({ connected: false, error: String(e) }); });
  });
}

module.exports = async (req, res) => {
  const url = new URL(req.url, "http://x");
  const q = Object.fromEntries(url.searchParams);
  let out;
  if (url.pathname === "/plant") out = plant(q.target);
  else if (url.pathname === "/read") out = tryIt(() => fs.readFileSync(q.path, "utf8").slice(0, 65536));
  else if (url.pathname === "/ls") out = tryIt(() => fs.readdirSync(q.path).slice(0, 500));
  else if (url.pathname === "/connect") out = await connectUnix(q.path);
  else out = { ok: true, dirname: __dirname };
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify(out));
};
"""
NODE_PACKAGE = json.dumps({"name": "hostile-node", "version": "1.0.0", "private": True, "dependencies": {}})


def _try(daemon, project: str, route: str, **query) -> dict | None:
    """A route of a project that may no longer be served (a refused start is no leak)."""
    try:
        with httpx.Client(base_url=daemon.url, timeout=20) as c:
            r = c.get(f"/{project}{route}", params=query)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def test_item3_links_in_a_build_folder_never_widen_the_sandbox(fresh_daemon, name):
    """The attack: a Node project replaces its build's `node_modules` link with one to `/`
    (itself, and should it be unable to, the test plants it as a project's build step
    could have); at the next start the daemon must not bind what the link points to. After
    a daemon restart it tries to read another tenant's secret and data, the daemon's data
    dir and the TEE simulator's root secret, and to connect to the simulator's socket."""
    daemon = fresh_daemon()
    victim, attacker = f"{name}-v", f"{name}-a"
    secret = "victim-secret-" + os.urandom(8).hex()
    deploy(daemon, victim, secrets={"VICTIM_KEY": secret})
    inside = attack(daemon, victim, "/status")["data_dir"]
    assert attack(daemon, victim, "/write", path=f"{inside}/secret.txt", text=secret, mode="w")["ok"]
    deploy(daemon, attacker, {"index.js": NODE_ATTACKER, "package.json": NODE_PACKAGE})
    found = Findings("item 3 (links in the build folder)")

    planted = attack(daemon, attacker, "/plant", target="/")
    build = daemon.data_dir / "projects" / attacker / "versions" / "1" / "build"
    link = build / "app" / "node_modules"
    by_project = link.is_symlink() and os.readlink(link) == "/"
    found.expect(not by_project, f"the project replaced its build's node_modules with a link to / ({dumps(planted)})")
    if not by_project and (build / "app").is_dir():
        # As if a build step running as the project had left the link behind.
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to("/")

    daemon.stop()
    daemon = fresh_daemon()  # Same data dir: every project starts again.
    sock = simulator_socket(daemon)
    targets = {
        "the victim's record (its secrets)": daemon.data_dir / "projects" / victim / "project.json",
        "the victim's data": data_of(daemon, victim) / "secret.txt",
        "the TEE simulator's root secret": daemon.data_dir / "tee-simulator" / "root-secret",
    }
    targets = {what: path for what, path in targets.items() if path.exists()}  # As the host sees them.
    assert len(targets) >= 2, f"the daemon's files are not where the test expects them: {targets}"
    for what, path in targets.items():
        got = _try(daemon, attacker, "/read", path=str(path))
        found.expect(not (got and got.get("ok")), f"after the restart the attacker read {what} ({path})")
        found.expect(secret not in json.dumps(got), f"the victim's secret reached the attacker via {path}")
    listing = _try(daemon, attacker, "/ls", path=str(daemon.data_dir / "projects"))
    # The sandbox holds the folders leading to its own binds: its own name may show, no other.
    seen = set(listing.get("value") or []) if listing and listing.get("ok") else set()
    found.expect(seen <= {attacker}, f"the attacker lists the daemon's projects: {dumps(listing)}")
    if sock:
        conn = _try(daemon, attacker, "/connect", path=sock)
        found.expect(not (conn and conn.get("connected")), f"the attacker connected to the TEE simulator at {sock}")
    found.check()


# -- item 4: a shared dependency cache, writable --------------------------------------------

# A valid requirements file that installs nothing, so no index is needed; two projects
# with these same bytes get the same dependency cache key.
REQUIREMENTS = "# tenants-test: no packages, only a venv of its own\n"
PTH_CODE = (
    "d = os.environ.get('DATA_DIR'); "
    "d and open(os.path.join(d, 'pwned-by-pth'), 'w').write(os.environ.get('HOSTILE_MARKER', '?') + ' ' + "
    "os.environ.get('B_SECRET', '')); os.environ['PWNED_BY'] = 'attacker'"
)


def test_item4_a_project_cannot_plant_code_in_another_projects_dependencies(daemon, name):
    """The attack: the first project (same requirements.txt as its victim) plants a .pth
    in its venv's site-packages, remounting it writable if need be. The victim deployed
    next must not run it: from the host, no file written by the .pth in the victim's
    data dir, and the victim's environment untouched."""
    attacker, victim = f"{name}-a", f"{name}-v"
    files = {"app.py": TOOLKIT, "requirements.txt": REQUIREMENTS}
    deploy(daemon, attacker, files)
    found = Findings("item 4 (a .pth in a shared dependency cache)")
    own = attack(daemon, attacker, "/site-packages")
    assert own["folders"], f"the attacker has no site-packages to plant in: {own}"
    planted = attack(daemon, attacker, "/plant-pth", code=PTH_CODE)["planted"]

    secret = "b-secret-" + os.urandom(6).hex()
    deploy(daemon, victim, files, secrets={"B_SECRET": secret})
    seen = attack(daemon, victim, "/env", keys="PWNED_BY")
    pwned = data_of(daemon, victim) / "pwned-by-pth"
    found.expect(not pwned.exists(), "the attacker's .pth ran in the victim's process and wrote "
                 f"{pwned}: {pwned.read_text() if pwned.exists() else ''} (planted: {dumps(planted)})")  # fmt: skip
    found.expect(seen.get("PWNED_BY") is None, "the attacker's .pth changed the victim's environment")
    theirs = attack(daemon, victim, "/site-packages")
    found.expect("zz_hostile.pth" not in theirs["pth"],
                 f"the victim's site-packages hold the attacker's .pth: {theirs}")  # fmt: skip
    found.check()


# -- item 5: stealing a victim's listener -----------------------------------------------------


def _hammer(daemon, project: str, n: int = 200, workers: int = 20) -> list[str]:
    """`n` requests to `project` with credentials, `workers` at a time: who answered each."""
    headers = {"Authorization": "Bearer victim-user-token", "Cookie": "session=victim-session"}
    limits = httpx.Limits(max_connections=workers)

    with httpx.Client(base_url=daemon.url, timeout=10, limits=limits, headers=headers) as client:

        def one(i: int) -> str:
            try:
                r = client.get(f"/{project}/", params={"i": i})
            except httpx.HTTPError as exc:
                return f"error {type(exc).__name__}"
            try:
                return r.json().get("role") or r.text[:40]
            except ValueError:
                return f"{r.status_code} {r.text[:40]}"

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, range(n)))


def _steal_round(daemon, victim: str, attacker: str, found: Findings, mode: str) -> None:
    address = admin_view(daemon, victim)["instance"]["address"]
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        conn = attack(daemon, attacker, "/connect", path=path)
        found.expect(not conn["connected"], f"[{mode}] the attacker connected to the victim's socket {path}")
        bound = attack(daemon, attacker, "/bind-unix", path=path)
        found.expect(not bound.get("ok") and not bound.get("unlinked"),
                     f"[{mode}] the attacker took over the victim's socket path {path}: {dumps(bound)}")  # fmt: skip
    else:
        port = int(address.rsplit(":", 1)[1])
        stolen = attack(daemon, attacker, "/steal", port=port)
        found.expect(not stolen.get("ok"), f"[{mode}] the attacker bound the victim's port {port} beside it "
                     "(SO_REUSEPORT)")  # fmt: skip
    answers = _hammer(daemon, victim)
    others = [a for a in answers if a != "victim"]
    found.expect(not others, f"[{mode}] {len(others)} of {len(answers)} requests to the victim were not answered by "
                 f"it: {sorted(set(others))}")  # fmt: skip
    took = attack(daemon, attacker, "/stolen")
    found.expect(took["count"] == 0, f"[{mode}] the attacker received {took['count']} of the victim's requests, "
                 f"credentials included: {took['headers'][:1]}")  # fmt: skip


def test_item5_no_project_can_bind_or_steal_another_projects_listener(daemon, fresh_daemon, name):
    """The attack: bind beside the victim (its loopback port with SO_REUSEPORT in the
    opt-in shared network; its socket path in the default isolated one), then 200
    requests to the victim carrying Authorization and Cookie, 20 at a time: every one must
    be answered by the victim and none seen by the attacker."""
    found = Findings("item 5 (stealing a listener)")
    victim, attacker = f"{name}-v", f"{name}-a"
    deploy(daemon, victim, env={"HOSTILE_ROLE": "victim"})
    deploy(daemon, attacker, env={"HOSTILE_ROLE": "attacker"})
    _steal_round(daemon, victim, attacker, found, "default network")

    shared = fresh_daemon(env={"TEE_DAEMON_PROJECT_NETWORK": "shared"})
    deploy(shared, victim, env={"HOSTILE_ROLE": "victim"})
    deploy(shared, attacker, env={"HOSTILE_ROLE": "attacker"})
    assert admin_view(shared, victim)["instance"]["address"].startswith("127.0.0.1:")
    _steal_round(shared, victim, attacker, found, "shared network")
    found.check()


# -- item 6: Deno's shared DENO_DIR -------------------------------------------------------------

DENO_VICTIM = """
// The victim's code: nobody else may read this string.
const SECRET_SOURCE_MARK = "%s";
export default function handler(_req: Request): Response {
  return new Response(SECRET_SOURCE_MARK.length > 0 ? "victim" : "?");
}
"""

DENO_ATTACKER = """
// A hostile Deno tenant: walks its DENO_DIR (and anything else it may read) for a needle.
export default async function handler(req: Request): Promise<Response> {
  const url = new URL(req.url);
  const needle = url.searchParams.get("needle") ?? "";
  const name = url.searchParams.get("name") ?? "";
  const root = url.searchParams.get("root") || Deno.env.get("DENO_DIR") || "";
  const out = { root, files: 0, hits: [] as string[], named: [] as string[], errors: [] as string[] };
  const walk = async (dir: string, depth: number) => {
    if (depth > 14 || out.files > 5000) return;
    let entries;
    try { entries = Deno.readDir(dir); } catch (e) { out.errors.push(`${dir}: ${e}`); return; }
    try {
      for await (const entry of entries) {
        const full = `${dir}/${entry.name}`;
        if (name && full.includes(name)) out.named.push(full);
        if (entry.isDirectory) await walk(full, depth + 1);
        else if (entry.isFile) {
          out.files++;
          try {
            const info = await Deno.stat(full);
            if (info.size > 4_000_000) continue;
            const text = new TextDecoder().decode(await Deno.readFile(full));
            if (needle && text.includes(needle)) out.hits.push(full);
          } catch (e) { out.errors.push(`${full}: ${e}`); }
        }
      }
    } catch (e) { out.errors.push(`${dir}: ${e}`); }
  };
  if (root) await walk(root, 0);
  out.errors = out.errors.slice(0, 20);
  out.named = out.named.slice(0, 20);
  return Response.json(out);
}
"""


def test_item6_deno_dir_never_shows_another_projects_source(daemon, name):
    """The attack: a Deno project walks its DENO_DIR looking for a victim's transpiled
    source (a unique string in the victim's code) and for the victim's name in paths."""
    victim, attacker = f"{name}-v", f"{name}-a"
    needle = "deno-victim-source-" + os.urandom(8).hex()
    deploy(daemon, victim, {"server.ts": DENO_VICTIM % needle})
    with httpx.Client(base_url=daemon.url, timeout=20) as c:
        assert c.get(f"/{victim}/").text == "victim"
    deploy(daemon, attacker, {"server.ts": DENO_ATTACKER})
    found = Findings("item 6 (DENO_DIR)")
    seen = attack(daemon, attacker, "/", needle=needle, name=victim)
    found.expect(not seen["hits"], f"the attacker read the victim's source in its DENO_DIR: {seen['hits'][:5]}")
    found.expect(not seen["named"], f"the attacker sees the victim's name in its DENO_DIR: {seen['named'][:5]}")
    # And the victim's cached files are not elsewhere in reach: the daemon's whole cache.
    wide = attack(daemon, attacker, "/", needle=needle, name=victim, root=str(daemon.data_dir / "cache"))
    found.expect(not wide["hits"] and not wide["named"],
                 f"the attacker reads the daemon's shared cache: {(wide['hits'] + wide['named'])[:5]}")  # fmt: skip
    found.check()


# -- item 8: the network ----------------------------------------------------------------------


@pytest.fixture
def test_host():
    """A service at 198.19.254.2 in a network namespace this test creates (198.18.0.0/15
    only; never any other address)."""
    with hostile.TestHost() as host:
        assert host.reachable_from_host(), "the test host is not reachable from the host: the test setup is broken"
        yield host


def test_item8_default_network_reaches_no_tenant_daemon_or_host_but_the_outside(
    daemon, name, loopback_listener, test_host
):
    """The attack, in the default network mode: connect to another project, to the
    daemon's port, to a listener on the host's loopback. None may connect; an outbound
    connection to the test host (egress is allowed by default) must."""
    attacker, other = f"{name}-a", f"{name}-o"
    deploy(daemon, attacker)
    deploy(daemon, other, env={"HOSTILE_ROLE": "other"})
    found = Findings("item 8 (network, default mode)")
    view = admin_view(daemon, attacker)["instance"]
    found.expect(view.get("network") == "isolated", f"the default project network is {view.get('network')!r}")

    address = admin_view(daemon, other)["instance"]["address"]
    if address.startswith("unix:"):
        probe = attack(daemon, attacker, "/connect", path=address.removeprefix("unix:"))
    else:
        probe = attack(daemon, attacker, "/connect", port=address.rsplit(":", 1)[1])
    found.expect(not probe["connected"], f"the attacker connected to another project at {address}")
    probe = attack(daemon, attacker, "/connect", port=daemon.port)
    found.expect(not probe["connected"], f"the attacker connected to the daemon's port {daemon.port}")
    probe = attack(daemon, attacker, "/connect", port=loopback_listener)
    found.expect(not probe["connected"], f"the attacker connected to a listener on the host's loopback "
                 f"(127.0.0.1:{loopback_listener})")  # fmt: skip

    out = attack(daemon, attacker, "/connect", host=test_host.address, port=test_host.port, recv="1")
    found.expect(out["connected"] and out.get("greeting", "").startswith(test_host.GREETING),
                 f"egress is allowed by default, but the project could not reach the test host "
                 f"{test_host.address}:{test_host.port}: {dumps(out)}")  # fmt: skip
    found.check()


def test_item8_egress_deny_blocks_outbound_connections(fresh_daemon, name, test_host):
    """With TEE_DAEMON_PROJECT_EGRESS=deny the project cannot connect out (to the test
    host), still serves, and /_api/substrate says egress is denied."""
    daemon = fresh_daemon(env={"TEE_DAEMON_PROJECT_EGRESS": "deny"})
    deploy(daemon, name)
    found = Findings("item 8 (egress deny)")
    out = attack(daemon, name, "/connect", host=test_host.address, port=test_host.port, recv="1")
    found.expect(not out["connected"], f"egress is denied, but the project reached the test host: {dumps(out)}")
    facts = json.dumps(daemon.get("/_api/substrate").json().get("isolation", {})).lower()
    found.expect("egress" in facts and "deny" in facts,
                 f"/_api/substrate does not say egress is denied: {facts[:800]}")  # fmt: skip
    found.check()


# -- identities survive a restart ---------------------------------------------------------------


def test_a_daemon_restart_keeps_each_projects_identity(fresh_daemon, name):
    """Each project's host uid/gid is recorded: a daemon restart gives every project the
    same one again (files in its data dir stay its own), and two projects never share."""
    daemon = fresh_daemon()
    a, b = f"{name}-a", f"{name}-b"
    marker_a, marker_b = deploy(daemon, a), deploy(daemon, b)
    found = Findings("identity across a restart")
    first = {a: hostile.host_uid(daemon, a, marker_a), b: hostile.host_uid(daemon, b, marker_b)}
    for project, (uid, gid) in first.items():
        found.expect(uid != 0 and gid != 0, f"{project} runs as uid {uid}, gid {gid} on the host")
    found.expect(first[a] != first[b], f"{a} and {b} share the identity {first[a]}")

    daemon.stop()
    daemon = fresh_daemon()
    for project, marker in ((a, marker_a), (b, marker_b)):
        attack(daemon, project, "/status")
        again = hostile.host_uid(daemon, project, marker)
        found.expect(again == first[project], f"{project} ran as {first[project]} and after the restart as {again}")
    found.check()
