"""The live table (mesh/node/live.py), sans-IO: a manual clock, a transport
that collects frames, a proposer that applies to a HanaState at once."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from mesh.clock import ManualClock
from mesh.errors import NoLeader
from mesh.node.core import Ticket
from mesh.node.live import LiveSink, LiveSubscription, LiveTable, LiveUpdate
from mesh.state.errors import StateError
from mesh.state.model import HanaState
from mesh.transport.codec import LiveFrame, LiveInterest, LiveItem


class Wire:
    """Live values in `sent`; what the node says it wants in `interests`."""

    def __init__(self) -> None:
        self.sent: list[LiveFrame] = []
        self.interests: list[LiveInterest] = []

    def send(self, m: Any) -> None:
        (self.interests if isinstance(m, LiveInterest) else self.sent).append(m)

    def take(self) -> list[LiveFrame]:
        out, self.sent = self.sent, []
        return out


class Node:
    """One live table over its own state; `propose` applies (or fails)."""

    def __init__(self, nid: str, peers: list[str], clock: ManualClock, **kw: Any) -> None:
        self.id = nid
        self.kv = HanaState()
        self.wire = Wire()
        self.proposed: list[dict[str, Any]] = []
        self.fail_next = 0
        self.index = 0
        self.table = LiveTable(
            nid,
            clock,
            self.wire,  # type: ignore[arg-type]
            self.kv,
            peers=lambda: peers,
            leader=lambda: None,
            propose=self.propose,
            **kw,
        )

    def propose(self, command: dict[str, Any]) -> Ticket:
        command = {**command, "node": self.id}  # as the core stamps it
        self.proposed.append(command)
        t = Ticket()
        if self.fail_next:
            self.fail_next -= 1
            t._resolve(error=NoLeader("no controller"))
        else:
            t._resolve(self.apply(command))
        return t

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        self.index += 1
        result = self.kv.apply(self.index, orjson.dumps({"node": self.id, **command}))
        self.table.on_applied()
        return result


def test_values_reach_peers_and_local_subscribers_and_bad_ones_go_nowhere() -> None:
    clock = ManualClock()
    a = Node("a", ["b", "c"], clock)
    woke: list[int] = []
    sink = LiveSink("parameters/", lambda: woke.append(1))
    a.table.add_sink(sink)
    update = a.table.set({"parameters/x": 1}, "g", author="desk")
    assert isinstance(update, LiveUpdate) and update.source == "a"
    frames = a.wire.take()
    assert [f.to for f in frames] == ["b", "c"] and frames[0].items[0].key == "parameters/x"
    assert woke and sink.take() == [LiveUpdate({"parameters/x": 1}, "g", "a", update.seq)]
    for bad, code in (
        ({"nope/x": 1}, "unknown_component"),
        ({"displays/d": {"width": "x"}}, "invalid_value"),
        ({"parameters/big": "x" * 20_000}, "too_large"),
        ({}, "invalid_value"),
    ):
        with pytest.raises(StateError) as caught:
            a.table.set(bad, "g", author="desk")
        assert caught.value.code == code
    assert not a.wire.take() and not sink.pending
    assert a.table.value("parameters/x") == 1


def test_per_source_order_older_values_are_dropped_never_reordered() -> None:
    clock = ManualClock()
    b = Node("b", ["a"], clock)
    sink = LiveSink("", lambda: None)
    b.table.add_sink(sink)

    def frame(*items: tuple[str, Any, str, int]) -> LiveFrame:
        return LiveFrame("b", "a", tuple(LiveItem(k, v, s, q, "g") for k, v, s, q in items))

    b.table.receive(frame(("parameters/x", 5, "a", 5), ("parameters/y", 1, "a", 5)))
    b.table.receive(frame(("parameters/x", 3, "a", 3)))  # late: dropped
    b.table.receive(frame(("parameters/x", 4, "c", 1)))  # another source: taken
    b.table.receive(frame(("parameters/x", 6, "a", 6)))
    assert b.table.value("parameters/x") == 6 and b.table.stats["stale"] == 1
    # The subscriber (slow: it takes only now) gets the latest per key.
    assert sink.take() == [LiveUpdate({"parameters/y": 1, "parameters/x": 6}, "g", "a", 6)]


def test_silence_settles_once_and_a_settled_gesture_stays_settled_everywhere() -> None:
    clock = ManualClock()
    a, b = Node("a", ["b"], clock, settle_ms=250), Node("b", ["a"], clock)
    for i in range(10):
        a.table.set({"parameters/f": i / 10, "parameters/g": i}, "fader", author="desk")
        clock.advance(0.008)
        a.table.tick()
    frames = a.wire.take()
    for f in frames[::3]:  # b misses most values
        b.table.receive(f)
    assert not a.proposed
    clock.advance(0.25)
    a.table.tick()
    assert len(a.proposed) == 1
    settle = a.proposed[0]
    assert settle["op"] == "settle" and settle["values"] == {"parameters/f": 0.9, "parameters/g": 9}
    assert settle["gesture"] == "fader" and settle["rid"]
    # On the origin the settled keys leave the view: the state holds them.
    assert not a.table.view and a.table.value("parameters/f") == 0.9
    # b applies the settle (the log), then a late live value arrives: stale.
    sink = LiveSink("", lambda: None)
    b.table.add_sink(sink)
    b.apply(settle)
    assert b.table.value("parameters/f") == 0.9 and not b.table.view
    assert {k for u in sink.take() for k in u.values} == {"parameters/f", "parameters/g"}  # it had missed them
    for f in frames:
        b.table.receive(f)
    assert not b.table.view and b.table.value("parameters/g") == 9
    # One undo step reverts the gesture.
    b.apply({"op": "undo", "author": "desk"})
    assert b.table.value("parameters/f") is None


def test_end_settles_at_the_next_tick_and_a_failed_settle_is_retried_with_its_request_id() -> None:
    clock = ManualClock()
    a = Node("a", [], clock)
    a.table.set({"parameters/f": 1}, "g1", author="desk")
    assert a.table.end("g1", author="desk") and not a.table.end("g1", author="someone else")
    a.fail_next = 2
    a.table.tick()
    assert len(a.proposed) == 1 and a.table.settles
    clock.advance(0.6)
    a.table.tick()
    clock.advance(0.6)
    a.table.tick()
    assert len(a.proposed) == 3 and not a.table.settles
    assert len({p["rid"] for p in a.proposed}) == 1
    assert a.kv.get("parameters/f") is not None and a.table.stats["settled"] == 1


def test_settles_commit_one_at_a_time_oldest_first() -> None:
    """Simulator seed 2: gesture g1's settle failed and was retried after g2
    (same key) had settled, so g1's older value won. g2 now waits its turn."""
    clock = ManualClock()
    a = Node("a", [], clock)
    a.table.set({"parameters/f": 1}, "g1", author="desk")
    a.table.end("g1", author="desk")
    a.fail_next = 1
    a.table.tick()  # g1's settle fails once
    a.table.set({"parameters/f": 2}, "g2", author="desk")
    a.table.end("g2", author="desk")
    a.table.tick()
    assert [p["gesture"] for p in a.proposed] == ["g1"]  # g2 waits for g1
    clock.advance(0.6)
    a.table.tick()  # g1 retried, commits; g2 goes on the next tick
    a.table.tick()
    assert [p["gesture"] for p in a.proposed] == ["g1", "g1", "g2"] and not a.table.settles
    assert a.kv.get("parameters/f").value == 2  # type: ignore[union-attr]


