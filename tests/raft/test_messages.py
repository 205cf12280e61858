"""Wire records: round trips, strict rejection of malformed input, fuzzing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageDecodeError,
    MessageType,
    Snapshot,
    SnapshotMeta,
    bootstrap_entries,
)

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def full_message() -> Message:
    snap = Snapshot(SnapshotMeta(7, 3, ConfState.of(["a", "b"], ["c"])), b"\x00state")
    return Message(
        type=MessageType.APP,
        to="b",
        frm="a",
        term=4,
        log_term=3,
        index=7,
        entries=[Entry(8, 4, b"x"), Entry(9, 4, ConfChange(ConfChangeType.ADD_LEARNER, "d").encode(), EntryType(1))],
        commit=7,
        reject=True,
        reject_hint=5,
        snapshot=snap,
        context=b"ctx",
    )


@pytest.mark.parametrize("mtype", list(MessageType))
def test_every_message_type_round_trips(mtype: MessageType) -> None:
    m = full_message()
    m.type = mtype
    if mtype != MessageType.APP:
        m.entries = []
        m.index = 0
    d = m.to_dict()
    assert Message.from_dict(json.loads(json.dumps(d))) == m


def test_minimal_message_omits_defaults() -> None:
    m = Message(MessageType.HEARTBEAT, "b", "a", term=1)
    assert m.to_dict() == {"type": "heartbeat", "to": "b", "from": "a", "term": 1}
    assert Message.from_dict(m.to_dict()) == m


def test_records_round_trip() -> None:
    hs = HardState(5, "n1", 9)
    assert HardState.from_dict(hs.to_dict()) == hs
    assert HardState.from_dict(HardState().to_dict()) == HardState()
    conf = ConfState.of(["b", "a"], ["c"])
    assert conf.voters == ("a", "b")
    assert ConfState.from_dict(conf.to_dict()) == conf
    for cc in (ConfChange(ConfChangeType.REMOVE_NODE, "x"), ConfChange(ConfChangeType.BOOTSTRAP, conf=conf)):
        assert ConfChange.decode(cc.encode()) == cc
    e = Entry(3, 2, b"\xff\x00", EntryType.NORMAL)
    assert Entry.from_dict(e.to_dict()) == e


def test_bootstrap_entries() -> None:
    ents, hs = bootstrap_entries(ConfState.of(["1", "2", "3"]))
    assert [(e.index, e.term, e.type) for e in ents] == [(1, 1, EntryType.CONF_CHANGE)]
    assert ConfChange.decode(ents[0].data).conf == ConfState.of(["1", "2", "3"])
    assert hs == HardState(1, None, 1)
    with pytest.raises(ValueError):
        bootstrap_entries(ConfState())


def good() -> dict[str, Any]:
    return full_message().to_dict()


def mutate(path: list[str | int], value: Any, delete: bool = False) -> dict[str, Any]:
    d = json.loads(json.dumps(good()))
    target: Any = d
    for p in path[:-1]:
        target = target[p]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


MALFORMED = {
    "not a dict": None,
    "list": [],
    "unknown field": mutate(["extra"], 1),
    "unknown type": mutate(["type"], "gossip"),
    "type missing": mutate(["type"], None, delete=True),
    "term as string": mutate(["term"], "4"),
    "term as bool": mutate(["term"], True),
    "index as bool": mutate(["index"], False),
    "term zero": mutate(["term"], 0),
    "term missing": mutate(["term"], None, delete=True),
    "negative index": mutate(["index"], -1),
    "negative commit": mutate(["commit"], -5),
    "huge term": mutate(["term"], 1 << 63),
    "float term": mutate(["term"], 4.0),
    "empty to": mutate(["to"], ""),
    "to as int": mutate(["to"], 2),
    "from missing": mutate(["from"], None, delete=True),
    "long node id": mutate(["from"], "x" * 257),
    "reject as int": mutate(["reject"], 1),
    "bad base64 context": mutate(["context"], "***"),
    "context as bytes list": mutate(["context"], [1, 2]),
    "entries not a list": mutate(["entries"], {"index": 8}),
    "entry not a dict": mutate(["entries", 0], "x"),
    "entry unknown field": mutate(["entries", 0, "extra"], 1),
    "entry gap": mutate(["entries", 1, "index"], 11),
    "entry wrong start": mutate(["entries", 0, "index"], 7),
    "entry bad data": mutate(["entries", 0, "data"], "%%%"),
    "entry unknown type": mutate(["entries", 0, "type"], 9),
    "entry term bool": mutate(["entries", 0, "term"], True),
    "entry index missing": mutate(["entries", 0, "index"], None, delete=True),
    "snapshot not a dict": mutate(["snapshot"], "snap"),
    "snapshot meta missing": mutate(["snapshot", "meta"], None, delete=True),
    "snapshot bad data": mutate(["snapshot", "data"], "!"),
    "snapshot conf voter not str": mutate(["snapshot", "meta", "conf", "voters"], [1]),
    "snapshot conf dup voter": mutate(["snapshot", "meta", "conf", "voters"], ["a", "a"]),
    "snapshot conf voter also learner": mutate(["snapshot", "meta", "conf", "learners"], ["a"]),
    "snapshot conf not list": mutate(["snapshot", "meta", "conf", "voters"], "a"),
    "snapshot meta unknown field": mutate(["snapshot", "meta", "x"], 0),
    "entries on a vote": {"type": "vote", "to": "b", "from": "a", "term": 1, "entries": [{"index": 1, "term": 1}]},
    "snap without snapshot": {"type": "snap", "to": "b", "from": "a", "term": 1},
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_messages_are_rejected(raw: Any) -> None:
    with pytest.raises(MessageDecodeError):
        Message.from_dict(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "explode", "node": "a"},
        {"type": "add_voter"},
        {"type": "add_voter", "node": ""},
        {"type": "bootstrap"},
        {"type": "bootstrap", "conf": {"voters": "a"}},
        {"type": "remove_node", "node": "a", "extra": 1},
        [],
    ],
)
def test_malformed_conf_changes_are_rejected(raw: Any) -> None:
    with pytest.raises(MessageDecodeError):
        ConfChange.from_dict(raw)


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", b"[1]", b'"x"', b"null"])
def test_undecodable_conf_change_payload(data: bytes) -> None:
    with pytest.raises(MessageDecodeError):
        ConfChange.decode(data)


@pytest.mark.parametrize(
    "raw",
    [{"term": -1}, {"term": True}, {"vote": ""}, {"vote": 3}, {"commit": "1"}, {"x": 1}, "hs"],
)
def test_malformed_hard_state(raw: Any) -> None:
    with pytest.raises(MessageDecodeError):
        HardState.from_dict(raw)


# -- fuzzing: only MessageDecodeError may escape -------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["app", "vote", "snap", "heartbeat", "a", "b", "", "AAAA", "!!", "add_voter", "bootstrap"]),
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=10), inner, max_size=5),
    ),
    max_leaves=25,
)
FIELDS = [*sorted(good().keys()), "index", "log_term", "reject_hint", "meta", "data", "conf", "voters"]


@st.composite
def near_messages(draw: st.DrawFn) -> Any:
    """A valid message with a few fields replaced by arbitrary JSON values."""
    d = json.loads(json.dumps(good()))
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(FIELDS))
        where: Any = d
        if key in ("meta", "data") and isinstance(d.get("snapshot"), dict):
            where = d["snapshot"]
        if key in ("voters", "conf") and isinstance(d.get("snapshot"), dict):
            where = d["snapshot"].get("meta", d)
            if key == "voters" and isinstance(where, dict) and isinstance(where.get("conf"), dict):
                where = where["conf"]
        if not isinstance(where, dict):
            continue
        if draw(st.booleans()):
            where.pop(key, None)
        else:
            where[key] = draw(json_values)
    return d


def _decode_only_decode_errors(raw: Any) -> None:
    try:
        m = Message.from_dict(raw)
    except MessageDecodeError:
        return
    # Whatever is accepted re-encodes to something that decodes to the same.
    assert Message.from_dict(json.loads(json.dumps(m.to_dict()))) == m


@pytest.mark.slow  # a fuzz run (1,000 examples): in the full suite, not in --fast
@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json(raw: Any) -> None:
    _decode_only_decode_errors(raw)


@pytest.mark.slow  # a fuzz run (1,000 examples): in the full suite, not in --fast
@FUZZ
@given(near_messages())
def test_fuzz_near_valid_messages(raw: Any) -> None:
    _decode_only_decode_errors(raw)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.binary(max_size=64))
def test_fuzz_conf_change_bytes(data: bytes) -> None:
    try:
        cc = ConfChange.decode(data)
    except MessageDecodeError:
        return
    assert ConfChange.decode(cc.encode()) == cc
