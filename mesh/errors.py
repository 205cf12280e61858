"""Errors the node answers clients with. Each maps to one HTTP status and a
snake_case code of the contract's error shape."""

from __future__ import annotations

from typing import Any


class MeshError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class BadRequest(MeshError):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, code: str = "bad_request", **extra: Any) -> None:
        super().__init__(message, **extra)
        self.code = code


class Unauthorized(MeshError):
    status = 401
    code = "unauthorized"


class Forbidden(MeshError):
    status = 403
    code = "forbidden"


class NotFound(MeshError):
    status = 404
    code = "not_found"


class Conflict(MeshError):
    status = 409
    code = "conflict"

    def __init__(self, message: str, code: str = "conflict", **extra: Any) -> None:
        super().__init__(message, **extra)
        self.code = code


class TooLarge(MeshError):
    status = 413
    code = "too_large"

    def __init__(self, message: str, code: str = "too_large", **extra: Any) -> None:
        super().__init__(message, **extra)
        self.code = code


class Gone(MeshError):
    """Asked for history that was compacted away."""

    status = 410
    code = "compacted"

    def __init__(self, message: str, code: str = "compacted", **extra: Any) -> None:
        super().__init__(message, **extra)
        self.code = code


class NoLeader(MeshError):
    status = 503
    code = "no_leader"


class NotLeader(MeshError):
    """An operation only the controller performs; `leader` names it."""

    status = 503
    code = "not_leader"


class NotReady(MeshError):
    status = 503
    code = "not_ready"


class Timeout(MeshError):
    """The outcome is unknown: the change may or may not have committed."""

    status = 504
    code = "timeout"
