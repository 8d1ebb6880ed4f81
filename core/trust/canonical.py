"""Canonical JSON: the one encoding that is hashed, signed or compared byte for byte.

Sorted keys, no whitespace, UTF-8 (non-ASCII kept as is). Used for manifest_sha256,
transparency-log leaves and the quote's report_data preimage (SPEC sections 5 to 7).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
