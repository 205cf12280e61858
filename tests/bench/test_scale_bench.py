"""bench/scale.py: its pure parts (parsing /proc and /metrics, quantiles,
the formation test, the goals and the table), and a tiny real run of 3
nodes, so that a broken bench fails CI rather than the night it is run."""

from __future__ import annotations

import os
import re

import pytest

from tests.bench.kit import load_bench

S = load_bench("scale")


def test_percentile_by_nearest_rank() -> None:
    xs = [float(x) for x in range(1, 101)]
    assert S.percentile(xs, 0.5) == 51.0 and S.percentile(xs, 0.99) == 99.0
    assert S.percentile(xs, 0.0) == 1.0 and S.percentile(xs, 1.0) == 100.0
    assert S.percentile([3.0], 0.99) == 3.0
    with pytest.raises(ValueError):
        S.percentile([], 0.5)


def test_proc_parsing_survives_odd_command_names() -> None:
    tck = S.CLK_TCK
    fields = ["S", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", str(3 * tck), str(tck), "0", "0"]
    stat = "4242 (py (thon) x) " + " ".join(fields)
    assert S.parse_proc_cpu(stat) == pytest.approx(4.0)
    assert S.parse_proc_rss("Name:\tpython\nVmRSS:\t  70000 kB\nThreads: 3\n") == 70000 * 1024
    with pytest.raises(ValueError):
        S.parse_proc_rss("Name:\tzombie\n")
    # And on this process, for real.
    assert S.proc_cpu(os.getpid()) > 0 and S.proc_rss(os.getpid()) > 1 << 20


def test_waves_and_the_state_written_for_the_catch_up() -> None:
    ids = [f"n{i}" for i in range(25)]
    w = S.waves(ids, 10)
    assert [len(x) for x in w] == [10, 10, 5] and [i for x in w for i in x] == ids
    with pytest.raises(ValueError):
        S.waves(ids, 0)
    assert S.catchup_mb(3, 100, 2000) == 100
    assert S.catchup_mb(100, 100, 2000) == pytest.approx(2000 / 101)
    assert S.catchup_mb(10_000, 100, 2000) == 1.0


def status(members: list[tuple[str, bool]], leader: str | None = "n1", me: str = "n1") -> dict[str, object]:
    return {"id": me, "leader": leader, "members": [{"id": i, "voter": v} for i, v in members]}


def test_formed_needs_every_node_the_voter_count_and_a_controller() -> None:
    ids = [f"n{i}" for i in range(1, 8)]
    five = [(i, n < 5) for n, i in enumerate(ids)]
    assert S.formed(status(five), ids)
    assert not S.formed(status(five[:-1]), ids)  # one node is not a member yet
    assert not S.formed(status([(i, n < 3) for n, i in enumerate(ids)]), ids)  # 3 voters, not 5
    assert not S.formed(status(five, leader=None), ids)
    assert not S.formed(status(five, me="n2"), ids)  # not the controller's own view
    assert not S.formed(None, ids)
    three = ["a", "b", "c"]
    assert S.formed(status([(i, True) for i in three], leader="a", me="a"), three)


def test_metrics_are_read_by_name() -> None:
    text = (
        "# HELP hana_peer_messages_sent_total Messages sent to peers\n"
        "hana_peer_messages_sent_total 1234.0\n"
        'hana_peer_snapshots{outcome="sent"} 2.0\n'
        'hana_peer_snapshots{outcome="received"} 1.0\n'
    )
    assert S.metric_value(text, "hana_peer_messages_sent_total") == 1234.0
    assert S.metric_value(text, "hana_nothing") == 0.0
    assert S.snapshots_received(text) == 1.0 and S.snapshots_received("") == 0.0


def result(n: int, **kw: object) -> object:
    r = S.SizeResult(n)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_goals_compare_the_largest_mesh_with_three_nodes() -> None:
    small = result(3, p50_ms=2.0, cpu_ms_per_write=1.0, status_s=0.4, members_s=0.01)
    big = result(
        100,
        p50_ms=2.9,
        cpu_ms_per_write=2.5,
        status_s=1.4,
        members_s=0.02,
        catchup_s=12.0,
        catchup_p99_ms=30.0,
        loaded_p99_ms=20.0,
    )
    got = {goal.split(" at ")[0]: (ok, figures) for goal, ok, figures in S.goals({3: small, 100: big})}
    assert got["commit p50"][0] is True and "1.45x" in got["commit p50"][1]
    assert got["leader CPU per write"][0] is False and "2.50x" in got["leader CPU per write"][1]
    assert got["hana-node status"][0] is False and got["GET /v1/members"][0] is True
    assert got["a lagging learner catches up"][0] is True
    # Not measured: n/a, never MET.
    got = {goal.split(" at ")[0]: ok for goal, ok, _ in S.goals({100: result(100)})}
    assert set(got.values()) == {None}
    assert S.verdict(None) == "n/a" and S.verdict(True) == "MET" and S.verdict(False) == "MISSED"
    table = S.table({3: small, 100: big})
    assert "N=3" in table and "N=100" in table and "2.90" in table
    assert S.goals({}) == []


def test_goals_compare_with_the_five_voters_when_measured() -> None:
    # "within 1.5x of that with none": the same five voters, no learners.
    three = result(3, p50_ms=1.0, cpu_ms_per_write=1.0)
    five = result(5, p50_ms=2.0, cpu_ms_per_write=2.0)
    big = result(100, p50_ms=2.9, cpu_ms_per_write=3.0)
    got = {goal: (ok, figures) for goal, ok, figures in S.goals({3: three, 5: five, 100: big})}
    assert got["commit p50 at 100 nodes within 1.5x of 5 nodes"] == (True, "2.90 vs 2.00 ms = 1.45x")
    assert got["leader CPU per write at 100 nodes within 2.0x of 5 nodes"] == (True, "3.00 vs 2.00 ms = 1.50x")


@pytest.mark.slow
@pytest.mark.integration
def test_a_tiny_real_run_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--sizes", "3", "--writes", "20", "--idle-seconds", "1", "--settle", "0.2"]
    args += ["--catchup-mb", "2", "--snapshot-every", "40", "--keep-entries", "10", "--baseline-seconds", "0.5"]
    assert S.main(args) == 0
    out = capsys.readouterr().out
    assert "N=3: formed in" in out
    assert "N=3:" not in out.split("formed in", 1)[1], out  # no error line for the size
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]
    lines = {r[0]: r[1].split() for r in rows if len(r) == 2}
    for row in ("formation s", "commit p50 ms", "leader CPU ms/write", "RSS MB/node med", "catch-up s (snapshot)"):
        assert lines[row][0] != "-", out
    assert lines["catch-up s (snapshot)"][1] == "(yes)", out  # the learner got a snapshot
    assert "MET" in out or "MISSED" in out
