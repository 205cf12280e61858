"""Progress (per-follower state), inflight window and quorum arithmetic."""

from __future__ import annotations

import pytest

from mesh.raft import ConfState
from mesh.raft.progress import Progress, ProgressState, ProgressTracker


def tracker(voters: list[str], learners: list[str] = ()) -> ProgressTracker:  # type: ignore[assignment]
    t = ProgressTracker()
    t.apply_conf(ConfState.of(voters, learners), 1)
    return t


@pytest.mark.parametrize(("n", "q"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_quorum_size(n: int, q: int) -> None:
    assert tracker([str(i) for i in range(n)]).quorum() == q


@pytest.mark.parametrize(
    ("matches", "committed"),
    [([5], 5), ([5, 3], 3), ([5, 3, 1], 3), ([1, 3, 5], 3), ([9, 9, 1, 1], 1), ([9, 8, 7, 1, 1], 7), ([0, 0, 4], 0)],
)
def test_committed_index_is_the_majority_match(matches: list[int], committed: int) -> None:
    t = tracker([str(i) for i in range(len(matches))])
    for i, m in enumerate(matches):
        t.progress[str(i)].match = m
    assert t.committed_index() == committed


def test_learners_do_not_count_for_commit_votes_or_activity() -> None:
    t = tracker(["1", "2", "3"], ["4", "5"])
    t.progress["1"].match = 10
    for learner in ("4", "5"):
        t.progress[learner].match = 10
    assert t.committed_index() == 0
    for learner in ("4", "5"):
        t.record_vote(learner, True)
    t.record_vote("1", True)
    assert t.vote_result() == "pending"
    assert not t.has_quorum({"1", "4", "5"})
    for nid in t.progress:
        t.progress[nid].recent_active = nid in ("4", "5")
    assert not t.quorum_active("1")
    t.progress["2"].recent_active = True
    assert t.quorum_active("1")


def test_vote_tally() -> None:
    t = tracker(["1", "2", "3", "4", "5"])
    t.record_vote("1", True)
    t.record_vote("2", False)
    t.record_vote("2", True)  # the first answer counts
    assert t.tally() == (1, 1)
    assert t.vote_result() == "pending"
    t.record_vote("3", False)
    t.record_vote("4", False)
    assert t.vote_result() == "lost"
    t2 = tracker(["1", "2", "3"])
    t2.record_vote("1", True)
    t2.record_vote("9", True)  # not a voter
    assert t2.vote_result() == "pending"
    t2.record_vote("3", True)
    assert t2.vote_result() == "won"


def test_apply_conf_keeps_progress_of_members_that_stay() -> None:
    t = tracker(["1", "2", "3"])
    t.progress["2"].match = 7
    t.apply_conf(ConfState.of(["1", "2"], ["4"]), 9)
    assert set(t.progress) == {"1", "2", "4"}
    assert t.progress["2"].match == 7
    assert t.progress["4"].next == 9 and t.progress["4"].is_learner
    assert t.progress["4"].recent_active
    t.apply_conf(ConfState.of(["1", "2", "4"]), 9)
    assert not t.progress["4"].is_learner


def test_probe_pauses_after_one_append_until_response() -> None:
    p = Progress(5)
    assert p.state == ProgressState.PROBE and not p.is_paused(4)
    p.sent_entries(7, 4)
    assert p.is_paused(4)
    assert p.next == 5  # probing does not advance next optimistically
    assert p.maybe_update(7)
    assert p.match == 7 and p.next == 8 and not p.is_paused(4)


def test_replicate_window() -> None:
    p = Progress(1)
    p.maybe_update(3)
    p.become_replicate()
    assert p.next == 4
    for last in (5, 7, 9):
        assert not p.is_paused(3)
        p.sent_entries(last, 3)
    assert p.next == 10 and p.is_paused(3)
    p.sent_entries(None, 3)  # an empty append takes no slot
    assert list(p.inflights) == [5, 7, 9]
    p.free_inflights_to(6)
    assert list(p.inflights) == [7, 9] and not p.is_paused(3)
    p.free_inflights_to(100)
    assert not p.inflights


def test_maybe_decr_to_in_probe_and_replicate() -> None:
    p = Progress(10)
    p.sent_entries(None, 4)
    # A stale rejection (not of the probe in flight) is ignored.
    assert not p.maybe_decr_to(5, 2)
    assert p.maybe_decr_to(9, 3)
    assert p.next == 4 and not p.probe_sent
    # The hint never takes next below match + 1.
    p.match = 6
    p.next = 8
    assert p.maybe_decr_to(7, 0)
    assert p.next == 7
    r = Progress(1)
    r.maybe_update(5)
    r.become_replicate()
    r.sent_entries(9, 4)
    assert not r.maybe_decr_to(5, 0)  # at or below match: stale
    assert r.maybe_decr_to(8, 2)
    assert r.next == 6


def test_snapshot_state() -> None:
    p = Progress(1)
    p.become_snapshot(20)
    assert p.is_paused(8) and p.pending_snapshot == 20
    p.become_probe()
    assert p.state == ProgressState.PROBE and p.next == 21
    q = Progress(1)
    q.maybe_update(30)
    q.become_snapshot(20)
    q.become_probe()
    assert q.next == 31


def test_maybe_update_is_monotonic() -> None:
    p = Progress(1)
    assert p.maybe_update(5)
    assert not p.maybe_update(3)
    assert p.match == 5 and p.next == 6
