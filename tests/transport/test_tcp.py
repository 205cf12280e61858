"""TCP transport on loopback: delivery, authentication, isolation of a dead peer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from mesh.raft.messages import Entry, Message, MessageType
from mesh.transport.codec import ForwardRequest, encode_message
from mesh.transport.tcp import TcpTransport, TransportConfig
from tests.transport.kit import Inbox, dialer_sealer

SECRET = b"test-secret"


async def make(node: str, inbox: Inbox, secret: bytes = SECRET, cluster: str = "hana") -> tuple[TcpTransport, int]:
    t = TcpTransport(TransportConfig(node_id=node, cluster=cluster, secret=secret), inbox)
    _, port = await t.listen("127.0.0.1", 0)
    return t, port


@pytest.fixture
async def pair() -> AsyncIterator[tuple[TcpTransport, Inbox, TcpTransport, Inbox]]:
    ia, ib = Inbox(), Inbox()
    a, pa = await make("a", ia)
    b, pb = await make("b", ib)
    a.set_peer("b", ("127.0.0.1", pb))
    b.set_peer("a", ("127.0.0.1", pa))
    yield a, ia, b, ib
    await a.close()
    await b.close()


def app(i: int, to: str = "b", frm: str = "a") -> Message:
    return Message(MessageType.APP, to, frm, term=1, index=i, entries=[Entry(i + 1, 1, b"x" * 10)])


async def test_messages_arrive_in_order(pair) -> None:
    a, _, b, ib = pair
    for i in range(200):
        a.send(app(i))
    await ib.wait_for(200)
    assert [m.index for m in ib.messages] == list(range(200))
    b.send(app(7, to="a", frm="b"))


async def test_wrong_secret_is_never_delivered() -> None:
    ib = Inbox()
    b, pb = await make("b", ib)
    evil, _ = await make("a", Inbox(), secret=b"wrong")
    good, _ = await make("c", Inbox())
    try:
        evil.set_peer("b", ("127.0.0.1", pb))
        good.set_peer("b", ("127.0.0.1", pb))
        evil.send(app(1))
        good.send(app(2, frm="c"))
        await ib.wait_for(1)
        # Wait until b has refused the evil handshake at least once.
        async with asyncio.timeout(5):
            while not b.stats.dropped_bad_frame:
                await asyncio.sleep(0.01)
        assert [m.frm for m in ib.messages] == ["c"]
        assert b.stats.dropped_bad_frame.get("bad_mac", 0) >= 1
    finally:
        for t in (b, evil, good):
            await t.close()


async def test_other_cluster_is_ignored() -> None:
    ib = Inbox()
    b, pb = await make("b", ib)
    other, _ = await make("a", Inbox(), cluster="other-show")
    try:
        other.set_peer("b", ("127.0.0.1", pb))
        other.send(app(1))
        async with asyncio.timeout(5):
            while not b.stats.dropped_bad_frame:
                await asyncio.sleep(0.01)
        assert ib.messages == []
        assert "wrong_cluster" in b.stats.dropped_bad_frame
    finally:
        await b.close()
        await other.close()


async def test_replayed_raw_frame_is_refused() -> None:
    ib = Inbox()
    b, pb = await make("b", ib)
    try:
        # A frame MACed for some other connection context cannot be injected.
        reader, writer = await asyncio.open_connection("127.0.0.1", pb)
        writer.write(encode_message(SECRET, "hana", 0, app(1), context=b"someone-elses-connection"))
        await writer.drain()
        await reader.read()  # b closes the connection
        writer.close()
        assert ib.messages == []
        assert b.stats.dropped_bad_frame.get("bad_mac", 0) == 1
    finally:
        await b.close()


async def test_dead_peer_does_not_stall_others() -> None:
    ia, ib = Inbox(), Inbox()
    a, _ = await make("a", ia)
    b, pb = await make("b", ib)
    # A listener that accepts and never reads: the slowest possible peer.
    stalled = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = stalled.sockets[0].getsockname()[1]
    try:
        a.set_peer("b", ("127.0.0.1", pb))
        a.set_peer("dead", ("127.0.0.1", dead_port))
        for i in range(50):
            a.send(app(i, to="dead"))
            a.send(app(i))
        await ib.wait_for(50)
        assert len(ib.messages) == 50
    finally:
        stalled.close()
        await a.close()
        await b.close()


async def test_out_of_order_sequence_on_a_live_connection_is_refused() -> None:
    import orjson

    from mesh.transport.codec import FrameDecoder, encode_frame

    ib = Inbox()
    b, pb = await make("b", ib)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", pb)
        nonce = bytes(16)
        hello = {"hello": {"id": "a", "to": "b", "nonce": nonce.hex(), "api": ""}}
        writer.write(encode_frame(SECRET, "hana", "a", 0, orjson.dumps(hello)))
        dec = FrameDecoder(SECRET, "hana", context=nonce)
        reply = None
        while reply is None:
            dec.feed(await reader.read(4096))
            reply = dec.next_frame()
        theirs = bytes.fromhex(orjson.loads(reply.payload)["hello"]["nonce"])
        ctx = nonce + theirs
        seal = dialer_sealer(SECRET, "hana", ctx).seal
        writer.write(seal(encode_message(SECRET, "hana", 1, app(1), ctx)))
        writer.write(seal(encode_message(SECRET, "hana", 3, app(2), ctx)))  # seq 2 skipped
        await writer.drain()
        await reader.read()  # b closes the connection
        writer.close()
        assert [m.index for m in ib.messages] == [1]
        assert sum(b.stats.dropped_bad_frame.values()) == 1
    finally:
        await b.close()


async def test_an_address_with_a_good_peer_is_never_refused() -> None:
    """Nodes behind one address (loopback here, a NAT in the field) must not be
    cut off because some process on that address keeps failing."""
    ia, ib = Inbox(), Inbox()
    a, _ = await make("a", ia)
    b, pb = await make("b", ib)
    b.cfg.ban_after = 3
    try:
        a.set_peer("b", ("127.0.0.1", pb))
        a.send(app(1))
        await ib.wait_for(1)
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", pb)
            writer.write(b"\x00\x00\x00\x10" + b"garbage!" * 6)
            await writer.drain()
            await reader.read()
            writer.close()
        assert sum(b.stats.dropped_bad_frame.values()) >= 5
        # A fresh connection from the same address is still served.
        good, _ = await make("c", Inbox())
        try:
            good.set_peer("b", ("127.0.0.1", pb))
            good.send(app(2, frm="c"))
            await ib.wait_for(2)
        finally:
            await good.close()
    finally:
        await a.close()
        await b.close()


async def test_withdraw_tells_a_forward_never_sent_from_one_that_may_have_arrived(pair) -> None:
    """A follower must know whether a forwarded write could have reached the
    controller: only then may it answer "unknown" instead of "not applied"."""
    a, _, _, ib = pair
    # Delivered: it may have been appended, withdraw says so.
    delivered = ForwardRequest("b", "a", 1, b"{}")
    a.send(delivered)
    await ib.wait_for(1)
    assert not a.withdraw(delivered)

    # Stuck in the queue behind a handshake that never completes: taken back.
    stalled = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    try:
        a.set_peer("slow", ("127.0.0.1", stalled.sockets[0].getsockname()[1]))
        queued = ForwardRequest("slow", "a", 2, b"{}")
        a.send(queued)
        assert a.withdraw(queued)
    finally:
        stalled.close()

    # Dropped with the queue when the peer cannot be dialed: never sent.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    a.set_peer("gone", ("127.0.0.1", closed_port))
    dropped = ForwardRequest("gone", "a", 3, b"{}")
    failures = a.stats.connect_failures
    a.send(dropped)
    async with asyncio.timeout(5):
        while a.stats.connect_failures == failures:
            await asyncio.sleep(0.01)
    assert a.withdraw(dropped)
