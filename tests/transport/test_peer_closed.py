"""Issue 17: the TCP transport tells its node when a peer closed every
connection with it (its process died), never for one connection closed on
purpose or for a close of its own; and a peer that dials again ends the
backoff of the sender to it (a restarted peer that may lead now)."""

from __future__ import annotations

import asyncio
import socket

from mesh.raft.messages import Message, MessageType
from mesh.transport.tcp import TcpTransport, TransportConfig
from tests.transport.kit import Inbox

SECRET = b"peer-closed-secret"


class Closed:
    def __init__(self) -> None:
        self.peers: list[str] = []

    def __call__(self, peer: str) -> None:
        self.peers.append(peer)


def heartbeat(to: str, frm: str) -> Message:
    return Message(MessageType.HEARTBEAT, to, frm, term=1)


async def node(nid: str, inbox: Inbox, closed: Closed, **cfg: float) -> tuple[TcpTransport, int]:
    t = TcpTransport(TransportConfig(node_id=nid, cluster="hana", secret=SECRET, **cfg), inbox, on_peer_closed=closed)
    _, port = await t.listen("127.0.0.1", 0)
    return t, port


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def linked_pair() -> tuple[TcpTransport, Inbox, Closed, TcpTransport, Inbox, Closed]:
    ia, ib, ca, cb = Inbox(), Inbox(), Closed(), Closed()
    a, pa = await node("a", ia, ca)
    b, pb = await node("b", ib, cb)
    a.set_peer("b", ("127.0.0.1", pb))
    b.set_peer("a", ("127.0.0.1", pa))
    a.send(heartbeat("b", "a"))
    b.send(heartbeat("a", "b"))
    await ia.wait_for(1)
    await ib.wait_for(1)
    return a, ia, ca, b, ib, cb


async def test_a_peer_whose_connections_all_close_is_reported_once() -> None:
    a, _, ca, b, _, cb = await linked_pair()
    try:
        await b.close()  # as a killed process: every socket of b closes
        await until(lambda: ca.peers == ["b"])
        assert cb.peers == []  # b's own close is not the peer closing
    finally:
        await a.close()


async def test_one_connection_closed_on_purpose_is_not_reported() -> None:
    a, ia, ca, b, _, _ = await linked_pair()
    try:
        # b redials a (a reconnect): a's inbound connection from b ends, but
        # a's own connection to b is up, so b is not gone.
        b._stop_sender("a", "test")
        b._sync_sender("a")
        b.send(heartbeat("a", "b"))
        await ia.wait_for(2)
        await until(lambda: a._peers["b"].connected)
        assert ca.peers == []
    finally:
        await a.close()
        await b.close()


async def test_a_peer_that_dials_again_ends_the_backoff() -> None:
    # b is not up yet: its port is bound but not listening, so a's dials
    # are refused and a's sender backs off for 15 s or more.
    ia, ib, ca, cb = Inbox(), Inbox(), Closed(), Closed()
    a, pa = await node("a", ia, ca, backoff_min=30.0, backoff_max=60.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    b: TcpTransport | None = None
    try:
        a.set_peer("b", sock.getsockname())
        await until(lambda: a.stats.connect_failures >= 1)
        # b comes up and says something to a: a's sender dials at once.
        sock.listen(16)
        b = TcpTransport(TransportConfig(node_id="b", cluster="hana", secret=SECRET), ib, on_peer_closed=cb)
        await b.listen("127.0.0.1", sock.getsockname()[1], sock)
        b.set_peer("a", ("127.0.0.1", pa))
        b.send(heartbeat("a", "b"))
        await ia.wait_for(1)
        a.send(heartbeat("b", "a"))
        await ib.wait_for(1, timeout=10.0)
        assert a.stats.connects == 1
    finally:
        await a.close()
        if b is not None:
            await b.close()
        else:
            sock.close()


async def test_a_peer_killed_in_the_middle_of_a_record_is_reported() -> None:
    # Under load a killed process leaves a sealed record half written: the
    # stream ends inside it. That is the peer going away, not only a bad frame.
    import orjson

    from mesh.transport.codec import FrameDecoder, encode_frame, encode_message
    from tests.transport.kit import dialer_sealer

    ib, cb = Inbox(), Closed()
    b, pb = await node("b", ib, cb)
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
        ctx = nonce + bytes.fromhex(orjson.loads(reply.payload)["hello"]["nonce"])
        seal = dialer_sealer(SECRET, "hana", ctx).seal
        writer.write(seal(encode_message(SECRET, "hana", 1, heartbeat("b", "a"), ctx)))
        record = seal(encode_message(SECRET, "hana", 2, heartbeat("b", "a"), ctx))
        writer.write(record[: len(record) // 2])
        await writer.drain()
        await ib.wait_for(1)
        writer.close()  # the rest of the record never comes
        await until(lambda: cb.peers == ["a"])
    finally:
        await b.close()
