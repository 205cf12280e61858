"""Issue 17: an append without entries that only moves a streaming
follower's commit index is marked COMMIT_ONLY, and a follower that already
acknowledged that far does not answer it: a lone write in a 3-node mesh
costs 6 messages instead of 8. Anything the leader could learn from an
answer is still asked for."""

from __future__ import annotations

from mesh.raft import ConfState, Message, MessageType
from mesh.raft.messages import COMMIT_ONLY
from mesh.raft.progress import ProgressState

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
    c.nodes["1"].raw.propose(b"warm")
    c.settle()
    return c


def test_a_lone_write_costs_six_messages_and_commits_everywhere() -> None:
    c = three_nodes()
    log: list[Message] = []
    c.nodes["1"].raw.propose(b"x")
    c.settle(log)
    last = c.nodes["1"].raw.raft.log.last_index()
    # The appends with the entry and their acknowledgements; then the commit
    # notices, marked, and no answer to them: 3's acknowledgement was still
    # on its way when the entry committed, but 3 knows it sent it.
    sent = [(m.type.value, m.to, m.context == COMMIT_ONLY) for m in log]
    assert sent == [
        ("app", "2", False),
        ("app", "3", False),
        ("app_resp", "1", False),
        ("app_resp", "1", False),
        ("app", "2", True),
        ("app", "3", True),
    ]
    for nid in ("1", "2", "3"):
        assert c.nodes[nid].raw.raft.log.committed == last
        assert c.nodes[nid].applied_index == last
    for nid in ("2", "3"):
        pr = c.nodes["1"].raw.raft.tracker.progress[nid]
        assert pr.state == ProgressState.REPLICATE and pr.match == last


def test_a_lost_acknowledgement_is_made_up_for_by_the_next_heartbeat() -> None:
    c = three_nodes()
    leader = c.nodes["1"].raw
    c.nodes["1"].raw.propose(b"x")
    c.settle(drop=lambda m: m.frm == "3" and m.type == MessageType.APP_RESP)
    last = leader.raft.log.last_index()
    assert c.nodes["3"].raw.raft.log.committed == last  # the commit notice came
    assert leader.raft.tracker.progress["3"].match < last  # its answer was lost
    for _ in range(leader.raft.cfg.heartbeat_tick):
        leader.tick()
    log: list[Message] = []
    c.settle(log)
    # The heartbeat's answer asks for an append, unmarked, which 3 answers.
    asked = [m for m in log if m.to == "3" and m.type == MessageType.APP]
    assert asked and asked[0].context != COMMIT_ONLY
    assert leader.raft.tracker.progress["3"].match == last


def test_a_probing_or_behind_follower_is_never_told_not_to_answer() -> None:
    c = three_nodes()
    raft = c.nodes["1"].raw.raft
    c.nodes["1"].raw.report_unreachable("2")  # replicate -> probe
    assert raft.tracker.progress["2"].state == ProgressState.PROBE
    log: list[Message] = []
    c.nodes["1"].raw.propose(b"y")
    c.settle(log)
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
    c.settle()
    assert c.nodes["3"].raw.raft.lead == "3"


def test_a_marked_append_past_what_the_follower_acknowledged_is_answered() -> None:
    """A follower restarted since its acknowledgements (or one that never
    sent them) cannot know the leader heard them: it answers."""
    c = three_nodes()
    raft = c.nodes["1"].raw.raft
    last = raft.log.last_index()
    c.crash("2")
    c.restart("2")
    notice = Message(
        MessageType.APP, "2", "1", raft.term, log_term=raft.term, index=last, commit=last, context=COMMIT_ONLY
    )
    c.nodes["2"].raw.step(notice)
    c.handle_ready("2")
    answers = [m for m in c.inflight if m.frm == "2" and m.type == MessageType.APP_RESP]
    assert len(answers) == 1 and not answers[0].reject and answers[0].index == last
