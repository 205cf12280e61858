"""HanaState: components, versions, history, undo/redo, saves, audit."""

from __future__ import annotations

import orjson
import pytest

from mesh.state import savefile
from mesh.state.hlc import HLC
from mesh.state.kv import Compacted, KVStore
from mesh.state.model import ERROR_STATUS, HanaState, StateError, recovery_name
from tests.state.helpers import Driver, cmd, state_of, values

DISPLAY = {"name": "Left", "width": 1920, "height": 1080}


def show(d: Driver) -> None:
    d("put", key="environment/main", value={"name": "stage"})
    d("put", key="displays/left", value=DISPLAY)
    d("put", key="windows/w1", value={"display": "left", "x": 0})
    d("put", key="parameters/master/brightness", value=0.5)


# -- writes, versions, components -------------------------------------------------


def test_put_versions_component_versions_and_vector() -> None:
    d = Driver()
    assert d("put", key="displays/left", value=DISPLAY) == {"key": "displays/left", "version": 1, "revision": 1}
    assert d("put", key="displays/left", value={**DISPLAY, "width": 800}, node="n2")["version"] == 2
    d("put", key="windows/w1", value={"display": "left"})
    kv = d.hs.get("displays/left")
    assert kv is not None and (kv.version, kv.create_revision, kv.mod_revision) == (2, 1, 2)
    comps = {c["name"]: c for c in d.hs.components()["components"]}
    assert comps["displays"]["version"] == 2 and comps["displays"]["vector"] == {"n1": 1, "n2": 1}
    assert comps["windows"]["version"] == 1 and comps["parameters"]["version"] == 0
    # A transaction touching two components bumps each once.
    d(
        "txn",
        ops=[
            {"op": "put", "key": "displays/a", "value": {}},
            {"op": "put", "key": "displays/b", "value": {}},
            {"op": "put", "key": "parameters/p", "value": 1},
        ],
    )
    comps = {c["name"]: c for c in d.hs.components()["components"]}
    assert comps["displays"]["version"] == 3 and comps["parameters"]["version"] == 1


def test_unknown_component_and_schema_errors_name_key_and_field() -> None:
    d = Driver()
    res = d("put", key="nope/x", value=1)
    assert res["error"]["code"] == "unknown_component" and "nope/x" in res["error"]["message"]
    res = d("put", key="displays/left", value={"width": "wide"})
    assert res["error"]["code"] == "invalid_value"
    assert res["error"]["field"] == "displays/left.width" and "displays/left.width" in res["error"]["message"]
    res = d("txn", ops=[{"op": "put", "key": "windows/w", "value": {}}, {"op": "put", "key": "plugins/p", "value": {}}])
    assert res["error"]["code"] == "invalid_value" and res["error"]["field"] == "plugins/p.type"
    assert d.hs.revision == 0 and d.hs.get("windows/w") is None


def test_txn_is_all_or_nothing_one_revision_one_group() -> None:
    d = Driver()
    d("put", key="parameters/x", value=1)
    bad = d(
        "txn",
        ops=[
            {"op": "put", "key": "parameters/y", "value": 2},
            {"op": "check", "key": "parameters/x", "expected_version": 5},
        ],
    )
    assert bad["error"]["code"] == "version_conflict" and bad["error"]["op_index"] == 1
    ok = d(
        "txn",
        ops=[
            {"op": "check", "key": "parameters/x", "expected_version": 1},
            {"op": "put", "key": "parameters/y", "value": 2},
            {"op": "delete", "key": "parameters/x"},
            {"op": "delete", "key": "parameters/missing"},
        ],
    )
    assert ok["revision"] == 2
    assert ok["results"][3] == {"key": "parameters/missing", "deleted": False}
    assert [r.revision for r in d.hs.changes_since(2)] == [2, 2]
    assert d("undo")["undone"]["op"] == "txn"
    assert values(d.hs) == {"parameters/x": 1}