def test_a_settle_leaves_out_keys_a_later_gesture_moved() -> None:
    """Simulator seed 20037: g1 (silent) settled after g2 (ended), and its
    older value of f overwrote g2's."""
    clock = ManualClock()
    a = Node("a", [], clock)
    a.table.set({"parameters/f": 1, "parameters/g": 1}, "g1", author="desk")
    a.table.set({"parameters/f": 2}, "g2", author="desk")
    a.table.end("g2", author="desk")
    a.table.tick()  # g2 settles f=2
    clock.advance(0.3)
    a.table.tick()  # g1 settles by silence: g only (its f is older than g2's)
    assert [(p["gesture"], p["values"]) for p in a.proposed] == [
        ("g2", {"parameters/f": 2}),
        ("g1", {"parameters/g": 1}),
    ]
    assert a.kv.get("parameters/f").value == 2  # type: ignore[union-attr]
    a.table.set({"parameters/f": 3}, "g3", author="desk")
    a.table.set({"parameters/f": 4}, "g4", author="desk")
    clock.advance(0.3)
    a.table.tick()  # g3 has nothing left to settle
    assert [p["gesture"] for p in a.proposed][2:] == ["g4"] and a.table.stats["superseded"] == 1


def test_a_stopping_node_settles_its_gestures_and_takes_no_new_value() -> None:
    """Simulator seed 501090: a set that reached a stopping node after its
    gestures were ended opened a second gesture under the same id, and the
    gesture left two history records of one key."""
    clock = ManualClock()
    a = Node("a", [], clock)
    a.table.set({"parameters/f": 1}, "g1", author="desk")
    assert a.table.end_all() == 1
    a.table.tick()
    with pytest.raises(StateError) as refused:
        a.table.set({"parameters/f": 2}, "g1", author="desk")
    assert refused.value.code == "not_ready"
    clock.advance(1.0)
    a.table.tick()
    settles = [p for p in a.proposed if p["op"] == "settle"]
    assert [p["values"] for p in settles] == [{"parameters/f": 1}]
    assert a.kv.get("parameters/f").value == 1  # type: ignore[union-attr]


