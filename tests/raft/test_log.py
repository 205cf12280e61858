"""RaftLog: the unstable tail over stable storage, commit rules, conflicts."""

from __future__ import annotations

import pytest

from mesh.raft import CompactedError, ConfState, Entry, RaftUsageError, Snapshot, SnapshotMeta, UnavailableError
from mesh.raft.log import RaftLog
from mesh.storage.memory import MemoryStorage


def ents(*pairs: tuple[int, int]) -> list[Entry]:
    return [Entry(i, t, f"{t}/{i}".encode()) for i, t in pairs]


def store(*terms: int) -> MemoryStorage:
    """A synced store with entries 1..n of the given terms."""
    s = MemoryStorage()
    if terms:
        s.append(ents(*[(i + 1, t) for i, t in enumerate(terms)]))
    s.sync()
    return s


def test_empty_log() -> None:
    log = RaftLog(store())
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 0, 0)
    assert log.term(0) == 0
    with pytest.raises(UnavailableError):
        log.term(1)


def test_unstable_then_stable() -> None:
    s = store(1, 1)
    log = RaftLog(s)
    assert log.unstable.offset == 3
    log.append(ents((3, 2), (4, 2)))
    assert log.unstable_entries() == ents((3, 2), (4, 2))
    assert log.last_index() == 4 and log.term(4) == 2
    # The driver persists, then the log is told; entries move to storage.
    s.append(log.unstable_entries())
    log.stable_to(4, 2)
    assert log.unstable_entries() == [] and log.unstable.offset == 5
    assert log.term(3) == 2 and log.slice(1, 5) == store(1, 1, 2, 2).entries(1, 5)


def test_stable_to_ignores_replaced_entries() -> None:
    log = RaftLog(store(1))
    log.append(ents((2, 2), (3, 2)))
    handed_out = log.unstable_entries()
    log.append(ents((3, 3)))  # replaced while the Ready was being persisted
    log.stable_to(handed_out[-1].index, handed_out[-1].term)
    assert log.unstable_entries() == ents((2, 2), (3, 3))


def test_truncate_and_append_inside_unstable_and_before_it() -> None:
    s = store(1, 1, 1)
    log = RaftLog(s)
    log.append(ents((4, 2), (5, 2), (6, 2)))
    log.append(ents((5, 3)))
    assert [e.term for e in log.all_entries()] == [1, 1, 1, 2, 3]
    log.append(ents((2, 4)))  # before the unstable offset: replaces it all
    assert log.unstable.offset == 2
    assert [(e.index, e.term) for e in log.all_entries()] == [(1, 1), (2, 4)]


def test_append_below_commit_is_refused() -> None:
    log = RaftLog(store(1, 1, 1))
    log.commit_to(3)
    with pytest.raises(RaftUsageError):
        log.append(ents((2, 5)))


def test_maybe_append_conflicts() -> None:
    log = RaftLog(store(1, 2, 2))
    assert log.maybe_append(5, 2, 0, ents((6, 2))) is None  # gap
    assert log.maybe_append(3, 1, 0, ents((4, 2))) is None  # wrong term at 3
    assert log.maybe_append(1, 1, 3, ents((2, 2), (3, 2))) == 3  # already held
    assert log.unstable_entries() == []
    assert log.committed == 3
    assert log.maybe_append(3, 2, 9, ents((4, 3), (5, 3))) == 5
    assert log.committed == 5  # min(leader commit, last new)
    with pytest.raises(RaftUsageError):
        log.maybe_append(1, 1, 5, ents((2, 9)))  # would rewrite committed 2


def test_find_conflict_by_term() -> None:
    # index: 1 2 3 4 5 6 7
    # term:  1 1 2 2 2 5 5
    log = RaftLog(store(1, 1, 2, 2, 2, 5, 5))
    assert log.find_conflict_by_term(7, 5) == (7, 5)
    assert log.find_conflict_by_term(7, 4) == (5, 2)
    assert log.find_conflict_by_term(7, 2) == (5, 2)
    assert log.find_conflict_by_term(4, 1) == (2, 1)
    assert log.find_conflict_by_term(7, 0) == (0, 0)
    # Beyond the last index: starts from the last index.
    assert log.find_conflict_by_term(20, 3) == (5, 2)


def test_find_conflict_by_term_stops_at_compaction() -> None:
    s = store(1, 1, 2, 2, 3)
    s.create_snapshot(3, ConfState.of(["1"]), b"")
    s.compact(3)
    s.sync()
    log = RaftLog(s)
    assert log.find_conflict_by_term(5, 1) == (2, 0)
    assert log.find_conflict_by_term(5, 2) == (4, 2)


def test_commit_only_current_term_by_counting() -> None:
    log = RaftLog(store(1, 2, 2))
    assert not log.maybe_commit(3, 3)  # entry 3 is from term 2
    assert log.committed == 0
    assert log.maybe_commit(3, 2)
    assert not log.maybe_commit(2, 2)  # never backwards
    with pytest.raises(RaftUsageError):
        log.commit_to(9)


def test_next_committed_and_applied() -> None:
    log = RaftLog(store(1, 1, 1, 1))
    log.commit_to(3)
    assert [e.index for e in log.next_committed()] == [1, 2, 3]
    log.applied_to(2)
    assert [e.index for e in log.next_committed()] == [3]
    with pytest.raises(RaftUsageError):
        log.applied_to(4)
    log.applied_to(3)
    assert not log.has_next_committed()


def test_size_limit_returns_at_least_one_entry() -> None:
    big = [Entry(i, 1, b"x" * 100) for i in range(1, 5)]
    s = MemoryStorage()
    s.append(big)
    log = RaftLog(s)
    assert len(log.slice(1, 5, 1)) == 1
    assert len(log.slice(1, 5, 250)) == 2
    assert len(log.slice(1, 5, None)) == 4


def test_restore_snapshot_and_compacted_reads() -> None:
    log = RaftLog(store(1, 1))
    snap = Snapshot(SnapshotMeta(10, 4, ConfState.of(["1"])), b"s")
    log.restore(snap)
    assert log.first_index() == 11 and log.last_index() == 10
    assert log.term(10) == 4 and log.committed == 10
    with pytest.raises(CompactedError):
        log.term(5)
    with pytest.raises(CompactedError):
        log.slice(5, 11)
    assert log.snapshot() == snap
    log.stable_snap_to(10)
    assert log.unstable.snapshot is None
