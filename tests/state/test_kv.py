"""The key-value state machine: versions, revisions, conditions, history, snapshots."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.state.kv import Compacted, KVStore


def cmd(**fields: object) -> bytes:
    return orjson.dumps(fields)


def test_put_get_versions_and_revisions() -> None:
    kv = KVStore()
    assert kv.apply(1, cmd(op="put", key="displays/a", value={"x": 1})) == {
        "key": "displays/a",
        "version": 1,
        "revision": 1,
    }
    assert kv.apply(2, cmd(op="put", key="displays/a", value={"x": 2}))["version"] == 2
    kv.apply(3, cmd(op="put", key="displays/b", value=3))
    a = kv.get("displays/a")
    assert a is not None
    assert (a.value, a.version, a.create_revision, a.mod_revision) == ({"x": 2}, 2, 1, 2)
    assert kv.revision == 3
    assert [k for k, _ in kv.range("displays/")] == ["displays/a", "displays/b"]


def test_conditional_write_conflict_changes_nothing() -> None:
    kv = KVStore()
    kv.apply(1, cmd(op="put", key="windows/w1", value="a"))
    before = kv.snapshot()
    res = kv.apply(2, cmd(op="put", key="windows/w1", value="b", expected_version=0))
    assert res["error"]["code"] == "version_conflict"
    assert res["error"]["current"]["value"] == "a"
    assert res["error"]["current"]["version"] == 1
    # applied_index moves; nothing else does.
    assert orjson.loads(kv.snapshot())["data"] == orjson.loads(before)["data"]
    assert kv.revision == 1
    assert kv.apply(3, cmd(op="put", key="windows/w1", value="b", expected_version=1))["version"] == 2


def test_delete_then_recreate_restarts_version() -> None:
    kv = KVStore()
    kv.apply(1, cmd(op="put", key="a/b", value=1))
    kv.apply(2, cmd(op="put", key="a/b", value=2))
    assert kv.apply(3, cmd(op="delete", key="a/b")) == {"key": "a/b", "revision": 3}
    assert kv.get("a/b") is None
    assert kv.apply(4, cmd(op="delete", key="a/b"))["error"]["code"] == "not_found"
    res = kv.apply(5, cmd(op="put", key="a/b", value=3))
    assert res["version"] == 1
    created = kv.get("a/b")
    assert created is not None and created.create_revision == 4


def test_txn_is_all_or_nothing_and_one_revision() -> None:
    kv = KVStore()
    kv.apply(1, cmd(op="put", key="p/x", value=1))
    failed = kv.apply(
        2,
        cmd(
            op="txn",
            ops=[
                {"op": "put", "key": "p/y", "value": 2},
                {"op": "check", "key": "p/x", "expected_version": 5},
            ],
        ),
    )
    assert failed["error"]["code"] == "version_conflict"
    assert failed["error"]["op_index"] == 1
    assert kv.get("p/y") is None and kv.revision == 1
    ok = kv.apply(
        3,
        cmd(
            op="txn",
            ops=[
                {"op": "check", "key": "p/x", "expected_version": 1},
                {"op": "put", "key": "p/y", "value": 2},
                {"op": "delete", "key": "p/x"},
            ],
        ),
    )
    assert ok["revision"] == 2
    assert [r.revision for r in kv.changes_since(2)] == [2, 2]
    assert kv.get("p/x") is None


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        cmd(op="nope"),
        cmd(op="put", key="nocomponent", value=1),
        cmd(op="put", key="a//b", value=1),
        cmd(op="put", key="a/../b", value=1),
        cmd(op="put", key="a/b"),
        cmd(op="put", key=5, value=1),
        cmd(op="put", key="a/b", value=1, expected_version=-1),
        cmd(op="put", key="a/b", value=1, expected_version=True),
        cmd(op="txn", ops=[]),
        cmd(op="txn", ops=[{"op": "put", "key": "a/b"}]),
        cmd(op="put", key="a/b", value=1, time="yesterday"),
    ],
)
def test_bad_commands_are_rejected_and_change_nothing(bad: bytes) -> None:
    kv = KVStore()
    kv.apply(1, cmd(op="put", key="a/keep", value=1))
    before = orjson.loads(kv.snapshot())
    res = kv.apply(2, bad)
    assert "error" in res and res["error"]["code"]
    after = orjson.loads(kv.snapshot())
    assert after["data"] == before["data"] and after["revision"] == before["revision"]


def test_history_is_bounded_and_compacted_is_reported() -> None:
    kv = KVStore(history_limit=5)
    for i in range(1, 11):
        kv.apply(i, cmd(op="put", key="k/a", value=i))
    assert len(kv.history) == 5
    assert [r.revision for r in kv.changes_since(6)] == [6, 7, 8, 9, 10]
    with pytest.raises(Compacted) as err:
        kv.changes_since(3)
    assert err.value.oldest == 6
    # Asking for the future is not an error: nothing yet.
    assert kv.changes_since(11) == []


keys = st.sampled_from(["a/x", "a/y", "b/z"])
commands = st.one_of(
    st.builds(lambda k, v: cmd(op="put", key=k, value=v), keys, st.integers(-(2**53), 2**53)),
    st.builds(lambda k, e: cmd(op="put", key=k, value=e, expected_version=e), keys, st.integers(0, 3)),
    st.builds(lambda k: cmd(op="delete", key=k), keys),
    st.builds(
        lambda k1, k2, e: cmd(
            op="txn", ops=[{"op": "check", "key": k1, "expected_version": e}, {"op": "put", "key": k2, "value": e}]
        ),
        keys,
        keys,
        st.integers(0, 2),
    ),
    st.just(b"garbage"),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(commands, max_size=40), st.integers(1, 8))
def test_same_log_gives_identical_snapshots_and_restore_round_trips(log: list[bytes], limit: int) -> None:
    a, b = KVStore(history_limit=limit), KVStore(history_limit=limit)
    results_a = [a.apply(i, c) for i, c in enumerate(log, 1)]
    results_b = [b.apply(i, c) for i, c in enumerate(log, 1)]
    assert results_a == results_b
    assert a.snapshot() == b.snapshot()
    c = KVStore(history_limit=limit)
    c.restore(a.snapshot())
    assert c.snapshot() == a.snapshot()
    # Revisions only ever grow, one per successful change.
    revs = [r["revision"] for r in results_a if "revision" in r]
    assert revs == sorted(revs)


def test_restore_rejects_garbage_and_keeps_state() -> None:
    kv = KVStore()
    kv.apply(1, cmd(op="put", key="a/b", value=1))
    before = kv.snapshot()
    for blob in (b"", b"{}", b'{"format":"other","version":1}', b'{"format":"hana-kv","version":1}'):
        with pytest.raises(ValueError):
            kv.restore(blob)
        assert kv.snapshot() == before
