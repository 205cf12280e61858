"""The chaos checker on hand-written histories: each check accepts a correct
history and flags the one anomaly planted in a copy of it."""

from __future__ import annotations

import copy
from typing import Any

from simulations.chaoskit import checks

K1, K2 = "parameters/chaos/k1", "parameters/chaos/k2"


def op(op_id: int, kind: str, key: str | None, invoke: float, complete: float | None, **kw: Any) -> dict[str, Any]:
    rec = {
        "type": "op",
        "id": op_id,
        "client": 0,
        "node": "n1",
        "kind": kind,
        "key": key,
        "keys": None,
        "value": None,
        "expected_version": None,
        "invoke": invoke,
        "complete": complete,
        "outcome": "ok",
        "status": 200,
        "error": None,
        "result": None,
    }
    rec.update(kw)
    return rec


def put(op_id: int, key: str, t: float, rev: int, version: int, **kw: Any) -> dict[str, Any]:
    value = {"op": op_id, "c": 0}
    return op(
        op_id, "put", key, t, t + 0.01, value=value, result={"key": key, "version": version, "revision": rev}, **kw
    )


def rec(rev: int, key: str, kind: str, value: Any) -> dict[str, Any]:
    return {"revision": rev, "key": key, "op": kind, "value": value}


def good_history() -> list[dict[str, Any]]:
    """k1: put(1) put(2) read; k2 via a txn with k1, then a delete of k2;
    two nodes with identical logs; one watch session."""
    txn_ops = [
        {"op": "put", "key": K1, "value": {"op": 4, "c": 0, "i": 0}, "expected_version": 2},
        {"op": "put", "key": K2, "value": {"op": 4, "c": 0, "i": 1}},
    ]
    ops = [
        put(1, K1, 1.0, rev=1, version=1),
        put(2, K1, 2.0, rev=2, version=2),
        op(
            3,
            "read",
            K1,
            3.0,
            3.01,
            result={"key": K1, "value": {"op": 2, "c": 0}, "version": 2, "mod_revision": 2, "revision": 2},
        ),
        op(
            4,
            "txn",
            None,
            4.0,
            4.01,
            keys=[K1, K2],
            value=txn_ops,
            result={"revision": 3, "results": [{"key": K1, "version": 3}, {"key": K2, "version": 1}]},
        ),
        op(5, "delete", K2, 5.0, 5.01, result={"key": K2, "revision": 4}),
        op(6, "read", K2, 6.0, 6.01, outcome="fail", status=404, error="not_found", result={"error": {}}),
        # Refused for sure (503): must not be in any log.
        op(7, "put", K2, 6.5, 6.51, value={"op": 7, "c": 0}, outcome="fail", status=503, error="no_leader"),
        # Unknown outcome that did not happen.
        op(8, "put", K2, 7.0, None, value={"op": 8, "c": 0}, outcome="unknown", status=None),
        op(
            9,
            "read_local",
            K1,
            8.0,
            8.01,
            # Local: stale (the node was at revision 2) is allowed.
            result={"key": K1, "value": {"op": 2, "c": 0}, "version": 2, "mod_revision": 2, "revision": 2},
        ),
    ]
    log = [
        rec(1, K1, "put", {"op": 1, "c": 0}),
        rec(2, K1, "put", {"op": 2, "c": 0}),
        rec(3, K1, "put", {"op": 4, "c": 0, "i": 0}),
        rec(3, K2, "put", {"op": 4, "c": 0, "i": 1}),
        rec(4, K2, "delete", None),
    ]
    items = {K1: {"value": {"op": 4, "c": 0, "i": 0}, "version": 3, "mod_revision": 3}}
    finals = [
        {
            "type": "final",
            "node": n,
            "revision": 4,
            "applied_index": 9,
            "digest": "abc",
            "items": copy.deepcopy(items),
            "records": copy.deepcopy(log),
        }
        for n in ("n1", "n2")
    ]
    watch = {
        "type": "watch",
        "id": 1,
        "node": "n2",
        "prefix": "parameters/chaos/",
        "since": 2,
        "start": 0.0,
        "end": 9.0,
        "error": None,
        "events": [dict(r) for r in log[1:]],
    }
    return [*ops, *finals, watch]


def checks_failing(records: list[dict[str, Any]]) -> set[str]:
    return {a["check"] for a in checks.run_checks(records)}


