"""Deferred ticks (issue 17, idle CPU): NodeCore.quiet_ticks says how many
of the next ticks only count, and the runtime (mesh/node/runtime.py) runs
those late, all at once before its next input, with one loop timer at the
first tick that may act. Checked here: the core's figure never hides an
action (a message, a status event, a role change, a resolved request), is
0 while anything waits on a tick, and the runtime's timer fires at the
first tick that may act, not before and not after."""

from __future__ import annotations

import random
from typing import Any

import pytest

from mesh.errors import NoLeader
from mesh.node.config import NodeConfig
from mesh.node.core import NodeCore
from mesh.node.runtime import MeshNode
from mesh.raft import Message, MessageType, Role
from mesh.storage.memory import MemoryStorage
from mesh.transport.codec import LiveInterest

from .test_core import TICK, Mesh, put


def observable(core: NodeCore) -> tuple[object, ...]:
    t: Any = core.transport
    return (
        core.role,
        core.raw.term,
        core.raw.lead,
        core.has_ready(),
        t.sent,
        t.refused,
        core.events.seq,
        core.connected(),
        len(core._writes),
        len(core._reads),
    )


def check_quiet(m: Mesh, nid: str) -> int:
    core = m.cores[nid]
    q = core.quiet_ticks()
    before = observable(core)
    for i in range(q):
        m.clock.advance(TICK)
        core.tick()
        assert observable(core) == before, f"{nid}: quiet tick {i + 1} of {q} acted"
    return q


@pytest.mark.parametrize("seed", range(6))
def test_quiet_ticks_never_hide_an_action(seed: int) -> None:
    rnd = random.Random(seed)
    ids = ["a", "b", "c"]
    m = Mesh(ids)
    best: dict[Role, int] = {}
    tickets = []
    for _ in range(150):
        op = rnd.random()
        nid = rnd.choice(ids)
        if op < 0.6:
            m.tick()
        elif op < 0.7:
            tickets.append(m.cores[nid].propose(put(f"k{rnd.randrange(5)}", rnd.randrange(100))))
        elif op < 0.75:
            m.cores[nid].queue_write(put("q", rnd.randrange(100)))
        elif op < 0.82:
            other = rnd.choice([p for p in ids if p != nid])
            m.net.cut(nid, other)
        elif op < 0.9:
            m.net.heal()
        m.settle()
        target = rnd.choice(ids)
        q = check_quiet(m, target)
        role = m.cores[target].role
        best[role] = max(best.get(role, 0), q)
        m.settle()
    assert best.get(Role.FOLLOWER, 0) >= 3, best
    assert best.get(Role.LEADER, 0) >= 1, best


def fingerprint(core: NodeCore) -> tuple[object, ...]:
    r = core.raw.raft
    return (
        *observable(core),
        r.election_elapsed,
        r.heartbeat_elapsed,
        r.randomized_election_timeout,
        r._ticks,
        core.contact.heard,
        core.raw.committed,
    )


@pytest.mark.parametrize("seed", range(4))
def test_tick_quiet_is_the_same_as_ticking(seed: int) -> None:
    """Two meshes in lockstep (same seeds, same inputs): one ticks through
    its quiet ticks with tick(), the other with tick_quiet(); they never
    differ."""
    ids = ["a", "b", "c"]
    meshes = [Mesh(ids), Mesh(ids)]
    rnd = random.Random(seed)
    for step in range(120):
        op, nid, value = rnd.random(), rnd.choice(ids), rnd.randrange(100)
        target = rnd.choice(ids)
        for k, m in enumerate(meshes):
            if op < 0.6:
                m.tick()
            elif op < 0.7:
                m.cores[nid].propose(put("k", value))
            elif op < 0.8:
                m.net.cut(nid, target)
            elif op < 0.9:
                m.net.heal()
            m.settle()
            core = m.cores[target]
            q = core.quiet_ticks()
            m.clock.advance(q * TICK)
            if k == 0:
                for _ in range(q):
                    core.tick()
            else:
                core.tick_quiet(q)
            m.settle()
        for nid_ in ids:
            a, b = (fingerprint(m.cores[nid_]) for m in meshes)
            assert a == b, f"step {step}, {nid_}: {a} != {b}"


def test_nothing_is_deferred_while_a_request_waits_on_the_ticks() -> None:
    m = Mesh(["a", "b", "c"], request_timeout=1.0)
    f = m.follower()
    core = m.cores[f]
    assert core.quiet_ticks() > 0
    for other in m.cores:
        m.net.cut(f, other)
    ticket = core.propose(put("x", 1))
    m.settle()
    assert not ticket.done
    assert core.quiet_ticks() == 0
    m.until(ticket)
    assert isinstance(ticket.error, NoLeader)


