"""MemoryStorage's durability model: crash_image() holds exactly what was
synced, checked against a simple model by a hypothesis state machine."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mesh.raft import CompactedError, ConfState, Entry, HardState, RaftUsageError, UnavailableError
from mesh.storage.memory import MemoryStorage

CONF = ConfState.of(["1", "2", "3"])


class Model:
    """offset: snapshot index; terms[i] is the term of index offset + i
    (terms[0] is the snapshot's term)."""

    def __init__(self) -> None:
        self.offset = 0
        self.terms = [0]
        self.hs = HardState()
        self.snap_index = 0

    def copy(self) -> Model:
        m = Model()
        m.offset, m.terms, m.hs, m.snap_index = self.offset, list(self.terms), self.hs, self.snap_index
        return m

    def last(self) -> int:
        return self.offset + len(self.terms) - 1


def check(store: MemoryStorage, model: Model) -> None:
    assert store.first_index() == model.offset + 1
    assert store.last_index() == model.last()
    assert store.hard_state() == model.hs
    assert store.snapshot().meta.index == model.snap_index
    for i in range(model.offset, model.last() + 1):
        assert store.term(i) == model.terms[i - model.offset]
    if model.last() > model.offset:
        got = [(e.index, e.term) for e in store.entries(model.offset + 1, model.last() + 1)]
        assert got == [(i, model.terms[i - model.offset]) for i in range(model.offset + 1, model.last() + 1)]
    with pytest.raises(UnavailableError):
        store.term(model.last() + 1)
    if model.offset > 0:
        with pytest.raises(CompactedError):
            store.term(model.offset - 1)
        with pytest.raises(CompactedError):
            store.entries(model.offset, model.last() + 1)


class StorageMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStorage()
        self.live = Model()
        self.durable = Model()
        self.term = 1

    @rule(data=st.data(), n=st.integers(1, 4), bump=st.booleans())
    def append(self, data: st.DataObject, n: int, bump: bool) -> None:
        # Append after any index from the snapshot to the end (truncating).
        # Entries at or below the snapshot are committed: never truncated.
        after = data.draw(st.integers(max(self.live.offset, self.live.snap_index), self.live.last()))
        if bump:
            self.term += 1
        ents = [Entry(after + 1 + i, self.term) for i in range(n)]
        self.store.append(ents)
        self.live.terms = self.live.terms[: after - self.live.offset + 1] + [self.term] * n

    @rule(term=st.integers(0, 50), commit=st.integers(0, 50))
    def set_hard_state(self, term: int, commit: int) -> None:
        hs = HardState(term, None, commit)
        self.store.set_hard_state(hs)
        self.live.hs = hs

    @precondition(lambda self: self.live.last() > self.live.snap_index)
    @rule(data=st.data())
    def snapshot_and_compact(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(self.live.snap_index + 1, self.live.last()))
        self.store.create_snapshot(index, CONF, b"sm")
        self.live.snap_index = index
        if data.draw(st.booleans()):
            upto = data.draw(st.integers(self.live.offset, index))
            self.store.compact(upto)
            if upto > self.live.offset:
                self.live.terms = self.live.terms[upto - self.live.offset :]
                self.live.offset = upto

    @rule(skip=st.integers(1, 5))
    def install_snapshot(self, skip: int) -> None:
        from mesh.raft import Snapshot, SnapshotMeta

        index = self.live.last() + skip
        self.term += 1
        self.store.apply_snapshot(Snapshot(SnapshotMeta(index, self.term, CONF), b"remote"))
        self.live.offset, self.live.terms, self.live.snap_index = index, [self.term], index

    @rule()
    def sync(self) -> None:
        self.store.sync()
        self.durable = self.live.copy()
        assert self.store.unsynced() == 0

    @rule()
    def crash(self) -> None:
        self.store = self.store.crash_image()
        self.live = self.durable.copy()

    @rule()
    def bad_writes_are_refused(self) -> None:
        with pytest.raises(RaftUsageError):
            self.store.compact(self.live.snap_index + 1)
        with pytest.raises(RaftUsageError):
            self.store.append([Entry(self.live.last() + 2, self.term)])
        with pytest.raises(RaftUsageError):
            self.store.create_snapshot(self.live.last() + 1, CONF, b"")

    @invariant()
    def live_matches_model(self) -> None:
        check(self.store, self.live)

    @invariant()
    def crash_image_matches_durable_model(self) -> None:
        check(self.store.crash_image(), self.durable)


StorageMachine.TestCase.settings = settings(max_examples=400, stateful_step_count=40, deadline=None, derandomize=True)
test_memory_storage_durability = StorageMachine.TestCase
# A long stateful run (400 examples of 40 steps): in the full suite, not in --fast.
test_memory_storage_durability.pytestmark = [pytest.mark.slow]


def test_crash_image_is_independent_of_the_live_store() -> None:
    s = MemoryStorage()
    s.append([Entry(1, 1), Entry(2, 1)])
    s.sync()
    img = s.crash_image()
    s.append([Entry(3, 1)])
    s.sync()
    assert img.last_index() == 2
    img.append([Entry(2, 5)])
    assert s.term(2) == 1
