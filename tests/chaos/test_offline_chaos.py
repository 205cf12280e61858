"""A CI-sized chaos run with offline writers (issue 14): partitions cut the
writers' home nodes off, their writes are queued (202) and replayed, and
the checker follows every queued write to its one fate (superseded never
visible, a conflict only after a resolve taking it, applied ones
linearizable with the rest): 0 anomalies.

The run's history.jsonl, summary.json and node logs are kept in
artifacts/chaos/offline (or $HANA_CHAOS_ARTIFACTS/offline).
"""

from __future__ import annotations

import orjson
import pytest

from simulations.chaoskit import checks, offline
from simulations.chaoskit.history import by_type, read_history
from tests.chaos.test_chaos_run import ARTIFACTS, run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


def test_chaos_with_partitions_and_offline_writers_finds_no_anomaly() -> None:
    out = ARTIFACTS / "offline"
    proc = run_chaos(
        out,
        *("--nodes", "3", "--duration", "30", "--seed", "1414", "--offline-clients", "2"),
        *("--faults", "partition,isolate_leader,kill", "--gap", "0.5:1.0", "--hold", "2.5:4.0"),
        *("--clients", "3", "--watchers", "1"),
        timeout=200,
    )
    assert proc.returncode == 0, f"chaos run failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    summary = orjson.loads((out / "summary.json").read_bytes())
    print(orjson.dumps(summary["offline"]).decode())
    assert summary["anomaly_count"] == 0
    off = summary["offline"]
    # The faults cut a writer's home off: writes were queued, and each
    # reached one final fate (the checker would have said otherwise).
    assert off["queued"] > 0 and sum(off["fates"].values()) == off["queued"], off
    assert "none" not in off["fates"], off
    history = [r for r in read_history(out / "history.jsonl") if r["type"] != "anomaly"]
    records = by_type(history)
    assert sorted(r["node"] for r in records["offline"]) == ["n1", "n2", "n3"]
    assert {"partition", "isolate_leader", "kill"} <= set(summary["faults"]["by_kind"])
    # The same real history with a bug planted: a write that lost (or a
    # conflict nobody resolved for it) made visible on every node.
    ops = records["op"]
    found = offline.fates(ops, records["offline"])
    lost = next(
        r for r in ops if r.get("outcome") == "queued" and found[r["id"]][0]["state"] in ("superseded", "conflict")
    )
    for rec in [*records["final"], *records["offline"]]:
        top = max((x["revision"] for x in rec["records"]), default=0)
        rec["records"].append({"revision": top + 1, "key": lost["key"], "op": "put", "value": lost["value"]})
    caught = [a for a in checks.run_checks(history) if a["check"] == "offline_visible"]
    assert caught and f"op {lost['id']}" in caught[0]["detail"], caught
