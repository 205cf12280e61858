"""Peer connections over TCP (asyncio).

Each node dials one outbound connection per peer and sends on it; it receives
on the connections its peers dial. So a slow or dead peer only ever blocks
its own sender task and its own bounded queue: replication to the others
goes on (DESIGN: nothing waits forever on a stuck peer).

Handshake, both frames authenticated with the cluster secret:
    dialer  -> hello {"id", "to", "nonce"}   (seq 0, empty context)
    listener-> hello {"id", "nonce"}         (seq 0, context = dialer nonce)
then every frame from the dialer is MACed with context = both nonces and a
sequence number that grows by one, so frames cannot be replayed into
another connection or reordered. Frames failing any check are dropped, the
connection is closed, and the event is logged at most once per second per
address; an address that keeps failing is refused for a while.

A hello proves nothing by itself: its MAC context is empty, so a recorded
hello can be replayed from anywhere. An address becomes trusted (never
refused for failures, see `_note_failure`) only after the first frame that
is authenticated under the fresh connection context; bytes that arrive
between a hello and its answer count as a failure. Nothing a peer says in
an inbound hello changes what this node knows about it: the API address of
a peer is learned only from the answer on a connection this node dialed to
the address it already has for that id.

Who is dialed: the transport keeps an address book (`set_peer`), but once
the node tells it its members (`set_members`) only members get a sender;
the sender to a removed member stops. Before that (a node not yet in any
configuration) every known address is dialed, so that it can answer the
controller that adds it.

Live parameter values (`LiveFrame`, mesh/node/live.py) have their own
queue per peer: the latest value per (source, key), coalesced while it
waits, bounded (`live_queue_limit`, the oldest dropped and counted), kept
across a reconnect (they are the latest values, and the peer needs them),
and written only after every queued Raft message, in the same authenticated
stream: a heartbeat or an append never waits behind them, and a live frame
never makes Raft think a peer is unreachable. A live frame that passes
authentication but does not parse is dropped and counted
(`dropped_live_malformed`); the connection stays up.

Snapshots are streamed out of band, after etcd's rafthttp snapshot sender:
an MT.SNAP message never enters the peer's queue. A separate connection
(its own handshake) carries one header frame (the message without its data,
and the data's size), then the data as raw chunk frames sliced from the
snapshot with memoryview (`TransportConfig.snapshot_chunk`, 1 MiB), each
MACed on the connection's sequence; heartbeats and appends keep flowing on
the ordinary connections meanwhile. The receiver answers the header first:
it refuses a size above `max_snapshot_bytes` or beyond the free disk space
(or too many streams at once) before any data moves, else it accepts and
spools the chunks to a file (so the data sits in the page cache, not the
heap, while it streams, and is read back once into a single bytes object of
the exact size: one copy in memory instead of a bytearray plus the bytes
made from it), hands the ordinary Message(MT.SNAP) to the node, and answers
again ("done"). The listener's answers are MACed with the nonces in the
other order, so no frame can be reflected. The sender reports the outcome
(`on_snapshot_status`), and `snapshots_in_flight()` lets the node keep the
core from giving up on a transfer that is still moving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import socket
import ssl
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mesh.raft.messages import Message, MessageType
from mesh.transport.aead import SealedReader, SealedWriter, StreamTruncated, derive_keys
from mesh.transport.bans import BanTable
from mesh.transport.codec import (
    MAX_LIVE_ITEMS,
    ForwardRequest,
    Frame,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    FrameUnexpected,
    LiveFrame,
    LiveInterest,
    LiveItem,
    LiveMalformed,
    PeerPayload,
    SnapshotHeader,
    SnapshotResult,
    encode_chunk_frame,
    encode_frame,
    encode_message,
    frame_overhead,
)
from mesh.transport.tls import TLS_ADVICE, TLS_FAILURES, PeerRefused, PeerTls, describe_ssl_error

# A connection's streams: plain (TLS links and the hellos) or sealed (the
# AEAD of pre-shared-secret links, mesh/transport/aead.py).
Reader = asyncio.StreamReader | SealedReader
Writer = asyncio.StreamWriter | SealedWriter

log = logging.getLogger("mesh.transport")

HELLO_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0
# A peer that accepts nothing for this long is treated as gone: reconnect.
WRITE_TIMEOUT = 10.0
# After the last chunk, the receiver reads the spooled snapshot back and
# hands it to its node: this long plus a second per 32 MiB.
SNAPSHOT_RESULT_TIMEOUT = 30.0
# Disk space an incoming snapshot must leave free beside itself.
SPOOL_MARGIN = 64 << 20
SPOOL_PREFIX = ".hana-snapshot-"
SPOOL_SUFFIX = ".part"


@dataclass(slots=True)
class TransportConfig:
    node_id: str
    cluster: str
    secret: bytes
    # Messages queued per peer before new ones are dropped.
    queue_limit: int = 4096
    backoff_min: float = 0.05
    backoff_max: float = 2.0
    # Inbound frames per second per connection before frames are dropped.
    rate_limit: float = 20_000.0
    # Failed handshakes/frames from one address before it is refused.
    ban_after: int = 10
    ban_seconds: float = 30.0
    max_frame: int = 64 << 20
    # This node's API address, told to peers in the handshake (for status).
    api_address: str = ""
    # Bytes of snapshot data per chunk frame (must stay under max_frame).
    snapshot_chunk: int = 1 << 20
    # Largest snapshot this node accepts (also bounded by free disk space).
    max_snapshot_bytes: int = 1 << 40
    # Where incoming snapshots are spooled (None: the system temp directory;
    # the node passes its data directory).
    spool_dir: str | None = None
    # Snapshots received at once (one per sending leader is the norm).
    max_snapshot_receives: int = 2
    # Snapshots streamed at once; more wait their turn (still reported in
    # flight, so the core does not give up on them): many learners lagging
    # at once must not take the controller's loop and link from its voters.
    max_snapshot_sends: int = 2
    # Peer links over mutual TLS 1.3 (certificates of the cluster CA); None:
    # pre-shared-secret links, sealed with an AEAD after the handshake.
    tls: PeerTls | None = None
    # Live values queued per peer, coalesced per (source, key): the oldest
    # is dropped beyond this.
    live_queue_limit: int = 8192


@dataclass(slots=True)
class TransportStats:
    sent: int = 0
    received: int = 0
    dropped_queue_full: int = 0
    dropped_bad_frame: dict[str, int] = field(default_factory=dict)
    dropped_rate_limited: int = 0
    dropped_not_member: int = 0
    dropped_too_large: int = 0
    connects: int = 0
    connect_failures: int = 0
    snapshots_sent: int = 0
    snapshots_failed: int = 0
    snapshots_received: int = 0
    snapshots_refused: int = 0
    snapshot_bytes_sent: int = 0
    snapshot_bytes_received: int = 0
    live_sent: int = 0
    live_received: int = 0
    live_coalesced: int = 0
    dropped_live_overflow: int = 0
    dropped_live_malformed: int = 0


class RateLimitedLog:
    """Logs an event at most once per `interval` seconds per key."""

    def __init__(self, interval: float = 1.0, logger: logging.Logger = log) -> None:
        self.interval = interval
        self.log = logger
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.interval:
            n = self._suppressed.pop(key, 0)
            suffix = f" ({n} similar suppressed)" if n else ""
            self.log.warning(msg + suffix, *args)
            self._last[key] = now
        else:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1


# Frame errors that mean the other side does not share this node's cluster
# secret, cluster name or peer protocol version: a configuration mistake an
# operator fixes, told as such on both sides.
AUTH_FAILURES = frozenset({"bad_mac", "wrong_cluster", "version_mismatch"})
AUTH_ADVICE = (
    "check that every node has the same --secret-file (or HANA_SECRET) and --cluster, "
    "and runs the same peer protocol version (upgrade every node together)"
)


class HandshakeRefused(ConnectionError):
    """The peer closed the connection before answering our hello: it could
    not authenticate it (another secret or cluster name, another protocol
    version), or it refuses this address for a while after failures."""


# Forwarded writes remembered as undelivered (a caller that never asks is
# long gone by then).
UNDELIVERED_KEPT = 4096


def _backward(context: bytes) -> bytes:
    """The MAC context of frames a listener sends after its hello: the two
    nonces in the other order, so a frame cannot be reflected back."""
    return context[16:] + context[:16]


class _PeerSender:
    def __init__(self, transport: TcpTransport, peer: str, address: tuple[str, int]) -> None:
        self.t = transport
        self.peer = peer
        self.address = address
        self.queue: deque[PeerPayload] = deque()
        # Live values, on their own queue: the latest per (source, key),
        # sent only when no Raft message waits (they never delay
        # heartbeats or replication), kept across reconnects (bounded).
        self.live: OrderedDict[tuple[str, str], LiveItem] = OrderedDict()
        # A batch taken as it came, while nothing else is queued (the pump
        # keeps up: the usual case), merged into `live` when another comes.
        self.live_batch: tuple[LiveItem, ...] | None = None
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.rtt_ms: float | None = None
        # Set when the peer dialed this node (it is back): a backoff ends.
        self.peer_back = asyncio.Event()

    def enqueue(self, m: PeerPayload) -> bool:
        if len(self.queue) >= self.t.cfg.queue_limit:
            self.t.stats.dropped_queue_full += 1
            return False
        self.queue.append(m)
        self.wakeup.set()
        return True

    def enqueue_live(self, items: tuple[LiveItem, ...]) -> None:
        if not self.live and self.live_batch is None and len(items) <= min(MAX_LIVE_ITEMS, self.t.cfg.live_queue_limit):
            # Nothing queued: held as it is, no step per item (a (source,
            # key) twice in it is harmless: the receiver keeps the newest).
            self.live_batch = items
            self.wakeup.set()
            return
        if self.live_batch is not None:
            held, self.live_batch = self.live_batch, None
            self._merge_live(held)
        self._merge_live(items)
        self.wakeup.set()

    def _merge_live(self, items: tuple[LiveItem, ...]) -> None:
        live = self.live
        stats = self.t.stats
        for item in items:
            slot = (item.source, item.key)
            old = live.pop(slot, None)
            if old is not None:
                if old.seq > item.seq:
                    live[slot] = old  # a newer value is queued already
                    continue
                stats.live_coalesced += 1
            live[slot] = item
        while len(live) > self.t.cfg.live_queue_limit:
            live.popitem(last=False)
            stats.dropped_live_overflow += 1

    def _live_frame(self) -> LiveFrame:
        if self.live_batch is not None:  # then `live` is empty
            items, self.live_batch = self.live_batch, None
            return LiveFrame(self.peer, self.t.cfg.node_id, items)
        live = self.live
        if len(live) <= MAX_LIVE_ITEMS:
            items = tuple(live.values())
            live.clear()
        else:
            items = tuple(live.popitem(last=False)[1] for _ in range(MAX_LIVE_ITEMS))
        return LiveFrame(self.peer, self.t.cfg.node_id, items)

    async def run(self) -> None:
        """Connect, handshake, stream; on any failure drop what is queued
        (Raft retransmits), back off with jitter and start again. Nothing
        but cancellation ends this loop: a sender that died would cut the
        peer off for good."""
        backoff = self.t.cfg.backoff_min
        while not self.t.closing:
            self.peer_back.clear()
            try:
                reader0, writer0 = await self.t._connect(self.address)
            except PeerRefused as exc:
                self.t.stats.connect_failures += 1
                self.t._count_bad(exc)
                self.t._rlog.warning(
                    f"dial:{self.peer}",
                    "node=%s peer=%s event=peer_auth_failed addr=%s:%s reason=%s detail=%r action=%r",
                    self.t.cfg.node_id,
                    self.peer,
                    *self.address,
                    exc.code,
                    str(exc),
                    TLS_ADVICE,
                )
            except (OSError, TimeoutError) as exc:
                self.t.stats.connect_failures += 1
                self.t._rlog.warning(
                    f"dial:{self.peer}",
                    "node=%s peer=%s event=dial_failed addr=%s:%s error=%s",
                    self.t.cfg.node_id,
                    self.peer,
                    *self.address,
                    exc,
                )
            else:
                reader: Reader = reader0
                writer: Writer = writer0
                try:
                    started = time.monotonic()
                    reader, writer, context = await self.t._dial_handshake(self.peer, reader0, writer0)
                    self.rtt_ms = (time.monotonic() - started) * 1000
                    self.t.stats.connects += 1
                    self.connected = True
                    backoff = self.t.cfg.backoff_min
                    log.info("node=%s peer=%s event=connected addr=%s:%s", self.t.cfg.node_id, self.peer, *self.address)
                    await self._pump_until_closed(reader, writer, context)
                except FrameError as exc:
                    self.t._count_bad(exc)
                    if exc.code in AUTH_FAILURES or exc.code in TLS_FAILURES:
                        self.t._rlog.warning(
                            f"conn:{self.peer}",
                            "node=%s peer=%s event=peer_auth_failed addr=%s:%s reason=%s detail=%r action=%r",
                            self.t.cfg.node_id,
                            self.peer,
                            *self.address,
                            exc.code,
                            str(exc),
                            TLS_ADVICE if exc.code in TLS_FAILURES else AUTH_ADVICE,
                        )
                    else:
                        self.t._rlog.warning(
                            f"conn:{self.peer}",
                            "node=%s peer=%s event=connection_lost reason=%s error=%r",
                            self.t.cfg.node_id,
                            self.peer,
                            exc.code,
                            str(exc),
                        )
                except HandshakeRefused as exc:
                    self.t._rlog.warning(
                        f"conn:{self.peer}",
                        "node=%s peer=%s event=handshake_refused addr=%s:%s action=%r",
                        self.t.cfg.node_id,
                        self.peer,
                        *self.address,
                        f"{exc}: {TLS_ADVICE if self.t.cfg.tls is not None else AUTH_ADVICE}; "
                        f"{self.peer}'s log says why "
                        "(event=peer_auth_failed, or event=address_refused)",
                    )
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    self.t._rlog.warning(
                        f"conn:{self.peer}",
                        "node=%s peer=%s event=connection_lost error=%r",
                        self.t.cfg.node_id,
                        self.peer,
                        exc,
                    )
                except Exception:
                    log.exception("node=%s peer=%s event=sender_error", self.t.cfg.node_id, self.peer)
                finally:
                    self.connected = False
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
            self._drop_queue()
            if not self.t.closing:
                # A restarted peer that may lead now must not wait here for
                # our forwards and answers (up to backoff_max): its own dial
                # (peer_back) ends the wait.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff * (0.5 + random.random())):
                        await self.peer_back.wait()
                backoff = min(backoff * 2, self.t.cfg.backoff_max)

    def _drop_queue(self) -> None:
        # Raft retransmits; stale queued messages only delay the fresh ones.
        if self.queue:
            for m in self.queue:
                if isinstance(m, ForwardRequest):
                    self.t._note_undelivered(m)
            self.queue.clear()
            self.t.on_unreachable(self.peer)

    async def _pump_until_closed(self, reader: Reader, writer: Writer, context: bytes) -> None:
        """Stream the queue until the connection fails or the peer closes
        it. The peer sends nothing after its handshake answer, so reading
        notices at once when it goes away (a killed process closes its
        sockets); otherwise frames would be written into a dead socket until
        a write finally failed, and a forwarded write there could not be
        told apart from one that arrived."""
        pump = asyncio.ensure_future(self._pump(writer, context))
        closed = asyncio.ensure_future(reader.read(1))
        try:
            done, _ = await asyncio.wait({pump, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, closed):
                task.cancel()
        if pump in done:
            try:
                pump.result()  # raises its error; else the transport is closing
            except (ConnectionError, RuntimeError) as exc:
                if not _lost_by_peer(exc, writer):
                    raise
                # Reset by the peer (or a broken pipe): it is gone too.
                self.connected = False
                self.t._peer_closed(self.peer, inbound=False)
                raise ConnectionResetError(f"peer closed the connection ({exc!r})") from exc
            return
        # Cancelled; an error it raised meanwhile surfaces here, but a reset
        # or a broken pipe is the peer closing, as `closed` says: below.
        try:
            await pump
        except asyncio.CancelledError:
            pass
        except (ConnectionError, RuntimeError) as exc:
            if not _lost_by_peer(exc, writer):
                raise
        if closed.exception() is None and closed.result():
            raise FrameUnexpected("peer sent data after its handshake")
        self.connected = False
        self.t._peer_closed(self.peer, inbound=False)
        raise ConnectionResetError(f"peer closed the connection ({closed.exception() or 'end of stream'})")

    async def _pump(self, writer: Writer, context: bytes) -> None:
        cfg = self.t.cfg
        seq = 1
        while not self.t.closing:
            if not self.queue and not self.live and self.live_batch is None:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            batch: list[bytes] = []
            while self.queue and len(batch) < 256:
                m = self.queue.popleft()
                try:
                    batch.append(encode_message(cfg.secret, cfg.cluster, seq, m, context, cfg.max_frame))
                except FrameTooLarge as exc:
                    # One message that cannot be framed must not take the
                    # connection (and every message queued behind it) down.
                    self.t.stats.dropped_too_large += 1
                    log.error(
                        "node=%s peer=%s event=message_too_large type=%s error=%r action=%r",
                        cfg.node_id,
                        self.peer,
                        getattr(m, "type", "forward"),
                        str(exc),
                        "commands are capped below the frame limit; this message is dropped",
                    )
                    if isinstance(m, ForwardRequest):
                        self.t._note_undelivered(m)
                    self.t.on_unreachable(self.peer)
                    continue
                seq += 1
            live = 0
            if not self.queue and (self.live or self.live_batch is not None):
                # Raft first: live values only fill what is left of a batch.
                frame = self._live_frame()
                try:
                    batch.append(encode_message(cfg.secret, cfg.cluster, seq, frame, context, cfg.max_frame))
                except FrameTooLarge:
                    self.t.stats.dropped_too_large += 1
                else:
                    seq += 1
                    live = len(frame.items)
            if not batch:
                continue
            writer.write(b"".join(batch))
            # One loop step after each batch, even when it went out whole.
            # (Skipping it when the queue was empty measured no different,
            # idle or under load, at 3 and at 50 nodes: the simpler code.)
            await _drain(writer)
            self.t.stats.sent += len(batch)
            self.t.stats.live_sent += live


def _lost_by_peer(exc: BaseException, writer: Writer) -> bool:
    """A write failed because the peer is gone: a reset or a broken pipe,
    or (uvloop) a write into the transport its reset already closed."""
    return isinstance(exc, ConnectionError) or writer.is_closing()


async def _drain(writer: Writer) -> None:
    """`writer.drain()` bounded by WRITE_TIMEOUT, without the task and timer
    that bound cost when there is nothing to wait for: a batch that went
    out whole in the write itself on a connection still open (drain would
    return at once: it waits only while the transport holds bytes above
    its high-water mark, and raises only once the connection is lost,
    which closes the transport). That is nearly every batch of a pump."""
    transport = writer.transport
    if transport.get_write_buffer_size() == 0 and not transport.is_closing():
        # Still yield, as drain did: a pump with a long queue must not hold
        # the loop for batch after batch.
        await asyncio.sleep(0)
        return
    async with asyncio.timeout(WRITE_TIMEOUT):
        await writer.drain()


async def _read_frame(reader: Reader, decoder: FrameDecoder) -> Frame:
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            return frame
        data = await reader.read(65536)
        if not data:
            decoder.finish()
            raise asyncio.IncompleteReadError(b"", None)
        decoder.feed(data)


def _parse_hello(frame: Frame, expect_to: str | None) -> tuple[bytes, str]:
    try:
        doc = orjson.loads(frame.payload)
        hello = doc["hello"]
        nonce = bytes.fromhex(hello["nonce"])
        sender = hello["id"]
        api = hello.get("api", "")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FrameError(f"malformed hello: {exc!r}") from exc
    if frame.seq != 0 or len(nonce) != 16 or sender != frame.sender or not isinstance(api, str) or len(api) > 300:
        raise FrameError("malformed hello")
    if not api.isprintable() or any(c.isspace() for c in api):
        raise FrameError("malformed hello: api address")
    if expect_to is not None and hello.get("to") != expect_to:
        raise FrameError(f"hello for {hello.get('to')!r}, this is {expect_to!r}")
    return nonce, api


class _SnapshotSpool:
    """One incoming snapshot: the header, and the chunks so far in a file."""

    def __init__(self, header: SnapshotHeader, directory: str) -> None:
        self.header = header
        self.remaining = header.size
        fd, self.path = tempfile.mkstemp(prefix=SPOOL_PREFIX, suffix=SPOOL_SUFFIX, dir=directory)
        self.file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        if not chunk or len(chunk) > self.remaining:
            raise FrameError(f"snapshot chunk of {len(chunk)} bytes with {self.remaining} announced bytes left")
        self.file.write(chunk)
        self.remaining -= len(chunk)

    async def read_back(self) -> bytes:
        self.file.close()

        def read() -> bytes:
            with open(self.path, "rb") as f:
                data = f.read()
            if len(data) != self.header.size:
                raise OSError(f"spooled snapshot holds {len(data)} bytes, expected {self.header.size}")
            return data

        try:
            return await asyncio.to_thread(read)
        finally:
            self.discard()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class TcpTransport:
    """Sends messages to peers by id; delivers authenticated inbound messages
    to `on_message`. `on_unreachable(peer)` tells Raft to stop streaming;
    `on_snapshot_status(peer, ok)` reports the outcome of a snapshot stream."""

    def __init__(
        self,
        cfg: TransportConfig,
        on_message: Callable[[PeerPayload], None],
        on_unreachable: Callable[[str], None] | None = None,
        on_snapshot_status: Callable[[str, bool], None] | None = None,
        on_peer_closed: Callable[[str], None] | None = None,
    ) -> None:
        if cfg.snapshot_chunk <= 0 or cfg.snapshot_chunk + frame_overhead(cfg.cluster, cfg.node_id) > cfg.max_frame:
            raise ValueError("snapshot_chunk must be positive and fit in a frame (max_frame)")
        self.cfg = cfg
        self.on_message = on_message
        self.on_unreachable = on_unreachable or (lambda peer: None)
        self.on_snapshot_status = on_snapshot_status or (lambda peer, ok: None)
        # Told when a peer closed every connection with this node (see
        # _peer_closed): its process is gone.
        self.on_peer_closed = on_peer_closed or (lambda peer: None)
        self.stats = TransportStats()
        self.closing = False
        # Address book: every peer address this node knows (--peers,
        # discovery, the membership API); senders exist only for `_members`.
        self._addresses: dict[str, tuple[str, int]] = {}
        # None: not told yet (dial every known address).
        self._members: frozenset[str] | None = None
        self._peers: dict[str, _PeerSender] = {}
        self._server: asyncio.Server | None = None
        # TLS: the listening socket, its accept loop, handshakes under way.
        self._tls_listener: socket.socket | None = None
        self._tls_accepting: asyncio.Task[None] | None = None
        self._tls_handshakes: set[asyncio.Task[None]] = set()
        self._inbound: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        # Peer id -> addresses of its live inbound connections.
        self._inbound_from: dict[str, list[str]] = {}
        # Failures and bans per address (mesh.transport.bans).
        self.bans = BanTable(cfg)
        self._banned_until = self.bans.until
        # Addresses that sent authenticated traffic under a fresh connection
        # context: several nodes (a NAT, a proxy, loopback in tests) can
        # share one, so failures from them are logged and counted but never
        # get the address refused.
        self._trusted_ips: set[str] = set()
        self._rlog = RateLimitedLog()
        self._rlog_slow = RateLimitedLog(10.0)
        # API address each peer announced in the answer to our dial.
        self.peer_api: dict[str, str] = {}
        # monotonic time of the last frame received from each peer.
        self.last_heard: dict[str, float] = {}
        # Forwarded writes dropped from a queue without being written (the
        # peer could not be reached): (frm, id), oldest first, bounded.
        self._undelivered: dict[tuple[str, int], None] = {}
        # Snapshot streams in flight, by peer; bytes sent so far.
        self._snapshot_sends: dict[str, asyncio.Task[None]] = {}
        self.snapshot_progress: dict[str, tuple[int, int]] = {}
        self._snapshot_receives = 0
        if cfg.max_snapshot_sends < 1:
            raise ValueError("max_snapshot_sends must be at least 1")
        self._snapshot_send_room = asyncio.Semaphore(cfg.max_snapshot_sends)

    async def listen(self, host: str, port: int, sock: socket.socket | None = None) -> tuple[str, int]:
        """Accept peers on host:port, or on `sock` (a listening socket bound
        there, e.g. inherited from the process that started this node)."""
        if self.cfg.spool_dir is not None:
            # The node's own directory: a spool file left there is from a
            # receive that a crash cut short.
            for leftover in Path(self.cfg.spool_dir).glob(SPOOL_PREFIX + "*" + SPOOL_SUFFIX):
                with contextlib.suppress(OSError):
                    leftover.unlink()
                    log.info("node=%s event=snapshot_spool_removed path=%s", self.cfg.node_id, leftover)
        if self.cfg.tls is not None:
            # TLS links: this node accepts and hands each socket to the
            # loop's TLS (connect_accepted_socket) itself. start_server
            # (ssl=...) would drop a failed handshake without a word, and
            # upgrading a plain stream (start_tls) loses a ClientHello that
            # arrived before the upgrade (uvloop reads at once): that
            # connection then hangs until the dialer gives up.
            if sock is None:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.create_server((host, port), family=family, backlog=128)
            sock.setblocking(False)
            self._tls_listener = sock
            self._tls_accepting = asyncio.get_running_loop().create_task(self._accept_tls(sock), name="peer-accept")
            bound = sock.getsockname()
            return bound[0], bound[1]
        if sock is not None:
            self._server = await asyncio.start_server(self._accept, sock=sock)
        else:
            self._server = await asyncio.start_server(self._accept, host, port)
        bound = self._server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def _accept_tls(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while not self.closing:
            try:
                conn, peername = await loop.sock_accept(listener)
            except OSError as exc:
                if self.closing or listener.fileno() < 0:
                    return
                self._rlog.warning("accept", "node=%s event=accept_failed error=%r", self.cfg.node_id, str(exc))
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._handshake_tls(conn, str(peername[0]) if peername else "?"))
            self._tls_handshakes.add(task)
            task.add_done_callback(self._tls_handshakes.discard)

    async def _handshake_tls(self, conn: socket.socket, addr: str) -> None:
        tls = self.cfg.tls
        assert tls is not None
        if self.bans.refused(addr):
            conn.close()
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 16, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            # The transport owns the socket from here on, also on failure.
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=tls.server_context(), ssl_handshake_timeout=HELLO_TIMEOUT
            )
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError, TimeoutError) as exc:
            # Gone before the handshake ended: a dialer that gave up (its
            # connection waited in the backlog while this node started), not
            # a failed authentication; counting it would get every peer's
            # address refused after a restart. (With TLS 1.3 a dialer that
            # refuses this node's certificate looks the same: it says why.)
            log.debug("node=%s event=inbound_closed from=%s during=tls error=%r", self.cfg.node_id, addr, exc)
            return
        except (ssl.SSLError, OSError) as exc:
            # A plaintext client, no certificate, another CA, expired.
            self._note_failure(addr, PeerRefused("tls_failed", describe_ssl_error(exc)))
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self._accept(reader, writer)

    # -- who is dialed -------------------------------------------------------

    def set_peer(self, peer: str, address: tuple[str, int]) -> None:
        """Record the address `peer` is dialed at (a sender runs only while
        it is a member, see `set_members`)."""
        if peer == self.cfg.node_id:
            return
        self._addresses[peer] = address
        self._sync_sender(peer)

    def remove_peer(self, peer: str) -> None:
        """Forget `peer`'s address and stop its sender."""
        self._addresses.pop(peer, None)
        self._stop_sender(peer, "removed")

    def set_members(self, members: Iterable[str] | None) -> None:
        """Dial only these ids (the applied configuration); None: dial every
        known address (a node not yet in a configuration)."""
        new = frozenset(members) if members is not None else None
        if new == self._members:
            return
        self._members = new
        for peer in list(self._peers):
            if not self._dialable(peer):
                self._stop_sender(peer, "not_a_member")
        for peer in self._addresses:
            self._sync_sender(peer)

    def _dialable(self, peer: str) -> bool:
        return self._members is None or peer in self._members

    def _sync_sender(self, peer: str) -> None:
        address = self._addresses.get(peer)
        if address is None or not self._dialable(peer):
            return
        sender = self._peers.get(peer)
        if sender is not None and sender.address == address:
            return
        if sender is not None and sender.task is not None:
            sender.task.cancel()
        sender = _PeerSender(self, peer, address)
        sender.task = asyncio.get_running_loop().create_task(sender.run(), name=f"peer-{peer}")
        self._peers[peer] = sender

    def _stop_sender(self, peer: str, reason: str) -> None:
        sender = self._peers.pop(peer, None)
        if sender is not None:
            if sender.task is not None:
                sender.task.cancel()
            log.info(
                "node=%s peer=%s event=peer_sender_stopped reason=%s addr=%s:%s",
                self.cfg.node_id,
                peer,
                reason,
                *sender.address,
            )
        task = self._snapshot_sends.pop(peer, None)
        if task is not None:
            task.cancel()

    def peers(self) -> dict[str, tuple[str, int]]:
        """The address book: every known peer address (dialed or not)."""
        return dict(self._addresses)

    def dialing(self) -> dict[str, tuple[str, int]]:
        """The peers a sender runs for, with the address it dials."""
        return {p: s.address for p, s in self._peers.items()}

    def peer_rtt_ms(self) -> dict[str, float | None]:
        return {p: s.rtt_ms for p, s in self._peers.items()}

    # -- sending -------------------------------------------------------------

    def send(self, m: PeerPayload) -> None:
        if type(m) is Message and m.type == MessageType.SNAP:
            self._send_snapshot(m)
            return
        sender = self._peers.get(m.to)
        if type(m) is LiveFrame:
            # Best effort, on the live queue; never a reason to tell Raft
            # the peer is unreachable.
            if sender is not None:
                sender.enqueue_live(m.items)
            return
        if type(m) is LiveInterest:
            # Rare and small: on the ordinary queue, best effort like values.
            if sender is not None:
                sender.enqueue(m)
            return
        if sender is None:
            if m.to in self._addresses:
                self.stats.dropped_not_member += 1
                self._rlog.warning(
                    f"nonmember:{m.to}", "node=%s event=send_to_non_member peer=%s", self.cfg.node_id, m.to
                )
            else:
                self._rlog.warning(
                    f"unknown:{m.to}", "node=%s event=send_to_unknown_peer peer=%s", self.cfg.node_id, m.to
                )
            self.on_unreachable(m.to)
            return
        if not sender.enqueue(m):
            self.on_unreachable(m.to)

    def withdraw(self, m: ForwardRequest) -> bool:
        """Take back a forwarded write: True if it was certainly never
        written to a connection (still queued, now removed, or dropped with
        a queue the peer never got), so the peer cannot have received it.
        False if it may have been delivered."""
        key = (m.frm, m.id)
        if key in self._undelivered:
            del self._undelivered[key]
            return True
        sender = self._peers.get(m.to)
        if sender is not None and m in sender.queue:
            sender.queue.remove(m)
            return True
        return False

    def _note_undelivered(self, m: ForwardRequest) -> None:
        self._undelivered[(m.frm, m.id)] = None
        while len(self._undelivered) > UNDELIVERED_KEPT:
            del self._undelivered[next(iter(self._undelivered))]

    async def _connect(self, address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to a peer: TLS (this node's certificate, the peer's
        verified against the cluster CA) or plain TCP in PSK mode."""
        tls = self.cfg.tls
        if tls is None:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await asyncio.open_connection(*address)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await asyncio.open_connection(
                    *address,
                    ssl=tls.client_context(),
                    server_hostname=address[0],
                    ssl_handshake_timeout=CONNECT_TIMEOUT,
                )
        except ssl.SSLError as exc:
            raise PeerRefused("tls_failed", describe_ssl_error(exc)) from None

    def _seal(self, reader: Reader, writer: Writer, context: bytes, dialer: bool) -> tuple[Reader, Writer]:
        """PSK links: seal everything after the hellos (mesh/transport/aead.py).
        TLS links are already confidential."""
        if self.cfg.tls is not None:
            return reader, writer
        assert isinstance(reader, asyncio.StreamReader) and isinstance(writer, asyncio.StreamWriter)
        k_dialer, k_listener = derive_keys(self.cfg.secret, self.cfg.cluster, context[:16], context[16:])
        mine, theirs = (k_dialer, k_listener) if dialer else (k_listener, k_dialer)
        return SealedReader(reader, theirs, self.cfg.max_frame), SealedWriter(writer, mine)

    async def _dial_handshake(
        self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[Reader, Writer, bytes]:
        """Our hello, their answer; returns the connection's streams (sealed
        on a PSK link) and MAC context. The answer must come from `peer`
        (the id we dialed this address for; on TLS, the id in its
        certificate too), and nothing may follow it."""
        cfg = self.cfg
        if cfg.tls is not None:
            # Tell our hello only to the node we meant to reach.
            cfg.tls.check(writer.get_extra_info("ssl_object"), peer, str(writer.get_extra_info("peername")))
        nonce = os.urandom(16)
        hello = {"hello": {"id": cfg.node_id, "to": peer, "nonce": nonce.hex(), "api": cfg.api_address}}
        writer.write(encode_frame(cfg.secret, cfg.cluster, cfg.node_id, 0, orjson.dumps(hello)))
        await writer.drain()
        decoder = FrameDecoder(cfg.secret, cfg.cluster, context=nonce, max_frame=4096)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                frame = await _read_frame(reader, decoder)
        except ssl.SSLError as exc:
            # TLS 1.3: the listener checks our certificate after our side
            # of the handshake is done, and says no with an alert.
            raise PeerRefused("tls_failed", f"{peer} refused this node: {describe_ssl_error(exc)}") from None
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            # Closed (or reset: our hello unread) instead of answered.
            raise HandshakeRefused(f"{peer} closed the connection without answering this node's hello") from exc
        their, api = _parse_hello(frame, expect_to=None)
        if frame.sender != peer:
            raise FrameError(f"dialed {peer} but {frame.sender} answered")
        if decoder.pending_bytes():
            raise FrameUnexpected(f"{decoder.pending_bytes()} bytes after the handshake answer")
        # Learned from a connection we dialed to the address we have for
        # `peer`, answered under our fresh nonce: the only source of it.
        self.peer_api[peer] = api
        context = nonce + their
        sealed_reader, sealed_writer = self._seal(reader, writer, context, dialer=True)
        return sealed_reader, sealed_writer, context

    # -- snapshots out ---------------------------------------------------------

    def snapshots_in_flight(self) -> list[str]:
        """Peers a snapshot is streaming to right now."""
        return [p for p, t in self._snapshot_sends.items() if not t.done()]

    def _send_snapshot(self, m: Message) -> None:
        peer = m.to
        address = self._addresses.get(peer)
        loop = asyncio.get_running_loop()
        if address is None or not self._dialable(peer):
            self._rlog.warning(
                f"snap-unknown:{peer}", "node=%s event=snapshot_to_unknown_peer peer=%s", self.cfg.node_id, peer
            )
            self.stats.snapshots_failed += 1
            loop.call_soon(self.on_snapshot_status, peer, False)
            return
        old = self._snapshot_sends.pop(peer, None)
        if old is not None and not old.done():
            # The core asked again (a new leader term or a newer snapshot):
            # the newer stream replaces the older one, which reports nothing.
            old.cancel()
        task = loop.create_task(self._stream_snapshot(peer, address, m), name=f"snapshot-to-{peer}")
        self._snapshot_sends[peer] = task

    async def _stream_snapshot(self, peer: str, address: tuple[str, int], m: Message) -> None:
        cfg = self.cfg
        assert m.snapshot is not None
        data = m.snapshot.data
        header = SnapshotHeader.of(m)
        task = asyncio.current_task()
        started = time.monotonic()
        ok = False
        error = ""
        self.snapshot_progress[peer] = (0, len(data))
        try:
            # At most max_snapshot_sends streams at once; the others wait here.
            await self._snapshot_send_room.acquire()
        except asyncio.CancelledError:
            if self._snapshot_sends.get(peer) is task:
                del self._snapshot_sends[peer]
                self.snapshot_progress.pop(peer, None)
            raise
        started = time.monotonic()
        log.info(
            "node=%s peer=%s event=snapshot_send_started index=%d term=%d bytes=%d",
            cfg.node_id,
            peer,
            m.snapshot.meta.index,
            m.snapshot.meta.term,
            len(data),
        )
        try:
            reader0, writer0 = await self._connect(address)
            reader: Reader = reader0
            writer: Writer = writer0
            done: asyncio.Future[SnapshotResult] | None = None
            try:
                reader, writer, context = await self._dial_handshake(peer, reader0, writer0)
                answers = FrameDecoder(cfg.secret, cfg.cluster, context=_backward(context), max_frame=4096)
                writer.write(encode_message(cfg.secret, cfg.cluster, 1, header, context, cfg.max_frame))
                await writer.drain()
                # The receiver accepts (size, disk space, room) or refuses
                # before any data moves.
                async with asyncio.timeout(HELLO_TIMEOUT):
                    accept = await self._read_snapshot_result(peer, reader, answers, 1, "accept")
                if not accept.ok:
                    error = f"refused: {accept.error}"
                else:
                    done = asyncio.ensure_future(self._read_snapshot_result(peer, reader, answers, 2, "done"))
                    try:
                        await self._stream_chunks(peer, writer, context, data, done)
                    except (OSError, TimeoutError):
                        if not done.done() or done.cancelled() or done.exception() is not None:
                            raise
                        # The receiver gave up and closed: its answer says why.
                    async with asyncio.timeout(SNAPSHOT_RESULT_TIMEOUT + len(data) / (32 << 20)):
                        result = await done
                    ok, error = result.ok, result.error
            finally:
                if done is not None:
                    done.cancel()
                    if done.done() and not done.cancelled():
                        done.exception()  # retrieved: its failure is reported above
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        except asyncio.CancelledError:
            task = None  # superseded or shutting down: nobody to report to
            raise
        except FrameError as exc:
            self._count_bad(exc)
            error = f"{exc.code}: {exc}"
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            error = repr(exc) if str(exc) else type(exc).__name__
        finally:
            self._snapshot_send_room.release()
            if task is not None and self._snapshot_sends.get(peer) is task:
                del self._snapshot_sends[peer]
                self.snapshot_progress.pop(peer, None)
                elapsed = time.monotonic() - started
                if ok:
                    self.stats.snapshots_sent += 1
                    log.info(
                        "node=%s peer=%s event=snapshot_sent index=%d bytes=%d seconds=%.2f",
                        cfg.node_id,
                        peer,
                        m.snapshot.meta.index,
                        len(data),
                        elapsed,
                    )
                else:
                    self.stats.snapshots_failed += 1
                    # The core asks again after a heartbeat: say it at most
                    # every 10 s per peer.
                    self._rlog_slow.warning(
                        f"snapfail:{peer}",
                        "node=%s peer=%s event=snapshot_send_failed index=%d bytes=%d seconds=%.2f error=%r",
                        cfg.node_id,
                        peer,
                        m.snapshot.meta.index,
                        len(data),
                        elapsed,
                        error,
                    )
                self.on_snapshot_status(peer, ok)

    async def _stream_chunks(
        self, peer: str, writer: Writer, context: bytes, data: bytes, answer: asyncio.Future[Any]
    ) -> None:
        """The data as raw chunk frames, sequence 2 on; sliced, never copied
        here (the socket buffer may copy what it cannot send at once)."""
        cfg = self.cfg
        view = memoryview(data)
        step = cfg.snapshot_chunk
        seq = 2  # the header was 1
        for off in range(0, len(view), step):
            if answer.done():
                return  # refused (or the connection failed): stop sending
            chunk = view[off : off + step]
            # The MAC of a chunk (a MiB) in a worker thread (hashlib lets go
            # of the GIL): the loop keeps serving heartbeats and appends.
            head, mac = await asyncio.to_thread(
                encode_chunk_frame, cfg.secret, cfg.cluster, cfg.node_id, seq, chunk, context
            )
            seq += 1
            writer.write(head)
            writer.write(chunk)
            writer.write(mac)
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
            self.snapshot_progress[peer] = (off + len(chunk), len(data))
            self.stats.snapshot_bytes_sent += len(chunk)

    async def _read_snapshot_result(
        self, peer: str, reader: Reader, decoder: FrameDecoder, seq: int, stage: str
    ) -> SnapshotResult:
        frame = await _read_frame(reader, decoder)
        if frame.seq != seq or frame.sender != peer:
            raise FrameError(f"snapshot answer with sequence {frame.seq} from {frame.sender!r}")
        m = frame.message()
        if not isinstance(m, SnapshotResult) or m.to != self.cfg.node_id or m.stage != stage:
            raise FrameUnexpected(f"expected the snapshot's {stage} answer")
        return m

    # -- lifecycle ---------------------------------------------------------------

    async def close(self) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close()
        handshakes = list(self._tls_handshakes)
        if self._tls_accepting is not None:
            self._tls_accepting.cancel()
            handshakes.append(self._tls_accepting)
            for handshake in self._tls_handshakes:
                if handshake not in self._inbound:  # those end on EOF, below
                    handshake.cancel()
            assert self._tls_listener is not None
            self._tls_listener.close()
        senders = [s.task for s in self._peers.values() if s.task is not None]
        senders += list(self._snapshot_sends.values())
        for task in senders:
            task.cancel()
        # Inbound handlers end on EOF; cancelling them would make asyncio's
        # stream protocol log the cancellation as an error.
        inbound = list(self._inbound)
        for writer in self._inbound.values():
            writer.close()
        await asyncio.gather(*senders, *inbound, *handshakes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- inbound -------------------------------------------------------------

    def _count_bad(self, exc: FrameError) -> None:
        code = getattr(exc, "code", "bad_frame")
        self.stats.dropped_bad_frame[code] = self.stats.dropped_bad_frame.get(code, 0) + 1

    def _note_failure(self, addr: str, exc: FrameError) -> None:
        self._count_bad(exc)
        code = getattr(exc, "code", "bad_frame")
        if code in AUTH_FAILURES or code in TLS_FAILURES:
            self._rlog.warning(
                f"bad:{addr}:{code}",
                "node=%s event=peer_auth_failed from=%s reason=%s detail=%r action=%r",
                self.cfg.node_id,
                addr,
                code,
                str(exc),
                f"refused a connection from {addr}: {TLS_ADVICE if code in TLS_FAILURES else AUTH_ADVICE}",
            )
        else:
            self._rlog.warning(
                f"bad:{addr}:{code}",
                "node=%s event=frame_dropped from=%s reason=%s detail=%s",
                self.cfg.node_id,
                addr,
                code,
                str(exc),
            )
        if self.bans.failed(addr, trusted=addr in self._trusted_ips):
            log.warning(
                "node=%s event=address_refused addr=%s seconds=%s", self.cfg.node_id, addr, self.cfg.ban_seconds
            )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._inbound[task] = writer
        peername = writer.get_extra_info("peername")
        addr = str(peername[0]) if peername else "?"
        try:
            if self.bans.refused(addr):
                return
            await self._serve_connection(reader, writer, addr)
        except FrameError as exc:
            self._note_failure(addr, exc)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.debug("node=%s event=inbound_closed from=%s error=%r", self.cfg.node_id, addr, exc)
        finally:
            self._inbound.pop(task, None)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _inbound_opened(self, peer: str, addr: str) -> None:
        live = self._inbound_from.setdefault(peer, [])
        others = sorted({a for a in live if a != addr})
        if others:
            # Two places claim one id: a restarted peer whose old connection
            # is not closed yet, a proxy, or someone replaying its hello.
            self._rlog.warning(
                f"claim:{peer}",
                "node=%s event=peer_id_claimed_twice peer=%s addr=%s also_connected_from=%s",
                self.cfg.node_id,
                peer,
                addr,
                ",".join(others),
            )
        live.append(addr)

    def _peer_closed(self, peer: str, inbound: bool) -> None:
        """`peer` closed a connection with this node (end of stream or a
        reset from its side; never one this node closed). When that leaves
        no connection with it in either direction, as when its process
        died (a crash closes every socket; a pulled cable closes none), tell
        the node: a follower then elects a new controller at once instead of
        after the election timeout. A peer that closes one connection on
        purpose (a reconnect, a refused frame) still has the other."""
        if self.closing:
            return
        # The inbound connection being closed is still counted here.
        if len(self._inbound_from.get(peer, ())) > (1 if inbound else 0):
            return
        sender = self._peers.get(peer)
        if sender is not None and sender.connected:
            return
        self.on_peer_closed(peer)

    def _peer_back(self, peer: str) -> None:
        sender = self._peers.get(peer)
        if sender is not None and not sender.connected:
            sender.peer_back.set()

    def _inbound_closed(self, peer: str, addr: str) -> None:
        live = self._inbound_from.get(peer)
        if live is not None:
            with contextlib.suppress(ValueError):
                live.remove(addr)
            if not live:
                del self._inbound_from[peer]

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, addr: str) -> None:
        cfg = self.cfg
        hello_decoder = FrameDecoder(cfg.secret, cfg.cluster, max_frame=4096)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                hello = await _read_frame(reader, hello_decoder)
        except ssl.SSLError as exc:
            raise PeerRefused("tls_failed", describe_ssl_error(exc)) from None
        their, _api = _parse_hello(hello, expect_to=cfg.node_id)
        if cfg.tls is not None:
            # The id it claims must be the one its certificate carries, and
            # an admitted member's.
            cfg.tls.check(writer.get_extra_info("ssl_object"), hello.sender, addr)
        if hello_decoder.pending_bytes():
            # A dialer waits for our answer before it can send anything
            # valid: bytes here are a protocol violation, not a race.
            raise FrameUnexpected(f"{hello_decoder.pending_bytes()} bytes after the hello, before its answer")
        peer = hello.sender
        ours = os.urandom(16)
        reply = {"hello": {"id": cfg.node_id, "nonce": ours.hex(), "api": cfg.api_address}}
        writer.write(encode_frame(cfg.secret, cfg.cluster, cfg.node_id, 0, orjson.dumps(reply), context=their))
        await writer.drain()
        self._inbound_opened(peer, addr)
        sealed_reader, sealed_writer = self._seal(reader, writer, their + ours, dialer=False)
        try:
            await self._receive(sealed_reader, sealed_writer, addr, peer, their + ours)
        finally:
            self._inbound_closed(peer, addr)

    async def _receive(self, reader: Reader, writer: Writer, addr: str, peer: str, context: bytes) -> None:
        cfg = self.cfg
        decoder = FrameDecoder(cfg.secret, cfg.cluster, context=context, max_frame=cfg.max_frame)
        expected_seq = 1
        tokens = cfg.rate_limit
        last = time.monotonic()
        spool: _SnapshotSpool | None = None
        try:
            while not self.closing:
                try:
                    data = await reader.read(1 << 16)
                except (ConnectionError, ssl.SSLError, StreamTruncated):
                    # Reset, or ended inside a record (killed mid-write).
                    if spool is None:
                        self._peer_closed(peer, inbound=True)
                    raise
                if not data:
                    if spool is None:
                        self._peer_closed(peer, inbound=True)
                    decoder.finish()
                    if spool is not None:
                        raise FrameError(f"connection closed {spool.remaining} bytes before the snapshot's end")
                    return
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    if frame.seq != expected_seq:
                        raise FrameError(f"sequence {frame.seq}, expected {expected_seq} (replayed or reordered)")
                    expected_seq += 1
                    if expected_seq == 2:
                        # The first authenticated frame: the peer is up.
                        self._peer_back(peer)
                    if frame.sender != peer:
                        raise FrameError(f"frame from {frame.sender!r} on {peer!r}'s connection")
                    if addr not in self._trusted_ips:
                        # Authenticated under this connection's fresh nonces:
                        # a live peer with the secret, not a replayed hello.
                        self._trusted_ips.add(addr)
                    now = time.monotonic()
                    self.last_heard[peer] = now
                    if spool is not None:
                        spool.write(frame.payload)
                        self.stats.snapshot_bytes_received += len(frame.payload)
                        if spool.remaining == 0:
                            done, spool = spool, None
                            await self._deliver_snapshot(done, writer, peer, context)
                            return
                        continue
                    tokens = min(cfg.rate_limit, tokens + (now - last) * cfg.rate_limit)
                    last = now
                    if tokens < 1:
                        self.stats.dropped_rate_limited += 1
                        self._rlog.warning(
                            f"rate:{peer}", "node=%s event=frame_rate_limited peer=%s", cfg.node_id, peer
                        )
                        continue
                    tokens -= 1
                    try:
                        m = frame.message()
                    except LiveMalformed as exc:
                        # Counted (also in /metrics, as a dropped frame of
                        # reason live_malformed); the connection goes on.
                        self.stats.dropped_live_malformed += 1
                        self._count_bad(exc)
                        self._rlog.warning(
                            f"live:{peer}",
                            "node=%s event=live_frame_dropped peer=%s reason=%s detail=%r",
                            cfg.node_id,
                            peer,
                            exc.code,
                            str(exc),
                        )
                        continue
                    if m.to != cfg.node_id:
                        raise FrameError(f"message for {m.to!r} delivered to {cfg.node_id!r}")
                    if isinstance(m, SnapshotHeader):
                        spool = await self._open_spool(m, writer, peer, context)
                        if spool is None:
                            return  # refused and answered
                        if m.size == 0:
                            done, spool = spool, None
                            await self._deliver_snapshot(done, writer, peer, context)
                            return
                        continue
                    if isinstance(m, SnapshotResult):
                        raise FrameUnexpected("a snapshot result sent to a listener")
                    self.stats.received += 1
                    if type(m) is LiveFrame:
                        self.stats.live_received += len(m.items)
                    self.on_message(m)
        finally:
            if spool is not None:
                spool.discard()
                self._snapshot_receives -= 1

    async def _answer_snapshot(
        self, writer: Writer, peer: str, context: bytes, stage: str, ok: bool, error: str = ""
    ) -> None:
        cfg = self.cfg
        result = SnapshotResult(peer, cfg.node_id, stage, ok, error[:1000])
        seq = 1 if stage == "accept" else 2
        writer.write(encode_message(cfg.secret, cfg.cluster, seq, result, _backward(context)))
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()

    async def _open_spool(
        self, header: SnapshotHeader, writer: Writer, peer: str, context: bytes
    ) -> _SnapshotSpool | None:
        cfg = self.cfg
        directory = cfg.spool_dir or tempfile.gettempdir()
        refusal = ""
        if header.size > cfg.max_snapshot_bytes:
            refusal = (
                f"snapshot of {header.size} bytes exceeds this node's limit of {cfg.max_snapshot_bytes} bytes "
                "(max_snapshot_bytes)"
            )
        elif self._snapshot_receives >= cfg.max_snapshot_receives:
            refusal = f"already receiving {self._snapshot_receives} snapshots"
        else:
            try:
                free = shutil.disk_usage(directory).free
            except OSError as exc:
                refusal = f"cannot spool a snapshot in {directory}: {exc}"
            else:
                if header.size + SPOOL_MARGIN > free:
                    refusal = (
                        f"snapshot of {header.size} bytes does not fit in {directory} ({free} bytes free): "
                        "free disk space on this node"
                    )
        spool = None
        if not refusal:
            try:
                spool = _SnapshotSpool(header, directory)
            except OSError as exc:
                refusal = f"cannot spool a snapshot in {directory}: {exc}"
        if spool is None:
            self.stats.snapshots_refused += 1
            self._rlog_slow.warning(
                f"snaprefused:{peer}",
                "node=%s peer=%s event=snapshot_refused bytes=%d reason=%r",
                cfg.node_id,
                peer,
                header.size,
                refusal,
            )
            await self._answer_snapshot(writer, peer, context, "accept", False, refusal)
            return None
        self._snapshot_receives += 1
        await self._answer_snapshot(writer, peer, context, "accept", True)
        log.info(
            "node=%s peer=%s event=snapshot_receive_started bytes=%d index=%d",
            cfg.node_id,
            peer,
            header.size,
            header.message.snapshot.meta.index if header.message.snapshot is not None else 0,
        )
        return spool

    async def _deliver_snapshot(self, spool: _SnapshotSpool, writer: Writer, peer: str, context: bytes) -> None:
        self._snapshot_receives -= 1
        try:
            data = await spool.read_back()
        except OSError as exc:
            log.error("node=%s peer=%s event=snapshot_spool_failed error=%r", self.cfg.node_id, peer, str(exc))
            await self._answer_snapshot(writer, peer, context, "done", False, f"spool failed: {exc}")
            return
        m = spool.header.with_data(data)
        del data
        self.stats.received += 1
        self.stats.snapshots_received += 1
        try:
            self.on_message(m)
        except Exception as exc:
            log.exception("node=%s peer=%s event=snapshot_delivery_failed", self.cfg.node_id, peer)
            await self._answer_snapshot(writer, peer, context, "done", False, f"{type(exc).__name__}: {exc}")
            return
        await self._answer_snapshot(writer, peer, context, "done", True)
