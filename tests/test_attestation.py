"""Attestation against the real daemon: promote, the log, checkpoints, quotes, the public
endpoints, damage and crash handling (SPEC sections 3, 6, 7)."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from dstack_sdk import DstackClient

from tee_daemon.trust.binding import parse_preimage, report_data
from tee_daemon.trust.checkpoint import verify_checkpoint
from tee_daemon.trust.merkle import leaf_hash, verify_consistency, verify_inclusion
from tee_daemon.trust.quote import quote_report_data
from tee_daemon.trust.tee import Tee
from tee_daemon.trust.simulator import TeeSimulator

SITE = {"index.html": "<h1>one</h1>"}
LOG = Path("translog") / "log.jsonl"


def promote(d, name: str) -> httpx.Response:
    with d.client() as c:
        return c.post(f"/_api/projects/{name}/promote")


def attested(d, name: str, files=SITE, **manifest) -> dict:
    r = d.deploy_files(name, files, **manifest)
    assert r.status_code == 201, r.text
    r = promote(d, name)
    assert r.status_code == 200, r.text
    return r.json()


def all_leaves(d) -> list[str]:
    out: list[str] = []
    while True:
        page = d.get("/_api/log/entries", params={"start": len(out)}).json()
        if not page["entries"]:
            return out
        out += [e["leaf"] for e in page["entries"]]


def events_of(d, name: str) -> list[dict]:
    return [json.loads(e["leaf"]) for e in d.get(f"/_api/projects/{name}/audit").json()["entries"]]


def check_audit(audit: dict) -> None:
    cp = audit["checkpoint"]
    assert verify_checkpoint(cp)
    root = bytes.fromhex(cp["root"])
    for e in audit["entries"]:
        proof = [bytes.fromhex(h) for h in e["inclusion_proof"]]
        assert verify_inclusion(e["index"], cp["size"], leaf_hash(e["leaf"].encode()), proof, root)


# -- promote and the log -------------------------------------------------------------------


def test_promote_redeploy_rollback_delete_append_entries(daemon, name):
    assert daemon.deploy_files(name, SITE).status_code == 201
    assert daemon.get(f"/_api/projects/{name}/audit").status_code == 404
    body = promote(daemon, name).json()
    assert body["mode"] == "attested" and body["promoted_at"]
    again = promote(daemon, name)
    assert again.status_code == 409 and "already attested" in again.json()["detail"]

    before = all_leaves(daemon)
    assert [e["action"] for e in events_of(daemon, name)] == ["promote"]
    assert daemon.deploy_files(name, {"index.html": "two"}).status_code == 201
    with daemon.client() as c:
        assert c.post(f"/_api/projects/{name}/rollback").status_code == 200
    events = events_of(daemon, name)
    assert [(e["action"], e["version"]) for e in events] == [("promote", 1), ("deploy", 2), ("rollback", 1)]
    manifest = daemon.get(f"/_api/projects/{name}").json()
    last = events[-1]
    for k in ("tree_sha1", "tree_sha256", "manifest_sha256", "runtime", "source", "secret_names", "version",
              "toolchain", "lock_sha256", "deps_tree_sha256", "pinned"):
        assert last[k] == manifest[k], k
    assert set(last) == {
        "index", "time", "project", "action", "version", "source", "ref", "commit",
        "tree_sha1", "tree_sha256", "runtime", "manifest_sha256", "secret_names",
        "command", "image", "port", "toolchain", "lock_sha256", "deps_tree_sha256", "pinned",
    }  # fmt: skip
    check_audit(daemon.get(f"/_api/projects/{name}/audit").json())

    with daemon.client() as c:
        assert c.delete(f"/_api/projects/{name}").status_code == 200
    after = all_leaves(daemon)
    assert after[: len(before)] == before  # earlier entries byte-identical
    mine = [json.loads(leaf) for leaf in after if json.loads(leaf)["project"] == name]
    assert [e["action"] for e in mine] == ["promote", "deploy", "rollback", "delete"]
    for path in (f"/_api/projects/{name}/audit", f"/_api/attest/{name}", f"/_api/verification/{name}"):
        assert daemon.get(path).status_code == 404


def test_dev_projects_write_nothing_and_are_404(daemon, name):
    size = daemon.get("/_api/log/checkpoint").json()["size"]
    assert daemon.deploy_files(name, SITE).status_code == 201
    assert daemon.deploy_files(name, {"index.html": "2"}).status_code == 201
    assert daemon.get("/_api/log/checkpoint").json()["size"] == size
    for path in (
        f"/_api/projects/{name}/audit", f"/_api/attest/{name}", f"/_api/attest/{name}?nonce=ab",
        f"/_api/verification/{name}", "/_api/projects/nope-never/audit", "/_api/attest/nope-never",
        "/_api/verification/nope-never",
    ):  # fmt: skip
        for admin in (False, True):
            r = daemon.get(path, admin=admin)
            assert r.status_code == 404, (path, admin)
            assert r.json()["status_code"] == 404
    r = daemon.get(f"/_api/verification/{name}", admin=True, headers={"accept": "text/html"})
    assert r.status_code == 404


def test_consistency_between_two_checkpoints(daemon, name):
    attested(daemon, name)
    cp1 = daemon.get("/_api/log/checkpoint").json()
    assert daemon.deploy_files(name, {"index.html": "b"}).status_code == 201
    assert daemon.deploy_files(name, {"index.html": "c"}).status_code == 201
    cp2 = daemon.get("/_api/log/checkpoint").json()
    assert cp2["size"] >= cp1["size"] + 2
    assert verify_checkpoint(cp1) and verify_checkpoint(cp2)
    assert cp1["public_key"] == cp2["public_key"]
    r = daemon.get("/_api/log/consistency", params={"from": cp1["size"], "to": cp2["size"]}).json()
    assert (r["from"], r["to"]) == (cp1["size"], cp2["size"])
    proof = [bytes.fromhex(h) for h in r["proof"]]
    assert verify_consistency(cp1["size"], cp2["size"], bytes.fromhex(cp1["root"]), bytes.fromhex(cp2["root"]), proof)
    assert not verify_consistency(cp1["size"], cp2["size"], bytes(32), bytes.fromhex(cp2["root"]), proof)
    # The note is the C2SP body; the signature is a bare Ed25519 signature over it.
    assert cp2["note"] == f"{cp2['origin']}\n{cp2['size']}\n{base64.b64encode(bytes.fromhex(cp2['root'])).decode()}\n"
    assert len(base64.b64decode(cp2["signature"])) == 64


@pytest.mark.parametrize(
    "query",
    ["", "from=x", "from=-1", "from=1&to=0", "from=0&to=999999999", "from=1.5", "to=3"],
)
def test_consistency_bad_ranges_are_400(daemon, query):
    r = daemon.get(f"/_api/log/consistency?{query}")
    assert r.status_code == 400, r.text
    assert r.json()["status_code"] == 400 and r.json()["detail"]


def test_entries_ranges(daemon, name):
    attested(daemon, name)
    size = daemon.get("/_api/log/checkpoint").json()["size"]
    whole = daemon.get("/_api/log/entries").json()
    assert [e["index"] for e in whole["entries"]] == list(range(min(size, 1000)))
    part = daemon.get("/_api/log/entries", params={"start": size - 1, "end": size + 50}).json()
    assert [e["index"] for e in part["entries"]] == [size - 1]
    assert daemon.get("/_api/log/entries", params={"start": size}).json()["entries"] == []
    for bad in ({"start": size + 1}, {"start": 2, "end": 1}, {"start": "a"}, {"end": "-3"}):
        assert daemon.get("/_api/log/entries", params=bad).status_code == 400, bad


# -- quotes --------------------------------------------------------------------------------


def test_attest_binds_manifest_log_and_nonce(daemon, name):
    attested(daemon, name, env={"MODE": "public"})
    manifest = daemon.get(f"/_api/projects/{name}").json()
    a1 = daemon.get(f"/_api/attest/{name}").json()
    assert {"quote", "event_log", "report_data_preimage", "tee"} <= set(a1)
    assert a1["tee"] == "simulated"
    pre = parse_preimage(a1["report_data_preimage"])
    assert quote_report_data(bytes.fromhex(a1["quote"])) == report_data(a1["report_data_preimage"])
    cp = daemon.get("/_api/log/checkpoint").json()
    assert pre["project"] == name and pre["nonce"] is None
    assert pre["tree_sha256"] == manifest["tree_sha256"] and pre["manifest_sha256"] == manifest["manifest_sha256"]
    assert pre["log_public_key"] == cp["public_key"]
    assert (pre["log_size"], pre["log_root"]) == (a1["checkpoint"]["size"], a1["checkpoint"]["root"])

    # Cached per project and log size: the same quote until something changes.
    assert daemon.get(f"/_api/attest/{name}").json()["quote"] == a1["quote"]
    n1 = daemon.get(f"/_api/attest/{name}", params={"nonce": "00ff" * 8}).json()
    assert parse_preimage(n1["report_data_preimage"])["nonce"] == "00ff" * 8
    assert quote_report_data(bytes.fromhex(n1["quote"])) == report_data(n1["report_data_preimage"])
    upper = daemon.get(f"/_api/attest/{name}", params={"nonce": "ABCD"}).json()
    assert parse_preimage(upper["report_data_preimage"])["nonce"] == "abcd"

    assert daemon.deploy_files(name, {"index.html": "new"}).status_code == 201
    a2 = daemon.get(f"/_api/attest/{name}").json()
    pre2 = parse_preimage(a2["report_data_preimage"])
    assert pre2["log_size"] > pre["log_size"] and pre2["tree_sha256"] != pre["tree_sha256"]


@pytest.mark.parametrize("nonce", ["", "xyz", "abc", "0x12", "aa" * 65, "zz"])
def test_bad_nonce_is_400(daemon, name, nonce):
    attested(daemon, name)
    for path in (f"/_api/attest/{name}", f"/_api/verification/{name}"):
        r = daemon.get(path, params={"nonce": nonce})
        assert r.status_code == 400, (path, nonce, r.text)
        assert "nonce" in r.json()["detail"]


def test_verification_bundle_and_tee_everywhere(daemon, name):
    attested(daemon, name)
    v = daemon.get(f"/_api/verification/{name}", params={"nonce": "0123"}).json()
    assert v["tee"] == "simulated"
    assert v["manifest"]["name"] == name and v["manifest"]["tee"] == "simulated"
    pre = parse_preimage(v["attestation"]["report_data_preimage"])
    assert pre["nonce"] == "0123"
    cp = v["audit"]["checkpoint"]
    assert (pre["log_size"], pre["log_root"], pre["log_public_key"]) == (cp["size"], cp["root"], cp["public_key"])
    check_audit(v["audit"])
    assert daemon.get("/_api/substrate").json()["tee"] == "simulated"
    assert daemon.get(f"/_api/projects/{name}").json()["tee"] == "simulated"
    assert daemon.get(f"/_api/attest/{name}").json()["tee"] == "simulated"
    assert daemon.get(f"/_api/projects/{name}/audit").json()["tee"] == "simulated"
    assert daemon.get("/_api/log/checkpoint").json()["tee"] == "simulated"
    assert daemon.get("/_api/log/entries").json()["tee"] == "simulated"
    assert daemon.get("/_api/log/consistency?from=0").json()["tee"] == "simulated"
    html = daemon.get(f"/_api/verification/{name}", headers={"accept": "text/html"})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")


def test_public_endpoints_send_cors(daemon, name):
    attested(daemon, name)
    origin = {"origin": "https://auditor.example"}
    for path in (f"/_api/attest/{name}", f"/_api/projects/{name}/audit", "/_api/log/checkpoint",
                 f"/_api/verification/{name}", "/_api/log/entries"):  # fmt: skip
        r = daemon.get(path, headers=origin)
        assert r.status_code == 200 and r.headers.get("access-control-allow-origin") in ("*", origin["origin"])
        pre = httpx.options(
            daemon.url + path, headers={**origin, "access-control-request-method": "GET"}
        )
        assert pre.status_code in (200, 204), (path, pre.status_code)
        assert pre.headers.get("access-control-allow-origin") in ("*", origin["origin"])


# -- nothing secret in any public answer ----------------------------------------------------


def _derived_key_material(data_dir: Path, tmp: Path) -> list[bytes]:
    """The daemon's log signing seed and dstack key, derived the way the daemon does."""
    sim = TeeSimulator(data_dir, socket_path=tmp / "probe.sock")
    with sim:
        tee = Tee(DstackClient(sim.endpoint), "simulated", sim.endpoint)
        key, _ = tee.derive_signing_key()
        raw = DstackClient(sim.endpoint).get_key(path="tee-daemon/log-signing", purpose="checkpoint-signing")
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    root_secret = (data_dir / "tee-simulator" / "root-secret").read_bytes()
    return [seed, raw.decode_key(), root_secret]


