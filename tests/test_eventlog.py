"""The event log checks of `tee-daemon verify` (SPEC 8): RTMR3 replay, event digests and
the app identity, against the built-in simulator, doctored logs and dstack's own fixture."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tee_daemon.trust import eventlog
from tee_daemon.cli import verify as v

FIX = Path(__file__).parent / "fixtures"
NONCE = "ab" * 16


def _scale_fixture() -> tuple[bytes, list[dict[str, Any]]]:
    """(quote, event log) of dstack's simulator attestation.bin.

    SCALE-encoded: two enum tags, the quote as Vec<u8>, then Vec<TdxEvent> with
    TdxEvent = {imr: u32, event_type: u32, digest: Vec<u8>, event: String, payload: Vec<u8>}.
    What follows (the runtime events again, unhashed) is not needed here.
    """
    raw = (FIX / "dstack-simulator" / "attestation.bin").read_bytes()
    pos = 2

    def compact() -> int:
        nonlocal pos
        mode = raw[pos] & 3
        if mode == 3:
            raise ValueError("big compact integers do not occur in this fixture")
        width = (1, 2, 4)[mode]
        value = int.from_bytes(raw[pos : pos + width], "little") >> 2
        pos += width
        return value

    def blob() -> bytes:
        nonlocal pos
        n = compact()
        pos += n
        return raw[pos - n : pos]

    def u32() -> int:
        nonlocal pos
        pos += 4
        return int.from_bytes(raw[pos - 4 : pos], "little")

    quote = blob()
    events = []
    for _ in range(compact()):
        imr, event_type, digest = u32(), u32(), blob()
        events.append({"imr": imr, "event_type": event_type, "digest": digest.hex(),
                       "event": blob().decode(), "event_payload": blob().hex()})  # fmt: skip
    return quote, events


def by_name(checks: list[v.Check]) -> dict[str, v.Check]:
    return {c.name: c for c in checks}


# -- dstack's own fixture -----------------------------------------------------------------


def test_dstack_fixture_replays_to_its_rtmr3() -> None:
    quote, events = _scale_fixture()
    att = {"quote": quote.hex(), "event_log": json.dumps(events)}
    got = by_name(v.check_event_log(att, {}))
    assert all(c.ok for c in got.values()), got
    rtmr3 = eventlog.quote_rtmr3(quote).hex()
    assert rtmr3 in got["rtmr3 replay"].detail and "9 IMR-3 events" in got["rtmr3 replay"].detail
    assert got["compose-hash"].detail.startswith("c143116fef3940e7f776bfc0919c256232ae5338a6e948c96b711e0b2383483a")
    assert got["app-id"].detail.startswith("5bb4ff9a3837357f19dc176407a5709c62eb6c56")
    # Events of other registers (boot-time, not recomputable) are not judged by the digest check.
    assert any(e["imr"] != 3 for e in events)
    # Cross-checked against a tee_info that agrees, and one that does not.
    agree = by_name(v.check_event_log(att, {"compose_hash": "C143116FEF3940E7F776BFC0919C256232AE5338A6E948C96B711E0B2383483A"}))
    assert agree["compose-hash"].ok and "== tee_info compose_hash" in agree["compose-hash"].detail
    other = by_name(v.check_event_log(att, {"compose_hash": "00" * 32}))
    assert not other["compose-hash"].ok


def test_v2_digests_are_recomputed() -> None:
    e = eventlog.Event(3, eventlog.RUNTIME_EVENT_TYPE, b"", "compose-hash", b"\xab\xcd", 2)
    canonical = b'{"event":"compose-hash","event_type":134217729,"payload":"abcd","version":2}'
    import hashlib

    assert hashlib.sha384(canonical).digest() in eventlog.expected_digests(e)
    assert eventlog.expected_digests(eventlog.Event(3, 1, b"", "x", b"", 1)) == []


# -- against the daemon and its simulator --------------------------------------------------


@pytest.fixture(scope="module")
def attested(daemon) -> str:
    name = "eventlog-site"
    assert daemon.deploy_files(name, {"index.html": "measured"}).status_code == 201
    with daemon.client() as c:
        assert c.post(f"/_api/projects/{name}/promote").status_code == 200
    return name


@pytest.fixture
def bundle(daemon, attested) -> dict:
    return daemon.get(f"/_api/verification/{attested}", params={"nonce": NONCE}).json()


def run(daemon, name: str, bundle: dict, tmp_path: Path) -> dict[str, v.Check]:
    checks = v.verify(
        daemon.url, name, bundle=bundle, nonce=NONCE, allow_simulated=True,
        get=v.http_getter(daemon.url), cache_dir=tmp_path / "cache",
    )  # fmt: skip
    return by_name(checks)


def test_live_simulator_passes(daemon, attested, bundle, tmp_path) -> None:
    got = run(daemon, attested, bundle, tmp_path)
    assert all(c.ok for c in got.values()), [c.line() for c in got.values() if not c.ok]
    for name in ("rtmr3 replay", "event digests", "app-id", "compose-hash", "instance-id"):
        assert name in got
    tee_info = daemon.get("/_api/substrate").json()["tee_info"]
    assert got["compose-hash"].detail.startswith(tee_info["compose_hash"])
    assert "== tee_info compose_hash" in got["compose-hash"].detail
    assert tee_info["rtmr3"] in got["rtmr3 replay"].detail


def _edit_log(bundle: dict, edit) -> dict:
    doctored = copy.deepcopy(bundle)
    events = json.loads(doctored["attestation"]["event_log"])
    edit(events)
    doctored["attestation"]["event_log"] = json.dumps(events)
    return doctored


def _flip_digest(events: list[dict]) -> None:
    e = next(e for e in events if e["event"] == "compose-hash")
    e["digest"] = f"{int(e['digest'][:2], 16) ^ 1:02x}" + e["digest"][2:]


def _other_compose_hash(events: list[dict]) -> None:
    # A forged payload with its digest recomputed: the digests agree, the replay does not.
    e = next(e for e in events if e["event"] == "compose-hash")
    forged = eventlog.Event(3, e["event_type"], b"", "compose-hash", b"\x11" * 32, 1)
    e["event_payload"] = forged.payload.hex()
    e["digest"] = eventlog.expected_digests(forged)[0].hex()


def _drop(events: list[dict]) -> None:
    events.remove(next(e for e in events if e["event"] == "instance-id"))


def _duplicate(events: list[dict]) -> None:
    events.append(dict(next(e for e in events if e["event"] == "app-id")))


@pytest.mark.parametrize(
    "edit, failing",
    [
        (_flip_digest, {"rtmr3 replay", "event digests"}),
        # The published app-compose no longer hashes to the (forged) compose-hash either.
        (_other_compose_hash, {"rtmr3 replay", "compose-hash", "app_compose"}),
        (_drop, {"rtmr3 replay", "instance-id"}),
        (_duplicate, {"rtmr3 replay", "app-id"}),
    ],
    ids=["flipped-digest", "forged-payload", "event-removed", "event-repeated"],
)
def test_doctored_event_log_fails(daemon, attested, bundle, tmp_path, edit, failing) -> None:
    got = run(daemon, attested, _edit_log(bundle, edit), tmp_path)
    failed = {n for n, c in got.items() if not c.ok}
    assert failing <= failed, (failing, failed)
    # Nothing else the event log does not touch fails.
    assert failed <= {"rtmr3 replay", "event digests", "app-id", "compose-hash", "instance-id", "app_compose"}


def test_missing_or_garbled_event_log_fails(daemon, attested, bundle, tmp_path) -> None:
    for value in (None, "not json", json.dumps({"imr": 3}), json.dumps([{"imr": 3, "digest": "zz"}])):
        doctored = copy.deepcopy(bundle)
        doctored["attestation"]["event_log"] = value
        got = run(daemon, attested, doctored, tmp_path)
        assert not got["event log"].ok, value


def test_cli_prints_the_lines(daemon, attested, tmp_path) -> None:
    from test_verify import cli, lines

    r = cli(daemon.url, attested, "--allow-simulated", cache=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    got = lines(r.stdout)
    for name in ("rtmr3 replay", "event digests", "app-id", "compose-hash", "instance-id"):
        assert got[name] == "PASS", r.stdout
