"""`tee-daemon verify URL NAME`: check an attested project end to end (SPEC section 8).

Trusts nothing the daemon says without checking it against something else:

- the TDX quote's signature chain and TCB status (dcap-qvl; offline with --collateral/--now),
- report_data == SHA-512(report_data_preimage), and the preimage's nonce is ours,
- the preimage against the manifest (tree_sha256, manifest_sha256 recomputed from the
  manifest's fields) and against the checkpoint (log size, root, public key),
- the checkpoint's Ed25519 signature under that public key,
- every audit entry's inclusion proof; the whole log re-hashed to the checkpoint root, so
  the audit cannot leave an entry of this project out; the last entry is what runs,
- consistency with the checkpoint this machine saw last time from the same URL,
- with --source, the tree hash recomputed from a folder or a git URL,
- the event log: its IMR-3 digests replayed to the quote's RTMR3, each digest recomputed
  from its event, and the app-id / compose-hash / instance-id it records (compared with
  what /_api/substrate publishes in tee_info),
- the daemon's own app-compose (tee_info.app_compose) hashing to that compose-hash, and
  with --compose FILE a file the auditor trusts hashing to it too,
- what runs beyond the tree (SPEC 12): the toolchain, and `deps` failing for a project
  whose dependencies are not pinned by a lockfile (unless --allow-unpinned); with --deps
  the lockfile of the --source folder reinstalled in a scratch folder and its
  deps_tree_sha256 compared.

Each check prints one line, PASS or FAIL with the values that matter; exit 0 only when all
pass. The functions below work on plain JSON so that tests can feed them doctored answers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import platformdirs

from tee_daemon.trust.binding import parse_preimage, report_data
from tee_daemon.trust.canonical import canonical_json, sha256_hex
from tee_daemon.trust import eventlog
from tee_daemon.trust.checkpoint import verify_checkpoint
from tee_daemon.trust.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from tee_daemon.trust.quote import quote_report_data, verify_quote
from tee_daemon.trust.reinstall import ReinstallError, reinstall

MANIFEST_FIELDS = (
    "name", "runtime", "entry", "env", "secret_names", "source", "ref", "commit",
    "tree_sha1", "tree_sha256",
    "command", "image", "port",  # SPEC 11: null unless the runtime uses them
    "toolchain", "lock_sha256", "deps_tree_sha256", "pinned",  # what runs (SPEC 12)
)
MAX_LOG_FETCH = 1_000_000  # entries re-hashed at most; beyond that the check says so
EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2

Getter = Callable[[str, dict[str, Any] | None], dict[str, Any]]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


class FetchError(Exception):
    pass


def http_getter(base_url: str, timeout: float = 60) -> Getter:
    base = base_url.rstrip("/")

    def get(path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            r = httpx.get(base + path, params=params, timeout=timeout, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise FetchError(f"cannot reach {base}: {exc}") from None
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200 or not isinstance(body, dict):
            detail = body.get("detail") if isinstance(body, dict) else r.text[:200]
            raise FetchError(f"GET {path} answered {r.status_code}: {detail}")
        return body

    return get


# -- the checks on one verification bundle ------------------------------------------------


def manifest_sha256(manifest: dict[str, Any]) -> str:
    return sha256_hex(canonical_json({k: manifest.get(k) for k in MANIFEST_FIELDS}))


def check_quote(
    attestation: dict[str, Any],
    tee: str,
    *,
    collateral: str | None,
    now: int | None,
    allow_simulated: bool,
) -> list[Check]:
    checks: list[Check] = []
    try:
        quote = bytes.fromhex(attestation["quote"])
    except (KeyError, TypeError, ValueError):
        return [Check("quote", False, "the attestation carries no hex quote")]
    if tee == "simulated":
        if allow_simulated:
            checks.append(Check("tee", True, "simulated TEE (accepted by --allow-simulated): the quote proves nothing"))
        else:
            checks.append(Check("tee", False, "simulated TEE: the quote is not genuine (pass --allow-simulated to accept)"))
        try:
            quote_report_data(quote)
            checks.append(Check("quote", allow_simulated, "simulated quote: well-formed TDX quote, signature not checked"))
        except ValueError as exc:
            checks.append(Check("quote", False, f"not a parsable quote: {exc}"))
        return checks
    checks.append(Check("tee", tee == "tdx", f"TEE mode {tee!r}"))
    result = verify_quote(quote, collateral, now)
    checks.append(Check("quote", result.ok, f"signature and TCB: {result.status}; {result.detail}"))
    return checks


def check_binding(
    name: str, bundle: dict[str, Any], nonce: str | None
) -> tuple[list[Check], dict[str, Any] | None]:
    """report_data vs preimage, and the preimage vs nonce, manifest and checkpoint."""
    att = bundle.get("attestation") or {}
    manifest = bundle.get("manifest") or {}
    cp = (bundle.get("audit") or {}).get("checkpoint") or {}
    checks: list[Check] = []
    preimage_text = att.get("report_data_preimage")
    if not isinstance(preimage_text, str):
        return [Check("report_data", False, "the attestation has no report_data_preimage")], None
    try:
        got = quote_report_data(bytes.fromhex(att.get("quote", "")))
    except ValueError as exc:
        got = b""
        checks.append(Check("report_data", False, f"cannot read report_data from the quote: {exc}"))
    if got:
        want = report_data(preimage_text)
        checks.append(
            Check(
                "report_data",
                got == want,
                f"SHA-512(preimage) {'==' if got == want else '!='} quote report_data"
                + ("" if got == want else f" (quote {got.hex()[:32]}..., preimage hash {want.hex()[:32]}...)"),
            )
        )
    try:
        pre = parse_preimage(preimage_text)
    except ValueError as exc:
        return [*checks, Check("preimage", False, str(exc))], None
    if nonce is not None:
        checks.append(Check("nonce", pre["nonce"] == nonce, f"preimage nonce {pre['nonce']} (sent {nonce})"))

    recomputed = manifest_sha256(manifest)
    pairs = [
        ("project", pre["project"], name),
        ("manifest name", manifest.get("name"), name),
        ("tree_sha256", pre["tree_sha256"], manifest.get("tree_sha256")),
        ("manifest_sha256", pre["manifest_sha256"], manifest.get("manifest_sha256")),
        ("manifest_sha256 recomputed", recomputed, manifest.get("manifest_sha256")),
    ]
    bad = [f"{k}: {a} != {b}" for k, a, b in pairs if a != b]
    checks.append(
        Check(
            "preimage vs manifest",
            not bad,
            "; ".join(bad) if bad else f"tree_sha256 {pre['tree_sha256']}, manifest_sha256 {recomputed} (recomputed)",
        )
    )
    pairs = [
        ("log_size", pre["log_size"], cp.get("size")),
        ("log_root", pre["log_root"], cp.get("root")),
        ("log_public_key", pre["log_public_key"], cp.get("public_key")),
    ]
    bad = [f"{k}: {a} != {b}" for k, a, b in pairs if a != b]
    checks.append(
        Check(
            "preimage vs checkpoint",
            not bad,
            "; ".join(bad) if bad else f"size {pre['log_size']}, root {pre['log_root']}, key {pre['log_public_key']}",
        )
    )
    ok = verify_checkpoint(cp, pre["log_public_key"])
    checks.append(
        Check(
            "checkpoint signature",
            ok,
            f"Ed25519 over the note of size {cp.get('size')} by {pre['log_public_key']}"
            + ("" if ok else ": does NOT verify (or a different key signed it)"),
        )
    )
    return checks, pre


def check_audit(name: str, bundle: dict[str, Any]) -> list[Check]:
    """Each entry's inclusion proof; the last entry describes the version that serves."""
    audit = bundle.get("audit") or {}
    cp = audit.get("checkpoint") or {}
    manifest = bundle.get("manifest") or {}
    entries = audit.get("entries")
    if not isinstance(entries, list) or not entries:
        return [Check("audit", False, "no log entries for an attested project")]
    checks: list[Check] = []
    try:
        size, root = int(cp["size"]), bytes.fromhex(cp["root"])
    except (KeyError, TypeError, ValueError):
        return [Check("audit", False, "the audit's checkpoint has no size and root")]
    events = []
    for e in entries:
        try:
            leaf = e["leaf"]
            event = json.loads(leaf)
            proof = [bytes.fromhex(h) for h in e["inclusion_proof"]]
            good = (
                verify_inclusion(e["index"], size, leaf_hash(leaf.encode("utf-8")), proof, root)
                and event.get("index") == e["index"]
                and event.get("project") == name
            )
        except (KeyError, TypeError, ValueError):
            good, event = False, {}
        events.append(event)
        checks.append(
            Check(
                f"entry #{e.get('index')}",
                good,
                f"{event.get('action')} v{event.get('version')} manifest_sha256 {event.get('manifest_sha256')}: "
                + ("included in the checkpoint" if good else "inclusion proof does NOT verify against the checkpoint"),
            )
        )
    indices = [e.get("index") for e in entries]
    ordered = indices == sorted(set(indices))
    last = events[-1]
    current = (
        ordered
        and last.get("action") != "delete"
        and last.get("version") == manifest.get("version")
        and last.get("manifest_sha256") == manifest.get("manifest_sha256")
        and last.get("tree_sha256") == manifest.get("tree_sha256")
    )
    checks.append(
        Check(
            "latest entry",
            current,
            f"#{last.get('index')} {last.get('action')} v{last.get('version')} "
            + ("is the version serving" if current else f"does NOT match the manifest (v{manifest.get('version')})"),
        )
    )
    return checks