def _forms(secret: bytes) -> list[str]:
    return [
        secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
    ]  # fmt: skip


def test_no_secret_or_key_material_in_public_answers(daemon, name, tmp_path):
    secret_value = "sv-" + hashlib.sha256(name.encode()).hexdigest()[:24]
    attested(daemon, name, env={"PUBLIC_SETTING": "visible"}, secrets={"API_KEY": secret_value})
    r = daemon.deploy_files(
        name, {"index.html": "two"}, env={"PUBLIC_SETTING": "visible"},
        secrets={"API_KEY": secret_value, "DB": secret_value + "db"},
    )  # fmt: skip
    assert r.status_code == 201, r.text

    size = daemon.get("/_api/log/checkpoint").json()["size"]
    paths = [
        "/", "/_api/health", "/_api/substrate", f"/_api/projects/{name}", f"/_api/projects/{name}/audit",
        f"/_api/attest/{name}", f"/_api/attest/{name}?nonce=abcdef", f"/_api/verification/{name}",
        f"/_api/verification/{name}?nonce=0a0b", "/_api/log/checkpoint",
        f"/_api/log/consistency?from=1&to={size}", "/_api/log/entries", "/_api/schema/openapi.json",
    ]  # fmt: skip
    texts = {}
    for path in paths:
        r = daemon.get(path, headers={"accept": "application/json"})
        assert r.status_code == 200, (path, r.text)
        texts[path] = r.text
    page = daemon.get(f"/_api/verification/{name}", headers={"accept": "text/html"})
    assert page.status_code == 200
    texts["verification page"] = page.text
    manifest = daemon.get(f"/_api/projects/{name}").json()
    assert manifest["secret_names"] == ["API_KEY", "DB"] and manifest["env"] == {"PUBLIC_SETTING": "visible"}

    material = _derived_key_material(daemon.data_dir, tmp_path)
    forbidden = [secret_value, daemon.token] + [f for m in material for f in _forms(m)]
    published = {daemon.get("/_api/log/checkpoint").json()["public_key"]}
    hex64 = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")
    for where, text in texts.items():
        for bad in forbidden:
            assert bad not in text, (where, "secret or key material")
        assert "PRIVATE KEY" not in text and "-----BEGIN" not in text, where
        # Every 64-hex value is a hash or the published public key, never a private scalar.
        for token in hex64.findall(text):
            assert token.lower() not in {m.hex() for m in material}, where
        carries_key = "public_key" in text
        if where == "/_api/schema/openapi.json":  # names the field in its shapes: a value?
            carries_key = bool(re.search(r'"public_key"\s*:\s*"', text))
        assert published <= set(hex64.findall(text)) or not carries_key, where
    # Nor in the log on disk or the daemon's own output.
    disk = (daemon.data_dir / LOG).read_text()
    assert secret_value not in disk and "API_KEY" in disk
    assert secret_value not in daemon.log_path.read_text(errors="replace")


