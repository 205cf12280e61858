"""The state machine's side of live parameters: a settled gesture is one
revision, one history record per key carrying its gesture, one undo step;
and command merging of ordinary writes, decided from the commands' stamps."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from mesh.state.errors import StateError
from mesh.state.model import HanaState


class Log:
    def __init__(self) -> None:
        self.state = HanaState()
        self.index = 0

    def apply(self, **command: Any) -> dict[str, Any]:
        self.index += 1
        command.setdefault("author", "desk")
        return self.state.apply(self.index, orjson.dumps(command))

    def value(self, key: str) -> Any:
        kv = self.state.get(key)
        return kv.value if kv is not None else None


def test_a_settle_is_one_revision_one_record_per_key_and_one_undo_step() -> None:
    log = Log()
    log.apply(op="put", key="parameters/a", value=0.1, time=1)
    before = log.state.revision
    result = log.apply(op="settle", gesture="fader-1", seq=41, values={"parameters/a": 0.9, "parameters/b": 3})
    assert result["gesture"] == "fader-1" and result["revision"] == before + 1
    records = log.state.changes_since(before + 1)
    assert [(r.key, r.value, r.gesture, r.gesture_seq) for r in records] == [
        ("parameters/a", 0.9, "fader-1", 41),
        ("parameters/b", 3, "fader-1", 41),
    ]
    assert records[0].to_dict()["gesture"] == "fader-1"
    assert log.state.undo_status()["stacks"]["desk"]["undo"] == 2
    undone = log.apply(op="undo")
    assert undone["undone"]["op"] == "settle"
    assert log.value("parameters/a") == 0.1 and log.state.get("parameters/b") is None
    # History keeps everything; an ordinary record carries no gesture.
    assert "gesture" not in log.state.changes_since(1)[0].to_dict()


def test_a_settle_survives_a_snapshot() -> None:
    log = Log()
    log.apply(op="settle", gesture="g", seq=5, values={"parameters/a": 1})
    copy = HanaState()
    copy.restore(log.state.snapshot())
    assert copy.snapshot() == log.state.snapshot()
    assert copy.changes_since(1)[0].gesture == "g"


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ({"op": "settle", "gesture": "g", "values": {"nope/a": 1}}, "unknown_component"),
        ({"op": "settle", "gesture": "g", "values": {}}, "invalid_command"),
        ({"op": "settle", "gesture": "", "values": {"parameters/a": 1}}, "invalid_command"),
        ({"op": "settle", "gesture": "g", "seq": -1, "values": {"parameters/a": 1}}, "invalid_command"),
        ({"op": "settle", "gesture": "g", "values": {"displays/d": {"width": "x"}}}, "invalid_value"),
        ({"op": "settle", "gesture": "g", "values": {"parameters/a": 1}, "role": "reader"}, "forbidden"),
        ({"op": "put", "key": "parameters/a", "value": 1, "merge_ms": -5}, "invalid_command"),
        ({"op": "put", "key": "parameters/a", "value": 1, "merge_ms": 60_001}, "invalid_command"),
        ({"op": "put", "key": "parameters/a", "value": 1, "merge_ms": 500, "coalesce": 1}, "invalid_command"),
        ({"op": "put", "key": "parameters/a", "value": 1, "coalesce": "yes"}, "invalid_command"),
    ],
)
def test_bad_settles_are_refused_before_the_log_and_change_nothing(command: dict[str, Any], code: str) -> None:
    log = Log()
    with pytest.raises(StateError) as caught:
        log.state.prevalidate(command)
    assert caught.value.code == code
    assert log.apply(**command)["error"]["code"] == code
    assert log.state.revision == 0 and not log.state.data and not log.state.history


def steps(log: Log) -> int:
    return int(log.state.undo_status()["stacks"].get("desk", {}).get("undo", 0))


def test_writes_of_one_key_within_the_window_are_one_undo_step() -> None:
    log = Log()
    for i, t in enumerate((1_000, 1_200, 1_650, 2_100)):  # each within 500 ms of the previous
        log.apply(op="put", key="parameters/a", value=i, time=t, merge_ms=500)
    assert steps(log) == 1
    assert len(log.state.changes_since(1)) == 4  # history keeps every record
    log.apply(op="undo")
    assert log.state.get("parameters/a") is None  # before the first write
    log.apply(op="redo")
    assert log.value("parameters/a") == 3


def test_what_does_not_merge() -> None:
    log = Log()
    log.apply(op="put", key="parameters/a", value=1, time=1_000, merge_ms=500)
    log.apply(op="put", key="parameters/a", value=2, time=1_501, merge_ms=500)  # too late
    log.apply(op="put", key="parameters/b", value=1, time=1_600, merge_ms=500)  # another key
    log.apply(op="put", key="parameters/b", value=2, time=1_700, author="other", merge_ms=500)  # another author
    log.apply(op="put", key="parameters/b", value=3, time=1_750, merge_ms=500)  # the key changed in between
    log.apply(op="txn", ops=[{"op": "put", "key": "parameters/b", "value": 4}], time=1_760, merge_ms=500)
    log.apply(op="put", key="parameters/b", value=5, time=1_770)  # no window in the command
    assert steps(log) == 6
    # A merge window decided from the controller's stamps, not the proposer's clock.
    log2 = Log()
    log2.apply(op="put", key="parameters/a", value=1, time=1, hlc="000000000001000.000000.n1", merge_ms=500)
    log2.apply(op="put", key="parameters/a", value=2, time=99_999, hlc="000000000001100.000000.n1", merge_ms=500)
    assert steps(log2) == 1


def history(log: Log) -> list[tuple[int, str, Any, Any, str]]:
    return [(r.revision, r.key, r.value, r.prev_value, r.author) for r in log.state.changes_since(1)]


def test_coalesced_history_keeps_one_record_per_merged_run() -> None:
    """With `coalesce`, a merged write takes the place of the history
    record of the write it merged into, keeping that one's before-value;
    records of other keys and authors in between stay, and so does the
    record of a write that did not merge (too late)."""
    log = Log()
    log.apply(op="put", key="parameters/a", value="before", time=100)  # long before: its own step
    log.apply(op="put", key="parameters/a", value=0, time=1_000, merge_ms=500, coalesce=True)
    log.apply(op="put", key="parameters/b", value="x", time=1_100, author="other", merge_ms=500, coalesce=True)
    for i, t in enumerate((1_200, 1_650, 2_100), 1):
        log.apply(op="put", key="parameters/a", value=i, time=t, merge_ms=500, coalesce=True)
    log.apply(op="delete", key="parameters/a", time=2_300, merge_ms=500, coalesce=True)
    log.apply(op="put", key="parameters/a", value=9, time=2_900, merge_ms=500, coalesce=True)  # too late
    assert history(log) == [
        (1, "parameters/a", "before", None, "desk"),
        (3, "parameters/b", "x", None, "other"),
        (7, "parameters/a", None, "before", "desk"),  # revisions 2 and 4-7: one record
        (8, "parameters/a", 9, None, "desk"),
    ]
    assert steps(log) == 3
    log.apply(op="undo")
    log.apply(op="undo")
    assert log.value("parameters/a") == "before"  # the coalesced run undone as one step
    # The oldest record held is where history starts: a run that merges into
    # it keeps it (coalescing it away would tell a watcher resuming from
    # revision 1 that its changes were compacted).
    first = Log()
    for i, t in enumerate((1_000, 1_200, 1_650)):
        first.apply(op="put", key="parameters/a", value=i, time=t, merge_ms=500, coalesce=True)
    assert [(r[0], r[2], r[3]) for r in history(first)] == [(1, 0, None), (3, 2, 0)]
    assert first.state.oldest_revision() == 1
    # Without `coalesce` the same writes keep a record each (as above).
    plain = Log()
    for i, t in enumerate((1_000, 1_200, 1_650)):
        plain.apply(op="put", key="parameters/a", value=i, time=t, merge_ms=500)
    assert [r[0] for r in history(plain)] == [1, 2, 3]


def test_coalescing_is_the_same_on_every_replica_and_survives_a_snapshot() -> None:
    a, b = Log(), Log()
    for log in (a, b):
        log.apply(op="put", key="parameters/first", value=0, time=1)
        for i in range(20):
            log.apply(op="put", key="parameters/a", value=i, time=1_000 + 300 * i, merge_ms=500, coalesce=True)
            log.apply(op="put", key=f"parameters/k{i % 3}", value=i, time=1_010 + 300 * i, author="other")
    assert a.state.snapshot() == b.state.snapshot()
    assert [r[1] for r in history(a)].count("parameters/a") == 1
    assert a.state.oldest_revision() == 1
    copy = HanaState()
    copy.restore(a.state.snapshot())
    assert history(a) == [(r.revision, r.key, r.value, r.prev_value, r.author) for r in copy.changes_since(1)]


def test_merging_is_the_same_on_every_replica() -> None:
    a, b = Log(), Log()
    for log in (a, b):
        for i in range(20):
            log.apply(op="put", key="parameters/a", value=i, time=1_000 + 300 * i, merge_ms=500)
        log.apply(op="undo")
    assert a.state.snapshot() == b.state.snapshot()
    assert a.state.get("parameters/a") is None
