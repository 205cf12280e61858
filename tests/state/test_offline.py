"""The state machine's side of offline writes, conflicts and reset (issue 14).

An offline write carries `made` (the HLC stamp of the moment it was made)
and its ops a `base_version`: under lww the later edit wins (the loser is
answered `superseded`), under manual a key changed since the base version
makes it a conflict for a person; resolve with current|proposed|value is
one revision, one undo step, audited; reset sets a component to its
defaults as one revision and one undo step."""

from __future__ import annotations

from typing import Any

from mesh.state.components import DEFAULT_COMPONENTS, Component, Registry, Schema
from mesh.state.errors import ERROR_STATUS
from mesh.state.hlc import HLC
from mesh.state.model import HanaState
from tests.state.helpers import Driver, cmd, state_of, values

DISPLAY = {"name": "left", "width": 1920, "height": 1080}


def made(wall: int, node: str = "off") -> str:
    return HLC(wall, 0, node).encode()


def ctl(wall: int) -> str:
    return HLC(wall, 0, "ctl").encode()


def test_lww_the_later_edit_wins_whatever_the_replay_order() -> None:
    d = Driver()
    d("put", key="parameters/p", value="majority", hlc=ctl(5000))
    # Made before the majority's write, replayed after it: superseded.
    old = d("put", key="parameters/p", value="offline-early", made=made(4000), hlc=ctl(6000))
    assert old["superseded"] is True and values(d.hs)["parameters/p"] == "majority"
    # Made after it: applied, even though a controller stamps it later still.
    new = d("put", key="parameters/p", value="offline-late", made=made(5500), hlc=ctl(6001))
    assert new["version"] == 2 and values(d.hs)["parameters/p"] == "offline-late"
    assert d.hs.key_hlc["parameters/p"] == HLC(5500, 0, "off")
    # An ordinary write stamped by the controller after that replay wins (its clock moved past the edit).
    assert d.hs.clock >= HLC(6001, 0, "ctl")
    # An offline write made before a delete loses to it (the delete's stamp is kept).
    d("delete", key="parameters/p", hlc=ctl(7000))
    gone = d("put", key="parameters/p", value="resurrect", made=made(6500), hlc=ctl(7001))
    assert gone["superseded"] is True and "parameters/p" not in values(d.hs)
    again = d("delete", key="parameters/p", made=made(6600), hlc=ctl(7002))
    assert again["superseded"] is True


def test_ordinary_writes_keep_the_controllers_stamp() -> None:
    d = Driver()
    d("put", key="parameters/q", value=1, hlc=ctl(5000))
    assert d.hs.key_hlc["parameters/q"] == HLC(5000, 0, "ctl")
    assert d("put", key="parameters/q", value=0, hlc=ctl(4000))["superseded"] is True


def test_manual_base_version_decides_and_conflicts_are_kept_for_a_person() -> None:
    d = Driver()
    assert d("put", key="displays/left", value=DISPLAY, hlc=ctl(5000))["version"] == 1
    # The writer saw version 1 and nothing changed since: applied.
    ok = d("put", key="displays/left", value={**DISPLAY, "width": 800}, made=made(5100), base_version=1, hlc=ctl(6000))
    assert ok["version"] == 2
    # Changed since version 1: kept as a conflict, nothing changes.
    before = state_of(d.hs)
    res = d("put", key="displays/left", value={**DISPLAY, "width": 10}, made=made(9000), base_version=1, hlc=ctl(9100))
    assert res["error"]["code"] == "conflict_kept"
    cid = res["error"]["conflict_id"]
    assert values(d.hs)["displays/left"]["width"] == 800
    after = state_of(d.hs)
    assert after["data"] == before["data"] and after["revision"] == before["revision"]
    [view] = d.hs.conflicts()["conflicts"]
    assert view["id"] == cid and view["key"] == "displays/left" and view["component"] == "displays"
    assert view["status"] == "open" and view["critical"] is True and view["base_version"] == 1
    assert view["current"]["value"]["width"] == 800 and view["current"]["version"] == 2
    assert view["current"]["author"] == "alice" and isinstance(view["current"]["time"], int)
    assert view["proposed"]["value"]["width"] == 10 and view["proposed"]["node"] == "n1"
    notices = d.hs.take_notices()
    assert notices[-1]["type"] == "conflict" and notices[-1]["status"] == "open" and notices[-1]["critical"]
    # Bad input: nothing changes.
    snap = state_of(d.hs)
    unknown = d("resolve", id=999, take="current")
    assert unknown["error"]["code"] == "not_found" and ERROR_STATUS["not_found"] == 404
    bad = d("resolve", id=cid, take="value", value={"width": -5})
    assert bad["error"]["code"] == "invalid_value"
    assert state_of(d.hs)["data"] == snap["data"] and d.hs.pending.keys() == {cid}
    # Resolved by a person: one revision, one undo step, audited.
    rev = d.hs.revision
    done = d("resolve", id=cid, take="proposed")
    assert done == {"id": cid, "take": "proposed", "revision": rev + 1, "key": "displays/left"}
    assert values(d.hs)["displays/left"]["width"] == 10
    assert d.hs.conflicts()["conflicts"] == []
    assert d.hs.conflict(cid)["status"] == "resolved"  # type: ignore[index]
    entry = d.hs.audit()["entries"][-1]
    assert entry["op"] == "resolve" and entry["conflict"] == cid and entry["take"] == "proposed"
    snap = state_of(d.hs)
    twice = d("resolve", id=cid, take="current")
    assert twice["error"]["code"] == "conflict_resolved" and ERROR_STATUS["conflict_resolved"] == 409
    assert state_of(d.hs) == {**snap, "audit": state_of(d.hs)["audit"]} and state_of(d.hs)["data"] == snap["data"]
    assert d("undo")["undone"]["op"] == "resolve"
    assert values(d.hs)["displays/left"]["width"] == 800


