"""Signed C2SP checkpoints over the log."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tee_daemon.trust.checkpoint import checkpoint_body, public_key_hex, sign_checkpoint, verify_checkpoint
from tee_daemon.trust.merkle import EMPTY_ROOT

ROOT = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")


def make() -> tuple[dict, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    return sign_checkpoint("tee-daemon.example/log", 8, ROOT, key, ["ab" * 65], "simulated"), key


def test_shape_and_body() -> None:
    cp, key = make()
    assert set(cp) == {
        "origin", "size", "root", "note", "signature", "public_key", "key_signature_chain", "tee",
    }
    assert cp["note"] == "tee-daemon.example/log\n8\nXcnaeacGWamtVZy3Ad7Zoqudgjqt" \
        "L0lgz+Nw7/RgQyg=\n"
    assert cp["root"] == ROOT.hex() and cp["public_key"] == public_key_hex(key)
    assert len(base64.b64decode(cp["signature"])) == 64
    assert verify_checkpoint(cp)
    assert verify_checkpoint(cp, public_key=cp["public_key"])
    assert checkpoint_body("o", 0, EMPTY_ROOT).startswith("o\n0\n47DEQpj8")


def test_tampering_fails() -> None:
    cp, _ = make()
    assert not verify_checkpoint({**cp, "size": 9})
    assert not verify_checkpoint({**cp, "root": EMPTY_ROOT.hex()})
    assert not verify_checkpoint({**cp, "origin": "other"})
    other = Ed25519PrivateKey.generate()
    assert not verify_checkpoint({**cp, "public_key": public_key_hex(other)})
    assert not verify_checkpoint(cp, public_key=public_key_hex(other))
    sig = bytearray(base64.b64decode(cp["signature"]))
    sig[0] ^= 1
    assert not verify_checkpoint({**cp, "signature": base64.b64encode(bytes(sig)).decode()})
    assert not verify_checkpoint({**cp, "signature": "!!"})
    assert not verify_checkpoint({k: v for k, v in cp.items() if k != "note"})
    assert not verify_checkpoint({**cp, "root": "zz"})
