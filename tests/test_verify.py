"""`tee-daemon verify` (SPEC section 8): end to end against the daemon, and its checks
against doctored answers."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tee_daemon.cli import verify as v
from tee_daemon.trust.canonical import canonical_json

FIX = Path(__file__).parent / "fixtures" / "tdx"
GENUINE_QUOTE = (FIX / "tdx_quote").read_bytes()
COLLATERAL = FIX / "tdx_quote_collateral.json"
NOW = 1750377600
NONCE = "5eed" * 8


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {"XDG_CACHE_HOME": str(cache), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "tee_daemon.cli.commands", "verify", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def lines(out: str) -> dict[str, str]:
    """check name -> PASS/FAIL."""
    found = {}
    for line in out.splitlines():
        if line[:4] in ("PASS", "FAIL"):
            found[line[6:].split(":", 1)[0]] = line[:4]
    return found


@pytest.fixture(scope="module")
def site(daemon, tmp_path_factory) -> tuple[str, Path]:
    """An attested project with two versions, and its source folder."""
    name = "verify-site"
    src = tmp_path_factory.mktemp("src")
    (src / "index.html").write_text("<h1>verified</h1>")
    (src / "about.txt").write_text("about")
    assert daemon.deploy_files(name, {"index.html": "first"}).status_code == 201
    with daemon.client() as c:
        assert c.post(f"/_api/projects/{name}/promote").status_code == 200
    files = {p.name: p.read_text() for p in src.iterdir()}
    assert daemon.deploy_files(name, files, env={"GREETING": "hi"}, secrets={"TOKEN": "s3cret"}).status_code == 201
    return name, src


@pytest.fixture
def bundle(daemon, site) -> dict:
    return daemon.get(f"/_api/verification/{site[0]}", params={"nonce": NONCE}).json()


def run_checks(daemon, name, bundle, tmp_path, get=None, **kw) -> dict[str, bool]:
    checks = v.verify(
        daemon.url, name, bundle=bundle, nonce=NONCE, allow_simulated=True,
        get=get or v.http_getter(daemon.url), cache_dir=tmp_path / "cache", **kw,
    )  # fmt: skip
    result: dict[str, bool] = {}
    for c in checks:
        result[c.name] = result.get(c.name, True) and c.ok
    return result


# -- end to end ----------------------------------------------------------------------------


def test_verify_passes_with_allow_simulated_and_fails_without(daemon, site, tmp_path):
    name, src = site
    ok = cli(daemon.url, name, "--allow-simulated", "--source", str(src), cache=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    got = lines(ok.stdout)
    for check in ("fetch", "tee", "quote", "report_data", "nonce", "preimage vs manifest",
                  "preimage vs checkpoint", "checkpoint signature", "entry #", "latest entry",
                  "log completeness", "consistency", "source"):  # fmt: skip
        assert any(k.startswith(check) and s == "PASS" for k, s in got.items()), (check, ok.stdout)
    assert all(s == "PASS" for s in got.values())
    assert "simulated" in ok.stdout

    strict = cli(daemon.url, name, cache=tmp_path)
    assert strict.returncode == 1
    got = lines(strict.stdout)
    assert got["tee"] == "FAIL" and got["quote"] == "FAIL" and got["report_data"] == "PASS"
    assert "--allow-simulated" in strict.stdout


def test_verify_fails_on_other_source(daemon, site, tmp_path):
    name, src = site
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.html").write_text("<h1>something else</h1>")
    r = cli(daemon.url, name, "--allow-simulated", "--source", str(other), cache=tmp_path)
    assert r.returncode == 1
    assert lines(r.stdout)["source"] == "FAIL"
    assert "!= manifest" in r.stdout


def test_verify_source_from_git(daemon, name, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "index.html").write_text("from git")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    r = daemon.deploy_git(name, f"file://{repo}")
    assert r.status_code == 201, r.text
    with daemon.client() as c:
        assert c.post(f"/_api/projects/{name}/promote").status_code == 200
    ok = cli(daemon.url, name, "--allow-simulated", "--source", f"file://{repo}", cache=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS  source: git" in ok.stdout


def test_verify_unknown_project_and_unreachable(daemon, tmp_path):
    r = cli(daemon.url, "no-such-project", "--allow-simulated", cache=tmp_path)
    assert r.returncode != 0 and "FAIL  fetch" in r.stdout and "404" in r.stdout
    r = cli("http://127.0.0.1:9", "x", "--allow-simulated", cache=tmp_path)
    assert r.returncode == 2 and "FAIL  fetch" in r.stdout


# -- a doctored daemon ---------------------------------------------------------------------


class Doctored:
    """Serves the real daemon's answers, rewritten by `edit(path, body) -> body`."""

    def __init__(self, upstream: str, edit: Callable[[str, dict], dict]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_GET(self) -> None:
                r = httpx.get(upstream + self.path, timeout=60)
                body = r.content
                if r.headers.get("content-type", "").startswith("application/json"):
                    body = json.dumps(outer.edit(self.path, r.json())).encode()
                self.send_response(r.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.edit = edit
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _tamper_leaf(leaf: str) -> str:
    event = json.loads(leaf)
    event["tree_sha256"] = "0" * 64
    return canonical_json(event).decode()


def test_cli_fails_on_a_tampered_log_entry(daemon, site, tmp_path):
    name, _ = site

    def edit(path: str, body: dict) -> dict:
        if path.startswith("/_api/verification/"):
            body["audit"]["entries"][0]["leaf"] = _tamper_leaf(body["audit"]["entries"][0]["leaf"])
        return body

    server = Doctored(daemon.url, edit)
    try:
        r = cli(server.url, name, "--allow-simulated", cache=tmp_path)
    finally:
        server.close()
    assert r.returncode == 1, r.stdout
    got = lines(r.stdout)
    first = next(k for k in got if k.startswith("entry #"))
    assert got[first] == "FAIL" and "does NOT verify" in r.stdout
    assert got["log completeness"] == "FAIL"  # the audit no longer matches the log


def test_cli_genuine_quote_checked_offline_with_collateral(daemon, site, tmp_path):
    """A genuine TDX quote passes the signature/TCB check at --now with --collateral; its
    report_data is someone else's, so the binding fails and verify exits 1."""
    name, _ = site

    def edit(path: str, body: dict) -> dict:
        if path.startswith("/_api/verification/"):
            body["tee"] = "tdx"
            body["attestation"]["tee"] = "tdx"
            body["attestation"]["quote"] = GENUINE_QUOTE.hex()
        return body

    server = Doctored(daemon.url, edit)
    try:
        r = cli(server.url, name, "--collateral", str(COLLATERAL), "--now", str(NOW), cache=tmp_path)
        late = cli(server.url, name, "--collateral", str(COLLATERAL), "--now", "2000000000", cache=tmp_path)
    finally:
        server.close()
    got = lines(r.stdout)
    assert got["tee"] == "PASS" and got["quote"] == "PASS", r.stdout
    assert "UpToDate" in r.stdout
    assert got["report_data"] == "FAIL" and r.returncode == 1
    assert lines(late.stdout)["quote"] == "FAIL" and "Expired" in late.stdout


def test_check_quote_genuine_and_flipped() -> None:
    ok = v.check_quote({"quote": GENUINE_QUOTE.hex()}, "tdx", collateral=COLLATERAL.read_text(), now=NOW, allow_simulated=False)
    assert all(c.ok for c in ok), ok
    bad = bytearray(GENUINE_QUOTE)
    bad[700] ^= 1
    checks = v.check_quote({"quote": bytes(bad).hex()}, "tdx", collateral=COLLATERAL.read_text(), now=NOW, allow_simulated=False)
    assert not all(c.ok for c in checks)
    # A daemon claiming "tdx" while serving the simulator's quote fails the signature check.
    assert not v.check_quote({"quote": "00" * 10}, "tdx", collateral=None, now=NOW, allow_simulated=True)[-1].ok


# -- the checks against doctored JSON -------------------------------------------------------


def test_untouched_bundle_passes(daemon, site, bundle, tmp_path):
    result = run_checks(daemon, site[0], bundle, tmp_path)
    assert all(result.values()), result


def _preimage(bundle: dict, **changes) -> None:
    pre = json.loads(bundle["attestation"]["report_data_preimage"])
    pre.update(changes)
    bundle["attestation"]["report_data_preimage"] = canonical_json(pre).decode()


@pytest.mark.parametrize(
    "doctor, failing",
    [
        (lambda b: _preimage(b, tree_sha256="ab" * 32), {"report_data", "preimage vs manifest"}),
        (lambda b: _preimage(b, log_size=b["audit"]["checkpoint"]["size"] + 1), {"report_data", "preimage vs checkpoint"}),
        (lambda b: _preimage(b, nonce="00" * 4), {"report_data", "nonce"}),
        (lambda b: b["manifest"]["env"].update(GREETING="bye"), {"preimage vs manifest"}),
        (lambda b: b["manifest"].update(tree_sha256="cd" * 32), {"preimage vs manifest", "latest entry"}),
        (lambda b: b["audit"]["checkpoint"].update(signature=b["audit"]["checkpoint"]["signature"][::-1]), {"checkpoint signature"}),
        (lambda b: b["audit"]["entries"].pop(), {"latest entry", "log completeness"}),
        (lambda b: b["audit"]["entries"].pop(0), {"log completeness"}),
        (lambda b: b["audit"]["entries"][-1].update(inclusion_proof=[]), {"entry #"}),
        (lambda b: b["audit"]["entries"][0].update(leaf=_tamper_leaf(b["audit"]["entries"][0]["leaf"])), {"entry #", "log completeness"}),
    ],
    ids=["preimage-tree", "preimage-size", "nonce", "manifest-env", "manifest-tree", "signature",
         "drop-last-entry", "drop-first-entry", "no-proof", "leaf"],
)  # fmt: skip
def test_doctored_bundle_fails(daemon, site, bundle, tmp_path, doctor, failing):
    doctored = copy.deepcopy(bundle)
    doctor(doctored)
    result = run_checks(daemon, site[0], doctored, tmp_path)
    failed = {k for k, ok in result.items() if not ok}
    normalized = {("entry #" if k.startswith("entry #") else k) for k in failed}
    assert failing <= normalized, (failing, failed)


def test_doctored_log_entries_fail_completeness(daemon, site, bundle, tmp_path):
    real = v.http_getter(daemon.url)

    def get(path, params=None):
        body = real(path, params)
        if path == "/_api/log/entries" and body["entries"]:
            body["entries"][0]["leaf"] = _tamper_leaf(body["entries"][0]["leaf"])
        return body

    result = run_checks(daemon, site[0], bundle, tmp_path, get=get)
    assert not result["log completeness"]


def test_consistency_with_seen_checkpoints(daemon, site, tmp_path):
    name = site[0]
    get = v.http_getter(daemon.url)
    cp1 = get("/_api/log/checkpoint", None)
    check, storable = v.check_consistency(daemon.url, cp1, get, tmp_path)
    assert check.ok and storable and "first checkpoint" in check.detail
    v.remember(daemon.url, cp1, tmp_path)
    assert daemon.deploy_files(name, {"index.html": "again"}).status_code == 201
    cp2 = get("/_api/log/checkpoint", None)
    check, _ = v.check_consistency(daemon.url, cp2, get, tmp_path)
    assert check.ok and "append-only" in check.detail

    # A forked log: same size as seen, different root; or a log that shrank; or a new key.
    forked = {**cp1, "root": "11" * 32}
    assert not v.check_consistency(daemon.url, forked, get, tmp_path)[0].ok
    v.remember(daemon.url, cp2, tmp_path)
    assert not v.check_consistency(daemon.url, cp1, get, tmp_path)[0].ok
    assert not v.check_consistency(daemon.url, {**cp2, "public_key": "22" * 32}, get, tmp_path)[0].ok
    # A proof that does not lead from the seen root to the new one.
    v.remember(daemon.url, {**cp1, "root": "33" * 32}, tmp_path)
    assert not v.check_consistency(daemon.url, cp2, get, tmp_path)[0].ok