def test_resolve_take_value_and_take_current() -> None:
    d = Driver()
    d("put", key="settings/mode", value="a", hlc=ctl(5000))
    c1 = d("put", key="settings/mode", value="b", made=made(6000), base_version=0, hlc=ctl(6100))
    c2 = d("put", key="settings/mode", value="c", made=made(6001), base_version=0, hlc=ctl(6101))
    id1, id2 = c1["error"]["conflict_id"], c2["error"]["conflict_id"]
    rev = d.hs.revision
    assert d("resolve", id=id1, take="value", value="chosen")["revision"] == rev + 1
    assert values(d.hs)["settings/mode"] == "chosen"
    keep = d("resolve", id=id2, take="current")
    assert keep["revision"] == rev + 1 and values(d.hs)["settings/mode"] == "chosen"
    assert [c["status"] for c in d.hs.conflicts(include_resolved=True)["conflicts"]] == ["resolved", "resolved"]
    # The first form still applies as it did.
    c3 = d("put", key="settings/mode", value="x", hlc=ctl(10))
    assert d("resolve", id=c3["error"]["conflict_id"], take="ours")["take"] == "ours"


def test_a_replayed_offline_write_applies_once() -> None:
    d = Driver()
    d("put", key="parameters/n", value=0, hlc=ctl(5000))
    first = d("put", key="parameters/n", value=1, made=made(5500), rid="ob.n3.x.1", hlc=ctl(6000))
    d("put", key="parameters/n", value=2, hlc=ctl(6500))
    # The same write replayed after a crash (same request id): the first fate, nothing applied again.
    again = d("put", key="parameters/n", value=1, made=made(5500), rid="ob.n3.x.1", hlc=ctl(7000))
    assert again == first and values(d.hs)["parameters/n"] == 2
    # A superseded fate is remembered too.
    sup = d("put", key="parameters/n", value=9, made=made(10), rid="ob.n3.x.2", hlc=ctl(7001))
    d("delete", key="parameters/n", hlc=ctl(7002))
    assert d("put", key="parameters/n", value=9, made=made(10), rid="ob.n3.x.2", hlc=ctl(7003)) == sup


def test_offline_fields_are_checked() -> None:
    d = Driver()
    before = state_of(d.hs)
    assert d("undo", made=made(1))["error"]["code"] == "invalid_command"
    assert d("put", key="parameters/a", value=1, base_version=0)["error"]["code"] == "invalid_command"
    assert d("put", key="parameters/a", value=1, made="yesterday")["error"]["code"] == "invalid_command"
    assert d("put", key="parameters/a", value=1, made=made(1), base_version=-1)["error"]["code"] == "invalid_value"
    assert d("resolve", id=1, take="mine")["error"]["code"] == "invalid_value"
    assert d("resolve", id=1, take="value")["error"]["code"] == "invalid_value"
    assert d("reset", component="nope")["error"]["code"] == "unknown_component"
    assert d("reset", component="displays", keys=["windows/w"])["error"]["code"] == "invalid_value"
    after = state_of(d.hs)
    assert after["data"] == before["data"] and after["revision"] == before["revision"]


def _with_defaults() -> Registry:
    comps: list[Component] = list(DEFAULT_COMPONENTS)
    comps.append(
        Component(
            "show",
            9,
            Schema(),
            defaults={"show/speed": 1.0, "show/mode": "idle"},
            description="a component with defaults",
        )
    )
    return Registry(comps)


def test_reset_to_defaults_is_one_revision_and_one_undo_step() -> None:
    d = Driver(HanaState(_with_defaults()))
    d("put", key="show/speed", value=3.0)
    d("put", key="show/extra", value=True)
    rev = d.hs.revision
    res = d("reset", component="show")
    assert res == {"revision": rev + 1, "keys": ["show/extra", "show/mode", "show/speed"]}
    assert values(d.hs, "show/") == {"show/speed": 1.0, "show/mode": "idle"}
    assert d.hs.audit()["entries"][-1]["op"] == "reset"
    # Nothing to do: no revision.
    assert d("reset", component="show") == {"revision": rev + 1, "keys": []}
    assert d("undo")["undone"]["op"] == "reset"
    assert values(d.hs, "show/") == {"show/speed": 3.0, "show/extra": True}
    # Chosen keys only.
    assert d("reset", component="show", keys=["show/speed"])["keys"] == ["show/speed"]
    assert values(d.hs, "show/") == {"show/speed": 1.0, "show/extra": True}
    assert any(c.get("defaults") for c in d.hs.components()["components"])


def test_snapshot_carries_tombstones_and_resolved_conflicts() -> None:
    d = Driver()
    d("put", key="settings/s", value=1, hlc=ctl(5000))
    cid = d("put", key="settings/s", value=2, made=made(6000), base_version=0, hlc=ctl(6001))["error"]["conflict_id"]
    d("resolve", id=cid, take="current")
    d("put", key="parameters/t", value=1, hlc=ctl(6100))
    d("delete", key="parameters/t", hlc=ctl(6200))
    other = HanaState()
    other.restore(d.hs.snapshot())
    assert other.snapshot() == d.hs.snapshot()
    probe: dict[str, Any] = {"op": "put", "key": "parameters/t", "value": 5, "made": made(6150), "hlc": ctl(7000)}
    assert other.apply(99, cmd(**probe)) == d.hs.apply(99, cmd(**probe))
    assert other.apply(100, cmd(op="resolve", id=cid, take="current"))["error"]["code"] == "conflict_resolved"
    # A state without them snapshots as before (no new fields).
    assert b"tombstones" not in HanaState().snapshot() and b"resolved" not in HanaState().snapshot()