def test_history_records_and_audit_carry_identity_node_time_hlc() -> None:
    d = Driver()
    d("put", author="ops-token", key="displays/left", value=DISPLAY, node="n7", time=1000)
    d("put", author="ops-token", key="displays/left", value={**DISPLAY, "width": 1}, node="n7", time=2000)
    recs = d.hs.history_query(prefix="displays/")["records"]
    assert [r["revision"] for r in recs] == [1, 2]
    assert recs[1]["prev_value"] == DISPLAY and recs[1]["value"]["width"] == 1
    assert (recs[1]["author"], recs[1]["node"], recs[1]["time"]) == ("ops-token", "n7", 2000)
    assert HLC.decode(recs[1]["hlc"]) == HLC(2000, 0, "n7")
    d("put", key="parameters/p", value=1)  # author alice
    d("save", name="s1")  # alice, at revision 3
    d("put", author="anonymous", key="parameters/p", value=2)
    d("undo", author="anonymous")
    # Routine writes are in the history only (issue 12, finding 12); the
    # audit trail holds the other events, with who, role, node and time.
    entries = d.hs.audit(since=3)["entries"]
    assert [(e["revision"], e["author"], e["role"], e["op"]) for e in entries] == [
        (3, "alice", "operator", "save"),
        (5, "anonymous", "operator", "undo"),
    ]
    assert entries[1]["keys"] == ["parameters/p"] and entries[1]["node"] == "n1"
    assert d.hs.history_query(limit=1)["records"][0]["revision"] == 1


def test_history_and_audit_are_bounded_and_report_compacted() -> None:
    d = Driver(HanaState(history_limit=3, audit_limit=3))
    for i in range(10):
        d("put", key="parameters/p", value=i)
        d("security_event", event="login_failed", address=f"10.0.0.{i}", count=1, path="/v1/kv")
    assert [r["revision"] for r in d.hs.history_query(since=8)["records"]] == [8, 9, 10]
    with pytest.raises(Compacted) as err:
        d.hs.history_query(since=2)
    assert err.value.oldest == 8
    with pytest.raises(Compacted):
        d.hs.audit(since=1)
    assert [e["address"] for e in d.hs.audit(since=8)["entries"]] == ["10.0.0.7", "10.0.0.8", "10.0.0.9"]
    # The buffer travels in the snapshot.
    other = HanaState(history_limit=3, audit_limit=3)
    other.restore(d.hs.snapshot())
    with pytest.raises(Compacted):
        other.history_query(since=2)
    with pytest.raises(Compacted):
        other.audit(since=1)
    # Explicit compaction through the log (an admin action).
    assert d("compact", revision=10)["error"]["code"] == "forbidden"
    assert d("compact", revision=10, role="admin") == {"compacted": 10, "oldest": 10}
    with pytest.raises(Compacted):
        d.hs.history_query(since=9)


# -- undo / redo -------------------------------------------------------------------------


def test_undo_redo_round_trip_and_history_is_never_rewritten() -> None:
    d = Driver()
    d("put", key="parameters/p", value=1)
    d("put", key="parameters/p", value=2)
    d("put", key="parameters/q", value=True)
    res = d("undo")
    assert res["revision"] == 4 and res["undone"]["revision"] == 3
    assert d.hs.get("parameters/q") is None
    assert d("undo")["undone"]["revision"] == 2
    assert values(d.hs) == {"parameters/p": 1}
    assert d("redo")["redone"]["revision"] == 2
    assert d("redo")["redone"]["op"] == "put"
    assert values(d.hs) == {"parameters/p": 2, "parameters/q": True}
    assert d("redo")["error"]["code"] == "nothing_to_redo"
    # Every step is a new revision in history.
    assert [r.revision for r in d.hs.changes_since(1)] == [1, 2, 3, 4, 5, 6, 7]
    assert d.hs.audit(since=4)["entries"][0]["op"] == "undo"


