"""The node core (mesh/node/core.py) in memory: several cores over the
in-memory transport twin and one manual clock, driven by hand. No sockets,
no asyncio, no sleeps: every step is explicit."""

from __future__ import annotations

import random
from typing import Any

import pytest

from mesh.clock import ManualClock
from mesh.errors import Gone, NoLeader, NotLeader, Timeout, TooLarge
from mesh.node.config import NodeConfig
from mesh.node.core import NodeCore, Ticket
from mesh.raft import ConfChange, ConfChangeType, Message, MessageType, Role
from mesh.storage.memory import MemoryStorage
from mesh.transport.codec import ForwardRequest, ForwardResponse
from mesh.transport.memory import MemoryNetwork

TICK = 0.05


class Mesh:
    def __init__(self, ids: list[str], voters: list[str] | None = None, **overrides: Any) -> None:
        self.net = MemoryNetwork()
        self.clock = ManualClock()
        self.cores: dict[str, NodeCore] = {}
        self.stores: dict[str, MemoryStorage] = {}
        voters = voters if voters is not None else ids
        for n, nid in enumerate(ids):
            peers = {v: ("127.0.0.1", 7000 + i) for i, v in enumerate(voters)} if nid in voters else {}
            cfg = NodeConfig(nid, "hana", b"secret", peers=peers, tick_seconds=TICK, **overrides)
            self.add(nid, cfg, seed=n)
        # Ready handled but held before finish (a hung fsync), by node.
        self.held: set[str] = set()

    def add(self, nid: str, cfg: NodeConfig, seed: int = 99) -> NodeCore:
        t = self.net.transport(nid, self.clock)
        self.stores[nid] = MemoryStorage()
        core = NodeCore(cfg, self.stores[nid], t, self.clock, rng=random.Random(seed), boot_id=f"boot{seed}")
        t.on_message = core.receive
        t.on_unreachable = core.report_unreachable
        t.on_snapshot_status = core.report_snapshot
        t.on_peer_closed = core.peer_closed
        self.cores[nid] = core
        return core

    def settle(self) -> None:
        for _ in range(1000):
            moved = self.net.deliver_all() > 0
            for nid, core in self.cores.items():
                while nid not in self.held and not core.stopping and core.has_ready():
                    core.handle_ready()
                    moved = True
            if not moved:
                return
        raise AssertionError("no quiet state after 1000 rounds")

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.clock.advance(TICK)
            for core in self.cores.values():
                core.tick()
            self.settle()

    def leader(self) -> str:
        for _ in range(200):
            leaders = [nid for nid, c in self.cores.items() if c.role == Role.LEADER]
            if leaders and all(c.raw.lead == leaders[0] for c in self.cores.values() if c.raw.is_member(c.id)):
                return leaders[0]
            self.tick()
        raise AssertionError("no leader")

    def follower(self) -> str:
        lead = self.leader()
        return next(nid for nid in self.cores if nid != lead)

    def until(self, ticket: Ticket, ticks: int = 400) -> Ticket:
        for _ in range(ticks):
            if ticket.done:
                return ticket
            self.tick()
        raise AssertionError("ticket never resolved")


