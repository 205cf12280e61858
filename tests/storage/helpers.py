"""Shared helpers of the storage tests."""

from __future__ import annotations

from typing import Any

from mesh.raft.messages import Entry
from mesh.storage.disk import DiskStorage
from mesh.storage.memory import MemoryStorage

Store = DiskStorage | MemoryStorage


def dump(store: Store) -> dict[str, Any]:
    """Everything a store answers, for comparison."""
    first, last = store.first_index(), store.last_index()
    return {
        "first": first,
        "last": last,
        "terms": [store.term(i) for i in range(first - 1, last + 1)],
        "entries": store.entries(first, last + 1) if last >= first else [],
        "snapshot": store.snapshot(),
        "initial_state": store.initial_state(),
        "hard_state": store.hard_state(),
    }


def assert_same(disk: Store, model: Store) -> None:
    got, want = dump(disk), dump(model)
    for key in want:
        assert got[key] == want[key], f"{key}: disk {got[key]!r} != model {want[key]!r}"


def payload(index: int, term: int, size: int = 24) -> bytes:
    """Entry data derived from (index, term), so content can be checked
    without remembering what was written."""
    unit = f"<{index}:{term}>".encode()
    return (unit * (size // len(unit) + 1))[:size]


def entry(index: int, term: int, size: int = 24) -> Entry:
    return Entry(index, term, payload(index, term, size))