def test_undo_tells_1_from_true() -> None:
    d = Driver()
    d("put", key="parameters/p", value=1)
    d("put", key="parameters/p", value=True)
    d("undo")
    kv = d.hs.get("parameters/p")
    assert kv is not None and kv.value == 1 and kv.value is not True


def test_per_author_stacks_and_explicit_author() -> None:
    d = Driver()
    d("put", author="alice", key="parameters/a", value=1)
    d("put", author="bob", key="parameters/b", value=1)
    d("undo", author="alice")
    assert values(d.hs) == {"parameters/b": 1}
    assert d("undo", author="alice")["error"]["code"] == "nothing_to_undo"
    # Alice undoes Bob's work only when she asks for it.
    res = d("undo", author="alice", stack="bob")
    assert res["undone"]["author"] == "bob"
    assert values(d.hs) == {}
    assert d.hs.audit(since=res["revision"])["entries"][0]["author"] == "alice"
    assert d.hs.undo_status()["stacks"]["bob"] == {"undo": 0, "redo": 1}


def test_undo_conflicts_when_keys_changed_since_unless_forced() -> None:
    d = Driver()
    d("put", author="alice", key="parameters/p", value=1)
    d("put", author="alice", key="parameters/p", value=2)
    d("put", author="bob", key="parameters/p", value=3)
    before = state_of(d.hs)
    res = d("undo", author="alice")
    assert res["error"]["code"] == "undo_conflict" and ERROR_STATUS["undo_conflict"] == 409
    assert res["error"]["keys"] == ["parameters/p"]
    assert state_of(d.hs) == before
    # Writing the same value back still counts as a change since.
    d("put", author="bob", key="parameters/p", value=2)
    assert d("undo", author="alice")["error"]["code"] == "undo_conflict"
    assert d("undo", author="alice", force=True)["undone"]["revision"] == 2
    assert values(d.hs) == {"parameters/p": 1}


def test_new_change_clears_redo_and_stacks_are_bounded() -> None:
    d = Driver(HanaState(undo_limit=3))
    for i in range(6):
        d("put", key="parameters/p", value=i)
    for _ in range(3):
        assert "undone" in d("undo")
    assert d("undo")["error"]["code"] == "nothing_to_undo"
    assert values(d.hs) == {"parameters/p": 2}
    d("put", key="parameters/q", value=0)
    assert d("redo")["error"]["code"] == "nothing_to_redo"


# -- saves --------------------------------------------------------------------------------


def test_save_changes_no_key_and_is_not_an_undo_step() -> None:
    d = Driver()
    show(d)
    rev = d.hs.revision
    meta = d("save", name="opening")
    assert meta["name"] == "opening" and meta["revision"] == rev and meta["keys"] == 4 and not meta["auto"]
    assert meta["components"] == [
        "environment",
        "display_groups",
        "displays",
        "windows",
        "plugins",
        "parameters",
        "modulation",
        "input_mappings",
        "settings",
    ]
    assert d.hs.revision == rev
    assert d("save", name="opening")["error"]["code"] == "save_exists"
    d("undo")  # reverts the last put, not the save
    assert d.hs.get("parameters/master/brightness") is None
    assert [s["name"] for s in d.hs.saves()["saves"]] == ["opening"]