def test_open_gestures_are_re_sent_and_unrefreshed_values_expire() -> None:
    clock = ManualClock()
    a, b = Node("a", ["b"], clock, settle_ms=10_000, resend_ms=500), Node("b", ["a"], clock, expire_ms=2_000)
    a.table.set({"parameters/f": 1}, "g", author="desk")
    a.wire.take()  # lost on the way
    clock.advance(0.5)
    a.table.tick()
    for f in a.wire.take():
        b.table.receive(f)
    assert b.table.value("parameters/f") == 1
    for _ in range(5):  # re-sends keep it fresh
        clock.advance(0.5)
        a.table.tick()
        for f in a.wire.take():
            b.table.receive(f)
        b.table.tick()
    assert "parameters/f" in b.table.view
    clock.advance(2.5)  # the origin went silent (died)
    b.table.tick()
    assert not b.table.view and b.table.stats["expired"] == 1


def test_bounds() -> None:
    clock = ManualClock()
    a = Node("a", [], clock, max_keys=3)
    a.table.set({f"parameters/k{i}": i for i in range(3)}, "g", author="desk")
    with pytest.raises(StateError):
        a.table.set({"parameters/k9": 1}, "g", author="desk")
    sink = LiveSink("", lambda: None, limit=2)
    for i in range(5):
        sink.push(LiveItem(f"k{i}", i, "a", i, None))
    sink.push(LiveItem("k4", 9, "a", 9, None))
    assert list(sink.pending) == ["k3", "k4"] and sink.dropped == 3 and sink.coalesced == 1


async def test_a_subscription_coalesces_for_a_slow_consumer_and_ends_on_close() -> None:
    clock = ManualClock()
    a = Node("a", [], clock)
    sub = LiveSubscription(a.table, "parameters/", asyncio.Event())
    for i in range(100):
        a.table.set({"parameters/f": i}, "g", author="desk")
    got = await anext(sub)
    assert got.values == {"parameters/f": 99}  # one update: the latest
    waiter = asyncio.ensure_future(anext(sub))
    await asyncio.sleep(0)
    sub.close()
    with pytest.raises(StopAsyncIteration):
        await waiter
    assert not a.table.sinks


def test_relay_fan_out_goes_through_the_controller() -> None:
    clock = ManualClock()
    lead = "b"
    a = LiveTable(
        "a",
        clock,
        Wire(),  # type: ignore[arg-type]
        HanaState(),
        peers=lambda: ["b", "c"],
        leader=lambda: lead,
        propose=lambda c: Ticket(),
        fanout="relay",
    )
    wire_b = Wire()
    b = LiveTable(
        "b",
        clock,
        wire_b,  # type: ignore[arg-type]
        HanaState(),
        peers=lambda: ["a", "c"],
        leader=lambda: lead,
        propose=lambda c: Ticket(),
        fanout="relay",
    )
    a.set({"parameters/x": 1}, None, author="desk")
    frames = a.transport.take()  # type: ignore[attr-defined]
    assert [f.to for f in frames] == ["b"]
    b.receive(frames[0])
    assert [f.to for f in wire_b.take()] == ["c"]


def test_three_cores_a_gesture_from_a_follower_settles_once_everywhere() -> None:
    from tests.node.test_core import TICK, Mesh

    m = Mesh(["a", "b", "c"])
    src = m.follower()
    # A subscriber on every node (a node without one is not sent values:
    # test_values_go_only_to_nodes_that_want_them).
    for c in m.cores.values():
        c.live.add_sink(LiveSink("parameters/", lambda: None))
    m.tick(3)
    logs = {nid: c.raw.last_index for nid, c in m.cores.items()}
    for i in range(1, 31):
        m.cores[src].live.set({"parameters/fader": i}, "g", author="desk")
        m.settle()
        if i % 10 == 0:
            m.tick()
    assert {c.live.value("parameters/fader") for c in m.cores.values()} == {30}
    # Nothing went into any log (or onto any disk) while the gesture was live.
    assert {nid: c.raw.last_index for nid, c in m.cores.items()} == logs
    assert all(c.kv.get("parameters/fader") is None for c in m.cores.values())
    m.tick(int(0.25 / TICK) + 2)  # silence: the origin settles
    m.tick(3)
    for core in m.cores.values():
        assert [(r.value, r.gesture) for r in core.kv.changes_since(1, "parameters/fader")] == [(30, "g")]
        assert not core.live.view and core.live.value("parameters/fader") == 30
    t = m.until(m.cores[m.leader()].propose({"op": "undo", "author": "desk"}))
    assert t.value()["undone"]["op"] == "settle"
    m.tick(3)
    assert {c.live.value("parameters/fader") for c in m.cores.values()} == {None}