def check_whole_log(name: str, bundle: dict[str, Any], get: Getter) -> Check:
    """Re-hash the log up to the checkpoint: the audit cannot have left an entry out."""
    audit = bundle.get("audit") or {}
    cp = audit.get("checkpoint") or {}
    size = cp.get("size")
    if not isinstance(size, int) or size > MAX_LOG_FETCH:
        return Check("log completeness", False, f"log size {size!r} not checked")
    tree, mine = MerkleTree(), {}
    try:
        while len(tree) < size:
            page = get("/_api/log/entries", {"start": len(tree), "end": size})["entries"]
            if not page:
                return Check("log completeness", False, f"the log served only {len(tree)} of {size} entries")
            for e in page:
                leaf = e["leaf"]
                if e["index"] != len(tree):
                    return Check("log completeness", False, f"entries out of order at {len(tree)}")
                tree.append(leaf_hash(leaf.encode("utf-8")))
                if json.loads(leaf).get("project") == name:
                    mine[e["index"]] = leaf
    except (FetchError, KeyError, TypeError, ValueError) as exc:
        return Check("log completeness", False, f"could not read the log: {exc}")
    root_ok = tree.root(size).hex() == cp.get("root")
    listed = {e.get("index"): e.get("leaf") for e in audit.get("entries") or []}
    ok = root_ok and listed == mine
    detail = f"{size} entries re-hashed to the checkpoint root; {len(mine)} for {name}, all in the audit"
    if not root_ok:
        detail = f"the {size} served entries hash to {tree.root(size).hex()}, not the checkpoint root {cp.get('root')}"
    elif sorted(listed) != sorted(mine):
        detail = f"the log has entries {sorted(mine)} for {name}, the audit lists {sorted(listed)}"
    elif listed != mine:
        changed = sorted(i for i in mine if listed.get(i) != mine[i])
        detail = f"the audit's leaves {changed} differ from the log's"
    return Check("log completeness", ok, detail)


