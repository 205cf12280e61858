"""The end-of-run report: exact numbers from a small hand-written history (a
summary of zeros fails here), the rich table's text, and the timeline PNG
(read back with matplotlib's own reader) for a normal, an empty and a large
history."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from simulations.chaoskit.report import print_report, summarize, summary_table, timeline_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LONG_DETAIL = "key k: no linearization of [put x v=1] after [get k -> 2]; " + "x" * 400


def meta(duration: float | None = 10.0) -> dict[str, Any]:
    return {"type": "meta", "seed": 7, "nodes": ["n1", "n2", "n3"], "duration": duration, "started_at": "", "args": {}}


def op(i: int, kind: str, invoke: float, complete: float | None, outcome: str, **kw: Any) -> dict[str, Any]:
    return {
        "type": "op",
        "id": i,
        "client": i % 2,
        "node": "n1",
        "kind": kind,
        "key": None if kind == "txn" else "k",
        "keys": ["k"] if kind == "txn" else None,
        "value": None,
        "expected_version": None,
        "invoke": invoke,
        "complete": complete,
        "outcome": outcome,
        "status": kw.get("status", 200 if outcome == "ok" else None),
        "error": kw.get("error"),
        "result": None,
    }


def role(t: float, node: str, r: str, term: int | None, leader: str | None) -> dict[str, Any]:
    return {"type": "role", "t": t, "node": node, "role": r, "term": term, "leader": leader}


def history() -> list[dict[str, Any]]:
    """n1 leads term 1, is killed at 3 s; n2 campaigns in term 2 (no leader) and leads term 3
    from 5 s. Writes succeed at 0.51, 1.02, 1.93, then not until 5.54 (one fails, one has an
    unknown outcome meanwhile), then at 6.1; from 6.1 to the last op (9.5) only reads run."""
    return [
        meta(),
        role(0.0, "n1", "leader", 1, "n1"),
        role(0.0, "n2", "follower", 1, "n1"),
        role(0.0, "n3", "follower", 1, "n1"),
        role(3.0, "n1", "down", None, None),
        role(3.0, "n2", "candidate", 2, None),
        role(3.0, "n3", "follower", 1, "n1"),  # stale: the same (term, leader) again
        role(5.0, "n2", "leader", 3, None),  # leads without naming itself: counts as n2
        role(5.0, "n3", "follower", 3, "n2"),
        role(5.0, "n1", "down", None, None),
        role(8.0, "n1", "follower", 3, "n2"),
        op(1, "put", 0.5, 0.51, "ok"),  # 10 ms
        op(2, "put", 1.0, 1.02, "ok"),  # 20 ms
        op(3, "delete", 1.9, 1.93, "ok"),  # 30 ms
        {"type": "fault", "id": 1, "kind": "kill", "nodes": ["n1"], "detail": "SIGKILL", "start": 3.0, "end": 6.0},
        op(4, "put", 3.2, 3.3, "fail", status=503, error="no_leader"),
        op(5, "put", 3.5, None, "unknown"),
        op(6, "txn", 5.5, 5.54, "ok"),  # 40 ms
        op(7, "put", 6.0, 6.1, "ok"),  # 100 ms
        op(8, "read", 7.0, 7.005, "ok"),
        {
            "type": "fault",
            "id": 2,
            "kind": "partition",
            "nodes": ["n3"],
            "detail": "n3 | n1 n2",
            "start": 7.0,
            "end": None,
        },
        op(9, "read", 7.1, 7.2, "fail", status=503),
        op(10, "read_local", 9.0, 9.5, "ok"),
        {"type": "anomaly", "check": "linearizability", "detail": LONG_DETAIL},
    ]


# --------------------------------------------------------------------------- summarize


def test_summary_numbers_of_a_known_history() -> None:
    s = summarize(history())

    assert s["ops"]["by_kind"] == {
        "delete": {"ok": 1, "fail": 0, "unknown": 0, "total": 1},
        "put": {"ok": 3, "fail": 1, "unknown": 1, "total": 5},
        "read": {"ok": 1, "fail": 1, "unknown": 0, "total": 2},
        "read_local": {"ok": 1, "fail": 0, "unknown": 0, "total": 1},
        "txn": {"ok": 1, "fail": 0, "unknown": 0, "total": 1},
    }
    assert s["ops"]["total"] == {"ok": 7, "fail": 2, "unknown": 1, "total": 10}
    assert s["ops"]["fail_reasons"] == {"503 unavailable": 2}
    assert s["faults"] == {"by_kind": {"kill": 1, "partition": 1}, "total": 2}

    assert s["elections"]["count"] == 1
    assert s["elections"]["terms"] == 3
    assert [(e["t"], e["term"], e["leader"]) for e in s["elections"]["leaders"]] == [(0.0, 1, "n1"), (5.0, 3, "n2")]
    assert s["elections"]["conflicting_terms"] == []

    u = s["unavailability"]
    assert u["count"] == 1
    assert u["windows"] == [(1.93, 5.54)]  # 6.1 .. 9.5 is longer but no write was attempted in it
    assert u["longest"] == pytest.approx(3.61)
    assert u["total"] == pytest.approx(3.61)

    lat = s["write_latency"]
    assert lat["count"] == 5
    assert lat["p50"] == pytest.approx(30.0)
    assert lat["p99"] == pytest.approx(40.0 + 0.96 * 60.0)  # linear interpolation between 40 and 100 ms
    assert lat["max"] == pytest.approx(100.0)

    assert s["anomaly_count"] == 1
    assert s["anomalies"] == [{"check": "linearizability", "detail": LONG_DETAIL}]
    assert s["duration"] == 10.0
    assert s["seed"] == 7 and s["nodes"] == ["n1", "n2", "n3"]


def test_fails_are_counted_by_reason_most_common_first() -> None:
    records = [
        meta(),
        op(1, "put", 0.1, 0.2, "fail", status=409, error="compare_failed"),
        op(2, "txn", 0.3, 0.4, "fail", status=409, error="compare_failed"),
        op(3, "delete", 0.5, 0.6, "fail", status=404, error="not_found"),
        op(4, "put", 0.7, 0.8, "fail", error="connect: refused"),
        op(5, "put", 0.9, 1.0, "fail", status=409, error="compare_failed"),
        op(6, "put", 1.1, 1.2, "fail", status=400, error="bad_request"),
        op(7, "put", 1.3, None, "unknown"),
        op(8, "put", 1.4, 1.5, "ok"),
    ]
    reasons = summarize(records)["ops"]["fail_reasons"]
    assert next(iter(reasons)) == "409 compare failed"
    assert reasons == {"409 compare failed": 3, "404 not found": 1, "no connection": 1, "400": 1}


def test_gap_parameter_and_windows_from_the_run_start() -> None:
    assert summarize(history(), gap=4.0)["unavailability"]["count"] == 0
    # No write ever succeeds: one window from the start to the last op.
    recs = [meta(), op(1, "put", 0.2, None, "unknown"), op(2, "put", 2.0, 2.5, "fail", status=503)]
    u = summarize(recs)["unavailability"]
    assert u["windows"] == [(0.0, 2.5)] and u["longest"] == pytest.approx(2.5)
    assert summarize(recs)["write_latency"] == {"count": 0, "p50": None, "p99": None, "max": None}


def test_a_single_slow_write_in_flight_across_the_gap_is_an_attempt() -> None:
    # Invoked before the previous success, answered 4 s later: nothing was invoked inside the gap,
    # but a write was waiting all along.
    recs = [op(1, "put", 0.0, 0.1, "ok"), op(2, "put", 0.05, 4.1, "ok")]
    assert summarize(recs)["unavailability"]["windows"] == [(0.1, 4.1)]


def test_no_roles_no_ops_gives_zero_elections_and_last_record_time_as_duration() -> None:
    s = summarize(
        [{"type": "fault", "id": 1, "kind": "pause", "nodes": ["n2"], "detail": "", "start": 1.0, "end": 4.5}]
    )
    assert s["elections"] == {"count": 0, "terms": 0, "leaders": [], "conflicting_terms": []}
    assert s["duration"] == 4.5
    assert s["ops"]["total"] == {"ok": 0, "fail": 0, "unknown": 0, "total": 0}
    assert s["unavailability"]["count"] == 0 and s["anomaly_count"] == 0


def test_two_leaders_in_one_term_are_reported() -> None:
    recs = [role(1.0, "n1", "leader", 4, "n1"), role(1.5, "n2", "leader", 4, "n2")]
    assert summarize(recs)["elections"]["conflicting_terms"] == [4]


# --------------------------------------------------------------------------- table


def test_table_shows_the_numbers_and_the_anomaly() -> None:
    console = Console(record=True, width=120)
    print_report(summarize(history()), console=console, title="run 7")
    text = console.export_text()
    for expected in (
        "run 7",
        "3 ok",
        "1 fail",
        "1 unknown",
        "7 ok",
        "kill",
        "partition",
        "leader changes",
        "3.61 s",
        "30.0 ms",
        "97.6 ms",
        "100.0 ms",
        "503 unavailable: 2",
        "linearizability",
        "[put x v=1]",  # data is never read as rich markup
    ):
        assert expected in text, expected
    # The detail, wrapped over several lines by the console, is cut to 300 characters.
    shown = text[text.index("key k: no linearization") :]
    assert shown.count("x") == 1 + (299 - LONG_DETAIL.index("x" * 10))  # "put x", then the run of x up to the cut
    assert shown.rstrip().endswith("…")


def test_anomaly_count_is_red_when_positive_and_green_when_zero() -> None:
    def anomaly_cell(records: list[dict[str, Any]]) -> Any:
        return summary_table(summarize(records), "t").columns[2]._cells[-1]

    assert anomaly_cell(history()).style == "bold red" and str(anomaly_cell(history())) == "1"
    clean = [r for r in history() if r["type"] != "anomaly"]
    assert anomaly_cell(clean).style == "bold green" and str(anomaly_cell(clean)) == "0"
    console = Console(record=True, width=120)
    print_report(summarize(clean), console=console)
    assert "linearizability" not in console.export_text()


# --------------------------------------------------------------------------- timeline


def read_png(path: Path) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return plt.imread(path)


def test_timeline_png_is_a_readable_image_of_the_expected_size(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    path = tmp_path / "timeline.png"
    before = len(plt.get_fignums())
    # Text from the run is drawn as written: a "$" does not start mathtext (which would fail on this one).
    records = [*history(), {"type": "anomaly", "check": "watch", "detail": r"value $\bad{$ seen twice"}]
    timeline_png(records, path, title="run $7")
    image = read_png(path)
    assert image.shape[:2] == (770, 1540)  # 14 x 7 inches at 110 dpi
    assert image[..., :3].std() > 0.05  # something was drawn
    assert len(plt.get_fignums()) == before  # the figure was closed


@pytest.mark.parametrize("records", [[meta()], [meta(duration=None)], []], ids=["meta", "no-duration", "nothing"])
def test_timeline_of_a_history_without_ops_or_roles_renders(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    path = tmp_path / "empty.png"
    timeline_png(records, path)
    assert read_png(path).shape[:2] == (770, 1540)


def test_timeline_of_a_long_run_renders_quickly(tmp_path: Path) -> None:
    rng = random.Random(1)
    recs: list[dict[str, Any]] = [meta(duration=600.0)]
    for i in range(5000):
        t = rng.uniform(0, 600)
        outcome = rng.choices(["ok", "fail", "unknown"], [90, 7, 3])[0]
        kind = rng.choice(["put", "delete", "txn", "read"])
        recs.append(op(i, kind, t, None if outcome == "unknown" else t + rng.expovariate(50), outcome))
    kinds = ["kill", "pause", "partition", "latency", "loss", "isolate_leader"]
    for i in range(300):
        start = rng.uniform(0, 590)
        node = rng.choice(["n1", "n2", "n3"])
        end = None if i == 299 else start + rng.uniform(0.5, 10)
        recs.append({"type": "fault", "id": i, "kind": rng.choice(kinds), "nodes": [node], "start": start, "end": end})
    term = 1
    for step in range(3000):  # one sample per node every 0.2 s, a new leader every ~20 s
        t = step * 0.2
        if step % 100 == 0:
            term += 1
        leader = f"n{term % 3 + 1}"
        for n in ("n1", "n2", "n3"):
            recs.append(role(t, n, "leader" if n == leader else "follower", term, leader))
    recs.append({"type": "anomaly", "check": "watch", "detail": "revision 12 delivered twice"})

    started = time.perf_counter()
    timeline_png(recs, tmp_path / "long.png", title="long")
    elapsed = time.perf_counter() - started
    assert read_png(tmp_path / "long.png").shape[:2] == (770, 1540)
    assert elapsed < 5.0, elapsed
    assert summarize(recs)["elections"]["count"] == 29  # terms 2..31
