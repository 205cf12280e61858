"""bench/mesh.py and bench/bigdata.py: the pure parts (figures, medians and
ranges, goal marks, tables, the alternating order, the 1,000,000-entry
directory builder at a small size opened by the node's own storage and
replica), and, marked slow, a real node on a built directory and a tiny run
of the whole bench. Timings are never asserted: the bench prints them."""

from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path

import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import bigdata
from bench import mesh as bench
from mesh.raft import Config
from mesh.replica import Replica
from mesh.state.model import HanaState
from mesh.storage.disk import DiskStorage


def load_run(**over: float) -> dict[str, float]:
    base = {f.key: 1.0 for f in bench.FIGURES}
    base.update(w64_terms=0.0)
    base.update(over)
    return base


def test_summarize_gives_median_and_range() -> None:
    assert bench.summarize([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert bench.summarize([4.0, 1.0]) == (2.5, 1.0, 4.0)
    assert bench.fmt_range([0.5, 0.25, 1.0], ".2f") == "0.25-1.00"
    with pytest.raises(ValueError):
        bench.summarize([])


def test_goals_are_judged_against_etcd_or_a_bound() -> None:
    le = bench.Goal("le_etcd")
    assert le.judge(0.8, 0.9) == "met"
    assert le.judge(1.0, 0.9) == "missed"
    assert le.judge(1.0, None) == "n/a (no etcd)"
    ratio = bench.Goal("ratio_ge", 1.5)
    assert ratio.judge(150.0, 100.0) == "met"
    assert ratio.judge(149.0, 100.0) == "missed"
    assert bench.Goal("lt", 0.1).judge(0.1, None) == "missed"
    assert bench.Goal("lt", 0.1).judge(0.09, None) == "met"
    assert bench.Goal("le", 0).judge(0, None) == "met"
    assert bench.Goal("le", 0).judge(None, None) == "n/a"
    with pytest.raises(ValueError):
        bench.Goal("sideways").judge(1.0, 1.0)


def test_failed_requests_are_summed_over_the_phases() -> None:
    assert bench.failures(load_run(w1_errors=2.0, r16_errors=3.0)) == 5.0
    assert bench.failures(load_run()) == 0.0


def test_runs_alternate_hana_first_in_odd_runs() -> None:
    systems = ["hana", "etcd"]
    assert [bench.run_order(systems, r) for r in (1, 2, 3)] == [["hana", "etcd"], ["etcd", "hana"], ["hana", "etcd"]]


def test_load_table_has_median_range_ratio_and_goal_marks() -> None:
    runs = {
        "hana": [
            load_run(w1_p50=0.7, w64_rate=1300.0, w1_cpu=2.0, r16_rate=6000.0),
            load_run(w1_p50=0.9, w64_rate=1100.0, w1_cpu=1.8, r16_rate=5000.0, w64_terms=1.0),
            load_run(w1_p50=0.8, w64_rate=1200.0, w1_cpu=1.9, r16_rate=5500.0),
        ],
        "etcd": [load_run(w1_p50=0.85, w64_rate=1000.0, w1_cpu=1.0, r16_rate=4000.0) for _ in range(3)],
    }
    header, rows = bench.load_rows(runs, ["hana", "etcd"])
    assert header == [
        "figure", "hana median", "hana range", "etcd median", "etcd range", "hana/etcd", "goal (hana)", "met?",
    ]  # fmt: skip
    by = {r[0]: r for r in rows}
    assert by["sequential write p50 (ms)"][1:] == ["0.80", "0.70-0.90", "0.85", "0.85-0.85", "0.94x", "<= etcd", "met"]
    assert by["writes/s, 64 clients"][5:] == ["1.20x", ">= 1.0x etcd (aim 1.2x)", "met"]
    assert by["cluster CPU s / 1,000 writes, 1 client"][-1] == "missed"
    assert by["linearizable reads/s, 16 clients"][-1] == "missed"  # 5,500 / 4,000 = 1.375x
    # One run with a term change misses the goal of none, whatever the median.
    assert by["term changes during 64-client load"][1] == "0"
    assert by["term changes during 64-client load"][-1] == "missed"
    assert by["sequential writes/s (1 client)"][-2:] == ["", ""]
    # Without etcd: no ratio column, the goals against etcd cannot be judged.
    header, rows = bench.load_rows({"hana": runs["hana"]}, ["hana"])
    assert "hana/etcd" not in header
    assert {r[0]: r[-1] for r in rows}["sequential write p50 (ms)"] == "n/a (no etcd)"
    # With TLS: its own columns and a TLS/plain ratio.
    header, rows = bench.load_rows({**runs, "hana+TLS": runs["hana"]}, ["hana", "hana+TLS", "etcd"])
    assert header[7:9] == ["TLS/plain", "hana/etcd"]
    assert {r[0]: r for r in rows}["writes/s, 64 clients"][7] == "1.00x"


def test_failover_idle_and_restart_tables() -> None:
    results = {
        "hana": {
            "crash": [0.05, 0.08, 0.09, 0.31],
            "isolate": [0.5, 0.7, 0.9],
            "idle": [0.1, 0.2, 0.25],
            "idle_leader": 1,
        },
        "etcd": {"crash": [1.2, 1.3], "isolate": [1.1], "idle": [0.5, 0.4, 0.6], "idle_leader": None},
    }
    header, rows = bench.failover_rows(results, ["hana", "etcd"])
    assert header[1:3] == ["hana median / max (n)", "etcd median / max (n)"]
    crash, isolate = rows
    assert crash[1] == "0.085 / 0.310 s (4)"
    assert crash[-1] == "met; missed"
    assert isolate[1] == "0.700 / 0.900 s (3)" and isolate[-1] == "missed"
    _, rows = bench.idle_rows(results, ["hana", "etcd"])
    assert [r[-1] for r in rows] == ["met", "missed"]
    # The leader's figure apart from the followers' (the max node is a follower here).
    assert rows[0][1:4] == ["0.20%", "0.10%, 0.25%", "0.25%"]
    assert rows[1][1:4] == ["changed", "0.50%, 0.40%, 0.60%", "0.60%"]
    _, rows = bench.restart_rows({"times": [1.5, 2.5, 1.0], "api": [0.5, 0.6, 0.4]}, "not measured")
    assert rows[0][2:] == ["1.50 / 2.50 s", "< 2 s", "missed", "0.50, 0.60, 0.40 s"]
    assert rows[1][1] == "not measured"
    console = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    bench.print_table(console, "failover", *bench.failover_rows(results, ["hana", "etcd"]))
    text = console.export_text()
    assert "crashed (SIGKILL)" in text and "0.085 / 0.310 s (4)" in text


def test_only_takes_known_parts() -> None:
    assert bench.parse_only("load, idle") == {"load", "idle"}
    with pytest.raises(Exception, match="--only"):
        bench.parse_only("load,nap")


def test_cpu_seconds_of_a_process() -> None:
    first = bench.proc_cpu_seconds(os.getpid())
    sum(i * i for i in range(200_000))
    assert 0 <= first <= bench.proc_cpu_seconds(os.getpid())


def open_built(path: Path, node: str) -> tuple[DiskStorage, HanaState, Replica]:
    """Open a built directory as the node does: DiskStorage, then a Replica
    that restores the snapshot and applies the committed tail."""
    storage = DiskStorage(path)
    state = HanaState()
    replica = Replica(Config(id=node, rng=random.Random(7)), storage, state, snapshot_every=10_000, keep_entries=1000)
    return storage, state, replica


def test_bigdata_builds_a_directory_the_node_opens(tmp_path: Path) -> None:
    big = bigdata.build(tmp_path / "d", ("h1", "h2", "h3"), entries=2_000, tail=300, keys=50)
    assert (big.entries, big.snapshot_index, big.tail) == (2_000, 1_700, 300)
    assert big.key == "parameters/big/k00000" and big.value.startswith("v000002000")
    assert "2,000 entries" in big.describe()
    again = bigdata.existing(tmp_path / "d", keys=50)  # what --big-dir reads back
    assert (again.entries, again.snapshot_index, again.tail, again.key, again.value) == (
        2_000, 1_700, 300, big.key, big.value,
    )  # fmt: skip
    with pytest.raises(ValueError, match="last entry"):
        bigdata.existing(tmp_path / "d", keys=49)
    storage, state, replica = open_built(tmp_path / "d", "h2")
    try:
        assert storage.snapshot().meta.index == 1_700
        assert (storage.first_index(), storage.last_index()) == (1_701, 2_000)
        assert storage.hard_state().commit == 2_000 and storage.hard_state().term == 2
        assert sorted(storage.snapshot().meta.conf.voters) == ["h1", "h2", "h3"]
        assert state.applied_index == 1_700  # from the snapshot
        while replica.has_ready():
            replica.handle_ready()
        assert replica.applied == state.applied_index == 2_000
        # Entries 3 .. 2,000 are puts (1: the configuration, 2: the leader's empty entry).
        assert state.revision == 1_998
        kv = state.data[big.key]
        assert kv.value == big.value and kv.version == 2_000 // 50
        assert len(state.data) == 50
    finally:
        storage.close()


def test_bigdata_refuses_what_it_cannot_build(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        bigdata.build(tmp_path / "a", (), entries=100, tail=10)
    with pytest.raises(ValueError):
        bigdata.build(tmp_path / "b", ("h1",), entries=10, tail=10)


def children() -> list[int]:
    """Live (not zombie) child processes of this one."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == os.getpid() and fields[0] != b"Z":
            out.append(int(entry.name))
    return out


@pytest.mark.slow
@pytest.mark.integration
def test_a_real_node_serves_the_built_directory(tmp_path: Path) -> None:
    """hana-node serve opens a built directory (one voter) and answers the
    tail's last value to a linearizable read."""
    import asyncio

    big = bigdata.build(tmp_path / "src", ("h1",), entries=2_000, tail=300, keys=50)
    sysm = bench.hana_system(tmp_path / "mesh")
    sysm.members = sysm.members[:1]
    node = sysm.members[0].serve
    assert node is not None
    node.peers = {"h1": node.raft}
    sysm.members[0].cmd = node.command()
    shutil.copytree(big.path, node.data_dir)
    try:
        sysm.start_all()

        async def read() -> float:
            async with bench.session_for(sysm) as session:
                return await bench.linearizable_value(session, sysm.members[0].client_url, big.key, big.value, 60)

        asyncio.run(read())
    finally:
        sysm.stop_all()
    assert all(p.poll() is not None for p in sysm.started)


@pytest.mark.slow
@pytest.mark.integration
def test_a_tiny_run_of_the_whole_bench_prints_every_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = bench.main(
        [
            "--skip-etcd", "--runs", "1", "--seconds", "0.3", "--failovers", "1", "--idle-seconds", "0.5",
            "--big-entries", "3000", "--big-tail", "500", "--restarts", "1",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    for title in ("machine:", "load (median and range", "failover:", "idle CPU", "restart of a member"):
        assert title in out
    assert "crashed (SIGKILL)" in out and "isolated (SIGSTOP)" in out
    assert "sequential write p50" in out and "n/a (no etcd)" in out
    assert children() == []
