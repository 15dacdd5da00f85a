"""The error hierarchy of the enforcement layer.

Every error carries a ``status`` hint so that an HTTP edge can turn it into a
4xx with a JSON reason without knowing the concrete class, and a CLI can turn
it into an exit code. Errors never carry tracebacks to clients.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "HiveError",
    "NotFound",
    "PayloadTooLarge",
    "TooManyOpen",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
]


class HiveError(Exception):
    """Base of every error hive-boundary raises on purpose."""

    status: int = 500
    code: str = "internal"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def to_json(self) -> dict[str, object]:
        """The body a client sees: a stable code and a human reason."""
        return {"error": self.code, "reason": self.reason}


class BadRequest(HiveError):
    """The request is malformed: bad JSON, wrong types, unknown fields, bad path."""

    status = 400
    code = "bad_request"


class Unauthorized(HiveError):
    """No authenticated principal where one is needed."""

    status = 401
    code = "unauthorized"


class Forbidden(HiveError):
    """The policy (or a transport check) denies this request."""

    status = 403
    code = "forbidden"


class NotFound(HiveError):
    """No such agent, question, approval, file or route."""

    status = 404
    code = "not_found"


class Conflict(HiveError):
    """The request conflicts with current state (already answered, exists)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(HiveError):
    """A body, file or header over its limit."""

    status = 413
    code = "too_large"


class UnsupportedMediaType(HiveError):
    """A body in an encoding the API does not take (a ``Content-Encoding``)."""

    status = 415
    code = "unsupported_media_type"


class TooManyOpen(HiveError):
    """An agent already has as many open questions (or pending approvals) as it may."""

    status = 429
    code = "too_many_open"


class Unavailable(HiveError):
    """A dependency (core, disk, hive-priv) is down; try again later."""

    status = 503
    code = "unavailable"
