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
    records = by_type(read_history(out / "history.jsonl"))
    assert sorted(r["node"] for r in records["offline"]) == ["n1", "n2", "n3"]
    assert {"partition", "isolate_leader", "kill"} <= set(summary["faults"]["by_kind"])
