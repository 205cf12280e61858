"""In-memory log store that knows what is durable.

Writes (`append`, `set_hard_state`, `apply_snapshot`, `create_snapshot`,
`compact`) change the live view immediately and are journalled; `sync()`
replays the journal onto the durable image. `crash_image()` returns a new
store holding only the durable image: what a real disk would hold after the
process was killed between a write and its fsync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mesh.raft.errors import CompactedError, RaftUsageError, UnavailableError
from mesh.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta


@dataclass(slots=True)
class _Image:
    hard_state: HardState
    snapshot: Snapshot
    # entries[0] is a dummy holding the snapshot's index and term.
    entries: list[Entry]

    def copy(self) -> _Image:
        return _Image(self.hard_state, self.snapshot, list(self.entries))

    def append(self, ents: list[Entry]) -> None:
        offset = self.entries[0].index
        first = ents[0].index
        if first <= offset:
            # Entries at or below the snapshot are already covered by it.
            ents = ents[offset + 1 - first :]
            if not ents:
                return
            first = ents[0].index
        last = offset + len(self.entries) - 1
        if first > last + 1:
            raise RaftUsageError(f"append at {first} leaves a gap after {last}")
        del self.entries[first - offset :]
        self.entries.extend(ents)

    def apply_snapshot(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.entries = [Entry(snap.meta.index, snap.meta.term)]

    def compact(self, index: int) -> None:
        offset = self.entries[0].index
        if index <= offset:
            return
        last = offset + len(self.entries) - 1
        if index > last:
            raise RaftUsageError(f"compact {index} beyond last index {last}")
        keep = self.entries[index - offset :]
        keep[0] = Entry(keep[0].index, keep[0].term)
        self.entries = keep


# One write not yet synced, replayed on the durable image by sync().
_Step = (
    tuple[Literal["append"], list[Entry]]
    | tuple[Literal["hard_state"], HardState]
    | tuple[Literal["snapshot"], Snapshot]
    | tuple[Literal["set_snapshot"], Snapshot]
    | tuple[Literal["compact"], int]
)


class MemoryStorage:
    """Implements `mesh.raft.storage.LogStorage` plus the write side."""

    def __init__(self, image: _Image | None = None) -> None:
        if image is None:
            image = _Image(HardState(), Snapshot(), [Entry(0, 0)])
        self._live = image
        self._durable = image.copy()
        self._journal: list[_Step] = []

    # -- read interface (LogStorage) ----------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._live.hard_state, self._live.snapshot.meta.conf

    def first_index(self) -> int:
        return self._live.entries[0].index + 1

    def last_index(self) -> int:
        return self._live.entries[0].index + len(self._live.entries) - 1

    def term(self, index: int) -> int:
        offset = self._live.entries[0].index
        if index < offset:
            raise CompactedError(f"index {index} is compacted (snapshot at {offset})")
        if index - offset >= len(self._live.entries):
            raise UnavailableError(f"index {index} is beyond the last index {self.last_index()}")
        return self._live.entries[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._live.entries[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} is compacted (snapshot at {offset})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries [{lo}, {hi}) beyond last index {self.last_index()}")
        ents = self._live.entries[lo - offset : hi - offset]
        if max_bytes is None or not ents:
            return ents
        size = 0
        for i, e in enumerate(ents):
            size += e.size()
            if size > max_bytes and i > 0:
                return ents[:i]
        return ents

    def snapshot(self) -> Snapshot:
        return self._live.snapshot

    # -- write interface ----------------------------------------------------

    def hard_state(self) -> HardState:
        return self._live.hard_state

    def append(self, ents: list[Entry]) -> None:
        if not ents:
            return
        ents = list(ents)
        self._live.append(ents)
        self._journal.append(("append", ents))

    def set_hard_state(self, hs: HardState) -> None:
        self._live.hard_state = hs
        self._journal.append(("hard_state", hs))

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the log by an incoming snapshot (a follower installing one)."""
        if snap.meta.index < self._live.snapshot.meta.index:
            raise RaftUsageError("snapshot older than the one held")
        self._live.apply_snapshot(snap)
        self._journal.append(("snapshot", snap))

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        """Record the state machine at `index` (applied locally) as the snapshot."""
        if index <= self._live.snapshot.meta.index:
            raise RaftUsageError(f"snapshot at {index} is not newer than {self._live.snapshot.meta.index}")
        if index > self.last_index():
            raise RaftUsageError(f"snapshot at {index} beyond last index {self.last_index()}")
        snap = Snapshot(SnapshotMeta(index, self.term(index), conf), data)
        self._live.snapshot = snap
        self._journal.append(("set_snapshot", snap))
        return snap

    def compact(self, index: int) -> None:
        """Discard entries up to `index` (which must be covered by the snapshot)."""
        if index > self._live.snapshot.meta.index:
            raise RaftUsageError(f"compact {index} beyond the snapshot at {self._live.snapshot.meta.index}")
        self._live.compact(index)
        self._journal.append(("compact", index))

    def sync(self) -> None:
        d = self._durable
        for step in self._journal:
            match step:
                case ("append", ents):
                    d.append(ents)
                case ("hard_state", hs):
                    d.hard_state = hs
                case ("snapshot", snap):
                    d.apply_snapshot(snap)
                case ("set_snapshot", snap):
                    d.snapshot = snap
                case ("compact", index):
                    d.compact(index)
        self._journal.clear()

    def unsynced(self) -> int:
        return len(self._journal)

    def crash_image(self) -> MemoryStorage:
        """A new store holding exactly what was durable."""
        return MemoryStorage(self._durable.copy())