# -- the event log: the quote's RTMR3 and the software stack ------------------------------

# /_api/substrate tee_info keys for the identity events, when the daemon publishes them.
_TEE_INFO_KEYS = {"app-id": "app_id", "compose-hash": "compose_hash", "instance-id": "instance_id"}


def substrate_tee_info(get: Getter) -> tuple[dict[str, Any], str]:
    """(tee_info, "" or why it is missing): only a cross-check, so fetching may fail.

    The substrate's top-level `app_compose` (SPEC 12) is folded into it when tee_info
    has none."""
    try:
        substrate = get("/_api/substrate", None)
    except FetchError as exc:
        return {}, f"/_api/substrate not read ({exc})"
    info = substrate.get("tee_info")
    if not isinstance(info, dict):
        return {}, "/_api/substrate has no tee_info"
    if "app_compose" not in info and isinstance(substrate.get("app_compose"), str):
        info = {**info, "app_compose": substrate["app_compose"]}
    return info, ""


def check_event_log(attestation: dict[str, Any], tee_info: dict[str, Any], why_no_info: str = "") -> list[Check]:
    """RTMR3 replay, event digests, and the identity the events record (module eventlog).

    Replaying the stated digests proves the log is the one RTMR3 measured; recomputing each
    digest proves the names and payloads are what those digests stand for. Only with both
    do the app-id / compose-hash lines say something the quote vouches for.
    """
    try:
        events = eventlog.parse_event_log(attestation.get("event_log") or "")
    except ValueError as exc:
        return [Check("event log", False, f"unreadable event log: {exc}")]
    try:
        rtmr3 = eventlog.quote_rtmr3(bytes.fromhex(attestation.get("quote") or ""))
    except ValueError as exc:
        return [Check("rtmr3 replay", False, f"cannot read RTMR3 from the quote: {exc}")]
    replayed = eventlog.replay(events)
    count = sum(1 for e in events if e.imr == 3)
    same = replayed == rtmr3
    checks = [Check(
        "rtmr3 replay", same,
        f"{count} IMR-3 events replay to {replayed.hex()} {'==' if same else '!='} quote RTMR3 {rtmr3.hex()}",
    )]  # fmt: skip
    bad = eventlog.digest_mismatches(events)
    checks.append(Check(
        "event digests", not bad,
        "; ".join(bad) if bad else f"all {count} IMR-3 digests recomputed from event type, name and payload",
    ))  # fmt: skip
    for name, values in eventlog.identity(events).items():
        published = tee_info.get(_TEE_INFO_KEYS[name])
        if len(values) != 1:
            checks.append(Check(name, False, f"{len(values)} {name!r} events in the event log (want exactly one): {values}"))
            continue
        value = values[0]
        if isinstance(published, str) and published:
            ok = published.lower() == value
            note = f"== tee_info {_TEE_INFO_KEYS[name]}" if ok else f"!= tee_info {_TEE_INFO_KEYS[name]} {published}"
        else:
            ok, note = True, f"(not cross-checked: {why_no_info or 'tee_info has no ' + _TEE_INFO_KEYS[name]})"
        checks.append(Check(name, ok, f"{value or '(empty)'} from the event log {note}"))
    return checks