def test_restore_is_one_revision_one_group_with_recovery_point() -> None:
    d = Driver()
    show(d)
    d("save", name="opening")
    at_save = values(d.hs)
    d("put", key="displays/left", value={**DISPLAY, "width": 10})
    d("put", key="displays/right", value=DISPLAY)
    d("delete", key="windows/w1")
    d("put", key="settings/fps", value=60)
    after_edits = values(d.hs)
    rev = d.hs.revision
    res = d("restore", role="admin", name="opening")
    assert res["revision"] == rev + 1 and res["changed"] == 4
    assert res["recovery_point"] == recovery_name(d.time) and res["recovery_point"].startswith("recovery-2024")
    assert values(d.hs) == at_save
    # Records of the restore are in dependency order, one revision.
    recs = d.hs.changes_since(rev + 1)
    assert {r.revision for r in recs} == {rev + 1}
    assert [r.key for r in recs] == ["displays/left", "displays/right", "windows/w1", "settings/fps"]
    # The recovery point holds the state before; undo reverts the whole load.
    rp = d.hs.save_info(res["recovery_point"])
    assert rp["auto"] and rp["revision"] == rev
    # Undoing (and redoing) a restore is a restore: admin only (finding 5).
    assert d("undo")["error"]["code"] == "forbidden"
    assert d("undo", role="admin")["undone"]["op"] == "restore"
    assert values(d.hs) == after_edits
    # And restoring the recovery point gets there too.
    assert d("redo")["error"]["code"] == "forbidden"
    d("redo", role="admin")
    d("restore", role="admin", name=res["recovery_point"])
    assert values(d.hs) == after_edits


def test_partial_restore_leaves_other_components_untouched() -> None:
    d = Driver()
    show(d)
    d("save", name="s")
    d("put", key="displays/left", value={"width": 5})
    d("put", key="parameters/master/brightness", value=0.9)
    res = d("restore", role="admin", name="s", components=["displays"])
    assert res["components"] == ["displays"]
    assert d.hs.get("displays/left").value == DISPLAY  # type: ignore[union-attr]
    assert d.hs.get("parameters/master/brightness").value == 0.9  # type: ignore[union-attr]
    # A save of chosen components only restores those.
    d("save", name="params", components=["parameters"])
    assert d.hs.save_info("params")["components"] == ["parameters"]
    assert d("restore", role="admin", name="params", components=["displays"])["error"]["code"] == "invalid_value"
    assert d("restore", role="admin", name="params", components=["nope"])["error"]["code"] == "unknown_component"
    assert d("restore", role="admin", name="missing")["error"]["code"] == "not_found"


def test_delete_save_and_limits() -> None:
    d = Driver(HanaState(max_saves=2, max_recovery_points=2, max_save_bytes=200))
    show(d)
    assert d("save", name="a", components=["parameters"])["keys"] == 1
    assert d("save", name="b", components=["parameters"])["keys"] == 1
    assert d("save", name="c", components=["parameters"])["error"]["code"] == "too_many_saves"
    assert d("delete_save", role="admin", name="a") == {"name": "a", "deleted": True}
    assert d("delete_save", role="admin", name="a")["error"]["code"] == "not_found"
    d("put", key="parameters/big", value="x" * 300)
    assert d("save", name="c")["error"]["code"] == "save_too_large"
    assert d("save", name="bad/name")["error"]["code"] == "invalid_value"


def test_recovery_points_are_bounded_and_do_not_count_as_saves() -> None:
    d = Driver(HanaState(max_saves=1, max_recovery_points=2))
    d("put", key="parameters/p", value=0)
    d("save", name="s")
    names = []
    for i in range(4):
        d("put", key="parameters/p", value=i + 1)
        names.append(d("restore", role="admin", name="s")["recovery_point"])
    assert len(set(names)) == 4
    autos = [s["name"] for s in d.hs.saves()["saves"] if s["auto"]]
    assert autos == names[-2:]


