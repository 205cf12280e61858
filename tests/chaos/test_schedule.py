"""Fixed fault schedules: a schedule file is checked before anything starts,
the injector does what it says, and the schedule.json a run writes replays
the very faults it injected, whatever the seed."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulations.chaos import main as chaos
from simulations.chaoskit.faults import FAULT_KINDS, FaultInjector, FaultTiming
from simulations.chaoskit.schedule import KINDS, ScheduledFault, ScheduleError, load_schedule, parse_schedule

NODES = ["n1", "n2", "n3"]


def test_schedule_kinds_are_the_injectors_kinds() -> None:
    assert set(KINDS) == set(FAULT_KINDS)


def test_a_valid_schedule_is_read_in_order_with_its_options(tmp_path: Path) -> None:
    doc = {
        "faults": [
            {"at": 0, "kind": "isolate_leader", "hold": 2},
            {"at": 2, "kind": "latency", "hold": 1.5, "nodes": ["n1", "n2"], "delay_ms": 80, "jitter_ms": 5},
            {"at": 4, "kind": "kill", "hold": 1, "nodes": ["controller"]},
            {"at": 6, "kind": "bridge", "hold": 1, "nodes": ["n2"], "sides": [["n1"], ["n3"]]},
        ]
    }
    path = tmp_path / "s.json"
    path.write_bytes(orjson.dumps(doc))
    schedule = load_schedule(path, NODES, 10.0)
    assert [f.kind for f in schedule] == ["isolate_leader", "latency", "kill", "bridge"]
    assert schedule[0].nodes is None and schedule[2].nodes == ("controller",)
    assert schedule[1].options == {"delay_ms": 80, "jitter_ms": 5}
    assert [f.to_json() for f in schedule] == doc["faults"]


def _one(entry: dict[str, Any]) -> dict[str, Any]:
    return {"faults": [entry]}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], 'expected an object {"faults": [...]}'),
        ({"faults": []}, "has no faults"),
        ({"faults": [], "extra": 1}, 'expected an object {"faults": [...]}'),
        (_one({"at": 1, "kind": "meteor", "hold": 1}), "kind must be one of"),
        (_one({"at": 1, "kind": "kill", "hold": 1, "delay_ms": 5}), "unknown field(s) delay_ms"),
        (_one({"at": -1, "kind": "kill", "hold": 1}), "at must be >= 0"),
        (_one({"at": 1, "kind": "kill", "hold": 0}), "hold must be > 0"),
        (_one({"at": "soon", "kind": "kill", "hold": 1}), "at must be a number of seconds"),
        (_one({"at": 1, "kind": "kill"}), "hold must be a number of seconds"),
        (_one({"at": 1, "kind": "kill", "hold": True}), "hold must be a number of seconds"),
        (_one({"at": 1, "kind": "kill", "hold": 1, "nodes": ["n9"]}), "unknown node(s) n9"),
        (_one({"at": 1, "kind": "kill", "hold": 1, "nodes": ["n1", "n2"]}), "exactly one node"),
        (_one({"at": 1, "kind": "kill", "hold": 1, "nodes": "n1"}), "nodes must be a list"),
        (_one({"at": 1, "kind": "partition", "hold": 1, "nodes": NODES}), "some nodes but not all"),
        (_one({"at": 1, "kind": "partition", "hold": 1, "nodes": ["controller"]}), "unknown node(s) controller"),
        (_one({"at": 1, "kind": "latency", "hold": 1, "nodes": ["n1", "n1"]}), "named twice"),
        (_one({"at": 1, "kind": "latency", "hold": 1, "delay_ms": -3}), "delay_ms must be between"),
        (_one({"at": 1, "kind": "loss", "hold": 1, "loss": 1}), "0 < loss < 1"),
        (_one({"at": 1, "kind": "torn_tail", "hold": 1, "tear": "half"}), "tear must be one of"),
        (_one({"at": 1, "kind": "asymmetric", "hold": 1, "direction": "up"}), "direction must be one of"),
        (_one({"at": 1, "kind": "bridge", "hold": 1, "sides": [["n1"], ["n3"]]}), "sides needs the bridge"),
        (_one({"at": 1, "kind": "bridge", "hold": 1, "nodes": ["n2"], "sides": [["n1"], []]}), "two non-empty"),
        (
            _one({"at": 1, "kind": "bridge", "hold": 1, "nodes": ["n2"], "sides": [["n1"], ["n2"]]}),
            "name every node once",
        ),
        (_one({"at": 25, "kind": "kill", "hold": 10}), "ends at 35 s, after the run's 30 s"),
        (
            {"faults": [{"at": 1, "kind": "kill", "hold": 5}, {"at": 4, "kind": "pause", "hold": 1}]},
            "fault 2 (pause) starts at 4 s, before fault 1 ends (6 s)",
        ),
    ],
)
def test_a_bad_schedule_is_refused_with_the_place_named(doc: Any, message: str) -> None:
    with pytest.raises(ScheduleError) as exc:
        parse_schedule(doc, NODES, 30.0, "s.json")
    assert message in str(exc.value)
    assert str(exc.value).startswith("s.json")


def test_unreadable_or_malformed_files_are_schedule_errors(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match="cannot read"):
        load_schedule(tmp_path / "missing.json", NODES, 30.0)
    (tmp_path / "bad.json").write_text("{faults: 1")
    with pytest.raises(ScheduleError, match="not JSON"):
        load_schedule(tmp_path / "bad.json", NODES, 30.0)


# -- the injector, against recording stand-ins for the cluster and the proxy ---------------------------


class FakeClock:
    """Time that moves only when the injector waits (see _fast_wait)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Stands in for ChaosCluster, FaultProxy and HistoryWriter at once:
    every call the injector makes is appended to `calls`."""

    def __init__(self, clock: FakeClock) -> None:
        self.ids = list(NODES)
        self.calls: list[tuple[Any, ...]] = []
        self.records: list[dict[str, Any]] = []
        self.clock = clock

    def _log(self, *call: Any) -> None:
        self.calls.append((round(self.clock.now, 3), *call))

    def kill(self, nid: str) -> None:
        self._log("kill", nid)

    def start(self, nid: str) -> None:
        self._log("start", nid)

    def pause(self, nid: str) -> None:
        self._log("pause", nid)

    def resume(self, nid: str) -> None:
        self._log("resume", nid)

    def tear_wal_tail(self, nid: str, rng: random.Random, *, zeros: bool) -> str:
        self._log("tear", nid, zeros)
        return "zeros" if zeros else "record"

    def block(self, src: str, dst: str) -> None:
        self._log("block", src, dst)

    def unblock(self, src: str, dst: str) -> None:
        self._log("unblock", src, dst)

    def set_delay(self, src: str, dst: str, delay: float, jitter: float) -> None:
        self._log("delay", src, dst, round(delay, 4), round(jitter, 4))

    def set_loss(self, src: str, dst: str, loss: float) -> None:
        self._log("loss", src, dst, loss)

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)


class MembershipRecorder(FaultInjector):
    """Membership changes recorded instead of sent to a controller."""

    async def change_member(self, member: str, action: str) -> tuple[bool, str]:
        self.cluster._log("member", member, action)  # type: ignore[attr-defined]
        return True, "done"

    async def restore_members(self, timeout: float = 30.0) -> bool:
        for nid in self._removed:
            self.cluster._log("member", nid, "restore")  # type: ignore[attr-defined]
        self._removed.clear()
        return True


def _injector(seed: int, leader: str = "n2") -> tuple[MembershipRecorder, Recorder, FakeClock]:
    clock = FakeClock()
    rec = Recorder(clock)
    timing = FaultTiming(gap=(0.5, 1.0), hold=(0.5, 2.0))
    injector = MembershipRecorder(seed, rec, rec, rec, clock, lambda: leader, FAULT_KINDS, timing)  # type: ignore[arg-type]
    return injector, rec, clock


async def _drive(
    injector: FaultInjector, clock: FakeClock, until: float, schedule: list[ScheduledFault] | None
) -> None:
    """Run the injector on the fake clock: each wait advances it instantly."""
    import simulations.chaoskit.faults as faults_module

    stop = asyncio.Event()

    async def fast_wait(event: asyncio.Event, seconds: float) -> bool:
        clock.now = min(clock.now + seconds, until)
        if clock.now >= until:
            event.set()
        await asyncio.sleep(0)  # let the other side of the test run: a yield, not a delay
        return event.is_set()

    original = faults_module._wait
    faults_module._wait = fast_wait  # type: ignore[assignment]
    try:
        task = asyncio.create_task(injector.run(stop, schedule))
        while not task.done():
            await asyncio.sleep(0)  # hand the loop to the injector until it returns
            if clock.now >= until or injector.schedule_done:
                stop.set()
        await task
    finally:
        faults_module._wait = original  # type: ignore[assignment]


async def test_the_injector_does_what_a_schedule_says() -> None:
    doc = {
        "faults": [
            {"at": 1, "kind": "partition", "hold": 2, "nodes": ["n3"]},
            {"at": 4, "kind": "kill", "hold": 1, "nodes": ["controller"]},
            {"at": 6, "kind": "latency", "hold": 1, "nodes": ["n1", "n3"], "delay_ms": 100, "jitter_ms": 10},
            {"at": 8, "kind": "asymmetric", "hold": 1, "nodes": ["n1"], "direction": "cannot_send"},
            {"at": 10, "kind": "torn_tail", "hold": 1, "nodes": ["n3"], "tear": "zeros"},
            {"at": 12, "kind": "membership", "hold": 1, "nodes": ["n1"]},
        ]
    }
    injector, rec, clock = _injector(seed=1, leader="n2")
    await _drive(injector, clock, 20.0, parse_schedule(doc, NODES, 20.0))
    assert rec.calls == [
        (1.0, "block", "n3", "n1"),
        (1.0, "block", "n3", "n2"),
        (1.0, "block", "n1", "n3"),
        (1.0, "block", "n2", "n3"),
        (3.0, "unblock", "n3", "n1"),
        (3.0, "unblock", "n3", "n2"),
        (3.0, "unblock", "n1", "n3"),
        (3.0, "unblock", "n2", "n3"),
        (4.0, "kill", "n2"),  # "controller": n2 when the fault starts
        (5.0, "start", "n2"),
        (6.0, "delay", "n1", "n3", 0.1, 0.01),
        (6.0, "delay", "n3", "n1", 0.1, 0.01),
        (7.0, "delay", "n1", "n3", 0.0, 0.0),
        (7.0, "delay", "n3", "n1", 0.0, 0.0),
        (8.0, "block", "n1", "n2"),
        (8.0, "block", "n1", "n3"),
        (9.0, "unblock", "n1", "n2"),
        (9.0, "unblock", "n1", "n3"),
        (10.0, "kill", "n3"),
        (10.0, "tear", "n3", True),
        (11.0, "start", "n3"),
        (12.0, "member", "n1", "remove"),
        (13.0, "member", "n1", "restore"),
    ]
    faults = [r for r in rec.records if r["type"] == "fault"]
    assert [f["kind"] for f in faults] == ["partition", "kill", "latency", "asymmetric", "torn_tail", "membership"]
    assert faults[1]["scheduled"]["nodes"] == ["controller"] and faults[1]["nodes"] == ["n2"]


async def test_a_runs_schedule_json_replays_its_faults_under_another_seed() -> None:
    first, rec1, clock1 = _injector(seed=11)
    await _drive(first, clock1, 40.0, None)
    written = first.injected_schedule()
    assert {f["kind"] for f in written["faults"]} == set(FAULT_KINDS)  # every kind came first
    # Through JSON and the parser, as a file would go.
    schedule = parse_schedule(orjson.loads(orjson.dumps(written)), NODES, 40.0)
    replay, rec2, clock2 = _injector(seed=99)
    await _drive(replay, clock2, 40.0, schedule)

    def actions(calls: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [c[1:] for c in calls]

    # The same faults on the same nodes with the same amounts, in the same
    # order; the times differ only by the millisecond rounding of the file.
    assert actions(rec2.calls) == actions(rec1.calls)
    assert all(abs(a[0] - b[0]) <= 0.002 for a, b in zip(rec1.calls, rec2.calls, strict=True))
    # A different seed without the schedule draws something else.
    other, rec3, clock3 = _injector(seed=99)
    await _drive(other, clock3, 40.0, None)
    assert actions(rec3.calls) != actions(rec1.calls)


def test_schedule_flag_conflicts_and_bad_files_exit_2_and_start_nothing(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "s.json"
    good.write_bytes(orjson.dumps(_one({"at": 1, "kind": "kill", "hold": 1})))
    out = tmp_path / "out"
    assert chaos(["--schedule", str(good), "--faults", "kill", "--out", str(out)]) == 2
    assert "drop --faults, --gap and --hold" in capsys.readouterr().err
    assert chaos(["--schedule", str(good), "--duration", "1.5", "--out", str(out)]) == 2
    assert "ends at 2 s, after the run's 1.5 s" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps(_one({"at": 1, "kind": "kill", "hold": 1, "nodes": ["n4"]})))
    assert chaos(["--schedule", str(bad), "--out", str(out)]) == 2
    assert "unknown node(s) n4; the run's nodes are n1, n2, n3" in capsys.readouterr().err
    assert not out.exists()


def test_the_readme_example_schedule_is_valid() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index('    {"faults": [')
    end = readme.index("\n\n", start)
    doc = orjson.loads(readme[start:end])
    assert [f.kind for f in parse_schedule(doc, NODES, 60.0)] == ["isolate_leader", "latency", "kill"]
