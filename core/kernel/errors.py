"""Errors that become clear 4xx JSON answers.

Anything raised as a `UserError` (or subclass) is the requester's mistake and is shown
to them verbatim, so its message must never contain a secret value or a token.
"""

from __future__ import annotations

import html
import json


class UserError(Exception):
    """A refused request: `status_code` and a message that says what was wrong."""

    status_code = 400

    def __init__(self, detail: str, status_code: int | None = None, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
        self.extra = extra


class SourceError(UserError):
    """The source (git repository or tarball) cannot be used."""


class NotFound(UserError):
    status_code = 404


class Conflict(UserError):
    status_code = 409


class DeployFailed(UserError):
    """The new version did not build or start; the previous one keeps serving."""

    status_code = 422

    @classmethod
    def with_log(cls, message: str, output: str) -> "DeployFailed":
        """The failure, followed by the project's last log lines (also under `log`)."""
        if output:
            message += f"; last log lines:\n{output}"
        return cls(message, log=output)


# Refusals the daemon gives outside its API app (the proxy, the router): on a project's
# path or host, so the page stands alone (no daemon assets) and runs nothing.
_PAGE_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-security-policy", b"default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def error_body(status: int, detail: str, **extra: object) -> dict[str, object]:
    """The SPEC's JSON error body (section 3): every refusal the daemon gives, from the
    API, the router or the proxy, is built here."""
    return {"status_code": status, "detail": detail, **extra}


def wants_html(headers) -> bool:
    """A browser's navigation: HTML asked for and JSON not (ASGI header pairs)."""
    for name, value in headers:
        if name == b"accept":
            return b"text/html" in value and b"application/json" not in value
    return False


def error_answer(scope, status: int, detail: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(headers, body) of a refusal: JSON, or a small escaped HTML page for a browser."""
    if wants_html(scope.get("headers") or ()):
        text = html.escape(detail, quote=True)
        body = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{status}</title></head>'
            f"<body><h1>{status}</h1><p>{text}</p></body></html>"
        ).encode()
        return [*_PAGE_HEADERS, (b"content-length", str(len(body)).encode())], body
    body = json.dumps(error_body(status, detail)).encode()
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body