# -- damage and crashes --------------------------------------------------------------------


def _edit_time(path: Path) -> None:
    lines = path.read_bytes().split(b"\n")
    event = json.loads(lines[0])
    event["time"] += 1
    lines[0] = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines))


def _drop_last_line(path: Path) -> None:
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:-2]) + b"\n")


def _remove(path: Path) -> None:
    path.unlink()
    path.with_name(path.name + ".roots").unlink()


@pytest.mark.parametrize("damage", [_edit_time, _drop_last_line, _remove], ids=["edited", "truncated", "removed"])
def test_damaged_log_detected_on_start_and_refused(fresh_daemon, damage):
    d = fresh_daemon()
    attested(d, "site")
    assert d.deploy_files("site", {"index.html": "two"}).status_code == 201
    assert d.deploy_files("other", SITE).status_code == 201
    d.stop()
    log_path = d.data_dir / LOG
    damage(log_path)
    on_disk = log_path.read_bytes() if log_path.exists() else b""

    d = fresh_daemon()
    status = d.get("/_api/substrate").json()["transparency_log"]
    assert status["damaged"] and status["attestation"].startswith("refused")
    for path in ("/_api/attest/site", "/_api/verification/site", "/_api/projects/site/audit",
                 "/_api/log/checkpoint", "/_api/log/consistency?from=0&to=1"):  # fmt: skip
        r = d.get(path)
        assert r.status_code == 503, (path, r.text)
        assert "damaged" in r.json()["detail"]
        assert str(d.data_dir) not in r.text  # Public answers do not show the daemon's paths.
    # Changes to attested projects are refused with a clear error; dev ones still deploy.
    r = d.deploy_files("site", {"index.html": "three"})
    assert r.status_code == 503 and "damaged" in r.json()["detail"]
    assert promote(d, "other").status_code == 503
    assert d.deploy_files("other", {"index.html": "x"}).status_code == 201
    assert d.get("/site/").text == "two"  # still serving
    entries = d.get("/_api/log/entries").json()
    assert entries["damaged"]
    d.stop()
    assert log_path.read_bytes() == on_disk  # never rewritten


