"""Finding 9 of issue 12: a follower restarted with an empty store catches up.

The transcript tests/raft/testdata/follower_wiped.txt shows the message flow;
these tests check the outcome and that stale or duplicated rejections cannot
make the leader regress for good.
"""

from __future__ import annotations

from mesh.raft import ConfState, Message, MessageType
from mesh.raft.progress import Progress, ProgressState

from .cluster import Cluster, NodeOptions

OPTS = NodeOptions(election_tick=10, heartbeat_tick=1)
CONF = ConfState.of(["1", "2", "3"])


def three_nodes() -> Cluster:
    c = Cluster()
    for nid in ("1", "2", "3"):
        c.add_node(nid, OPTS, CONF)
    c.nodes["1"].raw.campaign()
    c.settle()
    assert c.nodes["1"].raw.raft.lead == "1"
    return c


def propose(c: Cluster, n: int) -> None:
    for i in range(n):
        c.nodes["1"].raw.propose(f"v{i}".encode())
    c.settle()


def heartbeat(c: Cluster) -> None:
    raft = c.nodes["1"].raw.raft
    for _ in range(raft.cfg.heartbeat_tick):
        c.nodes["1"].raw.tick()


def test_finding_09_wiped_follower_catches_up_idle_and_busy() -> None:
    """finding 9: a member restarted with an empty data directory (bootstrapped
    again from --peers) catches up, whether the leader is idle (heartbeats
    only) or busy (appends), with a bounded number of messages."""
    c = three_nodes()
    propose(c, 20)
    last = c.nodes["1"].raw.raft.log.last_index()
    c.wipe("3", CONF)
    assert c.nodes["3"].raw.raft.log.last_index() == 1
    # Idle: one heartbeat round is enough.
    heartbeat(c)
    assert c.settle() < 20
    assert c.nodes["3"].raw.raft.log.committed == last
    assert c.nodes["3"].applied_index == last
    # Busy: the next proposal's append is rejected at match, without a
    # storm; the next heartbeat round settles it.
    c.wipe("3", CONF)
    c.nodes["1"].raw.propose(b"busy")
    assert c.settle() < 30
    heartbeat(c)
    assert c.settle() < 30
    assert c.nodes["3"].raw.raft.log.committed == last + 1
    assert c.nodes["1"].raw.raft.tracker.progress["3"].state == ProgressState.REPLICATE


def test_finding_09_wiped_follower_gets_the_snapshot_after_compaction() -> None:
    """finding 9: when the entries are compacted away, the reset leads to a
    snapshot and then appends."""
    c = three_nodes()
    propose(c, 10)
    leader = c.nodes["1"]
    applied = leader.applied_index
    leader.storage.create_snapshot(applied, leader.raw.raft.conf_state_at(applied), b"{}")
    leader.storage.compact(applied)
    c.wipe("2", CONF)
    heartbeat(c)
    c.settle()
    assert c.nodes["2"].raw.raft.log.first_index() == applied + 1
    c.nodes["1"].raw.propose(b"after")
    c.settle()
    assert c.nodes["2"].raw.raft.log.committed == applied + 1


def test_stale_and_duplicated_rejections_cost_at_most_one_probe() -> None:
    """Guard for the finding 9 fix: an old rejection (from before the follower caught up),
    delivered again later, never makes the leader forget a healthy follower
    for good: at most one extra probe, then it is back in replicate."""
    c = three_nodes()
    propose(c, 5)
    raft = c.nodes["1"].raw.raft
    pr = raft.tracker.progress["2"]
    match = pr.match
    term = raft.term
    # Rejections from before the follower caught up, reordered: ignored.
    for rejected in (2, match):
        old = Message(MessageType.APP_RESP, "1", "2", term, index=rejected, reject=True, reject_hint=1, log_term=1)
        for _ in range(3):
            c.nodes["1"].raw.step(old)
        c.settle()
    pr = raft.tracker.progress["2"]
    assert pr.state == ProgressState.REPLICATE and pr.match == match
    c.settle()
    # A duplicated lost-log signal costs one probe, answered at once.
    dup = Message(MessageType.HEARTBEAT_RESP, "1", "2", term, index=match, reject=True, reject_hint=1)
    c.nodes["1"].raw.step(dup)
    c.settle()
    pr = raft.tracker.progress["2"]
    assert pr.state == ProgressState.REPLICATE and pr.match == raft.log.last_index()
    assert c.nodes["2"].raw.raft.log.committed == raft.log.committed


def test_probe_ignores_a_rejection_below_match() -> None:
    """A probe rejected with a hint below match (a reordered answer, or a
    lost log) does not probe the same index again at once: that loop was
    the message storm of finding 9. The heartbeat decides instead."""
    p = Progress(11)
    p.match = 10
    p.become_probe()
    p.sent_entries(None, 256)
    assert p.probe_sent and p.next == 11
    assert not p.maybe_decr_to(10, 1)
    assert p.probe_sent and p.next == 11  # paused until the heartbeat answer
    q = Progress(11)
    q.match = 5
    q.become_probe()
    q.sent_entries(None, 256)
    q.next = 9
    assert q.maybe_decr_to(8, 6) and q.next == 7  # an ordinary rejection still moves back
    p.reset_lost_log(1)
    assert (p.state, p.match, p.next) == (ProgressState.PROBE, 0, 2)
