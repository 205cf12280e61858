"""Peer transport hardening (issue 12): replayed hellos, hellos that claim
another member, bytes after a hello, who is dialed, snapshot streams."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest

from mesh.raft.messages import ConfState, Entry, Message, MessageType, Snapshot, SnapshotMeta
from mesh.transport.codec import FrameDecoder, encode_frame, encode_message
from mesh.transport.tcp import TcpTransport, TransportConfig
from tests.transport.kit import Inbox, dialer_sealer

SECRET = b"test-secret"


async def make(node: str, inbox: Inbox | None = None, **kw: object) -> tuple[TcpTransport, int]:
    t = TcpTransport(TransportConfig(node_id=node, cluster="hana", secret=SECRET, **kw), inbox or Inbox())  # type: ignore[arg-type]
    _, port = await t.listen("127.0.0.1", 0)
    return t, port


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def app(i: int, to: str = "b", frm: str = "a") -> Message:
    return Message(MessageType.APP, to, frm, term=1, index=i, entries=[Entry(i + 1, 1, b"x" * 10)])


async def capture_hello(frm: str, to: str) -> bytes:
    """The bytes a real node sends when it dials `to`: recorded by a fake
    listener, as an eavesdropper on the network would."""
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def sniff(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(4096)
        if not got.done():
            got.set_result(data)
        writer.close()

    server = await asyncio.start_server(sniff, "127.0.0.1", 0)
    dialer, _ = await make(frm)
    try:
        dialer.set_peer(to, ("127.0.0.1", server.sockets[0].getsockname()[1]))
        async with asyncio.timeout(5):
            return await got
    finally:
        await dialer.close()
        server.close()


async def connect_and(port: int, payload: bytes, until_close: bool = True) -> bytes:
    """Send `payload` on a fresh connection; return whatever comes back
    before the other side closes (or its first answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(10):
            if not until_close:
                return await reader.read(4096)
            out = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := await reader.read(4096):
                    out += chunk
            return out
    finally:
        writer.close()


async def replay_then(port: int, hello: bytes, garbage: bytes) -> tuple[bytes, bytes]:
    """Replay `hello`, wait for its answer, then send `garbage`: (answer,
    what came back after it before the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(hello)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read(4096)
            writer.write(garbage)
            await writer.drain()
            rest = b""
            with contextlib.suppress(ConnectionResetError):
                rest = await reader.read()
            return answer, rest
    finally:
        writer.close()


async def test_finding_11_replayed_hello_earns_no_trust_and_gets_banned() -> None:
    """finding 11: one captured hello, replayed from a new address without
    the secret, made that address trusted (never refused). Now trust needs
    authenticated traffic under the fresh connection context, so the
    replayer's bad frames get the address refused."""
    ib = Inbox()
    b, pb = await make("b", ib, ban_after=4)
    try:
        hello = await capture_hello("a", "b")
        for _ in range(4):
            # The replay gets an answer (the hello verifies); then garbage.
            garbage = b"\x00\x00\x00\x20" + b"not a frame, no secret".ljust(64, b"!")
            answer, _ = await replay_then(pb, hello, garbage)
            assert answer  # b answered the hello: it did verify
        assert "127.0.0.1" not in b._trusted_ips
        assert b._banned_until.get("127.0.0.1", 0) > 0
        # Refused now: the connection closes without even a hello answer.
        assert await connect_and(pb, hello) == b""
        assert ib.messages == []
    finally:
        await b.close()


async def test_finding_11_inbound_hello_never_changes_a_peers_api_address() -> None:
    """finding 11: a hello signed with the secret, claiming a member's id,
    rewrote that member's API address (and `hana-node status` sent the admin
    token there). The API address comes only from the answer to our dial."""
    a, pa = await make("a", api_address="127.0.0.1:7001")
    b, pb = await make("b", api_address="127.0.0.1:7002")
    try:
        a.set_peer("b", ("127.0.0.1", pb))
        await until(lambda: a.peer_api.get("b") == "127.0.0.1:7002")
        # Someone with the secret dials a, claiming to be b, with its own API.
        nonce = bytes(16)
        forged = {"hello": {"id": "b", "to": "a", "nonce": nonce.hex(), "api": "203.0.113.9:7070"}}
        reply = await connect_and(pa, encode_frame(SECRET, "hana", "b", 0, orjson.dumps(forged)), until_close=False)
        assert reply  # the handshake itself succeeded
        # ... and a node that a never dialed gains no API address either.
        forged_c = {"hello": {"id": "c", "to": "a", "nonce": nonce.hex(), "api": "203.0.113.9:7070"}}
        assert await connect_and(pa, encode_frame(SECRET, "hana", "c", 0, orjson.dumps(forged_c)), until_close=False)
        assert a.peer_api == {"b": "127.0.0.1:7002"}
    finally:
        await a.close()
        await b.close()


async def test_finding_17_bytes_right_after_a_hello_count_as_a_failure() -> None:
    """finding 17: bytes sent right after a hello (before its answer) were
    dropped without counting as a failure. A dialer cannot send anything
    valid before the answer: count it, toward the ban too."""
    b, pb = await make("b", ban_after=3)
    try:
        hello = await capture_hello("a", "b")
        for _ in range(3):
            await connect_and(pb, hello + b"sneaky bytes riding on the hello")
        assert b.stats.dropped_bad_frame.get("unexpected_bytes", 0) == 3
        assert b._banned_until.get("127.0.0.1", 0) > 0
    finally:
        await b.close()


async def test_authenticated_traffic_makes_an_address_trusted() -> None:
    a, _ = await make("a")
    ib = Inbox()
    b, pb = await make("b", ib, ban_after=2)
    try:
        a.set_peer("b", ("127.0.0.1", pb))
        a.send(app(1))
        await ib.wait_for(1)
        assert "127.0.0.1" in b._trusted_ips
    finally:
        await a.close()
        await b.close()


async def test_finding_17_sender_to_a_removed_member_stops() -> None:
    """finding 17: a removed member was still dialed 17 minutes later. Once
    the node names its members, only they get a sender; an address learned
    for anyone else (discovery, a refused membership request) dials nothing."""
    a, _ = await make("a")
    b, pb = await make("b")
    c, pc = await make("c")
    try:
        a.set_members({"b", "c"})
        a.set_peer("b", ("127.0.0.1", pb))
        a.set_peer("c", ("127.0.0.1", pc))
        assert set(a.dialing()) == {"b", "c"}
        a.set_members({"b"})  # c removed by a committed change
        assert set(a.dialing()) == {"b"}
        assert set(a.peers()) == {"b", "c"}  # still in the address book
        a.set_peer("stranger", ("127.0.0.1", pc))
        assert "stranger" not in a.dialing()
        a.send(app(1, to="c"))
        assert a.stats.dropped_not_member == 1
        a.set_members({"b", "c"})  # added back: dialed again
        assert set(a.dialing()) == {"b", "c"}
        a.set_members(None)  # not a member itself: dial everything known
        assert set(a.dialing()) == {"b", "c", "stranger"}
    finally:
        for t in (a, b, c):
            await t.close()


def snap_message(size: int, to: str = "b", frm: str = "a") -> Message:
    data = bytes((i * 7) % 251 for i in range(size))
    meta = SnapshotMeta(index=42, term=3, conf=ConfState.of(["a", "b"]))
    return Message(MessageType.SNAP, to, frm, term=3, snapshot=Snapshot(meta, data))


async def test_finding_08_snapshot_larger_than_a_frame_streams_in_chunks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """finding 8: a snapshot went as one frame; over the frame limit it could
    never arrive. Now it streams as raw chunk frames on its own connection,
    is spooled, and reaches the receiver as the ordinary MT.SNAP message;
    the sender hears the outcome. Heartbeats flow on meanwhile."""
    small = {"max_frame": 64 << 10, "snapshot_chunk": 16 << 10}
    statuses: list[tuple[str, bool]] = []
    ia, ib = Inbox(), Inbox()
    a = TcpTransport(
        TransportConfig("a", "hana", SECRET, **small),  # type: ignore[arg-type]
        ia,
        on_snapshot_status=lambda p, ok: statuses.append((p, ok)),
    )
    await a.listen("127.0.0.1", 0)
    b, pb = await make("b", ib, spool_dir=str(tmp_path), **small)
    try:
        a.set_peer("b", ("127.0.0.1", pb))
        m = snap_message(1_000_003)  # 15x the frame limit, not a multiple of the chunk
        a.send(m)
        a.send(Message(MessageType.HEARTBEAT, "b", "a", term=3))
        await until(lambda: statuses)
        assert statuses == [("b", True)]
        await ib.wait_for(2)
        snaps = [x for x in ib.messages if x.type == MessageType.SNAP]
        assert len(snaps) == 1 and snaps[0] == m
        assert b.stats.snapshots_received == 1 and a.stats.snapshots_sent == 1
        assert a.snapshots_in_flight() == []
        assert list(tmp_path.iterdir()) == []  # the spool file is gone
    finally:
        await a.close()
        await b.close()


async def test_snapshot_over_the_receivers_limit_is_refused_before_the_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    statuses: list[tuple[str, bool]] = []
    a = TcpTransport(
        TransportConfig("a", "hana", SECRET, snapshot_chunk=4096),
        Inbox(),
        on_snapshot_status=lambda p, ok: statuses.append((p, ok)),
    )
    await a.listen("127.0.0.1", 0)
    ib = Inbox()
    b, pb = await make("b", ib, spool_dir=str(tmp_path), max_snapshot_bytes=100_000)
    try:
        a.set_peer("b", ("127.0.0.1", pb))
        a.send(snap_message(5_000_000))
        await until(lambda: statuses)
        assert statuses == [("b", False)]
        assert b.stats.snapshots_refused == 1 and ib.messages == []
        # Refused at the header: far less than the snapshot crossed the wire.
        assert a.stats.snapshot_bytes_sent < 1_000_000
        assert list(tmp_path.iterdir()) == []
    finally:
        await a.close()
        await b.close()


async def test_snapshot_stream_cut_midway_reports_failure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A receiver that dies mid-stream: the sender reports the failure (so the
    core probes again) and the receiver leaves no spool file behind."""
    statuses: list[tuple[str, bool]] = []
    a = TcpTransport(
        TransportConfig("a", "hana", SECRET, snapshot_chunk=4096),
        Inbox(),
        on_snapshot_status=lambda p, ok: statuses.append((p, ok)),
    )
    await a.listen("127.0.0.1", 0)
    ib = Inbox()
    b, pb = await make("b", ib, spool_dir=str(tmp_path))
    try:
        a.set_peer("b", ("127.0.0.1", pb))
        a.send(snap_message(50_000_000))
        await until(lambda: b.stats.snapshot_bytes_received > 0)
        await b.close()
        await until(lambda: statuses, timeout=20)
        assert statuses == [("b", False)]
        assert ib.messages == []
        assert list(tmp_path.iterdir()) == []
    finally:
        await a.close()


async def test_a_listener_never_sends_on_a_plain_connection() -> None:
    """The snapshot result is the only frame a listener sends after its
    hello, and only on a snapshot stream."""
    ib = Inbox()
    b, pb = await make("b", ib)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", pb)
        nonce = bytes(range(16))
        hello = {"hello": {"id": "a", "to": "b", "nonce": nonce.hex(), "api": ""}}
        writer.write(encode_frame(SECRET, "hana", "a", 0, orjson.dumps(hello)))
        dec = FrameDecoder(SECRET, "hana", context=nonce)
        reply = None
        while reply is None:
            dec.feed(await reader.read(4096))
            reply = dec.next_frame()
        theirs = bytes.fromhex(orjson.loads(reply.payload)["hello"]["nonce"])
        writer.write(
            dialer_sealer(SECRET, "hana", nonce + theirs).seal(
                encode_message(SECRET, "hana", 1, app(1), nonce + theirs)
            )
        )
        await writer.drain()
        await ib.wait_for(1)
        writer.close()
        assert await reader.read() == b""
    finally:
        await b.close()


@pytest.mark.parametrize("chunk", [0, 70 << 10])
def test_snapshot_chunk_must_fit_a_frame(chunk: int) -> None:
    with pytest.raises(ValueError, match="snapshot_chunk"):
        TcpTransport(TransportConfig("a", "hana", SECRET, max_frame=64 << 10, snapshot_chunk=chunk), Inbox())