def put(key: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {"op": "put", "key": f"parameters/{key}", "value": value, **extra}


def records(core: NodeCore, key: str) -> list[Any]:
    return [r.value for r in core.kv.changes_since(1, f"parameters/{key}")]


def test_writes_on_the_leader_and_through_a_follower_return_the_state_machine_result() -> None:
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    first = m.until(m.cores[lead].propose(put("x", 1)))
    assert first.value()["version"] == 1
    second = m.until(m.cores[m.follower()].propose(put("x", 2)))
    assert second.value()["version"] == 2 and second.value()["key"] == "parameters/x"
    m.tick(3)
    assert {tuple(records(c, "x")) for c in m.cores.values()} == {(1, 2)}


def test_heartbeats_leave_on_the_tick_without_a_ready() -> None:
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    core = m.cores[lead]
    for _ in range(core.cfg.heartbeat_ticks):
        m.clock.advance(TICK)
        core.tick()
    sent = [x for x in m.net.queue if isinstance(x, Message)]
    assert any(x.type == MessageType.HEARTBEAT for x in sent)
    assert not core.raw.take_urgent()  # all handed to the transport already


def test_unanswered_forward_then_no_controller_is_unknown_never_refused() -> None:
    """CHANGELOG "Fixed": the forward reached the controller (appended), its
    answer was lost, then no controller was reachable until the deadline:
    the write may commit, so the answer is Timeout (504), not NoLeader."""
    m = Mesh(["a", "b", "c"], request_timeout=2.0, forward_timeout=0.3)
    lead = m.leader()
    f = m.follower()
    ticket = m.cores[f].propose(put("lost-answer", 1))
    # The request reaches the controller; everything back to f is cut.
    m.net.cut(lead, f, both=False)
    m.settle()
    m.net.cut(f, lead)
    m.until(ticket)
    assert isinstance(ticket.error, Timeout), ticket.error
    # The write did commit on the majority side: a 503 would have lied.
    assert records(m.cores[lead], "lost-answer") == [1]


def test_forward_that_never_left_is_a_definite_refusal() -> None:
    """A forward the transport refused at once certainly reached no log:
    with no controller until the deadline, the answer is NoLeader (503)."""
    m = Mesh(["a", "b", "c"], request_timeout=1.0)
    lead = m.leader()
    f = m.follower()
    m.net.cut(f, lead)
    ticket = m.until(m.cores[f].propose(put("never-sent", 1)))
    assert isinstance(ticket.error, NoLeader), ticket.error
    m.net.heal()
    m.tick(20)
    assert records(m.cores[lead], "never-sent") == []


def test_a_retried_forward_keeps_its_request_id_and_applies_once() -> None:
    """The controller appends a forward, the answer is lost; the follower
    tries again (same request id): the write is applied once, and the
    retry is answered with the first result."""
    m = Mesh(["a", "b", "c"], forward_timeout=0.2)
    lead = m.leader()
    f = m.follower()
    core = m.cores[f]
    ticket = core.propose(put("once", 1))
    m.net.cut(lead, f, both=False)
    m.settle()  # appended at the controller; the answer is lost
    for _ in range(40):  # the forward times out and is sent again (its answer lost too)
        m.tick()
        if copies(m.stores[lead], b"parameters/once") >= 2:
            break
    assert copies(m.stores[lead], b"parameters/once") >= 2
    m.net.heal()
    m.until(ticket)
    assert ticket.value()["version"] == 1
    m.tick(3)
    for c in m.cores.values():
        assert records(c, "once") == [1]
        assert c.kv.get("parameters/once").version == 1  # type: ignore[union-attr]


def copies(store: MemoryStorage, needle: bytes) -> int:
    """Log entries holding `needle`."""
    return sum(1 for e in store.entries(store.first_index(), store.last_index() + 1) if needle in e.data)


def test_rejected_forward_is_final_and_reaches_no_log() -> None:
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    f = m.follower()
    before = m.cores[lead].raw.last_index
    # A command the follower's API would refuse, sent to the controller anyway.
    m.cores[f].transport.send(ForwardRequest(lead, f, 999, b'{"op":"put","key":"nope/x","value":1}'))
    answers: list[ForwardResponse] = []
    m.cores[f].transport.on_message = lambda x: answers.append(x) if isinstance(x, ForwardResponse) else None  # type: ignore[attr-defined]
    m.net.deliver_all()
    m.net.deliver_all()
    assert answers and answers[0].rejection is not None and answers[0].rejection["code"] == "unknown_component"
    assert m.cores[lead].raw.last_index == before


def test_forward_from_a_non_member_gets_no_answer_and_no_entry() -> None:
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    stranger = m.add("z", NodeConfig("z", "hana", b"secret", tick_seconds=TICK))
    before = m.cores[lead].raw.last_index
    stranger.transport.send(ForwardRequest(lead, "z", 1, b'{"op":"put","key":"parameters/z","value":1}'))
    m.settle()
    assert m.cores[lead].raw.last_index == before
    assert m.cores[lead].metrics.refused == {"not_member": 1}  # type: ignore[attr-defined]
    # And a write on the stranger itself is refused at once, definitely.
    t = stranger.propose(put("z", 1))
    assert t.done and isinstance(t.error, NoLeader) and "not a member" in str(t.error)


def test_overwritten_entry_fails_the_write_definitely() -> None:
    """An entry the leader appended but could not commit is replaced after a
    leader change: the write failed for sure (NoLeader, retry)."""
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    others = [n for n in m.cores if n != lead]
    for o in others:
        m.net.cut(lead, o)
    ticket = m.cores[lead].propose(put("doomed", 1))
    m.settle()
    for _ in range(100):
        m.tick()
        if any(m.cores[o].role == Role.LEADER for o in others):
            break
    new = next(o for o in others if m.cores[o].role == Role.LEADER)
    m.until(m.cores[new].propose(put("winner", 1)))
    m.net.heal()
    m.until(ticket)
    assert isinstance(ticket.error, NoLeader) and "replaced" in str(ticket.error)


def test_linearizable_read_on_a_follower_and_its_failure_when_cut_off() -> None:
    m = Mesh(["a", "b", "c"], request_timeout=1.0)
    lead = m.leader()
    f = m.follower()
    m.until(m.cores[lead].propose(put("r", 1)))
    read = m.until(m.cores[f].read(True))
    assert read.error is None and m.cores[f].kv.get("parameters/r") is not None
    assert m.cores[f].read(False).done  # local reads need nothing
    for o in m.cores:
        if o != f:
            m.net.cut(f, o)
    cut = m.until(m.cores[f].read(True))
    assert isinstance(cut.error, NoLeader)


def test_stale_reads_bug_skips_the_barrier_and_unknown_bugs_are_refused() -> None:
    m = Mesh(["a", "b", "c"], inject_bug="stale_reads")
    f = m.follower()
    for o in m.cores:
        if o != f:
            m.net.cut(f, o)
    assert m.cores[f].read(True).done
    with pytest.raises(ValueError, match="unknown bug"):
        Mesh(["a"], inject_bug="no_such_bug")


def test_ack_unreplicated_bug_commits_on_the_leaders_copy_alone() -> None:
    m = Mesh(["a", "b", "c"], inject_bug="ack_unreplicated")
    lead = m.leader()
    for o in m.cores:
        if o != lead:
            m.net.cut(lead, o)
    ticket = m.until(m.cores[lead].propose(put("unsafe", 1)), ticks=5)
    assert ticket.value()["version"] == 1  # acknowledged with no follower holding it


def test_watch_cursor_hands_out_each_record_once_in_order() -> None:
    m = Mesh(["a"])
    core = m.cores[m.leader()]
    m.until(core.propose(put("w", 0)))
    cursor = core.open_watch("parameters/", 1)
    assert [r.value for r in cursor.take()] == [0] and not cursor.pending()
    for i in range(1, 4):
        m.until(core.propose(put("w", i)))
    assert cursor.pending()
    assert [r.revision for r in cursor.take()] == [2, 3, 4]
    assert cursor.take() == []
    # Resuming elsewhere from the last revision seen repeats only that one.
    assert [r.revision for r in core.open_watch("parameters/", 4).take()] == [4]


def test_watch_from_compacted_history_is_gone() -> None:
    m = Mesh(["a"], history_limit=2)
    core = m.cores[m.leader()]
    for i in range(5):
        m.until(core.propose(put("g", i)))
    with pytest.raises(Gone):
        core.open_watch("parameters/", 1).take()


def test_handover_moves_leadership_to_the_best_successor() -> None:
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    target = m.cores[lead].handover()
    assert target is not None and target != lead
    m.tick(10)
    assert m.cores[target].role == Role.LEADER
    assert m.cores[lead].handover() is None  # not the leader any more


def test_leader_with_a_hung_fsync_steps_down() -> None:
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    core = m.cores[lead]
    ticket = core.propose(put("stuck", 1))
    rd = core.ready()  # written; its fsync never returns
    assert rd.must_sync
    m.held.add(lead)
    m.tick(core.cfg.election_ticks + 1)
    assert core.role != Role.LEADER
    m.held.clear()
    core.sync()
    core.finish(rd)
    m.until(ticket)  # resolved one way or another, never left hanging


def test_membership_change_on_the_leader_only() -> None:
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    with pytest.raises(NotLeader):
        m.cores[m.follower()].change_membership(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    done = m.until(m.cores[lead].change_membership(ConfChange(ConfChangeType.ADD_LEARNER, "d")))
    assert "d" in done.value()["conf"]["learners"]


def test_too_large_is_refused_before_anything() -> None:
    m = Mesh(["a"])
    core = m.cores[m.leader()]
    with pytest.raises(TooLarge):
        core.propose(put("big", "x" * (17 << 20)))
    assert core.pending() == 0


def test_shutdown_answers_everything_pending() -> None:
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    f = m.follower()
    for o in m.cores:
        if o != f:
            m.net.cut(f, o)
    appended = m.cores[lead].propose(put("s", 1))  # in the leader's log, not committed
    m.cores[lead].ready()
    m.held.add(lead)
    forwarded = m.cores[f].propose(put("s", 2))
    m.cores[lead].shutdown()
    m.cores[f].shutdown()
    assert isinstance(appended.error, Timeout)
    assert forwarded.done and forwarded.error is not None


class SkewedClock:
    """A node's view of the shared manual clock, its wall clock `skew_ms` off."""

    def __init__(self, base: ManualClock, skew_ms: int) -> None:
        self.base = base
        self.skew_ms = skew_ms

    def monotonic(self) -> float:
        return self.base.monotonic()

    def wall_ms(self) -> int:
        return self.base.wall_ms() + self.skew_ms


def test_a_new_controller_appends_only_after_applying_its_predecessors_entries() -> None:
    """Found by the whole-node simulator (seed 93): a new controller whose
    wall clock is behind stamped a write before it had applied the entries
    of the previous term, so its hybrid-logical-clock stamp was older than
    theirs and last-writer-wins skipped the later write ("superseded").
    It now holds writes until its own term's first entry is applied."""
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    followers = [n for n in m.cores if n != lead]
    m.cores[lead].clock = SkewedClock(m.clock, 5_000)  # type: ignore[assignment]
    for f in followers:
        m.cores[f].clock = SkewedClock(m.clock, -5_000)  # type: ignore[assignment]
    first = m.cores[lead].propose(put("lww", 1))
    # The entry reaches every log and commits on the leader, but the leader
    # is cut off before any follower learns that it committed.
    m.cores[lead].handle_ready()
    m.net.deliver_all()
    for f in followers:
        m.cores[f].handle_ready()
    for f in followers:
        m.net.cut(lead, f, both=False)
    m.net.deliver_all()  # the acknowledgements
    m.cores[lead].handle_ready()
    assert first.done and first.value()["version"] == 1
    for f in followers:
        m.net.cut(f, lead, both=False)
    # A follower is elected and takes a write the moment it leads, before
    # it applied anything of its term.
    new = None
    for _ in range(100):
        m.clock.advance(TICK)
        for f in followers:
            m.cores[f].tick()
        m.net.deliver_all()
        new = next((f for f in followers if m.cores[f].role == Role.LEADER), None)
        if new is not None:
            break
        for f in followers:
            while m.cores[f].has_ready():
                m.cores[f].handle_ready()
    assert new is not None
    core = m.cores[new]
    assert core.raw.term_at(core.applied) != core.raw.term  # its term's first entry is not applied yet
    second = core.propose(put("lww", 2))
    m.until(second)
    assert second.value().get("superseded") is None, second.value()
    assert core.kv.get("parameters/lww").value == 2  # type: ignore[union-attr]


def test_an_answer_to_a_forward_of_an_earlier_life_resolves_nothing_now() -> None:
    """Found by the whole-node simulator (seeds 863 and 1245 of 2,000): a
    follower forwarded a write, restarted, and forwarded another under the
    same forward id (ids began at 1 in every life); the controller's late
    answer to the first was taken for the second, whose client got the
    first write's result. Forward ids now start where the boot id says."""
    m = Mesh(["a", "b", "c"])
    m.leader()
    f = m.follower()
    answers: list[ForwardResponse] = []
    transport = m.net.nodes[f]
    old = m.cores[f]

    def record(x: object) -> None:
        if isinstance(x, ForwardResponse):
            answers.append(x)
        old.receive(x)  # type: ignore[arg-type]

    transport.on_message = record
    first = m.until(old.propose(put("old-life", 1)))
    assert first.value()["key"] == "parameters/old-life" and len(answers) == 1
    # The follower restarts on its store with a new boot id, forwards again,
    # and the old answer arrives once more (late, from a peer's queue).
    new = NodeCore(old.cfg, m.stores[f], transport, m.clock, rng=random.Random(5), boot_id="second-life")
    transport.on_message = new.receive
    transport.on_unreachable = new.report_unreachable
    m.cores[f] = new
    m.tick(3)
    second = new.propose(put("new-life", 2))
    new.receive(answers[0])
    m.until(second)
    assert second.value()["key"] == "parameters/new-life"


def test_a_voter_behind_on_membership_answers_the_candidates_of_a_newer_configuration() -> None:
    """Found by the whole-node simulator (seed 3073): a voter that missed a
    membership change dialled only the members it knew, so it could not
    answer the candidates of the new configuration, and with another voter
    gone no leader was ever elected. While it knows no leader, it now also
    dials candidates whose logs are at least as recent as its own."""
    m = Mesh(["a", "b", "c", "d"], voters=["a", "b", "c"])
    lead = m.leader()
    lagging, removed = [n for n in ("a", "b", "c") if n != lead]
    for o in m.cores:
        if o != lagging:
            m.net.cut(lagging, o)
    core = m.cores[lead]
    for cc in (
        ConfChange(ConfChangeType.ADD_LEARNER, "d"),
        ConfChange(ConfChangeType.PROMOTE_LEARNER, "d"),
        ConfChange(ConfChangeType.REMOVE_NODE, removed),
    ):
        m.until(core.change_membership(cc)).value()
    assert "d" not in m.cores[lagging].raw.conf_state().members()  # it missed all three
    # The leader and the removed voter go away; the lagging voter comes back.
    for gone in (lead, removed):
        m.cores[gone].shutdown()
        for o in m.cores:
            if o != gone:
                m.net.cut(gone, o)
    m.net.blocked = {(a, b) for a, b in m.net.blocked if lagging not in (a, b) or {a, b} & {lead, removed}}
    for _ in range(200):
        m.tick()
        if any(m.cores[n].role == Role.LEADER for n in (lagging, "d")):
            break
    assert m.cores["d"].role == Role.LEADER or m.cores[lagging].role == Role.LEADER
    m.tick(5)
    assert "d" in m.cores[lagging].raw.conf_state().voters


def test_a_refusal_after_an_unanswered_copy_is_unknown() -> None:
    """Found by the whole-node simulator (seed 4979): a conditional write was
    forwarded twice (the first answer was lost); the copy whose answer came
    was refused (409), and the first copy, reordered behind it, applied
    later, when the version matched: the client had been told "nothing
    happened". The state machine remembers only results that changed
    something, so after an unanswered copy a refusal is an unknown outcome."""
    m = Mesh(["a", "b", "c"], forward_timeout=0.2)
    lead = m.leader()
    f = m.follower()
    ticket = m.cores[f].propose(put("cas", 1, expected_version=7))
    m.net.cut(lead, f, both=False)
    m.settle()  # the first copy is appended (and refused); its answer is lost
    for _ in range(40):
        m.tick()
        if copies(m.stores[lead], b"parameters/cas") >= 2:
            break
    m.net.heal()
    m.until(ticket)
    assert isinstance(ticket.error, Timeout), ticket.result
    # Without an unanswered copy the refusal is definite.
    direct = m.until(m.cores[f].propose(put("cas", 1, expected_version=7)))
    assert direct.value()["error"]["code"] == "version_conflict"