def test_a_nodes_merge_window_travels_in_its_puts() -> None:
    from tests.node.test_core import Mesh, put

    m = Mesh(["a", "b", "c"], merge_ms=500)
    lead = m.leader()
    for v in range(5):
        m.until(m.cores[m.follower()].propose(put("m", v)))  # ticks of 50 ms: within the window
    for core in m.cores.values():
        assert core.kv.undo_status()["stacks"]["anonymous"]["undo"] == 1
    m.until(m.cores[lead].propose({"op": "undo"}))
    assert m.cores[lead].kv.get("parameters/m") is None


def test_a_nodes_history_coalescing_travels_in_its_puts() -> None:
    from tests.node.test_core import Mesh, put

    m = Mesh(["a", "b", "c"], merge_ms=500, coalesce_history=True)
    lead = m.leader()
    m.until(m.cores[lead].propose(put("first", 0)))  # the run below is not the oldest record held
    start = m.cores[lead].kv.revision
    for v in range(5):
        m.until(m.cores[m.follower()].propose(put("m", v)))
    for core in m.cores.values():
        records = [r for r in core.kv.changes_since(start + 1) if r.key == "parameters/m"]
        assert [(r.value, r.prev_value) for r in records] == [(4, None)]


def test_values_go_only_to_nodes_that_want_them() -> None:
    """A node says which prefixes its subscribers watch; an origin sends a
    peer only those values (everything to a peer not heard from yet), and a
    peer that starts wanting keys gets the open gestures' values at once."""
    clock = ManualClock()
    a = Node("a", ["b", "c"], clock)
    b = Node("b", ["a", "c"], clock)
    c = Node("c", ["a", "b"], clock)
    a.table.set({"parameters/x": 1}, "g", author="desk")
    assert sorted(f.to for f in a.wire.take()) == ["b", "c"]  # nothing heard yet: to everyone
    # b watches parameters/x...; c has no subscriber. They say so on a tick.
    b.table.add_sink(LiveSink("parameters/x", lambda: None))
    c.table.tick()
    said = {m.frm: m for w in (b.wire, c.wire) for m in w.interests if m.to == "a"}
    assert said["b"].prefixes == ("parameters/x",) and said["c"].prefixes == ()
    a.table.receive_interest(said["c"])
    assert not a.wire.take()  # c wanted nothing new
    a.table.receive_interest(said["b"])  # b wanted everything before (not heard): nothing new either
    assert not a.wire.take()
    a.table.set({"parameters/x": 2, "parameters/y": 3}, "g", author="desk")
    frames = a.wire.take()
    assert [(f.to, [i.key for i in f.items]) for f in frames] == [("b", ["parameters/x"])]
    b.table.receive(frames[0])
    assert b.table.value("parameters/x") == 2
    # c gets a subscriber for parameters/y: told at once, and a sends it
    # the open gesture's current value of y without waiting for a new one.
    c.wire.interests.clear()
    c.table.add_sink(LiveSink("parameters/y", lambda: None))
    (told,) = [m for m in c.wire.interests if m.to == "a"]
    a.table.receive_interest(told)
    frames = a.wire.take()
    assert [(f.to, [(i.key, i.value) for i in f.items]) for f in frames] == [("c", [("parameters/y", 3)])]
    # A peer that still sends what nobody wants is reminded (once a second).
    b.wire.interests.clear()
    b.table.receive(LiveFrame("b", "c", (LiveItem("parameters/z", 1, "c", 1, None),)))
    b.table.receive(LiveFrame("b", "c", (LiveItem("parameters/z", 2, "c", 2, None),)))
    assert [(m.to, m.prefixes) for m in b.wire.interests] == [("c", ("parameters/x",))]
    # The last subscriber gone: "nothing" is said, and a stops sending.
    b.wire.interests.clear()
    b.table.remove_sink(b.table.sinks[0])
    (stop,) = [m for m in b.wire.interests if m.to == "a"]
    assert stop.prefixes == ()
    a.table.receive_interest(stop)
    a.table.set({"parameters/x": 4}, "g", author="desk")
    assert not a.wire.take()  # nobody wants x now
    a.table.set({"parameters/y": 5}, "g", author="desk")
    assert [f.to for f in a.wire.take()] == ["c"]


def test_a_nodes_interest_is_its_subscribers_prefixes() -> None:
    clock = ManualClock()
    a = Node("a", ["b"], clock)
    assert a.table.interest() == ()
    for prefix in ("parameters/a/", "parameters/a/b", "parameters/c"):
        a.table.add_sink(LiveSink(prefix, lambda: None))
    assert a.table.interest() == ("parameters/a/", "parameters/c")  # a/b is under a/
    a.table.add_sink(LiveSink("", lambda: None))
    assert a.table.interest() is None  # everything
