"""The admin token (SPEC section 2): never empty, never logged, never fail-open."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from tee_daemon.state.store import atomic_write

TOKEN_FILE = "admin-token"


def load_or_create_token(data_dir: Path, configured: str | None) -> tuple[str, Path | None]:
    """The token to require, and the file it lives in (None when set by environment).

    An empty configured value or an empty file counts as absent: a new token is
    generated rather than auth being switched off.
    """
    if configured and configured.strip():
        return configured.strip(), None
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            os.chmod(path, 0o600)  # Repair loose permissions rather than refuse to start.
            return token, path
    token = secrets.token_urlsafe(32)
    atomic_write(path, (token + "\n").encode(), mode=0o600)
    return token, path


def bearer_matches(header: str | None, token: str) -> bool:
    if not header or not token:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False
    # Constant-time comparison: the token must not leak through timing.
    return hmac.compare_digest(value.strip().encode(), token.encode())