def test_reconcile_after_crash_between_append_and_save(fresh_daemon):
    d = fresh_daemon()
    attested(d, "site")
    assert d.deploy_files("site", {"index.html": "two"}).status_code == 201
    d.stop()
    # As if the daemon died after logging v2 but before saving the record: it serves v1.
    record = d.data_dir / "projects" / "site" / "project.json"
    project = json.loads(record.read_bytes())
    project["current"] = 1
    record.write_text(json.dumps(project))

    d = fresh_daemon()
    assert d.get("/_api/substrate").json()["transparency_log"]["damaged"] is None
    events = events_of(d, "site")
    assert [(e["action"], e["version"]) for e in events] == [("promote", 1), ("deploy", 2), ("rollback", 1)]
    assert events[-1]["manifest_sha256"] == d.get("/_api/projects/site").json()["manifest_sha256"]


def test_log_survives_kill_during_appends(fresh_daemon):
    d = fresh_daemon()
    names = [f"p{i}" for i in range(6)]
    for n in names:
        assert d.deploy_files(n, {"index.html": n}).status_code == 201
    acknowledged: list[tuple[str, str, int]] = []  # (project, action, version)

    def work(n: str) -> None:
        try:
            with d.client() as c:
                r = c.post(f"/_api/projects/{n}/promote", timeout=30)
            if r.status_code == 200:
                acknowledged.append((n, "promote", r.json()["version"]))
            for k in range(50):
                r = d.deploy_files(n, {"index.html": f"{n}-{k}"})
                if r.status_code == 201:
                    acknowledged.append((n, "deploy", r.json()["version"]))
        except httpx.HTTPError:
            return  # the daemon was killed under this request

    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        futures = [pool.submit(work, n) for n in names]
        deadline = time.monotonic() + 30
        while len(acknowledged) < 12 and time.monotonic() < deadline:
            time.sleep(0.02)
        d.kill()
        for f in futures:
            f.result()
    assert len(acknowledged) >= 12

    d = fresh_daemon()
    status = d.get("/_api/substrate").json()["transparency_log"]
    assert status["damaged"] is None, status
    leaves = [json.loads(leaf) for leaf in all_leaves(d)]
    assert [e["index"] for e in leaves] == list(range(len(leaves)))
    logged = {(e["project"], e["action"], e["version"]) for e in leaves}
    missing = [a for a in acknowledged if a not in logged]
    assert not missing, missing
    cp = d.get("/_api/log/checkpoint").json()
    assert verify_checkpoint(cp) and cp["size"] == len(leaves)
    # And the log takes new entries after the crash.
    assert d.deploy_files("p0", {"index.html": "after"}).status_code == 201
    assert d.get("/_api/log/checkpoint").json()["size"] == len(leaves) + 1
