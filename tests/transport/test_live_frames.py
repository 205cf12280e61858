"""Live frames on the peer links: their codec, their own coalescing queue
behind Raft's, and a malformed one dropped and counted without taking the
connection down."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from mesh.raft.messages import Message, MessageType
from mesh.transport.codec import (
    MAX_INTEREST_PREFIXES,
    MAX_LIVE_ITEMS,
    FrameDecoder,
    LiveFrame,
    LiveInterest,
    LiveItem,
    LiveMalformed,
    encode_frame,
    encode_message,
)
from mesh.transport.tcp import TcpTransport, TransportConfig, _PeerSender
from tests.transport.kit import Inbox

SECRET = b"test-secret"


def frame_of(payload: Any) -> Any:
    raw = encode_frame(SECRET, "hana", "a", 1, orjson.dumps(payload))
    decoder = FrameDecoder(SECRET, "hana")
    decoder.feed(raw)
    frame = decoder.next_frame()
    assert frame is not None
    return frame.message()


def test_a_live_frame_survives_the_codec() -> None:
    m = LiveFrame("b", "a", (LiveItem("parameters/x", {"v": [1, 2]}, "a", 7, "g"), LiveItem("p/y", 0.5, "c", 9, None)))
    decoder = FrameDecoder(SECRET, "hana")
    decoder.feed(encode_message(SECRET, "hana", 1, m))
    frame = decoder.next_frame()
    assert frame is not None and frame.message() == m


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "live", "to": "b", "from": "a", "items": []},
        {"type": "live", "to": "b", "from": "a", "items": [["k", 1, "a", 1]]},
        {"type": "live", "to": "b", "from": "a", "items": [["k", 1, "a", -1, None]]},
        {"type": "live", "to": "b", "from": "a", "items": [["k", 1, "a", 1.5, None]]},
        {"type": "live", "to": "b", "from": "a", "items": [["", 1, "a", 1, None]]},
        {"type": "live", "to": "b", "from": "a", "items": [["k", 1, "", 1, None]]},
        {"type": "live", "to": "b", "from": "a", "items": [["k", 1, "a", 1, 5]]},
        {"type": "live", "to": "b", "from": "a", "items": "k"},
        {"type": "live", "to": "b", "from": "a", "items": [["k", 1, "a", 1, None]] * (MAX_LIVE_ITEMS + 1)},
        {"type": "live", "to": "b", "from": "a", "items": [["k", 1, "a", 1, None]], "extra": 1},
        {"type": "live", "to": "", "from": "a", "items": [["k", 1, "a", 1, None]]},
    ],
)
def test_malformed_live_frames_are_refused(payload: Any) -> None:
    with pytest.raises(LiveMalformed):
        frame_of(payload)


@pytest.mark.parametrize("prefixes", [None, (), ("parameters/", "settings/x")])
def test_a_live_interest_survives_the_codec(prefixes: tuple[str, ...] | None) -> None:
    m = LiveInterest("b", "a", prefixes)
    decoder = FrameDecoder(SECRET, "hana")
    decoder.feed(encode_message(SECRET, "hana", 1, m))
    frame = decoder.next_frame()
    assert frame is not None and frame.message() == m


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "live_interest", "to": "b", "from": "a"},
        {"type": "live_interest", "to": "b", "from": "a", "prefixes": "parameters/"},
        {"type": "live_interest", "to": "b", "from": "a", "prefixes": [""]},
        {"type": "live_interest", "to": "b", "from": "a", "prefixes": [1]},
        {"type": "live_interest", "to": "b", "from": "a", "prefixes": ["p" * 1025]},
        {"type": "live_interest", "to": "b", "from": "a", "prefixes": ["p"] * (MAX_INTEREST_PREFIXES + 1)},
        {"type": "live_interest", "to": "", "from": "a", "prefixes": None},
        {"type": "live_interest", "to": "b", "from": "a", "prefixes": None, "extra": 1},
    ],
)
def test_malformed_live_interests_are_refused(payload: Any) -> None:
    with pytest.raises(LiveMalformed):
        frame_of(payload)


def item(key: str, seq: int, value: Any = 0, source: str = "a") -> LiveItem:
    return LiveItem(key, value, source, seq, None)


async def test_the_live_queue_keeps_the_latest_value_per_source_and_key_and_is_bounded() -> None:
    t = TcpTransport(TransportConfig("a", "hana", SECRET, live_queue_limit=3), Inbox())
    s = _PeerSender(t, "b", ("127.0.0.1", 1))
    s.enqueue_live((item("k1", 1), item("k1", 3, "new"), item("k2", 2)))
    s.enqueue_live((item("k1", 2, "older"),))  # a lower seq never replaces a higher one
    s.enqueue_live((item("k1", 5, "x", source="c"),))
    assert s.live[("a", "k1")].value == "new" and s.live[("c", "k1")].value == "x"
    assert t.stats.live_coalesced == 1
    s.enqueue_live((item("k3", 6), item("k4", 7)))
    assert len(s.live) == 3 and t.stats.dropped_live_overflow == 2
    frame = s._live_frame()
    assert [i.key for i in frame.items] == ["k1", "k3", "k4"] and not s.live


async def test_live_frames_go_after_raft_messages_and_coalesce() -> None:
    ia, ib = Inbox(), Inbox()
    a = TcpTransport(TransportConfig("a", "hana", SECRET), ia)
    b = TcpTransport(TransportConfig("b", "hana", SECRET), ib)
    try:
        _, pb = await b.listen("127.0.0.1", 0)
        a.set_peer("b", ("127.0.0.1", pb))
        # All queued before the connection is up (no await in between).
        for i in range(100):
            a.send(LiveFrame("b", "a", (item("parameters/fader", i, i),)))
        for _ in range(20):
            a.send(Message(MessageType.HEARTBEAT, "b", "a", term=1))
        await ib.wait_for(21)
        kinds = ["live" if type(m) is LiveFrame else "raft" for m in ib.messages]
        assert kinds == ["raft"] * 20 + ["live"], kinds
        last = ib.messages[-1]
        assert last.items == (item("parameters/fader", 99, 99),)
        assert a.stats.live_coalesced == 99 and b.stats.live_received == 1
    finally:
        await a.close()
        await b.close()


async def test_a_malformed_live_frame_is_dropped_and_counted_and_the_link_stays_up(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ia, ib = Inbox(), Inbox()
    a = TcpTransport(TransportConfig("a", "hana", SECRET), ia)
    b = TcpTransport(TransportConfig("b", "hana", SECRET), ib)
    try:
        _, pb = await b.listen("127.0.0.1", 0)
        a.set_peer("b", ("127.0.0.1", pb))
        good = LiveFrame.to_dict
        monkeypatch.setattr(
            LiveFrame, "to_dict", lambda self: {**good(self), "items": [["parameters/x", 1, "a", "not a seq", None]]}
        )
        a.send(LiveFrame("b", "a", (item("parameters/x", 1),)))
        async with asyncio.timeout(10):
            while not b.stats.dropped_live_malformed:
                await asyncio.sleep(0.01)
        monkeypatch.undo()
        a.send(Message(MessageType.HEARTBEAT, "b", "a", term=1))
        a.send(LiveFrame("b", "a", (item("parameters/x", 2, "ok"),)))
        await ib.wait_for(2)
        assert type(ib.messages[0]) is Message and ib.messages[1].items[0].value == "ok"
        assert a.stats.connects == 1, "the connection was not cut"
        assert b.stats.dropped_bad_frame == {"live_malformed": 1}
    finally:
        await a.close()
        await b.close()
