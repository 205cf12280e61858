"""Unit tests of mesh.replica.Replica over MemoryStorage, with a tiny
in-process message pump (no simulator)."""

from __future__ import annotations

import random

import pytest

from mesh.raft import ConfChange, Config, ConfState, Message, MessageDecodeError, Role
from mesh.raft.messages import ConfChangeType
from mesh.replica import ProposalOutcome, ReadyOutcome, Replica, bootstrap
from mesh.state.model import HanaState
from mesh.storage.memory import MemoryStorage
from simulations.sim.statemachine import ChainStateMachine


def make(nid: str, voters: list[str], storage: MemoryStorage | None = None, **kw: int) -> Replica:
    if storage is None:
        storage = MemoryStorage()
        bootstrap(storage, ConfState.of(voters))
    cfg = Config(id=nid, rng=random.Random(nid))
    return Replica(cfg, storage, ChainStateMachine(), **kw)


class Net:
    """Replicas exchanging messages synchronously; `down` nodes get nothing."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.r = {x.id: x for x in replicas}
        self.down: set[str] = set()
        self.outcomes: dict[str, list[ProposalOutcome]] = {x.id: [] for x in replicas}
        self.reads: dict[str, list] = {x.id: [] for x in replicas}

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            queue: list[Message] = []
            for nid, rep in self.r.items():
                if nid in self.down:
                    continue
                while rep.has_ready():
                    out: ReadyOutcome = rep.handle_ready()
                    self.outcomes[nid].extend(out.proposals)
                    self.reads[nid].extend(out.reads)
                    queue.extend(out.messages)
            if not queue:
                return
            for m in queue:
                if m.to in self.r and m.to not in self.down and m.frm not in self.down:
                    self.r[m.to].step(m)

    def elect(self, nid: str) -> None:
        self.r[nid].node.campaign()
        self.pump()
        assert self.r[nid].raft.role == Role.LEADER


def test_single_node_proposal_succeeds_with_state_machine_result() -> None:
    a = make("a", ["a"])
    net = Net([a])
    net.elect("a")
    i1 = a.propose(b"x")
    i2 = a.propose(b"y")
    net.pump()
    oks = {o.index: o for o in net.outcomes["a"]}
    assert oks[i1].ok and oks[i2].ok
    assert oks[i1].result == 1 and oks[i2].result == 2
    assert [op for _, op in a.sm.ops] == ["x", "y"]  # type: ignore[attr-defined]
    assert a.applied == i2


def test_overwritten_proposal_is_reported_failed() -> None:
    reps = [make(n, ["a", "b", "c"]) for n in "abc"]
    net = Net(reps)
    net.elect("a")
    a = net.r["a"]
    # a is cut off and accepts a proposal it can never commit.
    net.down = {"a"}
    idx = a.propose(b"doomed")
    a.handle_ready()  # persisted locally, messages lost
    for _ in range(40):  # b and c time out and elect one of them
        net.r["b"].tick()
        net.r["c"].tick()
        net.pump()
    leaders = [r for r in (net.r["b"], net.r["c"]) if r.raft.role == Role.LEADER]
    assert len(leaders) == 1
    b = leaders[0]
    b.propose(b"winner")
    net.pump()
    net.down = set()
    # b's heartbeats reach a, which truncates its entry and applies b's log.
    for _ in range(3):
        b.tick()
        net.pump()
    out = [o for o in net.outcomes["a"] if o.index == idx]
    assert out and not out[0].ok and "overwritten" in out[0].reason
    assert [op for _, op in a.sm.ops] == [op for _, op in b.sm.ops]  # type: ignore[attr-defined]
    assert "doomed" not in [op for _, op in a.sm.ops]  # type: ignore[attr-defined]


def test_snapshot_and_compaction_every_n_entries() -> None:
    a = make("a", ["a"], snapshot_every=4, keep_entries=1)
    net = Net([a])
    net.elect("a")
    for i in range(10):
        a.propose(f"op{i}".encode())
        net.pump()
    snap = a.storage.snapshot()
    assert snap.meta.index >= 8
    assert snap.meta.conf.voters == ("a",)
    assert a.storage.first_index() == snap.meta.index - 1 + 1  # one trailing entry kept
    restored = ChainStateMachine()
    restored.restore(snap.data, snap.meta.index)
    assert restored.index <= snap.meta.index and restored.ops == a.sm.ops[: len(restored.ops)]  # type: ignore[attr-defined]


def test_restart_from_crash_image_restores_state() -> None:
    a = make("a", ["a"], snapshot_every=3, keep_entries=0)
    net = Net([a])
    net.elect("a")
    for i in range(7):
        a.propose(f"op{i}".encode())
        net.pump()
    before = list(a.sm.ops)  # type: ignore[attr-defined]
    storage = a.storage.crash_image()  # type: ignore[attr-defined]
    b = make("a", ["a"], storage=storage, snapshot_every=3, keep_entries=0)
    assert b.applied == storage.snapshot().meta.index > 0
    net2 = Net([b])
    net2.elect("a")  # replays the committed tail after the snapshot
    assert b.sm.ops == before  # type: ignore[attr-defined]


def test_crash_before_sync_loses_only_the_unsynced_tail() -> None:
    a = make("a", ["a"])
    net = Net([a])
    net.elect("a")
    a.propose(b"durable")
    net.pump()
    durable_last = a.storage.last_index()
    a.propose(b"torn")
    rd = a.node.ready()
    a.persist(rd)  # written, crash before finish() syncs it
    assert a.storage.last_index() == durable_last + 1
    image = a.storage.crash_image()  # type: ignore[attr-defined]
    assert image.last_index() == durable_last


def test_read_index_is_served_once_applied() -> None:
    reps = [make(n, ["a", "b", "c"]) for n in "abc"]
    net = Net(reps)
    net.elect("a")
    net.r["a"].propose(b"w")
    net.pump()
    net.r["b"].read_index(b"r1")
    net.pump()
    reads = net.reads["b"]
    assert len(reads) == 1 and reads[0].context == b"r1"
    assert reads[0].applied >= reads[0].index >= net.r["a"].raft.log.committed - 1


# -- membership reaches the state machine (issue 12, finding 12) -----------------------


def test_finding_12_membership_changes_are_audited_on_every_node() -> None:
    """Finding 12: membership changes left no audit record. The Replica
    hands every committed conf change (with its context: who, from where)
    to the state machine's apply_conf_change; HanaState audits it, the same
    on every node, and the record survives a snapshot."""

    def make_hana(nid: str) -> Replica:
        storage = MemoryStorage()
        bootstrap(storage, ConfState.of(["a", "b", "c"]))
        return Replica(Config(id=nid, rng=random.Random(nid)), storage, HanaState(), snapshot_every=3)

    reps = [make_hana(n) for n in "abc"]
    net = Net(reps)
    net.elect("a")
    a = net.r["a"]
    cc = ConfChange(
        ConfChangeType.ADD_LEARNER, "d", context={"author": "admin", "address": "10.0.0.5", "reason": "new"}
    )
    a.propose_conf_change(cc)
    net.pump()
    a.propose(b'{"op":"put","key":"parameters/p","value":1,"time":5}')
    net.pump()
    a.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, "d", context={"author": "autopilot"}))
    net.pump()
    audits = []
    for rep in reps:
        sm = rep.sm
        assert isinstance(sm, HanaState)
        audits.append(sm.audit()["entries"])
        restored = HanaState()
        restored.restore(sm.snapshot())
        assert restored.audit() == sm.audit()
    assert audits[0] == audits[1] == audits[2]
    members = [(e["change"], e["member"], e["author"]) for e in audits[0]]
    assert members == [("bootstrap", "", ""), ("add_learner", "d", "admin"), ("remove_node", "d", "autopilot")]
    boot, added = audits[0][0], audits[0][1]
    assert boot["voters"] == ["a", "b", "c"] and boot["op"] == "membership"
    assert (added["address"], added["reason"], added["revision"]) == ("10.0.0.5", "new", 0)
    assert audits[0][2]["revision"] == 1  # after the put


def test_conf_change_context_encodes_only_when_present_and_is_bounded() -> None:
    """The context is optional and bounded; a change without one encodes
    exactly as before (old entries and new ones read alike)."""
    plain = ConfChange(ConfChangeType.ADD_VOTER, "x")
    assert plain.encode() == b'{"node":"x","type":"add_voter"}'
    with_ctx = ConfChange(ConfChangeType.ADD_VOTER, "x", context={"author": "admin"})
    assert ConfChange.decode(with_ctx.encode()) == with_ctx
    assert ConfChange.decode(plain.encode()).context == {}
    for bad in (
        b'{"type":"add_voter","node":"x","context":{"author":5}}',
        b'{"type":"add_voter","node":"x","context":[]}',
        b'{"type":"add_voter","node":"x","context":{"a":"' + b"x" * 2000 + b'"}}',
        b'{"type":"add_voter","node":"x","context":' + b'{"k":' * 2000 + b"1" + b"}" * 2000 + b"}",
    ):
        with pytest.raises(MessageDecodeError):
            ConfChange.decode(bad)
    with pytest.raises(MessageDecodeError):
        ConfChange(ConfChangeType.ADD_VOTER, "x", context={f"k{i}": "v" for i in range(17)})