# -- consistency with what this machine saw before ----------------------------------------


def seen_path(url: str, cache_dir: Path | None = None) -> Path:
    base = cache_dir or Path(platformdirs.user_cache_dir("tee-daemon", appauthor=False))
    key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:32]
    return base / "verify" / f"{key}.json"


def check_consistency(url: str, cp: dict[str, Any], get: Getter, cache_dir: Path | None = None) -> tuple[Check, bool]:
    """(check, whether `cp` may be stored as the new 'seen' checkpoint)."""
    path = seen_path(url, cache_dir)
    try:
        seen = json.loads(path.read_text())
    except (OSError, ValueError):
        return Check("consistency", True, f"first checkpoint seen from {url} (size {cp.get('size')}); remembered in {path}"), True
    try:
        m, root_m, n, root_n = int(seen["size"]), bytes.fromhex(seen["root"]), int(cp["size"]), bytes.fromhex(cp["root"])
    except (KeyError, TypeError, ValueError):
        return Check("consistency", False, f"unreadable checkpoint in {path} or in the answer"), False
    if seen.get("public_key") != cp.get("public_key"):
        return Check("consistency", False, f"the log key changed from {seen.get('public_key')} to {cp.get('public_key')} since last seen"), False
    if m > n:
        return Check("consistency", False, f"the log shrank: size {m} seen before, {n} now"), False
    proof: list[bytes] = []
    if m != n and m != 0:
        try:
            answer = get("/_api/log/consistency", {"from": m, "to": n})
            proof = [bytes.fromhex(h) for h in answer["proof"]]
        except (FetchError, KeyError, TypeError, ValueError) as exc:
            return Check("consistency", False, f"no consistency proof from {m} to {n}: {exc}"), False
    ok = verify_consistency(m, n, root_m, root_n, proof)
    detail = f"size {m} (seen before) -> {n}: " + (
        "append-only" if ok else "NOT consistent: the log was rewritten"
    )
    return Check("consistency", ok, detail), ok


def remember(url: str, cp: dict[str, Any], cache_dir: Path | None = None) -> None:
    path = seen_path(url, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {k: cp.get(k) for k in ("origin", "size", "root", "public_key")}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, **record}))
    os.replace(tmp, path)


