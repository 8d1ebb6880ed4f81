"""Signed checkpoints of the transparency log (SPEC section 6).

The signed body is the C2SP tlog-checkpoint body, "<origin>\\n<size>\\n<base64 root>\\n",
so log tooling that speaks C2SP can read it; the signature is a bare Ed25519 signature
over those bytes (not a C2SP signed-note line), published base64 beside the body. The key
comes from the TEE (tee.Tee.derive_signing_key): the same on every restart, bound into
every quote's report_data, so a checkpoint is vouched for by the attested machine.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CHECKPOINT_FIELDS = (
    "origin", "size", "root", "note", "signature", "public_key", "key_signature_chain", "tee",
)


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    # C2SP: the origin is one line of printable text, the size a decimal integer.
    if not origin or "\n" in origin or not origin.isprintable():
        raise ValueError("checkpoint origin must be one non-empty printable line")
    if type(size) is not int or size < 0 or len(root) != 32:
        raise ValueError("checkpoint needs a size >= 0 and a 32-byte root")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def sign_checkpoint(
    origin: str,
    size: int,
    root: bytes,
    key: Ed25519PrivateKey,
    key_signature_chain: list[str],
    tee: str,
) -> dict[str, Any]:
    note = checkpoint_body(origin, size, root)
    return {
        "origin": origin,
        "size": size,
        "root": root.hex(),
        "note": note,
        "signature": base64.b64encode(key.sign(note.encode("utf-8"))).decode(),
        "public_key": public_key_hex(key),
        "key_signature_chain": list(key_signature_chain),
        "tee": tee,
    }


def verify_checkpoint(cp: dict[str, Any], public_key: str | None = None) -> bool:
    """The note matches origin/size/root and its signature verifies under `public_key`.

    With `public_key` (hex) given, the checkpoint must also be signed by that key (e.g. the
    one the quote's preimage names); otherwise only self-consistency is checked. The
    dstack key_signature_chain is not checked here: it needs the KMS root of trust.
    """
    try:
        if set(CHECKPOINT_FIELDS) - set(cp):
            return False
        root = bytes.fromhex(cp["root"])
        if cp["note"] != checkpoint_body(cp["origin"], cp["size"], root):
            return False
        if public_key is not None and public_key.lower() != str(cp["public_key"]).lower():
            return False
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(cp["public_key"]))
        sig = base64.b64decode(cp["signature"], validate=True)
        if len(sig) != 64:
            return False
        pub.verify(sig, cp["note"].encode("utf-8"))
        return True
    except (InvalidSignature, ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        return False
