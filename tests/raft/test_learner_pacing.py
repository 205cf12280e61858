"""Learner feed pacing (Config.learner_feed_ticks): with many learners the
leader sends each learner one append per tick under load instead of one per
write, streams a learner that is a full batch behind, and feeds at once a
learner that waits for an entry (a write it forwarded, a read point)."""

from __future__ import annotations

from mesh.raft import ConfState, Message, MessageType

from .cluster import Cluster, NodeOptions

VOTERS = ["1", "2", "3"]
LEARNERS = ["4", "5", "6"]
CONF = ConfState.of(VOTERS, LEARNERS)


def mesh(feed_ticks: int, batch: int | None = None) -> Cluster:
    c = Cluster()
    opts = NodeOptions(election_tick=10, heartbeat_tick=2, learner_feed_ticks=feed_ticks)
    for nid in VOTERS + LEARNERS:
        c.add_node(nid, opts, CONF)
        if batch is not None:
            c.nodes[nid].raw.raft.cfg.learner_batch = batch
    c.nodes["1"].raw.campaign()
    c.settle()
    assert c.nodes["1"].raw.raft.lead == "1"
    return c


def appends_to(sent: list[Message], nid: str) -> int:
    return sum(1 for m in sent if m.type == MessageType.APP and m.to == nid)


def writes_without_ticks(c: Cluster, n: int) -> list[Message]:
    """n writes one after another, each committed before the next (as
    sequential clients do), with no tick between them."""
    sent: list[Message] = []
    for i in range(n):
        c.nodes["1"].raw.propose(f"w{i}".encode())
        c.settle(sent)
    return sent


def tick_leader(c: Cluster, sent: list[Message] | None = None) -> None:
    c.nodes["1"].raw.tick()
    c.settle(sent)


def test_paced_learners_get_one_append_per_tick_voters_every_write() -> None:
    c = mesh(feed_ticks=1)
    sent = writes_without_ticks(c, 20)
    last = c.nodes["1"].raw.raft.log.last_index()
    for v in ("2", "3"):
        assert appends_to(sent, v) >= 20
        assert c.nodes[v].applied_index == last  # voters commit and apply at once
    for learner in LEARNERS:
        assert appends_to(sent, learner) <= 2  # held back: owed one at the next tick
        assert c.nodes[learner].applied_index < last
    # One tick later every learner has the whole batch, and applies it (the
    # commit index comes with the append).
    later: list[Message] = []
    tick_leader(c, later)
    for learner in LEARNERS:
        assert 1 <= appends_to(later, learner) <= 2
        assert c.nodes[learner].raw.raft.log.last_index() == last
    tick_leader(c)
    tick_leader(c)
    assert all(c.nodes[n].applied_index == last for n in LEARNERS)


def test_a_learner_fed_within_the_heartbeat_interval_gets_no_heartbeat() -> None:
    c = mesh(feed_ticks=2)  # heartbeat_tick is 2
    for _ in range(4):  # a few idle heartbeat intervals: everyone gets heartbeats
        sent: list[Message] = []
        tick_leader(c, sent)
    idle: list[Message] = []
    tick_leader(c, idle)
    tick_leader(c, idle)
    beats = {m.to for m in idle if m.type == MessageType.HEARTBEAT}
    assert beats == {"2", "3", *LEARNERS}
    # Under writes: the learners' appends stand in for their heartbeats.
    busy: list[Message] = []
    for i in range(6):
        c.nodes["1"].raw.propose(f"x{i}".encode())
        tick_leader(c, busy)
    beats = [m.to for m in busy if m.type == MessageType.HEARTBEAT]
    assert {"2", "3"} <= set(beats) and not set(beats) & set(LEARNERS)
    assert all(appends_to(busy, n) >= 1 for n in LEARNERS)
    last = c.nodes["1"].raw.raft.log.last_index()
    tick_leader(c)
    tick_leader(c)
    assert all(c.nodes[n].applied_index == last for n in LEARNERS)