# -- the source ---------------------------------------------------------------------------


# The verifier checks out a git source with its own few lines of git rather than the
# daemon's fetcher: sharing that code would let a bug in it agree with itself.
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")
_GIT_CONFIG = {
    "core.hooksPath": "/dev/null",
    "core.symlinks": "true",
    "core.autocrlf": "false",
    "core.fsmonitor": "false",
    "submodule.recurse": "false",
    "advice.detachedHead": "false",
}
# Highest-priority attributes: blobs come out verbatim, whatever the repository says
# (the tree hash is of the committed bytes, not of a filtered checkout).
_VERBATIM = "* -text -eol -ident -filter -working-tree-encoding\n"


def _redact(text: str) -> str:
    """`text` without the userinfo (user:password@) of any URL in it."""
    return _USERINFO.sub("", text)


def checkout_git(url: str, ref: str | None, dest: Path) -> str:
    """Check out `ref` (a commit id, branch or tag; None: the default branch) of `url`
    into `dest` (missing or empty) and return the commit id. Raises RuntimeError with
    git's message (credentials removed) when git fails."""
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,  # the user's config must not change the checkout
        "LC_ALL": "C",
    }
    git = ["git"] + [a for k, v in _GIT_CONFIG.items() for a in ("-c", f"{k}={v}")]
    gitdir = dest.parent / (dest.name + ".git")

    def run(*args: str) -> str:
        done = subprocess.run(
            [*git, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(_redact(done.stderr.strip() or f"git {args[0]} failed"))
        return done.stdout.strip()

    # A full bare clone: git learns the object format from the server, and any commit,
    # branch or tag of the repository can then be named.
    run("clone", "-q", "--bare", "--no-recurse-submodules", "--template=", "--", url, str(gitdir))
    (gitdir / "info").mkdir(exist_ok=True)
    (gitdir / "info" / "attributes").write_text(_VERBATIM)
    try:
        commit = run(f"--git-dir={gitdir}", "rev-parse", "--verify", "-q", f"{ref or 'HEAD'}^{{commit}}")
    except RuntimeError:
        raise RuntimeError(f"no commit {ref or 'HEAD'!r} in the repository") from None
    dest.mkdir(parents=True, exist_ok=True)
    run(f"--git-dir={gitdir}", f"--work-tree={dest}", "checkout", "-q", "-f", commit)
    return commit


def check_source(source: str, manifest: dict[str, Any]) -> Check:
    from tee_daemon.trust import treehash

    try:
        if Path(source).is_dir():
            ids = treehash.tree_ids(Path(source))
            where = f"folder {source}"
        else:
            ref = manifest.get("commit") or manifest.get("ref")
            with tempfile.TemporaryDirectory(prefix="tee-verify-") as tmp:
                commit = checkout_git(source, ref, Path(tmp) / "tree")
                ids = treehash.tree_ids(Path(tmp) / "tree")
            where = f"git {_redact(source)} at {commit}"
    except Exception as exc:
        return Check("source", False, f"could not read {_redact(source)}: {_redact(str(exc))}")
    ok = ids.sha256 == manifest.get("tree_sha256") and ids.sha1 == manifest.get("tree_sha1")
    detail = f"{where}: tree_sha256 {ids.sha256}" + (
        " matches the manifest" if ok else f" != manifest {manifest.get('tree_sha256')} (tree_sha1 {ids.sha1})"
    )
    return Check("source", ok, detail)


# -- what runs beyond the tree: toolchain, lockfile, installed tree (SPEC 12) -------------


def check_deps(manifest: dict[str, Any], allow_unpinned: bool) -> list[Check]:
    """The toolchain and dependency fields (covered by manifest_sha256), and `pinned`."""
    toolchain = manifest.get("toolchain")
    tools = ", ".join(f"{k} {v}" for k, v in sorted(toolchain.items())) if isinstance(toolchain, dict) else ""
    checks = [Check(
        "toolchain", bool(tools) and "tee-daemon" in toolchain,
        (tools or "the manifest names no toolchain")
        + f"; lock_sha256 {manifest.get('lock_sha256')}, deps_tree_sha256 {manifest.get('deps_tree_sha256')}",
    )]  # fmt: skip
    installed, lock = manifest.get("deps_tree_sha256"), manifest.get("lock_sha256")
    if manifest.get("pinned") is True and installed is not None and lock is None:
        checks.append(Check("deps", False, "claims pinned, but names no lockfile for what it installed"))
    elif manifest.get("pinned") is True:
        what = "nothing installed" if installed is None else f"every installed dependency is fixed by the lockfile {lock}"
        checks.append(Check("deps", True, f"pinned: {what}"))
    elif allow_unpinned:
        checks.append(Check("deps", True, "NOT pinned (accepted by --allow-unpinned): what it installed "
                                          "may change from one deploy of the same tree to the next"))
    else:
        checks.append(Check("deps", False, "NOT pinned: its dependencies are not fixed by a lockfile with "
                                           "integrity hashes, so the same tree may run other code after a "
                                           "redeploy (pass --allow-unpinned to accept)"))
    return checks


def check_deps_reinstall(tree: Path, manifest: dict[str, Any]) -> Check:
    """Install the published lockfile again in a scratch folder and compare the tree id."""
    want = manifest.get("deps_tree_sha256")
    try:
        got, what = reinstall(tree, manifest)
    except ReinstallError as exc:
        return Check("deps reinstall", False, str(exc))
    ok = got == want
    return Check("deps reinstall", ok, f"{what} reinstalled: deps_tree_sha256 {got} "
                 + ("matches the manifest" if ok else f"!= manifest {want}"))


def _compose_images(app_compose: str) -> list[str]:
    """The images an app-compose document's docker compose file names."""
    try:
        compose = json.loads(app_compose).get("docker_compose_file") or ""
    except (ValueError, AttributeError):
        return []
    if not isinstance(compose, str):
        return []
    return re.findall(r"^\s*image:\s*[\"']?([^\s\"']+)", compose, flags=re.M)


def check_compose(
    attestation: dict[str, Any], tee_info: dict[str, Any], compose_file: str | None = None
) -> list[Check]:
    """The daemon's own app-compose against the event log's compose-hash (which RTMR3,
    and so the quote, measures); with `compose_file`, also against a release the auditor
    trusts."""
    try:
        events = eventlog.parse_event_log(attestation.get("event_log") or "")
    except ValueError:
        events = []
    hashes = eventlog.identity(events).get("compose-hash") or []
    if len(hashes) != 1:
        return [Check("app_compose", False, f"the event log has {len(hashes)} compose-hash events (want one)")]
    measured = hashes[0]
    published = tee_info.get("app_compose")
    checks = []
    if not isinstance(published, str):
        checks.append(Check("app_compose", False, "/_api/substrate publishes no app_compose"))
    else:
        digest = hashlib.sha256(published.encode()).hexdigest()
        images = ", ".join(_compose_images(published)) or "no image"
        ok = digest == measured
        checks.append(Check(
            "app_compose", ok,
            f"SHA-256 {digest} {'==' if ok else '!='} the event log's compose-hash {measured}; it names {images}",
        ))  # fmt: skip
    if compose_file is not None:
        try:
            digest = hashlib.sha256(Path(compose_file).read_bytes()).hexdigest()
        except OSError as exc:
            return [*checks, Check("compose file", False, f"cannot read {compose_file}: {exc}")]
        ok = digest == measured
        checks.append(Check(
            "compose file", ok,
            f"{compose_file}: SHA-256 {digest} "
            + ("== the event log's compose-hash" if ok else f"!= the event log's compose-hash {measured}"),
        ))  # fmt: skip
    return checks


# -- the whole run ------------------------------------------------------------------------


def verify(
    url: str,
    name: str,
    *,
    source: str | None = None,
    collateral: str | None = None,
    now: int | None = None,
    allow_simulated: bool = False,
    get: Getter | None = None,
    cache_dir: Path | None = None,
    nonce: str | None = None,
    bundle: dict[str, Any] | None = None,
    allow_unpinned: bool = False,
    deps: bool = False,
    compose: str | None = None,
) -> list[Check]:
    get = get or http_getter(url)
    nonce = nonce or secrets.token_hex(16)
    if bundle is None:
        try:
            bundle = get(f"/_api/verification/{name}", {"nonce": nonce})
        except FetchError as exc:
            return [Check("fetch", False, str(exc))]
    checks = [Check("fetch", True, f"verification bundle of {name!r} from {url} with nonce {nonce}")]
    tee = str(bundle.get("tee") or (bundle.get("attestation") or {}).get("tee"))
    checks += check_quote(
        bundle.get("attestation") or {}, tee, collateral=collateral, now=now, allow_simulated=allow_simulated
    )
    binding_checks, _ = check_binding(name, bundle, nonce)
    checks += binding_checks
    tee_info, why_no_info = substrate_tee_info(get)
    checks += check_event_log(bundle.get("attestation") or {}, tee_info, why_no_info)
    checks += check_compose(bundle.get("attestation") or {}, tee_info, compose)
    checks += check_audit(name, bundle)
    checks.append(check_whole_log(name, bundle, get))
    cp = (bundle.get("audit") or {}).get("checkpoint") or {}
    consistency, storable = check_consistency(url, cp, get, cache_dir)
    checks.append(consistency)
    manifest = bundle.get("manifest") or {}
    checks += check_deps(manifest, allow_unpinned)
    if source is not None:
        checks.append(check_source(source, manifest))
    if deps:  # the lockfile comes from the source, once its tree hash is checked
        if source is None:
            checks.append(Check("deps reinstall", False, "--deps needs --source (a folder or git URL)"))
        elif not checks[-1].ok:
            checks.append(Check("deps reinstall", False, "not run: the source is not the attested tree"))
        elif Path(source).is_dir():
            checks.append(check_deps_reinstall(Path(source), manifest))
        else:  # the commit whose tree the source check just matched
            with tempfile.TemporaryDirectory(prefix="tee-verify-src-") as tmp:
                try:
                    checkout_git(source, manifest.get("commit") or manifest.get("ref"), Path(tmp) / "tree")
                except RuntimeError as exc:
                    checks.append(Check("deps reinstall", False, f"could not check out the source: {exc}"))
                else:
                    checks.append(check_deps_reinstall(Path(tmp) / "tree", manifest))
    # Remember a checkpoint that is signed and consistent, whatever else failed: it is
    # what the next run proves append-only growth against.
    if storable and any(c.name == "checkpoint signature" and c.ok for c in checks):
        remember(url, cp, cache_dir)
    return checks


def run(args: argparse.Namespace) -> int:
    collateral = None
    if args.collateral:
        try:
            collateral = Path(args.collateral).read_text()
        except OSError as exc:
            print(f"tee-daemon verify: cannot read --collateral {args.collateral}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    checks = verify(
        args.url,
        args.name,
        source=args.source,
        collateral=collateral,
        now=args.now,
        allow_simulated=args.allow_simulated,
        allow_unpinned=args.allow_unpinned,
        deps=args.deps,
        compose=args.compose,
    )
    for c in checks:
        print(c.line())
    failed = [c for c in checks if not c.ok]
    if failed:
        print(f"{len(failed)} of {len(checks)} checks FAILED: {', '.join(c.name for c in failed)}")
        return EXIT_UNREACHABLE if checks[0].name == "fetch" and not checks[0].ok else EXIT_FAILED
    print(f"all {len(checks)} checks passed: {args.name} at {args.url}")
    return EXIT_OK


def add_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("verify", help="verify an attested project end to end")
    p.add_argument("url", metavar="URL", help="the daemon, e.g. https://host:8080")
    p.add_argument("name", metavar="NAME", help="the attested project")
    p.add_argument("--source", metavar="DIR_OR_GIT_URL", help="recompute the tree hash from this source")
    p.add_argument("--collateral", metavar="FILE", help="dcap-qvl collateral JSON: verify the quote offline")
    p.add_argument("--now", type=int, metavar="EPOCH", help="verification time (with --collateral)")
    p.add_argument("--allow-simulated", action="store_true", help="accept a simulated TEE (testing only)")
    p.add_argument("--allow-unpinned", action="store_true",
                   help="accept a project whose dependencies are not fixed by a lockfile with hashes")
    p.add_argument("--deps", action="store_true",
                   help="reinstall the lockfile of --source with the same toolchain and compare deps_tree_sha256")
    p.add_argument("--compose", metavar="FILE",
                   help="an app-compose file you trust: its SHA-256 must be the event log's compose-hash")
    p.set_defaults(func=run)
