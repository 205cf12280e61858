"""Property test: `DiskStorage` answers exactly as its in-memory twin, across
random writes, syncs, crashes (close without sync) and clean reopens."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mesh.raft.errors import CompactedError, RaftUsageError, UnavailableError
from mesh.raft.messages import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from mesh.storage.disk import DiskStorage
from mesh.storage.memory import MemoryStorage
from tests.storage.helpers import assert_same

# More examples for a deeper run: HANA_STORAGE_EXAMPLES=2000 pytest tests/storage/test_model.py
EXAMPLES = int(os.environ.get("HANA_STORAGE_EXAMPLES", "60"))
NODES = ["a", "b", "c", "d"]
confs = st.builds(
    lambda v, learner: ConfState.of(v, [n for n in learner if n not in v]),
    st.sets(st.sampled_from(NODES), min_size=1, max_size=3),
    st.sets(st.sampled_from(NODES), max_size=2),
)
datas = st.binary(max_size=40)


class StoreMachine(RuleBasedStateMachine):
    durability = "unsafe_no_fsync"
    segment_bytes = 300

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="hm-storage-")
        self.disk = DiskStorage(self.dir, durability=self.durability, segment_bytes=self.segment_bytes)  # type: ignore[arg-type]
        self.model = MemoryStorage()
        self.reopens = 0

    def teardown(self) -> None:
        segments = len(os.listdir(os.path.join(self.dir, "wal")))
        event(f"segments at the end: {min(segments, 5)}{'+' if segments >= 5 else ''}")
        event(f"compacted: {self.model.first_index() > 1}; snapshot: {not self.model.snapshot().is_empty()}")
        event(f"crashes/reopens: {min(self.reopens, 3)}")
        self.disk.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def both(self, op: Callable[[Any], Any]) -> Any:
        """Run `op` on both stores: same result or same exception type."""
        outcomes = []
        for store in (self.model, self.disk):
            try:
                outcomes.append(("ok", op(store)))
            except (RaftUsageError, CompactedError, UnavailableError) as exc:
                outcomes.append(("raise", type(exc)))
        assert outcomes[0] == outcomes[1], outcomes
        return outcomes[0][1]

    # -- writes -------------------------------------------------------------

    @rule(
        back=st.integers(-2, 6),
        count=st.integers(1, 8),
        term_step=st.integers(0, 2),
        data=st.lists(datas, min_size=8, max_size=8),
        conf=st.booleans(),
    )
    def append(self, back: int, count: int, term_step: int, data: list[bytes], conf: bool) -> None:
        # back < 0 makes a gap (refused by both); back > 0 truncates a suffix.
        first = max(1, self.model.last_index() + 1 - back)
        prev = first - 1
        in_log = self.model.first_index() - 1 <= prev <= self.model.last_index()
        base_term = self.model.term(prev) if in_log else 1
        term = max(1, base_term) + term_step
        etype = EntryType.CONF_CHANGE if conf else EntryType.NORMAL
        ents = [Entry(first + i, term, data[i], etype if i == 0 else EntryType.NORMAL) for i in range(count)]
        self.both(lambda s: s.append(ents))

    @rule(term=st.integers(0, 9), vote=st.sampled_from([None, *NODES]), commit=st.integers(0, 60))
    def set_hard_state(self, term: int, vote: str | None, commit: int) -> None:
        hs = HardState(term, vote, commit)
        self.both(lambda s: s.set_hard_state(hs))

    @rule(pick=st.integers(0, 1000), conf=confs, data=datas)
    def create_snapshot(self, pick: int, conf: ConfState, data: bytes) -> None:
        lo, hi = self.model.snapshot().meta.index, self.model.last_index()
        index = lo + 1 + pick % max(1, hi - lo) if pick < 990 else lo  # sometimes not newer: refused
        snap = self.both(lambda s: s.create_snapshot(index, conf, data))
        if isinstance(snap, Snapshot):
            assert snap.meta.index == index

    @rule(pick=st.integers(0, 1000))
    def compact(self, pick: int) -> None:
        snap_index = self.model.snapshot().meta.index
        index = pick % (snap_index + 3)  # sometimes beyond the snapshot: refused
        self.both(lambda s: s.compact(index))

    @rule(ahead=st.integers(-1, 12), term=st.integers(1, 9), conf=confs, data=datas, go=st.integers(0, 3))
    def apply_snapshot(self, ahead: int, term: int, conf: ConfState, data: bytes, go: int) -> None:
        if go:  # rarer than the other writes, so that logs grow over many segments
            return
        index = max(0, self.model.snapshot().meta.index + ahead)
        snap = Snapshot(SnapshotMeta(index, term, conf), data)
        self.both(lambda s: s.apply_snapshot(snap))

    @rule()
    def sync(self) -> None:
        self.both(lambda s: s.sync())

    # -- restarts -------------------------------------------------------------

    @rule(go=st.integers(0, 1))
    def crash(self, go: int) -> None:
        """Stop without syncing: only what was synced survives."""
        if go:
            return
        self.disk.close()
        self.model = self.model.crash_image()
        self.reopen()

    @rule()
    def sync_close_reopen(self) -> None:
        self.both(lambda s: s.sync())
        self.disk.close()
        self.model = self.model.crash_image()
        self.reopen()

    def reopen(self) -> None:
        self.disk = DiskStorage(self.dir, durability=self.durability, segment_bytes=self.segment_bytes)  # type: ignore[arg-type]
        self.reopens += 1
        assert self.disk.unsynced() == 0

    # -- reads -------------------------------------------------------------

    @precondition(lambda self: self.model.last_index() >= self.model.first_index())
    @rule(a=st.integers(0, 1000), b=st.integers(0, 1000), max_bytes=st.none() | st.integers(0, 200))
    def read_range(self, a: int, b: int, max_bytes: int | None) -> None:
        first, last = self.model.first_index(), self.model.last_index()
        lo = first - 1 + a % (last - first + 3)  # may be compacted or beyond
        hi = lo + b % 12
        self.both(lambda s: s.entries(lo, hi, max_bytes))
        self.both(lambda s: s.term(lo))

    @invariant()
    def same_answers(self) -> None:
        assert_same(self.disk, self.model)


StoreMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestStoreMachine = StoreMachine.TestCase


class FsyncStoreMachine(StoreMachine):
    """The same with real fsyncs (fewer examples: fsync is slow)."""

    durability = "fsync"
    segment_bytes = 1024


FsyncStoreMachine.TestCase.settings = settings(
    max_examples=max(8, EXAMPLES // 8),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFsyncStoreMachine = FsyncStoreMachine.TestCase
