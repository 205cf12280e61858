"""Raft.quiet_ticks: the ticks a driver may deliver late (all at once before
the next input) because they only count. Never more than the truth: ticking
a node through its quiet ticks, with no other input, changes nothing but
its counters; and the figure is not trivially 0 (an idle follower's runs to
its election timeout, a leader's to its next heartbeat)."""

from __future__ import annotations

import random

import pytest

from mesh.raft import ConfState, Role

from .cluster import Cluster, NodeOptions


def observable(c: Cluster, nid: str) -> tuple[object, ...]:
    raw = c.nodes[nid].raw
    r = raw.raft
    return (r.role, r.term, r.lead, raw.has_ready(), len(r.msgs), r.vote, frozenset(r._lease_dropped))


def check_quiet(c: Cluster, nid: str) -> int:
    """Tick `nid` through its quiet ticks; nothing but counters may move."""
    raw = c.nodes[nid].raw
    q = raw.quiet_ticks()
    assert q >= 0
    before = observable(c, nid)
    for i in range(q):
        raw.tick()
        assert observable(c, nid) == before, f"{nid}: quiet tick {i + 1} of {q} acted"
        assert not raw.take_urgent(), f"{nid}: quiet tick {i + 1} of {q} sent an urgent message"
    return q


def stabilize(c: Cluster) -> None:
    for _ in range(200):
        moved = False
        for n in c.up():
            if c.has_ready(n.id):
                c.handle_ready(n.id)
                moved = True
            for m in n.raw.take_urgent():
                if not c.deliverable(m):
                    c.inflight.append(m)
        msgs, c.inflight = c.inflight, []
        for m in msgs:
            c.deliver(m)
            moved = True
        if not moved:
            return


def cluster(n: int, learners: int = 0) -> Cluster:
    c = Cluster()
    voters = [str(i) for i in range(1, n + 1)]
    extra = [str(i) for i in range(n + 1, n + 1 + learners)]
    conf = ConfState.of(voters, extra) if extra else ConfState.of(voters)
    for nid in voters + extra:
        c.add_node(nid, NodeOptions(election_tick=6, heartbeat_tick=2), conf)
    return c


@pytest.mark.parametrize("seed", range(12))
def test_quiet_ticks_never_hide_an_action(seed: int) -> None:
    rnd = random.Random(seed)
    c = cluster(3, learners=1 if seed % 2 else 0)
    seen: dict[Role, int] = {}
    for _ in range(300):
        op = rnd.random()
        ids = sorted(c.nodes)
        nid = rnd.choice(ids)
        if op < 0.55:
            for n in c.up():
                n.raw.tick()
        elif op < 0.65:
            lead = next((n for n in c.up() if n.raw.raft.role == Role.LEADER), None)
            if lead is not None:
                lead.raw.propose(b"x%d" % rnd.randrange(1000))
        elif op < 0.72:
            c.isolate(nid)
        elif op < 0.8:
            c.heal()
        elif op < 0.83 and not c.nodes[nid].down:
            lead = c.nodes[nid].raw.raft.lead
            others = [p for p in ids if p != lead and p != nid]
            if lead is not None and others:
                c.nodes[nid].raw.raft.leader_connection_lost(lead)
        stabilize(c)
        target = c.nodes[rnd.choice(ids)]
        if target.down or c.has_ready(target.id):
            continue
        q = check_quiet(c, target.id)
        role = target.raw.raft.role
        seen[role] = max(seen.get(role, 0), q)
        stabilize(c)
    # Not trivially zero: an idle follower waits for its election timeout,
    # a leader for its next heartbeat.
    assert seen.get(Role.FOLLOWER, 0) >= 4, seen
    assert seen.get(Role.LEADER, 0) >= 1, seen


def test_the_tick_after_the_quiet_ones_acts_when_due() -> None:
    """A lone follower of a silent leader: its quiet ticks end exactly where
    its election timer fires (the next tick campaigns)."""
    c = cluster(3)
    raw = c.nodes["1"].raw
    q = check_quiet(c, "1")
    assert q >= 5
    raw.tick()
    assert raw.raft.role == Role.PRE_CANDIDATE


def test_a_leader_is_quiet_until_its_next_heartbeat() -> None:
    c = cluster(3)
    c.nodes["1"].raw.campaign()
    stabilize(c)
    lead = c.nodes["1"].raw
    assert lead.raft.role == Role.LEADER
    q = check_quiet(c, "1")
    assert 0 <= q < 2
    lead.tick()
    assert any(m.type.name == "HEARTBEAT" for m in lead.raft.msgs)
