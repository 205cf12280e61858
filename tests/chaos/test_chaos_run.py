"""CI-sized chaos runs against real node processes (simulations/chaos.py),
and a deliberately broken build that the checker must catch.

Each run's history.jsonl, summary.json, timeline.png and node logs are kept
in artifacts/chaos/ (or $HANA_CHAOS_ARTIFACTS), named in the README.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from simulations.chaoskit.faults import FAULT_KINDS
from simulations.chaoskit.history import by_type, read_history

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("HANA_CHAOS_ARTIFACTS", REPO / "artifacts" / "chaos"))

pytestmark = pytest.mark.integration


def run_chaos(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(REPO / "simulations" / "chaos.py"), "--out", str(out), "--no-progress", *args]
    env = dict(os.environ, COLUMNS="110")
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.mark.parametrize(("nodes", "seed"), [(3, 101), (5, 202)])
def test_short_chaos_run_with_every_fault_kind_finds_no_anomaly(nodes: int, seed: int) -> None:
    out = ARTIFACTS / f"{nodes}-nodes"
    duration = 40
    proc = run_chaos(
        out,
        *("--nodes", str(nodes), "--duration", str(duration), "--seed", str(seed)),
        *("--gap", "0.5:1.0", "--hold", "1.5:3.0"),
        timeout=2 * duration + 240,
    )
    assert proc.returncode == 0, f"chaos run failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["anomaly_count"] == 0
    assert set(summary["faults"]["by_kind"]) == set(FAULT_KINDS)
    records = by_type(read_history(out / "history.jsonl"))
    # The run did real work on every node, and every node's final state was checked.
    assert sorted(f["node"] for f in records["final"]) == [f"n{i + 1}" for i in range(nodes)]
    ok_writes = [o for o in records["op"] if o["outcome"] == "ok" and o["kind"] in ("put", "delete", "txn")]
    assert len(ok_writes) > 200 and {o["node"] for o in ok_writes} == {f"n{i + 1}" for i in range(nodes)}
    assert sum(len(w["events"]) for w in records["watch"]) > 200
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_broken_build_answering_linearizable_reads_locally_is_caught(tmp_path: Path) -> None:
    """`serve --inject-bug stale_reads`: every node answers linearizable reads
    from its own state. Partitions leave a minority serving old values;
    the checker must report a linearizability anomaly and exit 1."""
    out = ARTIFACTS / "broken-stale-reads"
    proc = run_chaos(
        out,
        *("--nodes", "3", "--duration", "20", "--seed", "303", "--inject-bug", "stale_reads"),
        *("--faults", "partition,isolate_leader,asymmetric", "--gap", "0.5:1.0", "--hold", "2:3"),
        timeout=300,
    )
    assert proc.returncode == 1, f"expected the anomaly exit status:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert "linearizability" in {a["check"] for a in summary["anomalies"]}
