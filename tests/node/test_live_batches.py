"""The live table's per-batch shortcuts (mesh/node/live.py) give what the
per-value path gives: a batch's validation in one pass, the key cache (per
registry), this node's own floors, a sink's held batch, a peer queue's
held batch."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.clock import ManualClock
from mesh.node.live import MAX_GESTURE_KEYS, MAX_LIVE_VALUE_BYTES, LiveSink, LiveTable, LiveUpdate
from mesh.state.commands import check_put_value
from mesh.state.components import DEFAULT_REGISTRY, Component, Schema, t
from mesh.state.errors import StateError
from mesh.transport.codec import LiveItem
from mesh.transport.tcp import TcpTransport, TransportConfig, _PeerSender
from tests.node.test_live import Node

KEYS = [f"parameters/p{i}" for i in range(4)]


class _Float(float):
    """A float subclass (numpy's float64 is one): not JSON to the state."""


def _refusal(table: LiveTable, values: dict[str, Any]) -> tuple[str, str] | None:
    try:
        table.validate(values, "g", "desk")
    except StateError as exc:
        return exc.code, str(exc)
    return None


def _key_by_key(values: dict[str, Any]) -> tuple[str, str] | None:
    """The checks of a known key, one key at a time (as before batches)."""
    try:
        for key, value in values.items():
            check_put_value(DEFAULT_REGISTRY.component_of(key), key, value)
            size = len(orjson.dumps(value)) if isinstance(value, (str, list, dict)) else 0
            if size > MAX_LIVE_VALUE_BYTES:
                raise StateError(
                    "too_large",
                    f"live value of {key} is {size} bytes (limit {MAX_LIVE_VALUE_BYTES}); write it with a PUT",
                )
    except StateError as exc:
        return exc.code, str(exc)
    return None


@pytest.mark.parametrize(
    "bad",
    [
        math.nan,
        math.inf,
        1 << 70,
        _Float(0.5),
        {"deep": [[[[{}]]]] * 2},
        "x" * 20_000,
        [1, math.nan],
        object(),
    ],
    ids=["nan", "inf", "big-int", "float-subclass", "nested-ok", "long-string", "nan-inside", "object"],
)
def test_a_batch_of_known_keys_is_refused_exactly_as_one_checked_key_by_key(bad: Any) -> None:
    """A set of known keys is checked as a batch: the same answer as the
    checks of each key (a batch check that let NaN through fails here),
    and the same code as the first set of the keys (the state machine's
    prevalidate) gives."""
    clock = ManualClock()
    first, later = Node("a", [], clock), Node("a", [], clock)
    later.table.set(dict.fromkeys(KEYS, 0.5), "g", author="desk")  # the keys are known now
    values = {**dict.fromkeys(KEYS, 0.25), KEYS[2]: bad}
    got = _refusal(later.table, values)
    assert got == _key_by_key(values)
    fresh = _refusal(first.table, values)
    assert (got and got[0]) == (fresh and fresh[0])


def test_a_nan_among_known_keys_is_refused_and_goes_nowhere() -> None:
    clock = ManualClock()
    a = Node("a", ["b"], clock)
    a.table.set(dict.fromkeys(KEYS, 0.5), "g", author="desk")
    a.wire.take()
    with pytest.raises(StateError) as refused:
        a.table.set({**dict.fromkeys(KEYS, 0.1), KEYS[3]: math.nan}, "g", author="desk")
    assert refused.value.code == "invalid_value" and refused.value.extra.get("key") == KEYS[3]
    assert not a.wire.take() and a.table.value(KEYS[0]) == 0.5


def test_the_key_cache_follows_the_registry() -> None:
    """A key's component (and whether its schema takes anything) is cached;
    a registry with another schema for it must be used at once (a stale
    cache would let 5 through below)."""
    clock = ManualClock()
    a = Node("a", [], clock)
    a.table.set({"parameters/p": 5}, "g", author="desk")
    a.table.set({"parameters/p": 6}, "g", author="desk")  # cached
    narrow = Component("parameters", 5, Schema(("number",), maximum=1.0))
    a.kv.registry = DEFAULT_REGISTRY.with_component(narrow)
    with pytest.raises(StateError) as refused:
        a.table.set({"parameters/p": 5}, "g", author="desk")
    assert refused.value.code == "invalid_value"
    a.table.set({"parameters/p": 0.5}, "g", author="desk")
    a.kv.registry = DEFAULT_REGISTRY
    a.table.set({"parameters/p": 5}, "g", author="desk")
    assert a.table.value("parameters/p") == 5


def test_a_schema_takes_anything_only_without_a_constraint() -> None:
    assert Schema().accepts_anything()
    for narrower in (
        t("number"),
        Schema(("any",), maximum=1),
        Schema(("any",), minimum=1),
        Schema(("any",), enum=(1,)),
        Schema(("any",), max_length=3),
        Schema(("any",), required=("x",)),
        Schema(("any",), fields={"x": t("number")}),
        Schema(("any",), items=t("number")),
    ):
        assert not narrower.accepts_anything(), narrower


def test_own_floors_are_bounded_and_keep_the_latest() -> None:
    clock = ManualClock()
    a = Node("a", [], clock, max_keys=8)  # max_floors 32
    for i in range(100):
        a.table.set({f"parameters/k{i}": i}, f"g{i % 4}", author="desk")
        clock.advance(0.3)
        a.table.tick()
    own = a.table._own
    assert 0 < len(own) <= a.table.max_floors
    assert "parameters/k99" in own and "parameters/k0" not in own
    assert own["parameters/k99"] == a.table._seq


def test_a_gesture_older_than_another_of_this_node_leaves_the_newer_key_alone_after_a_clock_step_back() -> None:
    """A restarted node whose wall clock went back sets seqs below its own
    floors: the floors keep the higher number (per key)."""
    clock = ManualClock()
    a = Node("a", [], clock)
    a.table.set({"parameters/f": 1}, "g1", author="desk")
    high = a.table._seq
    a.table._seq -= 1000  # as if its clock went back
    a.table.set({"parameters/f": 2, "parameters/g": 2}, "g2", author="desk")
    assert a.table._own["parameters/f"] == high and a.table._own["parameters/g"] == high - 999


# -- a sink's held batch ----------------------------------------------------------------

item_st = st.builds(
    LiveItem,
    st.sampled_from(["k0", "k1", "k2", "k3"]),
    st.integers(0, 9),
    st.sampled_from(["a", "b"]),
    st.integers(1, 50),
    st.sampled_from([None, "g"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(item_st, max_size=6)), max_size=8), st.integers(1, 5))
def test_a_sink_fed_batches_gives_what_one_fed_item_by_item_gives(
    ops: list[tuple[bool, list[LiveItem]]], limit: int
) -> None:
    """push_many (a held batch, merged on demand) against push of each item:
    the same updates, the same counts, whatever is taken in between."""
    fast, slow = LiveSink("", lambda: None, limit), LiveSink("", lambda: None, limit)
    got_fast: list[LiveUpdate] = []
    got_slow: list[LiveUpdate] = []
    for take, batch in ops:
        if batch:
            fast.push_many(batch)
            for item in batch:
                slow.push(item)
        assert fast.has_pending() == bool(slow.pending)
        if take:
            got_fast += fast.take()
            got_slow += slow.take()
    got_fast += fast.take()
    got_slow += slow.take()
    assert got_fast == got_slow
    assert (fast.coalesced, fast.dropped) == (slow.coalesced, slow.dropped)


def test_a_sink_reads_its_held_batch_as_pending() -> None:
    """The simulator's subscribers read `pending` directly."""
    sink = LiveSink("", lambda: None)
    batch = [LiveItem("k0", 1, "a", 1, None), LiveItem("k1", 2, "a", 1, None)]
    sink.push_many(batch)
    assert list(sink.pending.values()) == batch
    sink.pending.clear()
    assert not sink.has_pending() and sink.take() == []


# -- a peer's live queue ----------------------------------------------------------------


async def test_a_peer_queue_sends_a_lone_batch_as_it_came_and_merges_the_next() -> None:
    tr = TcpTransport(TransportConfig("a", "hana", b"s" * 32, live_queue_limit=8), lambda m: None)  # type: ignore[arg-type]
    s = _PeerSender(tr, "b", ("127.0.0.1", 1))
    first = (LiveItem("k1", 1, "a", 5, None), LiveItem("k2", 1, "a", 5, None))
    s.enqueue_live(first)
    assert s._live_frame().items is first and s.live_batch is None and not s.live
    s.enqueue_live(first)
    s.enqueue_live((LiveItem("k1", 0, "a", 4, None), LiveItem("k3", 2, "a", 6, None)))  # k1: older, kept out
    frame = s._live_frame()
    # (k1 is put back behind k2: the order of one item at a time)
    assert [(i.key, i.seq) for i in frame.items] == [("k2", 5), ("k1", 5), ("k3", 6)]
    assert tr.stats.live_coalesced == 0 and s.live_batch is None and not s.live


def test_a_gesture_moves_at_most_max_gesture_keys_over_its_sets() -> None:
    clock = ManualClock()
    a = Node("a", [], clock)
    first = {f"parameters/k{i}": i for i in range(1000)}
    a.table.set(first, "g", author="desk")
    a.table.set(first, "g", author="desk")  # the same keys again: still 1000
    with pytest.raises(StateError) as refused:
        a.table.set({f"parameters/m{i}": i for i in range(MAX_GESTURE_KEYS - 999)}, "g", author="desk")
    assert refused.value.code == "too_large"
    a.table.set({f"parameters/m{i}": i for i in range(MAX_GESTURE_KEYS - 1000)}, "g", author="desk")