def test_the_lost_controller_is_noticed_on_time() -> None:
    """A follower cut from its controller: its quiet ticks end by the tick
    at which the contact expires (the status event comes on time)."""
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    f = m.follower()
    core = m.cores[f]
    assert core.connected()
    m.net.cut(f, lead)
    seq = core.events.seq
    q = check_quiet(m, f)
    assert core.connected()
    # The timeout is election_ticks ticks: the quiet ones end within it.
    assert q < core.cfg.election_ticks
    for _ in range(core.cfg.election_ticks + 1 - q):
        if core.events.seq != seq:
            break
        m.clock.advance(TICK)
        core.tick()
    assert core.events.seq == seq + 1
    assert not core.connected()


# -- the runtime's timer -------------------------------------------------------


class FakeLoop:
    """Loop time and call_at only: the runtime's timer, driven by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, fn: Any) -> FakeTimer:
        t = FakeTimer(when, fn)
        self.timers.append(t)
        return t

    def pending(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled and not t.fired]

    def fire_due(self) -> None:
        for t in sorted(self.pending(), key=lambda t: t.when):
            if t.when <= self.now + 1e-9:
                t.fired = True
                t.fn()


class FakeTimer:
    def __init__(self, when: float, fn: Any) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True


def idle_node() -> tuple[MeshNode, FakeLoop, list[int]]:
    """A voter of three that hears nobody (no sockets: never started), with
    its tick grid on a fake loop and its core's ticks counted."""
    peers = {n: ("127.0.0.1", 7000 + i) for i, n in enumerate(["a", "b", "c"])}
    node = MeshNode(NodeConfig("a", "hana", b"secret", peers=peers, tick_seconds=TICK, seed=1), MemoryStorage())
    loop = FakeLoop()
    node._loop = loop  # type: ignore[assignment]
    node._tick_base = loop.now
    node.core.tick()  # its first tick: the live table's periodic work is done, for 0.5 s
    ticks = [0, 0]  # ticks run (full or quiet), of which full
    real, real_quiet = node.core.tick, node.core.tick_quiet

    def counted() -> None:
        ticks[0] += 1
        ticks[1] += 1
        real()

    def counted_quiet(n: int) -> None:
        ticks[0] += n
        real_quiet(n)

    node.core.tick = counted  # type: ignore[method-assign]
    node.core.tick_quiet = counted_quiet  # type: ignore[method-assign]
    return node, loop, ticks


def test_the_timer_fires_at_the_first_tick_that_may_act() -> None:
    node, loop, ticks = idle_node()
    quiet = node.core.quiet_ticks()
    assert quiet >= node.cfg.election_ticks - 1
    node._plan_tick()
    [timer] = loop.pending()
    assert timer.when == pytest.approx(loop.now + (quiet + 1) * TICK)
    # An input just before: the quiet ticks due run first, nothing acts.
    loop.now += (quiet + 0.5) * TICK
    node._input()
    assert ticks == [quiet, 0]  # only counted
    assert node.core.role == Role.FOLLOWER
    node._plan_tick()  # after the input (which changed nothing)
    loop.now = timer.when
    loop.fire_due()
    assert ticks == [quiet + 1, 1]
    assert node.core.role == Role.PRE_CANDIDATE  # its election timer fired on time
    # A pre-candidate waits on its votes: it ticks every tick now.
    assert node.core.quiet_ticks() >= 0
    [nxt] = loop.pending()
    assert nxt.when == pytest.approx(timer.when + (node.core.quiet_ticks() + 1) * TICK)


def test_a_request_brings_the_timer_forward() -> None:
    node, loop, _ = idle_node()
    node._plan_tick()
    [far] = loop.pending()
    node._input()
    node.core.propose(put("x", 1))  # no controller: it waits, retried on ticks
    node._plan_tick()
    assert far.cancelled
    [near] = loop.pending()
    assert near.when == pytest.approx(node._tick_base + TICK)


def test_a_stalled_loop_loses_the_ticks_it_missed() -> None:
    """As a sleeping ticker did: after a stall, one tick past the quiet
    ones, not a burst of every tick the stall covered (which would make a
    stopped follower campaign the moment it runs again)."""
    node, loop, ticks = idle_node()
    quiet = node.core.quiet_ticks()
    node._plan_tick()
    loop.now += 100 * TICK
    loop.fire_due()
    assert ticks[0] == quiet + 1
    [nxt] = loop.pending()
    assert nxt.when > loop.now


def test_a_message_that_leaves_nothing_to_do_wakes_no_ready_loop() -> None:
    """A live interest changes nothing to write or send: no ready-loop
    step, only the timer planned again. A heartbeat from a new controller
    leaves a Ready (the answer): the ready loop is woken."""
    node, loop, _ = idle_node()
    while node.core.has_ready():  # its start-up Ready, as the ready loop would
        node.core.handle_ready()
    node._events_told = node.core.events.seq
    node._plan_tick()
    node._wake.clear()
    node._on_peer_message(LiveInterest("a", "b", ()))
    assert not node._wake.is_set()
    assert loop.pending(), "the timer is planned"
    node._on_peer_message(Message(MessageType.HEARTBEAT, "a", "b", term=1))
    assert node._wake.is_set()
    assert node.core.has_ready()
