"""CI-sized chaos runs against real node processes (simulations/chaos.py),
and a deliberately broken build that the checker must catch.

Each run's history.jsonl, summary.json, timeline.png and node logs are kept
in artifacts/chaos/ (or $HANA_CHAOS_ARTIFACTS), named in the README.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from simulations.chaoskit.faults import FAULT_KINDS, NOT_APPLIED
from simulations.chaoskit.history import by_type, read_history
from simulations.chaoskit.schedule import load_schedule

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("HANA_CHAOS_ARTIFACTS", REPO / "artifacts" / "chaos"))

# Slow: each is a real chaos run. Each bounds itself (run_chaos(timeout=...),
# 360 s at most) and reports what the run printed; pytest-timeout comes after.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]


def run_chaos(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(REPO / "simulations" / "chaos.py"), "--out", str(out), "--no-progress", *args]
    env = dict(os.environ, COLUMNS="110")
    # Its own process group, killed whole if the run overstays (its nodes
    # also die with it: PR_SET_PDEATHSIG).
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"chaos run overstayed {timeout} s:\n{stdout[-4000:]}\n{stderr[-4000:]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.parametrize(("nodes", "seed"), [(3, 101), (5, 202)])
def test_short_chaos_run_with_every_fault_kind_finds_no_anomaly(nodes: int, seed: int) -> None:
    out = ARTIFACTS / f"{nodes}-nodes"
    # Goes on past this until every fault kind was injected once.
    duration = 60
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
    # schedule.json lists the faults that were applied, as `--schedule` reads them.
    schedule = load_schedule(out / "schedule.json", [f"n{i + 1}" for i in range(nodes)], math.inf)
    applied = [f for f in records["fault"] if not f["detail"].endswith(NOT_APPLIED)]
    assert [(f.kind, list(f.nodes or ())) for f in schedule] == [(f["kind"], _scope(f, nodes)) for f in applied]


def _scope(fault: dict, nodes: int) -> list[str]:  # type: ignore[type-arg]
    """A fault's targets as schedule.json names them ([] for every link)."""
    every_link = fault["kind"] in ("latency", "loss") and len(fault["nodes"]) == nodes
    return [] if every_link else fault["nodes"]


@pytest.mark.parametrize(
    ("bug", "faults", "caught_by"),
    [
        # Every node answers linearizable reads from its own state: a
        # minority cut off by a partition serves old values.
        ("stale_reads", "partition,isolate_leader,asymmetric", {"linearizability"}),
        # The controller answers a write once it is on its own disk: an
        # isolated controller acknowledges writes the majority never sees.
        ("ack_unreplicated", "isolate_leader,partition", {"acknowledged_writes"}),
    ],
)
def test_a_deliberately_broken_build_is_caught(bug: str, faults: str, caught_by: set[str]) -> None:
    """`serve --inject-bug BUG`: the checker must report the anomaly and the
    run must exit 1."""
    out = ARTIFACTS / f"broken-{bug.replace('_', '-')}"
    proc = run_chaos(
        out,
        *("--nodes", "3", "--duration", "15", "--seed", "303", "--inject-bug", bug),
        *("--faults", faults, "--gap", "0.5:1.0", "--hold", "2:3"),
        # A broken build may never converge (its replicas differ): no need
        # to give it the full minute to find that out.
        *("--converge-timeout", "10"),
        timeout=300,
    )
    assert proc.returncode == 1, f"expected the anomaly exit status:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert caught_by <= {a["check"] for a in summary["anomalies"]}, summary["anomalies"]


def test_a_node_that_can_send_but_not_hear_never_refuses_a_write_it_forwarded() -> None:
    """Regression (found by a 30-minute run, seed 7): a node cut off from
    what the others send forwards a write, the controller appends it, the
    answer never comes back and the node finds no controller until its
    deadline. It answered 503 ("not applied") for writes that were in the
    log; now 504. The faults are held longer than a node's request timeout
    (5 s), which the short runs above do not do. With seed 505 the build
    before the fix had 5 such anomalies in a 30-second run."""
    out = ARTIFACTS / "asymmetric-long-holds"
    proc = run_chaos(
        out,
        *("--nodes", "3", "--duration", "25", "--seed", "505", "--faults", "asymmetric"),
        *("--gap", "0.5:1.0", "--hold", "6:7"),
        timeout=300,
    )
    assert proc.returncode == 0, f"chaos run failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["faults"]["by_kind"].get("asymmetric", 0) >= 3
