"""The history checker accepts exactly the linearizable histories: hand-written
cases on both sides, and generated sequential histories with one result
tampered with (a checker that accepts everything fails here)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.linearizability import ABSENT, Op, _apply, check, check_key


def put(i: int, t0: float, t1: float | None, v: object, version: int | None = None, **kw: object) -> Op:
    return Op(i, "k", "put", t0, t1, value=v, result="ok" if t1 is not None else None, version=version, **kw)  # type: ignore[arg-type]


def get(i: int, t0: float, t1: float, v: object = None, version: int | None = None, found: bool = True) -> Op:
    return Op(i, "k", "get", t0, t1, value=v, result="ok" if found else "not_found", version=version)


def test_sequential_history_is_linearizable() -> None:
    h = [put(1, 0, 1, "a", 1), get(2, 2, 3, "a", 1), put(3, 4, 5, "b", 2), get(4, 6, 7, "b", 2)]
    v = check_key(h)
    assert v.ok and v.order == [1, 2, 3, 4]


def test_stale_read_after_acknowledged_write_is_caught() -> None:
    h = [put(1, 0, 1, "a", 1), put(2, 2, 3, "b", 2), get(3, 4, 5, "a", 1)]
    v = check_key(h)
    assert not v.ok and "no linearization" in v.detail


def test_lost_acknowledged_write_is_caught() -> None:
    assert not check_key([put(1, 0, 1, "a", 1), get(2, 2, 3, found=False)]).ok


def test_concurrent_read_may_see_either_value() -> None:
    for seen in ("a", "b"):
        h = [put(1, 0, 1, "a", 1), put(2, 2, 6, "b", 2), get(3, 3, 4, seen, 1 if seen == "a" else 2)]
        assert check_key(h).ok, seen


def test_reads_never_go_back_in_time() -> None:
    # Both reads overlap the write, but the first already saw the new value.
    h = [put(1, 0, 1, "a", 1), put(2, 2, 10, "b", 2), get(3, 3, 4, "b", 2), get(4, 5, 6, "a", 1)]
    assert not check_key(h).ok


def test_unknown_outcome_may_or_may_not_have_happened() -> None:
    assert check_key([put(1, 0, None, "x"), get(2, 5, 6, "x", 1)]).ok
    assert check_key([put(1, 0, None, "x"), get(2, 5, 6, found=False)]).ok
    # But it cannot appear and then vanish without a delete.
    assert not check_key([put(1, 0, None, "x"), get(2, 5, 6, "x", 1), get(3, 7, 8, found=False)]).ok


def test_conditional_writes() -> None:
    both = [
        Op(1, "k", "put", 0, 2, value="a", expected_version=0, result="ok", version=1),
        Op(2, "k", "put", 1, 3, value="b", expected_version=0, result="ok", version=1),
    ]
    assert not check_key(both).ok
    one = [
        Op(1, "k", "put", 0, 2, value="a", expected_version=0, result="ok", version=1),
        Op(2, "k", "put", 1, 3, value="b", expected_version=0, result="conflict"),
    ]
    assert check_key(one).ok


def test_versions_must_add_up() -> None:
    assert not check_key([put(1, 0, 1, "a", 2)]).ok
    delete = Op(2, "k", "delete", 2, 3, result="ok")
    assert check_key([put(1, 0, 1, "a", 1), delete, put(3, 4, 5, "b", 1)]).ok


def test_keys_are_checked_independently() -> None:
    ops = [put(1, 0, 1, "a", 1), Op(2, "j", "get", 2, 3, result="not_found"), get(3, 4, 5, "zzz", 1)]
    verdicts = check(ops)
    assert [(v.key, v.ok) for v in verdicts] == [("k", False), ("j", True)]


kinds = st.sampled_from(["put", "cas", "delete", "get"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(kinds, st.integers(0, 3), st.integers(0, 2)), min_size=1, max_size=14), st.data())
def test_generated_sequential_histories_and_tampered_ones(
    steps: list[tuple[str, int, int]], data: st.DataObject
) -> None:
    state = ABSENT
    ops: list[Op] = []
    for i, (kind, val, expected) in enumerate(steps):
        op = Op(
            i,
            "k",
            "put" if kind == "cas" else kind,
            2 * i,
            2 * i + 1,
            value=val if kind in ("put", "cas") else None,
            expected_version=expected if kind == "cas" else None,
        )
        state, result, value, version = _apply(state, op)
        ops.append(Op(op.id, "k", op.kind, op.invoke, op.complete, value, op.expected_version, result, version))
    assert check_key(ops).ok
    reads = [o for o in ops if o.kind == "get" and o.result == "ok"]
    if reads:
        victim = data.draw(st.sampled_from(reads))
        tampered = [
            Op(o.id, o.key, o.kind, o.invoke, o.complete, (o.value or 0) + 100, o.expected_version, o.result, o.version)
            if o.id == victim.id
            else o
            for o in ops
        ]
        assert not check_key(tampered).ok
