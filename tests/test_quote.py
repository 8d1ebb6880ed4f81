"""Quote verification against a genuine TDX quote, and the report_data binding."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tee_daemon.trust import binding
from tee_daemon.trust.quote import REPORT_DATA_OFFSET, quote_report_data, verify_quote

FIX = Path(__file__).parent / "fixtures" / "tdx"
QUOTE = (FIX / "tdx_quote").read_bytes()
COLLATERAL = (FIX / "tdx_quote_collateral.json").read_text()
NOW = 1750377600  # 2025-06-20T00:00:00Z, inside the collateral's validity


def test_genuine_quote_up_to_date() -> None:
    check = verify_quote(QUOTE, COLLATERAL, NOW)
    assert check.ok, check.detail
    assert check.status == "UpToDate"
    assert check.report_data == QUOTE[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + 64]


def test_report_data_extraction_matches_offset() -> None:
    assert quote_report_data(QUOTE) == QUOTE[568:632]
    patched = QUOTE[:568] + bytes(range(64)) + QUOTE[632:]
    assert quote_report_data(patched) == bytes(range(64))


# Header, TD report, report_data, quote signature, QE report, a PCK certificate byte.
# (Not PEM whitespace or the zero padding at the end: no parser reads those.)
@pytest.mark.parametrize("offset", [10, 300, 568, 631, 640, 700, 1000, 2001])
def test_flipped_byte_fails(offset: int) -> None:
    bad = bytearray(QUOTE)
    bad[offset] ^= 0x01
    check = verify_quote(bytes(bad), COLLATERAL, NOW)
    assert not check.ok
    assert check.status in {"Invalid", "ParseError"}


def test_expired_collateral_fails() -> None:
    check = verify_quote(QUOTE, COLLATERAL, 2_000_000_000)
    assert not check.ok and check.status == "Invalid"
    assert "Expired" in check.detail


def test_garbage_and_bad_collateral() -> None:
    assert verify_quote(b"not a quote", COLLATERAL, NOW).status == "ParseError"
    check = verify_quote(QUOTE, "{}", NOW)
    assert not check.ok and check.status == "CollateralUnavailable"


def test_no_collateral_offline_is_a_clear_failure() -> None:
    # Nothing listens on this port: the fetch fails fast and the message says what to do.
    check = verify_quote(QUOTE, None, NOW, pccs_url="http://127.0.0.1:9")
    assert not check.ok and check.status == "CollateralUnavailable"
    assert "--collateral" in check.detail
    assert check.report_data == QUOTE[568:632]


def test_preimage_and_report_data() -> None:
    pre = binding.report_data_preimage(
        "demo", "aa" * 32, "bb" * 32, 3, "cc" * 32, "DD" * 32, "00FF"
    )
    fields = json.loads(pre)
    assert fields == {
        "v": "tee-daemon/1",
        "project": "demo",
        "tree_sha256": "aa" * 32,
        "manifest_sha256": "bb" * 32,
        "log_size": 3,
        "log_root": "cc" * 32,
        "log_public_key": "dd" * 32,
        "nonce": "00ff",
    }
    assert pre == json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert binding.report_data(pre) == hashlib.sha512(pre.encode()).digest()
    assert len(binding.report_data(pre)) == 64
    assert binding.parse_preimage(pre) == fields
    no_nonce = binding.report_data_preimage("demo", "aa" * 32, "bb" * 32, 0, "cc" * 32, "dd" * 32, None)
    assert json.loads(no_nonce)["nonce"] is None


@pytest.mark.parametrize(
    "args",
    [
        ("demo", "zz" * 32, "bb" * 32, 3, "cc" * 32, "dd" * 32, None),
        ("demo", "aa" * 31, "bb" * 32, 3, "cc" * 32, "dd" * 32, None),
        ("demo", "aa" * 32, "bb" * 32, -1, "cc" * 32, "dd" * 32, None),
        ("demo", "aa" * 32, "bb" * 32, 3, "cc" * 32, "dd" * 32, "abc"),
        ("demo", "aa" * 32, "bb" * 32, 3, "cc" * 32, "dd" * 32, ""),
        ("demo", "aa" * 32, "bb" * 32, 3, "cc" * 32, "dd" * 32, "00" * 65),
    ],
)
def test_preimage_rejects_bad_fields(args: tuple) -> None:
    with pytest.raises(ValueError):
        binding.report_data_preimage(*args)


def test_parse_preimage_rejects_other_shapes() -> None:
    pre = binding.report_data_preimage("demo", "aa" * 32, "bb" * 32, 1, "cc" * 32, "dd" * 32, None)
    with pytest.raises(ValueError):
        binding.parse_preimage(pre.replace("tee-daemon/1", "tee-daemon/2"))
    with pytest.raises(ValueError):
        binding.parse_preimage(json.dumps(json.loads(pre), indent=1))
    with pytest.raises(ValueError):
        binding.parse_preimage("[]")
