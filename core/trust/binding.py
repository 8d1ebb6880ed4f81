"""What a quote's 64-byte report_data commits to (SPEC section 7).

report_data = SHA-512(preimage), where the preimage is the canonical JSON of the project's
code identity, the log head and the checkpoint signing key. The preimage is published
verbatim next to each quote, so a verifier needs no knowledge of this encoding beyond
"hash the string you were given and compare, then read the fields".
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from tee_daemon.trust.canonical import canonical_json

VERSION = "tee-daemon/1"
MAX_NONCE_BYTES = 64  # a verifier's challenge; anything longer is a request error
_HEX = re.compile(r"^(?:[0-9a-f]{2})*$")
PREIMAGE_FIELDS = (
    "v", "project", "tree_sha256", "manifest_sha256", "log_size", "log_root",
    "log_public_key", "nonce",
)


def _hex(name: str, value: str, length: int | None = None) -> str:
    if not isinstance(value, str) or not _HEX.match(value.lower()):
        raise ValueError(f"{name} must be a hex string")
    if length is not None and len(value) != 2 * length:
        raise ValueError(f"{name} must be {length} bytes of hex")
    return value.lower()


def normalize_nonce(nonce_hex: str | None) -> str | None:
    """Lower-case hex, 1..64 bytes, or None. ValueError (a 400) otherwise."""
    if nonce_hex is None:
        return None
    nonce = _hex("nonce", nonce_hex)
    if not 0 < len(nonce) <= 2 * MAX_NONCE_BYTES:
        raise ValueError(f"nonce must be 1 to {MAX_NONCE_BYTES} bytes of hex")
    return nonce


def report_data_preimage(
    project: str,
    tree_sha256: str,
    manifest_sha256: str,
    log_size: int,
    log_root_hex: str,
    log_public_key_hex: str,
    nonce_hex: str | None,
) -> str:
    if type(log_size) is not int or log_size < 0:
        raise ValueError("log_size must be a non-negative integer")
    fields: dict[str, Any] = {
        "v": VERSION,
        "project": project,
        "tree_sha256": _hex("tree_sha256", tree_sha256, 32),
        "manifest_sha256": _hex("manifest_sha256", manifest_sha256, 32),
        "log_size": log_size,
        "log_root": _hex("log_root", log_root_hex, 32),
        "log_public_key": _hex("log_public_key", log_public_key_hex, 32),
        "nonce": normalize_nonce(nonce_hex),
    }
    return canonical_json(fields).decode("utf-8")


def report_data(preimage: str) -> bytes:
    return hashlib.sha512(preimage.encode("utf-8")).digest()


def parse_preimage(preimage: str) -> dict[str, Any]:
    """For verifiers: the preimage's fields, refusing anything this version did not write."""
    try:
        fields = json.loads(preimage)
    except ValueError:
        raise ValueError("report_data_preimage is not JSON") from None
    if not isinstance(fields, dict) or set(fields) != set(PREIMAGE_FIELDS):
        raise ValueError("report_data_preimage does not have the tee-daemon/1 fields")
    if fields["v"] != VERSION:
        raise ValueError(f"report_data_preimage version {fields['v']!r} is not {VERSION}")
    if canonical_json(fields).decode("utf-8") != preimage:
        raise ValueError("report_data_preimage is not canonical JSON")
    return fields
