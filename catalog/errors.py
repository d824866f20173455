"""Domain errors: every message names what is wrong and what to do about it.

One place (`catalog.app` for HTTP, the CLI for exit codes) maps these to statuses, so
code raising them never builds an HTTP error by hand.
"""

from __future__ import annotations


class LandsurfError(Exception):
    """Base of every error a user can act on."""

    exit_code: int = 1
    http_status: int = 500

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}" + (f" — {fix}" if fix else ""))


class ConfigurationError(LandsurfError):
    """A setting is missing, malformed or contradicts the machine."""

    exit_code = 2


class DatabaseError(LandsurfError):
    """The catalog database cannot be used."""

    exit_code = 3
    http_status = 503


class DatabaseUnavailable(DatabaseError):
    """The database does not answer (down, wrong address, timed out)."""


class SchemaMismatch(DatabaseError):
    """The pgSTAC schema in the database is not the one this library speaks."""


class EmbeddedDatabaseError(DatabaseError):
    """The embedded PostgreSQL cluster cannot be initialised, started or stopped."""


class BadRequest(LandsurfError):
    """The request itself is wrong: a malformed or forbidden value."""

    exit_code = 2
    http_status = 400


class LimitExceeded(BadRequest):
    """A size-like input is over its documented maximum (docs/operations.md, "Limits")."""


class PayloadTooLarge(LimitExceeded):
    """The request body is over its maximum."""

    http_status = 413


class Busy(LandsurfError):
    """Every slot for this kind of work is taken: retry shortly."""

    http_status = 503


class NotFound(LandsurfError):
    """A named object (collection, item, file) does not exist."""

    exit_code = 4
    http_status = 404


class Unauthorized(LandsurfError):
    """No valid credential was given."""

    http_status = 401


class Forbidden(LandsurfError):
    """The credential is valid but its role does not allow the action."""

    http_status = 403


class StoreError(LandsurfError):
    """The asset store cannot be read or written."""

    exit_code = 5
