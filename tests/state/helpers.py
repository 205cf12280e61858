"""Shared helpers for the state model tests."""

from __future__ import annotations

from typing import Any

import orjson

from mesh.state.model import HanaState


def cmd(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def state_of(hs: HanaState) -> dict[str, Any]:
    """The snapshot without applied_index (which moves on every entry, rejected or not)."""
    doc = orjson.loads(hs.snapshot())
    doc.pop("applied_index")
    return doc


def values(hs: HanaState, prefix: str = "") -> dict[str, Any]:
    return {k: kv.value for k, kv in hs.range(prefix)}


class Driver:
    """Applies commands with increasing log index and time (ms)."""

    def __init__(self, hs: HanaState | None = None, node: str = "n1", start: int = 1_714_564_800_000) -> None:
        self.hs = hs if hs is not None else HanaState()
        self.index = 0
        self.time = start
        self.node = node
        self.log: list[bytes] = []

    def __call__(self, op: str, author: str = "alice", **fields: Any) -> dict[str, Any]:
        self.index += 1
        self.time += 1
        fields.setdefault("node", self.node)
        fields.setdefault("time", self.time)
        data = cmd(op=op, author=author, **fields)
        self.log.append(data)
        return self.hs.apply(self.index, data)