def find(records: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return next(r for r in records if all(r.get(k) == v for k, v in match.items()))


def test_a_correct_history_passes_every_check() -> None:
    assert checks.run_checks(good_history()) == []


def test_a_stale_linearizable_read_is_caught() -> None:
    h = good_history()
    find(h, id=3)["result"] = {"key": K1, "value": {"op": 1, "c": 0}, "version": 1, "mod_revision": 1, "revision": 1}
    assert checks_failing(h) == {"linearizability"}


def test_a_txn_conflict_must_be_explained_by_the_versions() -> None:
    """A 409 on the txn's k1 check at a time k1 was at the expected version."""
    h = good_history()
    txn = find(h, id=4)
    txn.update(outcome="fail", status=409, error="version_conflict")
    txn["result"] = {"error": {"code": "version_conflict", "op_index": 0, "current": None}}
    # The log still holds the txn's records, so the log checks complain too;
    # linearizability must be among them (k1 cannot be absent at 4.0).
    assert "linearizability" in checks_failing(h)


def test_an_acknowledged_write_missing_from_one_node_is_caught() -> None:
    h = good_history()
    final = find(h, type="final", node="n2")
    final["records"] = [r for r in final["records"] if r["revision"] != 1]
    found = checks.run_checks(h)
    assert any(a["check"] == "acknowledged_writes" and "on n2" in a["detail"] for a in found)


def test_half_a_transaction_is_caught() -> None:
    h = good_history()
    for final in (r for r in h if r["type"] == "final"):
        final["records"] = [r for r in final["records"] if (r["revision"], r["key"]) != (3, K2)]
    assert "acknowledged_writes" in checks_failing(h)


def test_a_refused_write_in_the_log_is_caught() -> None:
    h = good_history()
    for final in (r for r in h if r["type"] == "final"):
        final["records"].append(rec(5, K2, "put", {"op": 7, "c": 0}))
        final["items"][K2] = {"value": {"op": 7, "c": 0}, "version": 1, "mod_revision": 5}
    assert checks_failing(h) == {"phantom_writes"}


def test_a_write_applied_twice_is_caught() -> None:
    h = good_history()
    for final in (r for r in h if r["type"] == "final"):
        final["records"].append(rec(5, K1, "put", {"op": 2, "c": 0}))
        final["items"][K1] = {"value": {"op": 2, "c": 0}, "version": 4, "mod_revision": 5}
    assert "phantom_writes" in checks_failing(h)


def test_an_unknown_write_may_have_happened() -> None:
    h = good_history()
    for final in (r for r in h if r["type"] == "final"):
        final["records"].append(rec(5, K2, "put", {"op": 8, "c": 0}))
        final["items"][K2] = {"value": {"op": 8, "c": 0}, "version": 1, "mod_revision": 5}
    assert checks.run_checks(h) == []


def test_state_that_disagrees_with_its_own_log_is_caught() -> None:
    h = good_history()
    for final in (r for r in h if r["type"] == "final"):
        final["items"][K1]["version"] = 7
    assert checks_failing(h) == {"state_matches_log"}


def test_an_invented_local_read_is_caught() -> None:
    h = good_history()
    find(h, id=9)["result"] = {"key": K1, "value": {"op": 99, "c": 0}, "version": 2, "mod_revision": 2, "revision": 2}
    assert checks_failing(h) == {"reads_match_log"}


def test_a_stale_local_read_is_allowed() -> None:
    h = good_history()
    find(h, id=9)["result"] = {"key": K1, "value": {"op": 1, "c": 0}, "version": 1, "mod_revision": 1, "revision": 1}
    assert checks.run_checks(h) == []


def test_watch_gap_duplicate_and_disorder_are_caught() -> None:
    for damage in ("gap", "duplicate", "disorder"):
        h = good_history()
        w = find(h, type="watch")
        events = w["events"]
        if damage == "gap":
            del events[1]
        elif damage == "duplicate":
            events.insert(1, dict(events[0]))
        else:
            events[0], events[1] = events[1], events[0]
        assert checks_failing(h) == {"watches"}, damage


def test_a_watch_cut_inside_a_transaction_is_not_a_gap() -> None:
    h = good_history()
    w = find(h, type="watch")
    w["events"] = w["events"][:2]  # revision 2, then only k1 of revision 3
    assert checks.run_checks(h) == []


def test_diverged_replicas_are_caught() -> None:
    h = good_history()
    find(h, type="final", node="n2")["digest"] = "def"
    assert checks_failing(h) == {"convergence"}


def test_no_final_state_is_an_anomaly() -> None:
    h = [r for r in good_history() if r["type"] != "final"]
    assert "convergence" in checks_failing(h)


def test_an_unexpected_status_is_caught() -> None:
    h = good_history()
    h.append(op(10, "put", K1, 9.0, 9.01, outcome="fail", status=500, error="internal"))
    assert checks_failing(h) == {"unexpected_status"}


def with_unknown_txn(parts_in_log: int) -> list[dict[str, Any]]:
    """The good history plus a txn of unknown outcome (puts on k1 and k2,
    op 11) of which the first `parts_in_log` parts are in every log."""
    h = good_history()
    ops = [
        {"op": "put", "key": K1, "value": {"op": 11, "c": 0, "i": 0}},
        {"op": "put", "key": K2, "value": {"op": 11, "c": 0, "i": 1}},
    ]
    h.append(op(11, "txn", None, 9.0, None, keys=[K1, K2], value=ops, outcome="unknown", status=None))
    versions = {K1: 4, K2: 1}
    for final in (r for r in h if r["type"] == "final"):
        for part in ops[:parts_in_log]:
            final["records"].append(rec(5, part["key"], "put", part["value"]))
            final["items"][part["key"]] = {"value": part["value"], "version": versions[part["key"]], "mod_revision": 5}
    return h


def test_half_of_an_unknown_transaction_is_caught() -> None:
    assert checks_failing(with_unknown_txn(1)) == {"phantom_writes"}


def test_a_whole_unknown_transaction_that_happened_is_fine() -> None:
    assert checks.run_checks(with_unknown_txn(2)) == []


def test_an_unknown_transaction_that_never_happened_is_fine() -> None:
    assert checks.run_checks(with_unknown_txn(0)) == []


def test_a_refused_delete_in_the_log_is_caught() -> None:
    h = good_history()
    h.append(op(12, "delete", K1, 9.0, 9.01, outcome="fail", status=503, error="no_leader"))
    for final in (r for r in h if r["type"] == "final"):
        final["records"].append(rec(5, K1, "delete", None))
        del final["items"][K1]
    assert checks_failing(h) == {"phantom_writes"}


def test_a_read_of_half_a_transaction_is_caught() -> None:
    """A prefix read at revision 3 that sees the txn's k1 but not its k2."""
    h = good_history()
    items = [{"key": K1, "value": {"op": 4, "c": 0, "i": 0}, "version": 3, "mod_revision": 3}]
    h.append(op(13, "list", None, 4.5, 4.51, keys=[K1, K2], result={"revision": 3, "items": items}))
    assert "reads_match_log" in checks_failing(h)


def test_a_local_read_that_is_not_the_state_at_its_revision_is_caught() -> None:
    h = good_history()
    find(h, id=9)["result"]["revision"] = 3  # at 3, k1 is the txn's value
    assert checks_failing(h) == {"reads_match_log"}


def test_unknown_writes_that_never_happened_do_not_blow_up_the_search() -> None:
    """Forty unknown puts on one key, none in the log: settled as never
    happened before the search, which a small budget could not afford
    otherwise (it would try every subset)."""
    h = good_history()
    for i in range(40):
        h.append(op(100 + i, "put", K1, 9.0 + i, None, value={"op": 100 + i, "c": 0}, outcome="unknown", status=None))
        h.append(
            op(
                200 + i,
                "read",
                K1,
                9.5 + i,
                9.6 + i,
                result={"key": K1, "value": {"op": 4, "c": 0, "i": 0}, "version": 3, "mod_revision": 3, "revision": 4},
            )
        )
    assert checks.run_checks(h, budget=5_000) == []


def test_a_superseded_write_is_not_expected_in_the_log() -> None:
    h = good_history()
    current = {"key": K1, "value": {"op": 4, "c": 0, "i": 0}, "version": 3, "mod_revision": 3}
    h.append(
        op(
            14,
            "put",
            K1,
            9.0,
            9.01,
            value={"op": 14, "c": 0},
            result={"key": K1, "revision": 4, "superseded": True, "current": current},
        )
    )
    assert checks.run_checks(h) == []


def final_watch(events: list[dict[str, Any]], error: str | None = None) -> dict[str, Any]:
    return {
        "type": "watch",
        "id": "final-n1",
        "final": True,
        "node": "n1",
        "prefix": "parameters/chaos/",
        "since": 1,
        "start": 10.0,
        "end": 11.0,
        "error": error,
        "events": events,
    }


def test_the_full_final_watch_must_reach_the_last_revision() -> None:
    h = good_history()
    log = find(h, type="final", node="n1")["records"]
    assert checks.run_checks([*h, final_watch([dict(r) for r in log])]) == []
    short = [*h, final_watch([dict(r) for r in log[:-1]])]
    assert checks_failing(short) == {"watches"}


def test_a_compacted_watch_is_an_anomaly_when_nothing_was_compacted() -> None:
    h = good_history()
    find(h, type="watch")["error"] = "compacted: revision 2 is no longer held"
    assert checks_failing(h) == {"watches"}
