"""Rejections: `StateError` (a `CommandError` with extra fields for the error
object), the HTTP status of every code, and the result a rejection becomes.

A rejected command changes nothing and answers
`{"error": {"code", "message", ...extra}}` on every node alike.
"""

from __future__ import annotations

from typing import Any

from mesh.state.kv import CommandError
from mesh.state.values import clip

ERROR_STATUS: dict[str, int] = {
    # 400: the command itself is wrong, whatever the state.
    "invalid_command": 400,
    "invalid_key": 400,
    "invalid_value": 400,
    "unknown_component": 400,
    "too_deep": 400,
    "invalid_save": 400,
    "checksum_mismatch": 400,
    "unsupported_schema_version": 400,
    # 403: the command's role may not do this.
    "forbidden": 403,
    # A join token spent, expired or unknown; a key not approved; a revoked serial (mesh/state/trust.py).
    "join_refused": 403,
    # 404, 409, 410: against the current state.
    "not_found": 404,
    "version_conflict": 409,
    "undo_conflict": 409,
    "nothing_to_undo": 409,
    "nothing_to_redo": 409,
    "save_exists": 409,
    "conflict_kept": 409,
    "conflict_resolved": 409,
    "compacted": 410,
    # 413: too big.
    "too_large": 413,
    "save_too_large": 413,
    "too_many_saves": 413,
    # 500: an entry the state machine could not apply (a bug); every node
    # rejected it the same way and nothing changed.
    "apply_failed": 500,
}


class StateError(CommandError):
    """A rejected command, with extra fields for the error object."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(code, message)
        self.extra = extra


def error_result(exc: CommandError) -> dict[str, Any]:
    """The result of a rejected command: message and text extras cut short
    (results are remembered and travel in snapshots)."""
    err: dict[str, Any] = {"code": exc.code, "message": clip(str(exc))}
    for name, value in getattr(exc, "extra", {}).items():
        err[name] = clip(value) if isinstance(value, str) else value
    return {"error": err}


def err(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": clip(message)}}