def test_under_steady_writes_a_learner_gets_one_message_per_heartbeat_interval() -> None:
    c = mesh(feed_ticks=2)  # heartbeat_tick is 2
    leader = c.nodes["1"].raw
    sent: list[Message] = []
    for i in range(40):  # 20 heartbeat intervals, a write in every tick (slower than the ticks)
        leader.propose(f"s{i}".encode())
        c.settle(sent)
        tick_leader(c, sent)
    for learner in LEARNERS:
        to = [m for m in sent if m.to == learner and m.type in (MessageType.APP, MessageType.HEARTBEAT)]
        assert len(to) <= 20 + 2, (learner, len(to))  # appends stand in for heartbeats
    for v in ("2", "3"):
        assert appends_to(sent, v) >= 40
    tick_leader(c)
    tick_leader(c)
    last = leader.raft.log.last_index()
    assert all(c.nodes[n].applied_index == last for n in LEARNERS)


def test_without_pacing_learners_get_every_write_as_voters_do() -> None:
    c = mesh(feed_ticks=0)
    sent = writes_without_ticks(c, 20)
    last = c.nodes["1"].raw.raft.log.last_index()
    for learner in LEARNERS:
        assert appends_to(sent, learner) >= 20
        assert c.nodes[learner].raw.raft.log.last_index() == last


def test_a_learner_a_full_batch_behind_is_streamed_without_waiting_for_ticks() -> None:
    c = mesh(feed_ticks=1, batch=8)
    writes_without_ticks(c, 2)  # fed once in this tick, owed the second write
    leader = c.nodes["1"].raw
    for i in range(3):
        leader.propose(f"a{i}".encode())
    c.settle()
    # 4 entries wait for each learner: less than a batch, they keep waiting.
    assert all(c.nodes[n].raw.raft.log.last_index() < leader.raft.log.last_index() for n in LEARNERS)
    for i in range(4):
        leader.propose(f"b{i}".encode())
    c.settle()
    # 8 wait: a full batch goes out at once, no tick needed.
    assert all(c.nodes[n].raw.raft.log.last_index() == leader.raft.log.last_index() for n in LEARNERS)


def test_a_hurried_learner_is_fed_and_applies_its_write_without_a_tick() -> None:
    c = mesh(feed_ticks=1)
    writes_without_ticks(c, 3)  # the learners are now paced (fed in this tick)
    leader = c.nodes["1"].raw
    index = leader.propose(b"forwarded by 5")
    leader.hurry("5", index)  # as the node core does for a forwarded write
    c.settle()
    assert c.nodes["5"].applied_index >= index  # no tick needed
    assert c.nodes["4"].applied_index < index  # the others wait for their feed
    # hurry is a no-op for voters and unknown nodes.
    leader.hurry("2", index + 10)
    leader.hurry("zz", index + 10)
    assert "2" not in leader.raft._hurry and "zz" not in leader.raft._hurry


def test_a_learners_read_point_comes_with_the_entries_it_needs() -> None:
    c = mesh(feed_ticks=1)
    writes_without_ticks(c, 5)  # the learners hold less than the leader commits
    committed = c.nodes["1"].raw.raft.log.committed
    assert c.nodes["6"].applied_index < committed
    c.nodes["6"].raw.read_index(b"r1")
    sent: list[Message] = []
    c.settle(sent)  # no tick: the leader confirms with a heartbeat round and answers
    answers = [m for m in sent if m.type == MessageType.READ_INDEX_RESP and m.to == "6"]
    assert len(answers) == 1 and answers[0].index == committed
    assert c.nodes["6"].applied_index >= committed  # fed with its answer
    assert c.nodes["4"].applied_index < committed  # the others wait for their feed


def test_pacing_is_reset_by_a_new_term_and_config_is_checked() -> None:
    import pytest

    from mesh.raft import Config
    from mesh.raft.errors import RaftUsageError

    c = mesh(feed_ticks=1)
    writes_without_ticks(c, 3)
    raft = c.nodes["1"].raw.raft
    assert raft._owed  # learners owed an append
    raft.become_follower(raft.term + 1, None)
    assert not raft._owed and not raft._fed and not raft._hurry
    import random

    with pytest.raises(RaftUsageError):
        Config(id="x", rng=random.Random(1), learner_feed_ticks=-1).validate()
    with pytest.raises(RaftUsageError):
        Config(id="x", rng=random.Random(1), learner_batch=0).validate()
