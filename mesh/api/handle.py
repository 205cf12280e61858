"""What the API needs from a node: a narrow protocol, so handlers can be
tested against a fake and the node never imports aiohttp."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from mesh.state.kv import ChangeRecord
from mesh.state.model import HanaState


class NodeHandle(Protocol):
    node_id: str
    cluster: str

    @property
    def kv(self) -> HanaState:
        """The local replica of the state (read it after `read_barrier`)."""
        ...

    def status(self) -> dict[str, Any]:
        """The `GET /v1/status` document."""
        ...

    async def read_barrier(self, linearizable: bool) -> None:
        """Return once local state may serve a read of that consistency:
        for linearizable, after a ReadIndex round confirmed leadership and
        the state machine caught up (raises NoLeader / Timeout)."""
        ...

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        """Commit a state-machine command (forwarded to the controller if
        this node is not it) and return its result once applied here.
        Raises NoLeader (nothing committed) or Timeout (outcome unknown)."""
        ...

    def watch(self, prefix: str, since: int) -> AsyncIterator[ChangeRecord]:
        """Change records with revision >= since under prefix, in revision
        order, without gaps or duplicates, live. Raises Gone if `since` is
        older than the retained history."""
        ...

    def metrics_text(self) -> bytes:
        """Prometheus exposition text."""
        ...
