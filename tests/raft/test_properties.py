"""Random schedules against the Raft safety properties.

Hypothesis draws a schedule for 3-5 nodes: ticks, deliveries in any order,
drops, duplicates, partitions, crashes (also between a write and its fsync),
restarts and proposals. After every step: at most one leader per term, log
matching, and no two nodes apply different entries at one index. At the
end the network heals, everyone restarts, and after enough ticks all nodes
must hold identical committed logs containing every entry that was ever
applied anywhere (an acknowledged write: it was committed on a majority).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.raft import ConfState, Entry, ProposalDropped, Role

from .cluster import Cluster, NodeOptions

OPTS = NodeOptions(election_tick=4, heartbeat_tick=1)


@dataclass
class World:
    c: Cluster
    ids: list[str]
    leaders: dict[int, str] = field(default_factory=dict)
    # index -> (term, data) of every entry applied anywhere.
    applied: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    proposals: int = 0

    @classmethod
    def start(cls, n: int, opts: NodeOptions = OPTS) -> World:
        c = Cluster()
        ids = [str(i) for i in range(1, n + 1)]
        conf = ConfState.of(ids)
        for nid in ids:
            c.add_node(nid, opts, conf)
        return cls(c, ids)

    # -- driving

    def handle(self, nid: str, sync: bool = True) -> None:
        if not self.c.has_ready(nid):
            return
        self.c.persist(nid)
        if sync:
            self.finish(nid)

    def finish(self, nid: str) -> None:
        h = self.c.finish(nid)
        for e in h.applied:
            self.record_applied(nid, e)

    def record_applied(self, nid: str, e: Entry) -> None:
        seen = self.applied.setdefault(e.index, (e.term, e.data))
        assert seen == (e.term, e.data), f"node {nid} applied {e} at {e.index}, another node applied {seen}"

    def deliver(self, k: int, duplicate: bool = False) -> None:
        if not self.c.inflight:
            return
        k %= len(self.c.inflight)
        m = self.c.inflight[k] if duplicate else self.c.inflight.pop(k)
        self.c.deliver(m)

    def propose(self, nid: str) -> None:
        node = self.c.nodes[nid]
        if node.down:
            return
        self.proposals += 1
        with contextlib.suppress(ProposalDropped):
            node.raw.propose(f"p{self.proposals}".encode())

    # -- invariants

    def check(self) -> None:
        up = self.c.up()
        for n in up:
            r = n.raw.raft
            if r.role == Role.LEADER:
                other = self.leaders.setdefault(r.term, n.id)
                assert other == n.id, f"two leaders in term {r.term}: {other} and {n.id}"
        logs = {n.id: {e.index: e.term for e in self.c.log_entries(n.id)} for n in up}
        ids = sorted(logs)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                la, lb = logs[a], logs[b]
                common = [ix for ix in la if ix in lb and la[ix] == lb[ix]]
                if not common:
                    continue
                top = max(common)
                for ix in range(1, top + 1):
                    if ix in la and ix in lb:
                        assert la[ix] == lb[ix], f"log matching: {a},{b} agree at {top} but differ at {ix}"

    # -- the liveness phase

    def converge(self, rounds: int = 300) -> None:
        self.c.heal()
        for nid in self.ids:
            n = self.c.nodes[nid]
            if n.outstanding is not None:
                self.finish(nid)
            if n.down:
                self.c.take(nid)
                self.c.restart(nid)
        for _ in range(rounds):
            for nid in self.ids:
                self.c.nodes[nid].raw.tick()
            self.stabilize()
            self.check()
            if self.converged():
                return
        raise AssertionError("no convergence: " + repr([self.c.nodes[i].raw.raft.status() for i in self.ids]))

    def stabilize(self) -> None:
        for _ in range(200):
            moved = False
            for nid in self.ids:
                if self.c.has_ready(nid):
                    self.handle(nid)
                    moved = True
            while self.c.inflight:
                self.c.deliver(self.c.inflight.pop(0))
                moved = True
            if not moved:
                return
        raise AssertionError("stabilize did not settle")

    def converged(self) -> bool:
        rafts = [self.c.nodes[i].raw.raft for i in self.ids]
        leaders = [r for r in rafts if r.role == Role.LEADER]
        if len(leaders) != 1:
            return False
        last = leaders[0].log.last_index()
        return all(r.log.committed == last and r.log.applied == last for r in rafts)

    def final_checks(self) -> None:
        logs = []
        for nid in self.ids:
            log = self.c.nodes[nid].raw.raft.log
            logs.append([(e.index, e.term, e.data) for e in log.slice(1, log.committed + 1)])
        assert all(lg == logs[0] for lg in logs), "committed logs differ after convergence"
        committed = {ix: (t, d) for ix, t, d in logs[0]}
        for ix, seen in self.applied.items():
            assert committed.get(ix) == seen, f"acknowledged entry {ix} {seen} lost: now {committed.get(ix)}"


@st.composite
def schedules(draw: st.DrawFn) -> tuple[int, list[tuple[object, ...]]]:
    n = draw(st.integers(3, 5))
    node = st.sampled_from([str(i) for i in range(1, n + 1)])
    step = st.one_of(
        st.tuples(st.just("round"), st.integers(1, 8)),
        st.tuples(st.just("round"), st.integers(1, 3)),
        st.tuples(st.just("round"), st.integers(4, 12)),
        st.tuples(st.just("propose-leader"), st.integers(1, 3)),
        st.tuples(st.just("tick"), node, st.integers(1, 6)),
        st.tuples(st.just("ready"), node, st.booleans()),
        st.tuples(st.just("ready"), node, st.just(True)),
        st.tuples(st.just("sync"), node),
        st.tuples(st.just("deliver"), st.integers(0, 50)),
        st.tuples(st.just("deliver"), st.integers(0, 50)),
        st.tuples(
            st.just("deliver-all"),
        ),
        st.tuples(st.just("drop"), st.integers(0, 50)),
        st.tuples(st.just("dup"), st.integers(0, 50)),
        st.tuples(st.just("propose"), node),
        st.tuples(st.just("propose-leader"), st.integers(1, 3)),
        st.tuples(st.just("partition"), st.lists(node, min_size=1, max_size=2, unique=True)),
        st.tuples(
            st.just("heal"),
        ),
        st.tuples(st.just("crash"), node),
        st.tuples(st.just("restart"), node),
    )
    return n, draw(st.lists(step, min_size=30, max_size=120))


def run_schedule(n: int, steps: list[tuple[object, ...]]) -> World:
    w = World.start(n)
    c = w.c
    for step in steps:
        kind = step[0]
        if kind == "round":
            # Everybody ticks, handles its Ready and gets its messages: the
            # ordinary pace that lets elections finish between the faults.
            for _ in range(int(step[1])):  # type: ignore[call-overload]
                for nid in w.ids:
                    if not c.nodes[nid].down:
                        c.nodes[nid].raw.tick()
                for _ in range(3):
                    for nid in w.ids:
                        w.handle(nid)
                    pending, c.inflight = c.inflight, []
                    for m in pending:
                        c.deliver(m)
                    w.check()
        elif kind == "propose-leader":
            for _ in range(int(step[1])):  # type: ignore[call-overload]
                for nid in w.ids:
                    if not c.nodes[nid].down and c.nodes[nid].raw.raft.role == Role.LEADER:
                        w.propose(nid)
        elif kind == "tick":
            nid, count = str(step[1]), int(step[2])  # type: ignore[call-overload]
            if not c.nodes[nid].down:
                for _ in range(count):
                    c.nodes[nid].raw.tick()
        elif kind == "ready":
            nid = str(step[1])
            if not c.nodes[nid].down:
                w.handle(nid, sync=bool(step[2]))
        elif kind == "sync":
            nid = str(step[1])
            if not c.nodes[nid].down and c.nodes[nid].outstanding is not None:
                w.finish(nid)
        elif kind == "deliver":
            w.deliver(int(step[1]))  # type: ignore[call-overload]
        elif kind == "deliver-all":
            while c.inflight:
                c.deliver(c.inflight.pop(0))
        elif kind == "drop":
            if c.inflight:
                c.inflight.pop(int(step[1]) % len(c.inflight))  # type: ignore[call-overload]
        elif kind == "dup":
            w.deliver(int(step[1]), duplicate=True)  # type: ignore[call-overload]
        elif kind == "propose":
            w.propose(str(step[1]))
        elif kind == "partition":
            c.heal()
            c.partition([[str(x) for x in step[1]]])  # type: ignore[union-attr]
        elif kind == "heal":
            c.heal()
        elif kind == "crash":
            c.crash(str(step[1]))
            c.take(str(step[1]))
        elif kind == "restart":
            nid = str(step[1])
            if c.nodes[nid].down:
                c.take(nid)
                c.restart(nid)
        w.check()
    return w


@pytest.mark.slow
@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(schedules())
def test_random_schedules_are_safe_and_converge(schedule: tuple[int, list[tuple[object, ...]]]) -> None:
    n, steps = schedule
    w = run_schedule(n, steps)
    w.converge()
    w.final_checks()
    # Liveness after healing: a new write commits everywhere.
    leader = next(i for i in w.ids if w.c.nodes[i].raw.raft.role == Role.LEADER)
    w.c.nodes[leader].raw.propose(b"final")
    w.stabilize()
    for nid in w.ids:
        assert w.c.nodes[nid].applied[w.c.nodes[leader].raw.raft.log.last_index()] == b"final"


def test_busy_schedule_commits_and_survives_a_leader_crash() -> None:
    """A fixed schedule, so the property test's machinery itself is known to
    see progress (a broken driver could make every random run trivially safe)."""
    w = World.start(3)
    w.converge()
    leader = next(i for i in w.ids if w.c.nodes[i].raw.raft.role == Role.LEADER)
    for _ in range(5):
        w.propose(leader)
    w.stabilize()
    assert sorted(d for _, d in w.applied.values() if d.startswith(b"p")) == [b"p1", b"p2", b"p3", b"p4", b"p5"]
    w.c.crash(leader)
    w.converge()
    w.final_checks()
    assert w.c.nodes[leader].down is False  # converge restarted it
    new_leader = next(i for i in w.ids if w.c.nodes[i].raw.raft.role == Role.LEADER)
    assert w.c.nodes[new_leader].raw.raft.term > w.c.nodes[leader].raw.raft.log.term(2)


def test_the_checkers_can_fail() -> None:
    """Plant violations and make sure the invariant checks notice them."""
    w = World.start(3)
    w.converge()
    leader = next(i for i in w.ids if w.c.nodes[i].raw.raft.role == Role.LEADER)
    other = next(i for i in w.ids if i != leader)
    r = w.c.nodes[other].raw.raft
    r.role = Role.LEADER
    try:
        w.check()
    except AssertionError as exc:
        assert "two leaders" in str(exc)
    else:
        raise AssertionError("two leaders in one term went unnoticed")
    r.role = Role.FOLLOWER
    index = max(w.applied)
    term, _ = w.applied[index]
    try:
        w.record_applied(other, Entry(index, term, b"something else"))
    except AssertionError as exc:
        assert "applied" in str(exc)
    else:
        raise AssertionError("divergent apply went unnoticed")
