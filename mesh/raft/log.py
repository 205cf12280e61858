"""The core's view of the log: stable entries in storage, followed by the
unstable tail (entries, or an incoming snapshot) not yet persisted.

Indices: the log is 1-based; index 0 with term 0 is the empty prefix. After a
snapshot at index S, entries start at S + 1 and `term(S)` is still known.
"""

from __future__ import annotations

from mesh.raft.errors import CompactedError, RaftUsageError, UnavailableError
from mesh.raft.messages import Entry, EntryType, Snapshot
from mesh.raft.storage import LogStorage


class Unstable:
    """Entries and/or a snapshot handed out in a Ready but not yet persisted."""

    __slots__ = ("entries", "offset", "snapshot")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        # Index of entries[0] (or where it would be).
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.meta.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.meta.index
        return None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.meta.index == index:
                return self.snapshot.meta.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        t = self.maybe_term(index)
        if t is None or t != term or index < self.offset:
            # The entry was replaced (or already stable) since that Ready.
            return
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.meta.index == index:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.meta.index + 1
        self.entries = []
        self.snapshot = snap

    def truncate_and_append(self, ents: list[Entry]) -> None:
        after = ents[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif after <= self.offset:
            # Replace everything unstable (the stable part is rewritten by the
            # driver when it persists these entries: append truncates).
            self.offset = after
            self.entries = list(ents)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(ents)


class RaftLog:
    __slots__ = ("applied", "committed", "conf_indices", "max_apply_bytes", "storage", "unstable")

    def __init__(self, storage: LogStorage, max_apply_bytes: int = 1 << 22) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # Everything up to the snapshot is committed and applied by definition.
        self.committed = first - 1
        self.applied = first - 1
        self.max_apply_bytes = max_apply_bytes
        # Indices of configuration-change entries not yet committed, ascending, so
        # that committing entries never has to read them back from storage
        # to look for membership changes. Built once here (the log behind the
        # newest snapshot is short), then kept up to date by append/restore.
        self.conf_indices: list[int] = []
        if last >= first:
            self.conf_indices = [e.index for e in storage.entries(first, last + 1) if e.type == EntryType.CONF_CHANGE]

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, unstable={len(self.unstable.entries)})"
        )

    # -- indices and terms ---------------------------------------------------

    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term of `index`; raises CompactedError / UnavailableError."""
        t = self.unstable.maybe_term(index)
        if t is not None:
            return t
        dummy = self.first_index() - 1
        if index < dummy:
            raise CompactedError(f"index {index} is compacted (first index {dummy + 1})")
        if index > self.last_index():
            raise UnavailableError(f"index {index} is beyond the last index {self.last_index()}")
        return self.storage.term(index)

    def zero_term_on_error(self, index: int) -> int:
        try:
            return self.term(index)
        except (CompactedError, UnavailableError):
            return 0

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Raft §5.4.1: is a candidate's log at least as up to date as ours?"""
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    # -- appending -----------------------------------------------------------

    def maybe_append(self, index: int, log_term: int, committed: int, ents: list[Entry]) -> int | None:
        """Follower side of AppendEntries. Returns the index of the last new
        entry if the log matched at (index, log_term), else None."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        conflict = self.find_conflict(ents)
        if conflict:
            if conflict <= self.committed:
                raise RaftUsageError(f"entry {conflict} conflicts with committed entry {self.committed}")
            self.append(ents[conflict - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise RaftUsageError(f"append after {after} is below committed {self.committed}")
        self.unstable.truncate_and_append(ents)
        conf = self.conf_indices
        while conf and conf[-1] > after:
            conf.pop()
        conf.extend(e.index for e in ents if e.type == EntryType.CONF_CHANGE)
        return self.last_index()

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry whose term differs from ours (or that we do
        not have); 0 if all of `ents` is already in the log."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= `index` whose term is <= `term`, and its term.
        Used for the fast back-off of the next index on rejection."""
        while index > 0:
            try:
                t = self.term(index)
            except CompactedError:
                return index, 0
            except UnavailableError:
                index = self.last_index()
                continue
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    # -- commit and apply ----------------------------------------------------

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise RaftUsageError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        # Only an entry of the current term is committed by counting replicas
        # (Raft §5.4.2, Figure 8); older entries are committed with it.
        if index > self.committed and self.zero_term_on_error(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        if index > self.committed or index < self.applied:
            raise RaftUsageError(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def has_next_committed(self) -> bool:
        return self.committed > self.applied and self.applied + 1 >= self.first_index()

    def next_committed(self) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        if self.committed < lo:
            return []
        return self.slice(lo, self.committed + 1, self.max_apply_bytes)

    # -- reading -------------------------------------------------------------

    def entries_from(self, lo: int, max_bytes: int | None) -> list[Entry]:
        if lo > self.last_index():
            return []
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi), at least one if any exists, at most max_bytes."""
        if lo >= hi:
            return []
        first = self.first_index()
        if lo < first:
            raise CompactedError(f"index {lo} is compacted (first index {first})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"slice [{lo}, {hi}) beyond last index {self.last_index()}")
        out: list[Entry] = []
        off = self.unstable.offset
        if lo < off:
            out = self.storage.entries(lo, min(hi, off), max_bytes)
            # Storage stopped early because of the size limit.
            if len(out) < min(hi, off) - lo:
                return out
        if hi > off:
            unstable = self.unstable.entries[max(lo, off) - off : hi - off]
            out = out + unstable if out else list(unstable)
        return _limit_size(out, max_bytes)

    def all_entries(self) -> list[Entry]:
        return self.slice(self.first_index(), self.last_index() + 1)

    # -- persistence bookkeeping --------------------------------------------

    def last_stable_index(self) -> int:
        """The last index handed to storage and acknowledged by advance()."""
        if self.unstable.snapshot is not None:
            # A snapshot is being installed: claim nothing until it is durable.
            return 0
        return self.unstable.offset - 1

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def restore(self, snap: Snapshot) -> None:
        self.committed = snap.meta.index
        self.unstable.restore(snap)
        self.conf_indices = []

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()


def _limit_size(ents: list[Entry], max_bytes: int | None) -> list[Entry]:
    if max_bytes is None or not ents:
        return ents
    size = ents[0].size()
    for i in range(1, len(ents)):
        size += ents[i].size()
        if size > max_bytes:
            return ents[:i]
    return ents
