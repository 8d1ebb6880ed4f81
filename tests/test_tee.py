"""The built-in TEE simulator, reached through dstack-sdk like the real guest agent."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import dcap_qvl
import pytest
from dstack_sdk import DstackClient

from tee_daemon.trust import tee as tee_mod
from tee_daemon.trust.checkpoint import public_key_hex, sign_checkpoint, verify_checkpoint
from tee_daemon.trust.quote import verify_quote
from tee_daemon.trust.simulator import TeeSimulator, replay_rtmr

RD = bytes(range(64))


def test_quote_carries_report_data(tmp_path: Path) -> None:
    with TeeSimulator(tmp_path) as sim:
        resp = DstackClient(sim.endpoint).get_quote(RD)
        quote = bytes.fromhex(resp.quote)
        assert dcap_qvl.parse_quote(quote).report.report_data == RD
        assert quote[568:632] == RD
        # Same shape as the agent's answer: the event log replays to the quote's RTMR3.
        events = json.loads(resp.event_log)
        assert [e["event"] for e in events][:2] == ["system-preparing", "app-id"]
        assert dcap_qvl.parse_quote(quote).report.rt_mr3 == replay_rtmr(events)
        assert bytes.fromhex(resp.replay_rtmrs()[3]) == replay_rtmr(events)
        # Well-formed but not genuine: the signature does not cover the patched bytes.
        collateral = (Path(__file__).parent / "fixtures/tdx/tdx_quote_collateral.json").read_text()
        check = verify_quote(quote, collateral, 1750377600)
        assert not check.ok and check.report_data == RD
        # Shorter report_data is zero-padded, as the agent does.
        short = DstackClient(sim.endpoint).get_quote(b"abc")
        assert bytes.fromhex(short.quote)[568:632] == b"abc" + bytes(61)


def test_keys_stable_across_restarts_and_distinct_per_path(tmp_path: Path) -> None:
    with TeeSimulator(tmp_path) as sim:
        a = DstackClient(sim.endpoint).get_key("tee-daemon/log-signing")
        b = DstackClient(sim.endpoint).get_key("other/path")
    with TeeSimulator(tmp_path) as sim:
        again = DstackClient(sim.endpoint).get_key("tee-daemon/log-signing")
    with TeeSimulator(tmp_path / "elsewhere") as sim:
        foreign = DstackClient(sim.endpoint).get_key("tee-daemon/log-signing")
    assert a.key == again.key and a.signature_chain == again.signature_chain
    assert len(a.decode_key()) == 32 and len(a.signature_chain) == 2
    assert a.key != b.key
    assert a.key != foreign.key
    secret = tmp_path / "tee-simulator" / "root-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_info_and_events_through_sdk(tmp_path: Path) -> None:
    with TeeSimulator(tmp_path) as sim:
        client = DstackClient(sim.endpoint)
        info = client.info()
        assert info.app_name == "tee-daemon-simulator"
        before = info.tcb_info.rtmr3
        client.emit_event("custom", b"payload")
        after = client.info()
        assert after.tcb_info.rtmr3 != before
        assert after.tcb_info.event_log[-1].event == "custom"
        q = client.get_quote(RD)
        assert q.replay_rtmrs()[3] == after.tcb_info.rtmr3


def test_long_data_dir_still_gets_a_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with TeeSimulator(deep) as sim:
        assert len(sim.endpoint) < 108
        assert DstackClient(sim.endpoint).get_key("x").key
    assert (deep / "tee-simulator" / "root-secret").exists()


@pytest.fixture
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSTACK_SIMULATOR_ENDPOINT", raising=False)
    monkeypatch.setattr(tee_mod, "AGENT_SOCKETS", ())


def test_connect_tee_falls_back_to_simulator(tmp_path: Path, no_agent: None) -> None:
    t = tee_mod.connect_tee(tmp_path)
    try:
        assert t.mode == "simulated"
        assert os.environ["DSTACK_SIMULATOR_ENDPOINT"] == t.endpoint
        quote_hex, event_log = t.get_quote(RD)
        assert bytes.fromhex(quote_hex)[568:632] == RD and json.loads(event_log)
        key, chain = t.derive_signing_key()
        assert t.derive_signing_key()[0] is key
        info = t.info()
        assert info["tee"] == "simulated" and "app_id" in info
        assert not any("key" == k or "secret" in k for k in info)
        cp = sign_checkpoint("test/log", 0, bytes(32), key, chain, t.mode)
        assert verify_checkpoint(cp)
        with pytest.raises(ValueError):
            t.get_quote(b"short")
    finally:
        t.close()
    assert "DSTACK_SIMULATOR_ENDPOINT" not in os.environ

    # A restart derives the same checkpoint key: it must be stable, not random.
    t2 = tee_mod.connect_tee(tmp_path)
    try:
        assert public_key_hex(t2.derive_signing_key()[0]) == public_key_hex(key)
        assert public_key_hex(t2.derive_signing_key("another")[0]) != public_key_hex(key)
    finally:
        t2.close()


def test_operator_endpoint_is_used(tmp_path: Path, no_agent: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with TeeSimulator(tmp_path / "external") as sim:
        monkeypatch.setenv("DSTACK_SIMULATOR_ENDPOINT", sim.endpoint)
        t = tee_mod.connect_tee(tmp_path)
        assert t.endpoint == sim.endpoint and t.mode == "simulated"
        assert t.get_quote(RD)[0]
        t.close()
        assert os.environ["DSTACK_SIMULATOR_ENDPOINT"] == sim.endpoint  # not ours to remove
    monkeypatch.setenv("DSTACK_SIMULATOR_ENDPOINT", str(tmp_path / "nothing.sock"))
    with pytest.raises((RuntimeError, FileNotFoundError)):
        tee_mod.connect_tee(tmp_path)


def test_bad_requests_are_4xx(tmp_path: Path) -> None:
    import httpx

    with TeeSimulator(tmp_path) as sim:
        with httpx.Client(transport=httpx.HTTPTransport(uds=sim.endpoint), base_url="http://x") as c:
            assert c.post("/GetQuote", json={"report_data": "00" * 65}).status_code == 400
            assert c.post("/GetQuote", content=b"not json").status_code == 400
            assert c.post("/GetKey", json={"path": "p", "algorithm": "rsa"}).status_code == 400
            assert c.post("/Nope", json={}).status_code == 404
            assert c.post("/prpc/GetKey?json", json={"path": "p"}).status_code == 200


def test_end_to_end_binding(tmp_path: Path, no_agent: None) -> None:
    """Log -> signed checkpoint -> preimage -> quote: what a verifier recomputes, holds."""
    from tee_daemon.trust import binding, merkle
    from tee_daemon.trust.quote import quote_report_data
    from tee_daemon.trust.translog import TransparencyLog

    log = TransparencyLog(tmp_path / "log.jsonl").open()
    entry = log.append({
        "project": "demo", "action": "promote", "version": 1, "source": "upload", "ref": None,
        "commit": None, "tree_sha1": "11" * 20, "tree_sha256": "22" * 32, "runtime": "static",
        "manifest_sha256": "33" * 32, "secret_names": [],
        "command": None, "image": None, "port": None, "toolchain": {}, "lock_sha256": None, "deps_tree_sha256": None, "pinned": True,
    })
    t = tee_mod.connect_tee(tmp_path)
    try:
        key, chain = t.derive_signing_key()
        cp = sign_checkpoint("tee-daemon/test", log.size, log.root(), key, chain, t.mode)
        pre = binding.report_data_preimage(
            "demo", "22" * 32, "33" * 32, cp["size"], cp["root"], cp["public_key"], "abcd"
        )
        quote_hex, _ = t.get_quote(binding.report_data(pre))
    finally:
        t.close()
    fields = binding.parse_preimage(pre)
    assert quote_report_data(bytes.fromhex(quote_hex)) == binding.report_data(pre)
    assert verify_checkpoint(cp, public_key=fields["log_public_key"])
    assert fields["log_root"] == cp["root"] and fields["log_size"] == cp["size"]
    proof = log.inclusion_proof(entry.index, cp["size"])
    assert merkle.verify_inclusion(
        entry.index, cp["size"], merkle.leaf_hash(entry.leaf.encode()), proof, bytes.fromhex(cp["root"])
    )
