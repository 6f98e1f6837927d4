"""Errors of the domain operations: the CLI, the dashboard and the API turn them into a
one-line message or a status code, never a traceback."""

from __future__ import annotations


class DomainError(ValueError):
    """An operation refused for a reason its caller can act on, said in one line."""


class Invalid(DomainError):
    """A value given is malformed (not a token id, not NAME=UPSTREAM@PORT)."""


class NotFound(DomainError):
    """What the operation names does not exist (an organisation, a token)."""


class Conflict(DomainError):
    """The operation would clash with what exists (a name or login already taken)."""


class Forbidden(DomainError):
    """The caller's role does not allow the operation (a viewer creating a token)."""


class RateLimited(DomainError):
    """Too many attempts: try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
