"""The narrow read interface the core needs from a log store.

The core never writes storage: the driver persists what a `Ready` names and
then calls `advance()`. The core reads back *stable* entries through this
interface (to send them to followers, to compare terms), exactly like etcd
raft's `Storage`.
"""

from __future__ import annotations

from typing import Protocol

from mesh.raft.messages import ConfState, Entry, HardState, Snapshot


class LogStorage(Protocol):
    def initial_state(self) -> tuple[HardState, ConfState]:
        """The hard state and the configuration of the newest snapshot, as
        saved. The configuration of later committed entries is replayed by
        the core from the log itself."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still held (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry held (snapshot index if there is none)."""
        ...

    def term(self, index: int) -> int:
        """Term of entry `index`; valid for first_index()-1 .. last_index().
        Raises `CompactedError` below that range and `UnavailableError` above."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi). Returns at least one entry if any is in range,
        even when it alone exceeds `max_bytes`. Raises `CompactedError` if lo
        is at or below the snapshot, `UnavailableError` if hi > last+1."""
        ...

    def snapshot(self) -> Snapshot:
        """The newest snapshot. May raise `SnapshotTemporarilyUnavailable`."""
        ...