def test_export_import_round_trip_and_import_through_the_log() -> None:
    d = Driver()
    show(d)
    d("save", name="show")
    blob = d.hs.export_save("show")
    doc = orjson.loads(blob)
    assert doc["cluster"] == "hana" and doc["revision"] == 4 and doc["created"] == d.time
    other = Driver(HanaState())
    res = other("import_save", role="admin", file=blob.decode())
    assert res["name"] == "show" and res["source"] == {"cluster": "hana", "revision": 4, "schema_version": 2}
    assert other.hs.export_save("show") == blob
    assert other("import_save", role="admin", file=blob.decode())["error"]["code"] == "save_exists"
    other("import_save", role="admin", file=blob.decode(), name="copy")
    other("restore", role="admin", name="copy")
    assert values(other.hs) == values(d.hs)
    # A v1 file imports and restores the same.
    v1 = savefile.export_v1(
        name="legacy", cluster="old", revision=1, created=5, entries={"parameters/master/brightness": 0.1}
    )
    assert other("import_save", role="admin", file=v1.decode())["source"]["schema_version"] == 1
    other("restore", role="admin", name="legacy")
    assert other.hs.get("parameters/master/brightness").value == 0.1  # type: ignore[union-attr]
    with pytest.raises(StateError):
        other.hs.export_save("missing")


# -- bad input changes nothing ------------------------------------------------------------------


def _tamper(blob: bytes) -> str:
    return blob.replace(b"1920", b"1921").decode()


def _future(blob: bytes) -> str:
    doc = orjson.loads(blob)
    doc["schema_version"] = 3
    del doc["sha256"]
    doc["sha256"] = savefile.checksum(doc)
    return savefile.canonical(doc).decode()


def _bad_value_file(_: bytes) -> str:
    doc = {
        "format": "hana-save",
        "schema_version": 2,
        "name": "x",
        "cluster": "hana",
        "revision": 1,
        "created": 1,
        "components": {"displays": {"displays/a": {"width": "wide"}}},
    }
    doc["sha256"] = savefile.checksum(doc)
    return savefile.canonical(doc).decode()


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda b: {"op": "import_save", "file": _tamper(b), "name": "t"}, "checksum_mismatch"),
        (lambda b: {"op": "import_save", "file": _future(b), "name": "t"}, "unsupported_schema_version"),
        (lambda b: {"op": "import_save", "file": b[:-40].decode(), "name": "t"}, "invalid_save"),
        (lambda b: {"op": "import_save", "file": _bad_value_file(b), "name": "t"}, "invalid_value"),
        (lambda b: {"op": "import_save", "file": 5}, "invalid_save"),
        (lambda b: {"op": "put", "key": "displays/x", "value": {"height": 0}}, "invalid_value"),
        (lambda b: {"op": "put", "key": "lights/x", "value": 1}, "unknown_component"),
        (lambda b: {"op": "put", "key": "displays", "value": {}}, "invalid_key"),
        (lambda b: {"op": "undo", "author": "carol"}, "nothing_to_undo"),
        (lambda b: {"op": "redo"}, "nothing_to_redo"),
        (lambda b: {"op": "restore", "name": "nope"}, "not_found"),
        (lambda b: {"op": "save", "name": "show"}, "save_exists"),
        (lambda b: {"op": "save", "name": ""}, "invalid_value"),
        (lambda b: {"op": "delete", "key": "displays/none"}, "not_found"),
        (lambda b: {"op": "put", "key": "displays/left", "value": {}, "expected_version": 7}, "version_conflict"),
        (lambda b: {"op": "frobnicate"}, "invalid_command"),
        (lambda b: {"op": "put", "key": "parameters/p", "value": 1, "hlc": "garbage"}, "invalid_command"),
        (lambda b: {"op": "resolve", "id": 99, "take": "ours"}, "not_found"),
    ],
)
def test_bad_input_gets_a_clear_error_and_changes_nothing(make: object, code: str) -> None:
    d = Driver()
    show(d)
    d("save", name="show")
    d("undo")
    d("redo")
    blob = d.hs.export_save("show")
    before = state_of(d.hs)
    command = make(blob)  # type: ignore[operator]
    # As admin: the refusals here are about the input, not the role.
    res = d.hs.apply(100, cmd(**{"author": "alice", "role": "admin", "node": "n1", "time": d.time + 1, **command}))
    assert res["error"]["code"] == code, res
    assert res["error"]["message"]
    assert state_of(d.hs) == before
    assert d.hs.applied_index == 100


