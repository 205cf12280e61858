"""Issue 17: an append without entries to a follower the leader streams to
and knows holds its whole log (it only moves the commit index) is marked
COMMIT_ONLY and not answered. Anything the leader could learn from an
answer is still asked for."""

from __future__ import annotations

from mesh.raft import ConfState, Message, MessageType
from mesh.raft.messages import COMMIT_ONLY
from mesh.raft.progress import ProgressState

from .cluster import Cluster, NodeOptions

OPTS = NodeOptions(election_tick=10, heartbeat_tick=1)
CONF = ConfState.of(["1", "2", "3"])


def run(c: Cluster, log: list[Message] | None = None, limit: int = 2000) -> None:
    """Handle Readies and deliver every message until nothing moves."""
    for _ in range(limit):
        moved = False
        for nid in sorted(c.nodes):
            if c.has_ready(nid):
                c.handle_ready(nid)
                moved = True
        msgs, c.inflight = c.inflight, []
        for m in msgs:
            if log is not None:
                log.append(m)
            c.deliver(m)
            moved = True
        if not moved:
            return
    raise AssertionError("still moving: a message storm")


def three_nodes() -> Cluster:
    c = Cluster()
    for nid in ("1", "2", "3"):
        c.add_node(nid, OPTS, CONF)
    c.nodes["1"].raw.campaign()
    run(c)
    assert c.nodes["1"].raw.raft.lead == "1"
    c.nodes["1"].raw.propose(b"warm")
    run(c)
    return c


def test_the_follower_that_acknowledged_everything_is_not_asked_to_answer() -> None:
    c = three_nodes()
    log: list[Message] = []
    c.nodes["1"].raw.propose(b"x")
    run(c, log)
    last = c.nodes["1"].raw.raft.log.last_index()
    # The commit comes with 2's acknowledgement, before 3's is handled: 2
    # gets a marked append and does not answer it; 3 (its acknowledgement
    # still on its way) is asked as before. 7 messages instead of 8.
    sent = [(m.type.value, m.to, m.context == COMMIT_ONLY) for m in log]
    assert sent == [
        ("app", "2", False),
        ("app", "3", False),
        ("app_resp", "1", False),
        ("app_resp", "1", False),
        ("app", "2", True),
        ("app", "3", False),
        ("app_resp", "1", False),
    ]
    for nid in ("1", "2", "3"):
        assert c.nodes[nid].raw.raft.log.committed == last
        assert c.nodes[nid].applied_index == last
    for nid in ("2", "3"):
        pr = c.nodes["1"].raw.raft.tracker.progress[nid]
        assert pr.state == ProgressState.REPLICATE and pr.match == last


def test_a_probing_or_behind_follower_is_never_told_not_to_answer() -> None:
    c = three_nodes()
    raft = c.nodes["1"].raw.raft
    c.nodes["1"].raw.report_unreachable("2")  # replicate -> probe
    assert raft.tracker.progress["2"].state == ProgressState.PROBE
    log: list[Message] = []
    c.nodes["1"].raw.propose(b"y")
    run(c, log)
    to_2 = [m for m in log if m.to == "2" and m.type == MessageType.APP]
    assert to_2 and all(m.context != COMMIT_ONLY for m in to_2[:1])
    assert raft.tracker.progress["2"].state == ProgressState.REPLICATE


def test_a_marked_append_that_does_not_match_is_still_answered() -> None:
    """A follower whose log lacks the entry before the append rejects it
    (with a hint), mark or not: the leader must learn it is behind."""
    c = three_nodes()
    raft = c.nodes["1"].raw.raft
    last = raft.log.last_index()
    bogus = Message(
        MessageType.APP, "2", "1", raft.term, log_term=raft.term, index=last + 5, commit=last, context=COMMIT_ONLY
    )
    c.nodes["2"].raw.step(bogus)
    assert c.has_ready("2")
    c.handle_ready("2")
    answers = [m for m in c.inflight if m.frm == "2" and m.type == MessageType.APP_RESP]
    assert len(answers) == 1 and answers[0].reject


def test_the_transfer_target_answers_so_the_handover_starts() -> None:
    c = three_nodes()
    c.nodes["1"].raw.transfer_leader("3")
    run(c)
    assert c.nodes["3"].raw.raft.lead == "3"
