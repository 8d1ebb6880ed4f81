"""Errors that become clear 4xx JSON answers.

Anything raised as a `UserError` (or subclass) is the requester's mistake and is shown
to them verbatim, so its message must never contain a secret value or a token.
"""

from __future__ import annotations


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