def test_garbage_command_bytes() -> None:
    hs = HanaState()
    before = state_of(hs)
    assert hs.apply(1, b"{truncated")["error"]["code"] == "invalid_command"
    assert state_of(hs) == before


# -- conflict policies ------------------------------------------------------------------


def test_lww_by_hlc_drops_a_concurrent_older_write() -> None:
    d = Driver()
    d("put", key="parameters/p", value="new", hlc=HLC(5000, 0, "fast").encode())
    res = d("put", key="parameters/p", value="old", hlc=HLC(4000, 0, "slow").encode())
    assert res["superseded"] is True and res["current"]["value"] == "new" and res["revision"] == 1
    # A writer that saw the newer change stamps after it and wins.
    later = HLC(4001, 0, "slow").receive(HLC(5000, 0, "fast"), 4001)
    assert d("put", key="parameters/p", value="later", hlc=later.encode())["revision"] == 2
    # A conditional write said what it overwrites: never stale.
    assert d("put", key="parameters/p", value="cond", expected_version=2, hlc=HLC(1, 0, "x").encode())["version"] == 3
    assert HLC.decode(d.hs.clock.encode()) == later
    # The per-key stamps travel in the snapshot: a restored node decides the same.
    other = HanaState()
    other.restore(d.hs.snapshot())
    stale = cmd(op="put", key="parameters/p", value="stale", hlc=HLC(4500, 0, "slow").encode())
    assert other.apply(10, stale) == d.hs.apply(10, stale)
    assert other.apply(10, stale)["superseded"] is True


def test_manual_policy_keeps_the_conflict_for_a_person() -> None:
    d = Driver()
    d("put", key="displays/left", value=DISPLAY, hlc=HLC(5000, 0, "a").encode())
    before = values(d.hs)
    res = d("put", key="displays/left", value={"width": 3}, hlc=HLC(4000, 0, "b").encode())
    assert res["error"]["code"] == "conflict_kept" and ERROR_STATUS["conflict_kept"] == 409
    cid = res["error"]["conflict_id"]
    assert values(d.hs) == before
    # GET /v1/conflicts shows the contract's shape (issue 14); the record keeps the ops.
    kept = d.hs.conflicts()["conflicts"]
    assert kept[0]["key"] == "displays/left" and kept[0]["status"] == "open"
    assert kept[0]["proposed"]["value"] == {"width": 3} and kept[0]["current"]["value"] == DISPLAY
    raw = d.hs.pending[cid]
    assert (
        raw["ops"] == [["put", "displays/left", {"width": 3}]] and raw["current"]["displays/left"]["value"] == DISPLAY
    )
    assert d("resolve", id=cid, take="theirs")["revision"] == 2
    assert d.hs.get("displays/left").value == {"width": 3}  # type: ignore[union-attr]
    assert d.hs.conflicts()["conflicts"] == []
    assert d("undo")["undone"]["op"] == "resolve"
    assert values(d.hs) == before


# -- snapshots -------------------------------------------------------------------------------


def test_snapshot_round_trip_and_old_kv_snapshot_and_garbage() -> None:
    d = Driver()
    show(d)
    d("save", name="s")
    d("undo")
    other = HanaState()
    other.restore(d.hs.snapshot(), d.hs.applied_index)
    assert other.snapshot() == d.hs.snapshot()
    # Undo state survives: redo works on the restored copy.
    assert "redone" in other.apply(99, cmd(op="redo", author="alice"))
    kv = KVStore()
    kv.apply(1, cmd(op="put", key="displays/a", value={}))
    hs = HanaState()
    hs.restore(kv.snapshot())
    assert values(hs) == {"displays/a": {}}
    before = d.hs.snapshot()
    for blob in (b"", b"{}", b"[]", b'{"format":"hana-state","version":1}', before[:-10]):
        with pytest.raises(ValueError):
            d.hs.restore(blob)
        assert d.hs.snapshot() == before
