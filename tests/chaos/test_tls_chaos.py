"""A CA roll with writes flowing loses nothing (issue 18): a 3-node chaos run
with certificates (`chaos.py --tls`: mutual TLS peer links through the fault
proxy, an HTTPS API the workload verifies against the cluster CA), a node
killed, `rotate-ca` on the signer while the workload writes and reads, the
controller paused; then the chaos checker (linearizability, acknowledged
writes, watches, convergence) on that history. And the same history with
one acknowledged write taken out of a node's final state must fail it.

The run's history, summary and node logs are kept in artifacts/chaos/tls
(or $HANA_CHAOS_ARTIFACTS/tls).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from mesh.trust import ca, local
from simulations.chaoskit import checks
from simulations.chaoskit.faults import FAULT_KINDS
from simulations.chaoskit.history import by_type, read_history
from simulations.chaoskit.schedule import ScheduleError, parse_schedule
from tests.chaos.test_chaos_run import ARTIFACTS, REPO, run_chaos

NODES = ["n1", "n2", "n3"]
# One fault at a time: a follower killed and restarted, the CA roll (the
# next fault waits until it has ended), then the controller killed (its
# restart makes new peer links, which only the new CA's certificates can
# open now) and paused.
SCHEDULE = {
    "faults": [
        {"at": 1.5, "kind": "kill", "hold": 1.5, "nodes": ["n3"]},
        {"at": 4.0, "kind": "rotate_ca", "hold": 0.5, "timeout": 40},
        {"at": 6.0, "kind": "kill", "hold": 1.5, "nodes": ["controller"]},
        {"at": 9.0, "kind": "pause", "hold": 1.5, "nodes": ["controller"]},
    ]
}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_ca_roll_with_writes_flowing_loses_nothing(tmp_path: Path) -> None:
    out = ARTIFACTS / "tls"
    schedule = tmp_path / "schedule.json"
    schedule.write_bytes(orjson.dumps(SCHEDULE))
    proc = run_chaos(
        out,
        *("--tls", "--nodes", "3", "--duration", "12", "--seed", "18", "--schedule", str(schedule)),
        timeout=240,
    )
    print(proc.stdout[-5000:])
    assert "CA roll" in proc.stdout and "done in" in proc.stdout
    assert proc.returncode == 0, f"chaos run failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["anomaly_count"] == 0
    assert [r["done"] for r in summary["ca_rolls"]] == [True]
    history = list(read_history(out / "history.jsonl"))
    records = by_type(history)

    # The roll started and ended while the run went on.
    rolls = [f for f in records["fault"] if f["kind"] == "rotate_ca"]
    assert len(rolls) == 1 and rolls[0]["roll"]["done"], rolls
    roll = rolls[0]
    new_ca = roll["roll"]["new_ca"]
    # Every node trusts the new CA alone and holds a certificate it issued.
    for nid in NODES:
        cas = local.bundle(out / nid)
        assert [ca.fingerprint(c) for c in cas] == [new_ca], nid
        assert local.node_cert(out / nid).issuer == cas[0].subject, nid
    # The nodes really ran mutual TLS and HTTPS (not the shared secret).
    for nid in NODES:
        assert "event=cluster_secret source=tls:" in (out / f"{nid}.log").read_text(errors="replace"), nid
    signer_log = (out / "n1.log").read_text(errors="replace")
    assert "event=ca_roll_started" in signer_log and "event=ca_roll_done" in signer_log

    # Writes were acknowledged during the roll and after it, on the new CA's certificates.
    writes = [o for o in records["op"] if o["outcome"] == "ok" and o["kind"] in ("put", "delete", "txn")]
    during = [o for o in writes if roll["start"] <= o["complete"] <= roll["end"]]
    after = [o for o in writes if o["invoke"] > roll["end"]]
    assert len(during) >= 5 and len(after) >= 20, (len(during), len(after))
    assert sorted(f["node"] for f in records["final"]) == NODES
    assert sum(len(w["events"]) for w in records["watch"]) > 50

    kinds = summary["faults"]["by_kind"]
    assert kinds == {"kill": 2, "pause": 1, "rotate_ca": 1}, kinds
    print(
        f"TLS chaos: ops ok {summary['ops']['total']['ok']} of {summary['ops']['total']['total']}, faults {kinds}, "
        f"elections {summary['elections']['count']}, anomalies {summary['anomaly_count']}, "
        f"roll {roll['roll']['seconds']:.1f} s, writes ok during the roll {len(during)}, after it {len(after)}"
    )

    # The checker can fail on this very history: one acknowledged write
    # (put after the roll) taken out of n2's final log and state.
    planted = [r for r in copy.deepcopy(history) if r["type"] != "anomaly"]
    assert checks.run_checks(planted) == []
    lost = next(o for o in after if o["kind"] == "put")
    revision = lost["result"]["revision"]
    final = next(r for r in planted if r["type"] == "final" and r["node"] == "n2")
    final["records"] = [r for r in final["records"] if r["revision"] != revision]
    found = checks.run_checks(planted)
    assert any(a["check"] == "acknowledged_writes" and "on n2" in a["detail"] for a in found), found

    # And a roll that never ended is an anomaly of its own.
    unfinished = [r for r in copy.deepcopy(history) if r["type"] != "anomaly"]
    next(r for r in unfinished if r["type"] == "fault" and r["kind"] == "rotate_ca")["roll"]["done"] = False
    assert [a["check"] for a in checks.run_checks(unfinished)] == ["ca_roll"]


def test_rotate_ca_is_a_schedule_kind_of_tls_runs_only(tmp_path: Path) -> None:
    # Accepted in a schedule, with a bounded timeout; never in the default kinds.
    parsed = parse_schedule(SCHEDULE, NODES, 12)
    assert [f.kind for f in parsed] == ["kill", "rotate_ca", "kill", "pause"] and parsed[1].options == {"timeout": 40}
    assert "rotate_ca" not in FAULT_KINDS
    with pytest.raises(ScheduleError, match="timeout must be between"):
        parse_schedule({"faults": [{"at": 1, "kind": "rotate_ca", "hold": 1, "timeout": 0}]}, NODES, 10)
    # Without --tls, the run refuses it before starting anything.
    schedule = tmp_path / "schedule.json"
    schedule.write_bytes(orjson.dumps(SCHEDULE))
    for args in (["--schedule", str(schedule)], ["--faults", "kill,rotate_ca"]):
        proc = subprocess.run(
            [sys.executable, str(REPO / "simulations" / "chaos.py"), "--out", str(tmp_path / "out"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and "rotate_ca need --tls" in proc.stderr, proc.stderr
        assert not (tmp_path / "out").exists()
