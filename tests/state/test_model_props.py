"""Property tests: determinism, undo/redo, restore, snapshots, over random logs."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.state import savefile
from mesh.state.model import HanaState
from tests.state.helpers import state_of, values

KEYS = {
    "parameters": ["parameters/a", "parameters/b/c"],
    "settings": ["settings/fps"],
    "displays": ["displays/left", "displays/right"],
    "windows": ["windows/w1"],
}
ALL_KEYS = [k for ks in KEYS.values() for k in ks]
COMPS = list(KEYS)
AUTHORS = ["alice", "bob"]
SAVES = ["s1", "s2"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.5, 1.0, "x", "y"]))


def value_for(key: str) -> st.SearchStrategy[Any]:
    if key.startswith("displays/"):
        return st.fixed_dictionaries({"width": st.integers(1, 4)}, optional={"extra": scalars})
    if key.startswith("windows/"):
        return st.fixed_dictionaries({}, optional={"x": st.integers(0, 3), "plugin": st.sampled_from(["a", "b"])})
    return st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(st.sampled_from("pq"), scalars))


@st.composite
def put(draw: st.DrawFn) -> dict[str, Any]:
    key = draw(st.sampled_from(ALL_KEYS))
    out: dict[str, Any] = {"op": "put", "key": key, "value": draw(value_for(key))}
    if draw(st.booleans()) and draw(st.booleans()):
        out["expected_version"] = draw(st.integers(0, 3))
    return out


@st.composite
def txn(draw: st.DrawFn) -> dict[str, Any]:
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(ALL_KEYS))
        kind = draw(st.sampled_from(["put", "delete", "check"]))
        op: dict[str, Any] = {"op": kind, "key": key}
        if kind == "put":
            op["value"] = draw(value_for(key))
        if kind == "check" or draw(st.integers(0, 4)) == 0:
            op["expected_version"] = draw(st.integers(0, 2))
        ops.append(op)
    return {"op": "txn", "ops": ops}


ROLE = st.sampled_from(["admin", "admin", "operator"])
comp_choice = st.one_of(st.none(), st.lists(st.sampled_from(COMPS), min_size=1, max_size=3, unique=True))
IMPORT_FILE = savefile.export_v1(
    name="imp", cluster="other", revision=9, created=1, entries={"parameters/a": 42, "displays/left": {"width": 2}}
).decode()

state_commands = st.one_of(
    put(),
    put(),
    st.builds(lambda k: {"op": "delete", "key": k}, st.sampled_from(ALL_KEYS)),
    txn(),
    st.builds(lambda a, f: {"op": "undo", "stack": a, "force": f}, st.sampled_from(AUTHORS), st.booleans()),
    st.builds(lambda a, f: {"op": "redo", "stack": a, "force": f}, st.sampled_from(AUTHORS), st.booleans()),
    st.builds(
        lambda n, c: {"op": "save", "name": n} | ({"components": c} if c else {}), st.sampled_from(SAVES), comp_choice
    ),
    # Admin actions; as an operator they are refused (and change nothing).
    st.builds(
        lambda n, c, r: {"op": "restore", "name": n, "role": r} | ({"components": c} if c else {}),
        st.sampled_from([*SAVES, "imp"]),
        comp_choice,
        ROLE,
    ),
    st.builds(lambda n, r: {"op": "delete_save", "name": n, "role": r}, st.sampled_from([*SAVES, "imp"]), ROLE),
    st.builds(lambda r: {"op": "import_save", "file": IMPORT_FILE, "role": r}, ROLE),
    st.builds(
        lambda i, t: {"op": "resolve", "id": i, "take": t}, st.integers(1, 3), st.sampled_from(["ours", "theirs"])
    ),
    st.just({"op": "put", "key": "nowhere/x", "value": 1}),
)


@st.composite
def log_entries(draw: st.DrawFn, max_size: int = 40) -> list[bytes]:
    cmds = draw(st.lists(state_commands, max_size=max_size))
    out = []
    time = 1_000
    for c in cmds:
        # Mostly forward, sometimes a node with a slow clock: exercises LWW and kept conflicts.
        time += draw(st.integers(-3, 5))
        c = {**c, "author": draw(st.sampled_from(AUTHORS)), "node": draw(st.sampled_from(["n1", "n2"])), "time": time}
        out.append(orjson.dumps(c))
    return out


def small() -> HanaState:
    return HanaState(history_limit=16, audit_limit=16, undo_limit=4, max_saves=3, max_recovery_points=2)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_entries(), st.integers(0, 40))
def test_same_log_same_snapshot_and_snapshot_plus_rest_of_log_too(log: list[bytes], cut: int) -> None:
    a, b = small(), small()
    ra = [a.apply(i, c) for i, c in enumerate(log, 1)]
    rb = [b.apply(i, c) for i, c in enumerate(log, 1)]
    assert ra == rb
    assert a.snapshot() == b.snapshot()
    # snapshot -> restore round trips byte for byte.
    c = small()
    c.restore(a.snapshot(), len(log))
    assert c.snapshot() == a.snapshot()
    # A node that installed a snapshot mid-log and applied the rest ends identical.
    cut = min(cut, len(log))
    d, e = small(), small()
    for i, entry in enumerate(log[:cut], 1):
        d.apply(i, entry)
    e.restore(d.snapshot(), cut)
    for i, entry in enumerate(log[cut:], cut + 1):
        e.apply(i, entry)
    assert e.snapshot() == a.snapshot()
    # Revisions only grow.
    revs = [r["revision"] for r in ra if "revision" in r and "name" not in r]  # save metadata has its own
    assert revs == sorted(revs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_entries(), st.sampled_from(AUTHORS), st.integers(1, 3))
def test_undo_then_redo_returns_to_the_same_state(log: list[bytes], who: str, depth: int) -> None:
    hs = small()
    for i, entry in enumerate(log, 1):
        hs.apply(i, entry)
    before = values(hs)
    index = len(log)
    undone = 0
    for _ in range(depth):
        index += 1
        res = hs.apply(index, orjson.dumps({"op": "undo", "author": who, "role": "admin", "time": 10**6 + index}))
        if "error" in res:
            assert res["error"]["code"] in ("nothing_to_undo", "undo_conflict")
            break
        undone += 1
    for _ in range(undone):
        index += 1
        res = hs.apply(index, orjson.dumps({"op": "redo", "author": who, "role": "admin", "time": 10**6 + index}))
        assert "redone" in res, res
    assert values(hs) == before


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_entries(30), comp_choice, log_entries(30), comp_choice)
def test_restore_gives_the_state_at_the_save_for_chosen_components_only(
    first: list[bytes], saved: list[str] | None, second: list[bytes], chosen: list[str] | None
) -> None:
    hs = HanaState(history_limit=16, undo_limit=4, max_saves=64, max_recovery_points=64)
    index = 0
    for entry in first:
        index += 1
        hs.apply(index, entry)
    at_save = values(hs)
    index += 1
    save_cmd: dict[str, Any] = {"op": "save", "name": "target", "time": 5}
    if saved:
        save_cmd["components"] = saved
    assert "error" not in hs.apply(index, orjson.dumps(save_cmd))
    for entry in second:
        index += 1
        doc = orjson.loads(entry)
        if doc.get("name") == "target" and doc["op"] in ("delete_save", "restore"):
            continue
        hs.apply(index, entry)
    before = values(hs)
    before_state = state_of(hs)
    index += 1
    restore_cmd: dict[str, Any] = {"op": "restore", "name": "target", "role": "admin", "time": 10**7}
    if chosen:
        restore_cmd["components"] = chosen
    res = hs.apply(index, orjson.dumps(restore_cmd))
    in_save = saved or [c for c in hs.registry.names()]
    if chosen and not set(chosen) <= set(in_save):
        assert res["error"]["code"] == "invalid_value"
        assert state_of(hs) == before_state
        return
    assert "error" not in res, res
    restored = set(chosen or in_save)

    def part(vals: dict[str, Any], inside: bool) -> dict[str, Any]:
        return {k: v for k, v in vals.items() if (k.split("/", 1)[0] in restored) == inside}

    assert part(values(hs), True) == part(at_save, True)
    assert part(values(hs), False) == part(before, False)
    # One revision, and undo brings back exactly the state before the restore.
    assert res["revision"] == before_state["revision"] + (1 if res["changed"] else 0)
    if res["changed"]:
        index += 1
        assert "undone" in hs.apply(index, orjson.dumps({"op": "undo", "role": "admin", "time": 10**7 + 1}))
        assert values(hs) == before
    # The recovery point is the whole state before the restore.
    rp = hs.saves_store[res["recovery_point"]]
    assert {k: v for comp in rp["data"].values() for k, v in comp.items()} == before
