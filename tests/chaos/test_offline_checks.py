"""The checker of offline writes (simulations/chaoskit/offline.py) on
hand-written histories: a correct one passes every check (offline and the
workload's), and each planted bug is caught by the check meant for it: a
superseded write visible, a conflict write visible without a resolve that
takes it, a queued write with no fate or two, an applied one missing or
applied twice, a refused one in the log, nodes disagreeing on conflicts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from simulations.chaoskit import checks, offline, report
from tests.chaos.test_checks import op as history_op

K1, K2 = "parameters/chaos/k0", "parameters/chaos/k1"
M1 = offline.MANUAL_PREFIX + "m0"
NODES = ("n1", "n2", "n3")


def op(op_id: int, kind: str, key: str | None, invoke: float, complete: float | None, **kw: Any) -> dict[str, Any]:
    """An op record of tests/chaos/test_checks.py, by an offline writer on n3."""
    return history_op(op_id, kind, key, invoke, complete, **{"client": 100, "node": "n3", **kw})


def v(op_id: int, client: int = 100) -> dict[str, Any]:
    return {"op": op_id, "c": client}


def queued(op_id: int, key: str, t: float, seq: int) -> dict[str, Any]:
    doc = {"queued": f"n3.{seq}", "key": key, "base_version": 1, "outbox": 1}
    return op(op_id, "put", key, t, t + 0.01, value=v(op_id), offline=True, outcome="queued", status=202, result=doc)


def direct(op_id: int, key: str, t: float, rev: int, version: int) -> dict[str, Any]:
    """A write answered 200 on the majority side (n1), by a workload client."""
    result = {"key": key, "version": version, "revision": rev}
    return op(op_id, "put", key, t, t + 0.01, node="n1", client=0, value=v(op_id, 0), result=result)


def rec(rev: int, key: str, value: Any) -> dict[str, Any]:
    return {"revision": rev, "key": key, "op": "put", "value": value}


def good_history() -> list[dict[str, Any]]:
    """n3 cut off queues four writes: lww k0 (applied), lww k1 (superseded
    by a later write on the majority), manual m0 twice (conflicts c1, c2);
    c1 is resolved taking the proposed value, c2 taking the current one."""
    ops = [
        direct(1, K1, 1.0, 1, 1),
        direct(2, M1, 1.5, 2, 1),
        queued(3, K1, 2.0, 1),  # made before op 5: applied at replay
        queued(4, K2, 2.1, 2),  # made before op 6: superseded
        queued(7, M1, 2.2, 3),
        queued(8, M1, 2.3, 4),
        direct(5, K2, 3.0, 3, 1),
        direct(6, M1, 3.5, 4, 2),
        # Healed: n3 replays (rev 5: op 3 applied; op 4 superseded; ops 7, 8 conflicts).
        op(9, "resolve", M1, 8.0, 8.01, node="n1", conflict="c1", take="proposed", value=v(7),
           result={"id": "c1", "take": "proposed", "revision": 6, "key": M1}),
        op(10, "resolve", M1, 9.0, 9.01, node="n2", conflict="c2", take="current", value=None,
           result={"id": "c2", "take": "current", "revision": 6, "key": M1}),
        op(11, "resolve", M1, 9.5, 9.51, node="n2", conflict="c2", take="value", value={"op": 11, "c": 100},
           outcome="fail", status=409, error="conflict_resolved", result={"error": {"code": "conflict_resolved"}}),
    ]  # fmt: skip
    lww_log = [rec(1, K1, v(1, 0)), rec(3, K2, v(5, 0)), rec(5, K1, v(3))]
    manual_log = [rec(2, M1, v(2, 0)), rec(4, M1, v(6, 0)), rec(6, M1, v(7))]
    outbox = [
        {"id": "n3.1", "key": K1, "op": "put", "state": "applied", "result": {"key": K1, "version": 2, "revision": 5}},
        {"id": "n3.2", "key": K2, "op": "put", "state": "superseded", "result": {"superseded": True}},
        {"id": "n3.3", "key": M1, "op": "put", "state": "conflict", "result": {"conflict": "c1"}},
        {"id": "n3.4", "key": M1, "op": "put", "state": "conflict", "result": {"conflict": "c2"}},
    ]
    conflicts = [
        {"id": "c1", "key": M1, "component": "settings", "status": "resolved"},
        {"id": "c2", "key": M1, "component": "settings", "status": "resolved"},
    ]
    finals, offs = [], []
    for n in NODES:
        items = {
            K1: {"value": v(3), "version": 2, "mod_revision": 5},
            K2: {"value": v(5, 0), "version": 1, "mod_revision": 3},
        }
        finals.append({"type": "final", "node": n, "revision": 6, "applied_index": 9, "digest": "d",
                       "items": items, "records": copy.deepcopy(lww_log)})  # fmt: skip
        offs.append(
            {
                "type": "offline",
                "node": n,
                "error": None,
                "outbox": copy.deepcopy(outbox) if n == "n3" else [],
                "conflicts": copy.deepcopy(conflicts),
                "items": {M1: {"value": v(7), "version": 3, "mod_revision": 6}},
                "records": copy.deepcopy(manual_log),
            }
        )
    return [{"type": "meta", "seed": 1, "nodes": list(NODES), "args": {}}, *ops, *finals, *offs]


def anomalies(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    return checks.run_checks(records)


def test_a_correct_offline_history_passes_every_check() -> None:
    assert anomalies(good_history()) == []
    summary = offline.summarize(good_history())
    assert summary is not None
    assert summary["queued"] == 4 and summary["fates"] == {"applied": 1, "superseded": 1, "conflict": 2}
    assert report.summarize(good_history())["offline"]["conflicts"] == 2


def _final(records: list[dict[str, Any]], node: str, kind: str = "final") -> dict[str, Any]:
    return next(r for r in records if r["type"] == kind and r["node"] == node)


def test_a_superseded_write_that_is_visible_is_caught() -> None:
    bad = good_history()
    # The planted bug: replay ignored the HLC stamp and wrote op 4 over op 5.
    for n in NODES:
        f = _final(bad, n)
        f["records"].append(rec(7, K2, v(4)))
        f["items"][K2] = {"value": v(4), "version": 2, "mod_revision": 7}
    found = anomalies(bad)
    assert any(a["check"] == "offline_visible" and "op 4" in a["detail"] and "superseded" in a["detail"] for a in found)
    # The workload's checks see it too: a write that did nothing is in the log.
    assert any(a["check"] == "phantom_writes" and "op 4" in a["detail"] for a in found), found


def test_a_conflict_write_visible_without_a_resolve_taking_it_is_caught() -> None:
    bad = good_history()
    for n in NODES:  # op 8 (conflict c2, resolved taking current) shows up anyway
        _final(bad, n, "offline")["records"].append(rec(7, M1, v(8)))
    found = anomalies(bad)
    assert [a["check"] for a in found] == ["offline_visible"], found
    assert "conflict c2" in found[0]["detail"] and "without a resolve that takes it" in found[0]["detail"]
    # Visible at another revision than the resolve that took it: caught too.
    bad = good_history()
    for n in NODES:
        off = _final(bad, n, "offline")
        off["records"] = [r if r["revision"] != 6 else rec(5, M1, v(7)) for r in off["records"]]
    assert any(a["check"] == "offline_visible" and "op 7" in a["detail"] for a in anomalies(bad))


@pytest.mark.parametrize("plant", ["missing", "twice", "not_final"])
def test_a_queued_write_without_exactly_one_final_fate_is_caught(plant: str) -> None:
    bad = good_history()
    box = _final(bad, "n3", "offline")["outbox"]
    if plant == "missing":
        box.pop(0)
    elif plant == "twice":
        box.append({**box[1], "state": "applied"})
    else:
        box[1]["state"] = "replaying"
    found = [a for a in anomalies(bad) if a["check"] == "offline_fate"]
    assert len(found) == 1 and "not exactly one final fate" in found[0]["detail"], found


def test_an_applied_write_missing_or_applied_twice_is_caught() -> None:
    bad = good_history()
    for n in ("n2",):
        f = _final(bad, n)
        f["records"] = [r for r in f["records"] if r["revision"] != 5]
        f["items"][K1] = {"value": v(1, 0), "version": 1, "mod_revision": 1}
    assert any(a["check"] == "offline_applied" and "missing on n2" in a["detail"] for a in anomalies(bad))
    bad = good_history()
    for n in NODES:
        f = _final(bad, n)
        f["records"].append(rec(8, K1, v(3)))
        f["items"][K1] = {"value": v(3), "version": 3, "mod_revision": 8}
    assert any(a["check"] == "offline_applied" and "applied twice" in a["detail"] for a in anomalies(bad))


def test_an_applied_write_at_the_revision_a_resolve_answered_is_not_called_missing() -> None:
    # A resolve taking the current side writes nothing and answers the
    # store's revision: here 5, the very revision op 3 was applied at (what
    # the offline chaos run with seed 1414 did). op 3 is in every log.
    history = good_history()
    resolve = next(r for r in history if r.get("id") == 10)
    resolve["result"]["revision"] = 5
    assert anomalies(history) == []
    # It is still caught where it is truly missing.
    for n in NODES:
        f = _final(history, n)
        f["records"] = [r for r in f["records"] if r["revision"] != 5]
        f["items"][K1] = {"value": v(1, 0), "version": 1, "mod_revision": 1}
    assert any(a["check"] == "offline_applied" and "missing on n1, n2, n3" in a["detail"] for a in anomalies(history))


def test_manual_values_from_refused_or_unknown_writers_and_conflict_sets_are_checked() -> None:
    bad = good_history()
    for n in NODES:  # the refused take-value resolve (409) wrote its value anyway
        _final(bad, n, "offline")["records"].append(rec(7, M1, {"op": 11, "c": 100}))
    assert any(a["check"] == "offline_phantom" and "op 11 was refused" in a["detail"] for a in anomalies(bad))
    bad = good_history()
    _final(bad, "n2", "offline")["conflicts"][1]["status"] = "open"
    found = [a for a in anomalies(bad) if a["check"] == "offline_conflicts"]
    assert any("disagree" in a["detail"] for a in found) and any("resolve op 10" in a["detail"] for a in found)


def test_fates_project_onto_the_workload_checks() -> None:
    projected = {r["id"]: r for r in offline.project_fates(
        [r for r in good_history() if r["type"] == "op"],
        [r for r in good_history() if r["type"] == "offline"],
    )}  # fmt: skip
    assert projected[3]["outcome"] == "unknown" and projected[3]["complete"] is None  # applied: when, the log says
    assert projected[4]["outcome"] == "fail"  # superseded: did nothing
    assert not {2, 6, 7, 8, 9, 10, 11} & set(projected)  # manual keys and resolves: offline's alone
    # A 202 is an expected status for an offline write only.
    plain = op(20, "put", K1, 1.0, 1.01, status=202, outcome="ok", result={})
    assert checks.check_statuses([plain]) and not checks.check_statuses([{**plain, "offline": True}])


def test_a_local_read_may_show_a_pending_value_only_if_its_node_queued_it() -> None:
    pending = {"key": K1, "value": v(3), "version": 1, "mod_revision": 1, "revision": 2, "pending": True, "stale": True}
    read = op(30, "read_local", K1, 2.5, 2.51, result=pending)
    good = good_history()
    good.insert(5, read)
    assert anomalies(good) == []
    bad = good_history()
    bad.insert(5, {**read, "node": "n2"})  # n2 queued nothing
    found = anomalies(bad)
    assert [a["check"] for a in found] == ["reads_match_log"] and "queued there by no write" in found[0]["detail"]
    early = good_history()
    early.insert(5, {**read, "invoke": 1.0, "complete": 1.01})  # before op 3 was queued
    assert [a["check"] for a in anomalies(early)] == ["reads_match_log"]
