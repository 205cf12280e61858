"""Issue 17: failover on a crashed controller without waiting for the
election timeout. A crashed process closes its connections; the transport
tells the node core (`NodeCore.peer_closed`), which replaces the controller
at once (Raft's leader_connection_lost). Driven by hand over the in-memory
transport and a manual clock, so "at once" is counted in ticks."""

from __future__ import annotations

from mesh.raft import Role

from .test_core import Mesh, put, records


def crash(m: Mesh, nid: str) -> None:
    """A crashed process: nothing reaches it any more, and every peer sees
    its connections close."""
    m.net.nodes[nid].close()
    del m.cores[nid]
    m.net.close_links(nid)


def test_a_crashed_controller_is_replaced_without_a_tick() -> None:
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    term = m.cores[lead].raw.term
    m.until(m.cores[lead].propose(put("x", 1)))
    crash(m, lead)
    m.settle()  # messages and Readies only: no time passes
    leaders = [(nid, c.raw.term) for nid, c in m.cores.items() if c.role == Role.LEADER]
    assert leaders == [(leaders[0][0], term + 1)], leaders
    new = m.cores[leaders[0][0]]
    assert new.raw.campaign_cause == "connection_lost"
    assert new.raw.connection_lost_campaigns == 1
    # One election: the other survivor campaigned not at all.
    assert sum(c.raw.connection_lost_campaigns for c in m.cores.values()) == 1
    assert all(c.raw.lead == leaders[0][0] for c in m.cores.values())


def test_a_write_forwarded_to_the_crashed_controller_is_retried_at_once() -> None:
    # The forward timeout and the request deadline are far away: only the
    # leader change can answer the write within a few ticks.
    m = Mesh(["a", "b", "c"], forward_timeout=5.0, request_timeout=10.0)
    lead = m.leader()
    f = m.follower()
    ticket = m.cores[f].propose(put("y", 1))  # queued towards the controller
    crash(m, lead)
    ticks = 0
    while not ticket.done and ticks < m.cores[f].cfg.election_ticks:
        m.settle()
        if ticket.done:
            break
        m.tick()
        ticks += 1
    assert ticket.done and ticket.error is None, (ticks, ticket.error)
    assert ticket.value()["version"] == 1
    assert ticks < m.cores[f].cfg.election_ticks
    m.tick(2)
    assert {tuple(records(c, "y")) for c in m.cores.values()} == {(1,)}


def test_a_closed_connection_of_a_live_controller_deposes_nobody() -> None:
    # One follower hears the controller close its connections (a reconnect,
    # say) while the other still hears it: the pre-vote fails, the term and
    # the controller stay, and writes go on.
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    term = m.cores[lead].raw.term
    f = sorted(n for n in m.cores if n != lead)[0]  # first in turn: campaigns at once
    m.cores[f].peer_closed(lead)
    assert m.cores[f].role == Role.PRE_CANDIDATE
    m.tick(3 * m.cores[f].cfg.election_ticks)
    assert [(nid, c.role) for nid, c in sorted(m.cores.items()) if c.role != Role.FOLLOWER] == [(lead, Role.LEADER)]
    assert all(c.raw.term == term and c.raw.lead == lead for c in m.cores.values())
    assert m.until(m.cores[f].propose(put("z", 1))).value()["version"] == 1


def test_a_close_by_a_follower_changes_nothing() -> None:
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    f, other = sorted(n for n in m.cores if n != lead)
    m.cores[f].peer_closed(other)
    assert m.cores[f].raw.lead == lead and m.cores[f].role == Role.FOLLOWER
    assert not m.cores[f].has_ready()
