"""Routes of a node cut off from its controller (issue 14, shared/API.md "A
node cut off from the controller"): the outbox, conflicts, reset to
defaults, and the pending overlay of local reads."""

from __future__ import annotations

from typing import Any

from mesh.api.handle import NodeHandle


def overlay_key(node: NodeHandle, key: str, doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """A local read of `key` with this node's queued write of it, if any."""
    return doc


def overlay_items(node: NodeHandle, prefix: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A local prefix read with this node's queued writes under it."""
    return items
