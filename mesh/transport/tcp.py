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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from mesh.transport.codec import (
    ForwardRequest,
    Frame,
    FrameDecoder,
    FrameError,
    PeerPayload,
    encode_frame,
    encode_message,
)

log = logging.getLogger("mesh.transport")

HELLO_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0
# A peer that accepts nothing for this long is treated as gone: reconnect.
WRITE_TIMEOUT = 10.0


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


@dataclass(slots=True)
class TransportStats:
    sent: int = 0
    received: int = 0
    dropped_queue_full: int = 0
    dropped_bad_frame: dict[str, int] = field(default_factory=dict)
    dropped_rate_limited: int = 0
    connects: int = 0
    connect_failures: int = 0


class _RateLimitedLog:
    """Logs an event at most once per `interval` seconds per key."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.interval:
            n = self._suppressed.pop(key, 0)
            suffix = f" ({n} similar suppressed)" if n else ""
            log.warning(msg + suffix, *args)
            self._last[key] = now
        else:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1


# Forwarded writes remembered as undelivered (a caller that never asks is
# long gone by then).
UNDELIVERED_KEPT = 4096


class _PeerSender:
    def __init__(self, transport: TcpTransport, peer: str, address: tuple[str, int]) -> None:
        self.t = transport
        self.peer = peer
        self.address = address
        self.queue: deque[PeerPayload] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.rtt_ms: float | None = None

    def enqueue(self, m: PeerPayload) -> bool:
        if len(self.queue) >= self.t.cfg.queue_limit:
            self.t.stats.dropped_queue_full += 1
            return False
        self.queue.append(m)
        self.wakeup.set()
        return True

    async def run(self) -> None:
        """Connect, handshake, stream; on any failure drop what is queued
        (Raft retransmits), back off with jitter and start again. Nothing
        but cancellation ends this loop: a sender that died would cut the
        peer off for good."""
        backoff = self.t.cfg.backoff_min
        while not self.t.closing:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.address), CONNECT_TIMEOUT)
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
                try:
                    context = await self._handshake(reader, writer)
                    self.t.stats.connects += 1
                    self.connected = True
                    backoff = self.t.cfg.backoff_min
                    log.info("node=%s peer=%s event=connected addr=%s:%s", self.t.cfg.node_id, self.peer, *self.address)
                    await self._pump_until_closed(reader, writer, context)
                except (OSError, FrameError, asyncio.IncompleteReadError, TimeoutError) as exc:
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
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.t.cfg.backoff_max)

    def _drop_queue(self) -> None:
        # Raft retransmits; stale queued messages only delay the fresh ones.
        if self.queue:
            for m in self.queue:
                if isinstance(m, ForwardRequest):
                    self.t._note_undelivered(m)
            self.queue.clear()
            self.t.on_unreachable(self.peer)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        cfg = self.t.cfg
        nonce = os.urandom(16)
        hello = {"hello": {"id": cfg.node_id, "to": self.peer, "nonce": nonce.hex(), "api": cfg.api_address}}
        started = time.monotonic()
        writer.write(encode_frame(cfg.secret, cfg.cluster, cfg.node_id, 0, orjson.dumps(hello)))
        await writer.drain()
        decoder = FrameDecoder(cfg.secret, cfg.cluster, context=nonce, max_frame=4096)
        frame = await asyncio.wait_for(_read_frame(reader, decoder), HELLO_TIMEOUT)
        their, api = _parse_hello(frame, expect_to=None)
        if frame.sender != self.peer:
            raise FrameError(f"dialed {self.peer} but {frame.sender} answered")
        self.t.peer_api[self.peer] = api
        self.rtt_ms = (time.monotonic() - started) * 1000
        return nonce + their

    async def _pump_until_closed(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: bytes
    ) -> None:
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
            pump.result()  # raises its error; else the transport is closing
            return
        with contextlib.suppress(asyncio.CancelledError):
            await pump  # cancelled; an error it raised meanwhile surfaces here
        if closed.exception() is None and closed.result():
            raise FrameError("peer sent data after its handshake")
        raise ConnectionResetError(f"peer closed the connection ({closed.exception() or 'end of stream'})")

    async def _pump(self, writer: asyncio.StreamWriter, context: bytes) -> None:
        cfg = self.t.cfg
        seq = 1
        while not self.t.closing:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            batch = []
            while self.queue and len(batch) < 256:
                m = self.queue.popleft()
                batch.append(encode_message(cfg.secret, cfg.cluster, seq, m, context))
                seq += 1
            writer.write(b"".join(batch))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
            self.t.stats.sent += len(batch)


async def _read_frame(reader: asyncio.StreamReader, decoder: FrameDecoder) -> Frame:
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
    if expect_to is not None and hello.get("to") != expect_to:
        raise FrameError(f"hello for {hello.get('to')!r}, this is {expect_to!r}")
    return nonce, api


class TcpTransport:
    """Sends messages to peers by id; delivers authenticated inbound messages
    to `on_message`. `on_unreachable(peer)` tells Raft to stop streaming."""

    def __init__(
        self,
        cfg: TransportConfig,
        on_message: Callable[[PeerPayload], None],
        on_unreachable: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_message = on_message
        self.on_unreachable = on_unreachable or (lambda peer: None)
        self.stats = TransportStats()
        self.closing = False
        self._peers: dict[str, _PeerSender] = {}
        self._server: asyncio.Server | None = None
        self._inbound: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._failures: dict[str, deque[float]] = {}
        self._banned_until: dict[str, float] = {}
        # Addresses that completed an authenticated handshake: several nodes
        # (a NAT, a proxy, loopback in tests) can share one, so failures
        # from them are logged and counted but never get the address refused.
        self._trusted_ips: set[str] = set()
        self._rlog = _RateLimitedLog()
        # API address each peer announced in its handshake.
        self.peer_api: dict[str, str] = {}
        # monotonic time of the last frame received from each peer.
        self.last_heard: dict[str, float] = {}
        # Forwarded writes dropped from a queue without being written (the
        # peer could not be reached): (frm, id), oldest first, bounded.
        self._undelivered: dict[tuple[str, int], None] = {}

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._accept, host, port)
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    def set_peer(self, peer: str, address: tuple[str, int]) -> None:
        """Add a peer or change the address it is dialed at."""
        if peer == self.cfg.node_id:
            return
        sender = self._peers.get(peer)
        if sender is not None and sender.address == address:
            return
        if sender is not None and sender.task is not None:
            sender.task.cancel()
        sender = _PeerSender(self, peer, address)
        sender.task = asyncio.get_running_loop().create_task(sender.run(), name=f"peer-{peer}")
        self._peers[peer] = sender

    def remove_peer(self, peer: str) -> None:
        sender = self._peers.pop(peer, None)
        if sender is not None and sender.task is not None:
            sender.task.cancel()

    def peers(self) -> dict[str, tuple[str, int]]:
        return {p: s.address for p, s in self._peers.items()}

    def peer_rtt_ms(self) -> dict[str, float | None]:
        return {p: s.rtt_ms for p, s in self._peers.items()}

    def send(self, m: PeerPayload) -> None:
        sender = self._peers.get(m.to)
        if sender is None:
            self._rlog.warning(f"unknown:{m.to}", "node=%s event=send_to_unknown_peer peer=%s", self.cfg.node_id, m.to)
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

    async def close(self) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close()
        senders = [s.task for s in self._peers.values() if s.task is not None]
        for task in senders:
            task.cancel()
        # Inbound handlers end on EOF; cancelling them would make asyncio's
        # stream protocol log the cancellation as an error.
        inbound = list(self._inbound)
        for writer in self._inbound.values():
            writer.close()
        await asyncio.gather(*senders, *inbound, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- inbound -------------------------------------------------------------

    def _note_failure(self, addr: str, code: str, detail: str) -> None:
        self.stats.dropped_bad_frame[code] = self.stats.dropped_bad_frame.get(code, 0) + 1
        self._rlog.warning(
            f"bad:{addr}:{code}",
            "node=%s event=frame_dropped from=%s reason=%s detail=%s",
            self.cfg.node_id,
            addr,
            code,
            detail,
        )
        now = time.monotonic()
        window = self._failures.setdefault(addr, deque())
        window.append(now)
        while window and now - window[0] > self.cfg.ban_seconds:
            window.popleft()
        if len(window) >= self.cfg.ban_after and addr not in self._trusted_ips:
            self._banned_until[addr] = now + self.cfg.ban_seconds
            window.clear()
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
            if self._banned_until.get(addr, 0) > time.monotonic():
                return
            await self._serve_connection(reader, writer, addr)
        except FrameError as exc:
            self._note_failure(addr, getattr(exc, "code", "bad_frame"), str(exc))
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.debug("node=%s event=inbound_closed from=%s error=%r", self.cfg.node_id, addr, exc)
        finally:
            self._inbound.pop(task, None)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, addr: str) -> None:
        cfg = self.cfg
        decoder = FrameDecoder(cfg.secret, cfg.cluster, max_frame=4096)
        hello = await asyncio.wait_for(_read_frame(reader, decoder), HELLO_TIMEOUT)
        their, api = _parse_hello(hello, expect_to=cfg.node_id)
        peer = hello.sender
        self.peer_api[peer] = api
        self._trusted_ips.add(addr)
        ours = os.urandom(16)
        reply = {"hello": {"id": cfg.node_id, "nonce": ours.hex(), "api": cfg.api_address}}
        writer.write(encode_frame(cfg.secret, cfg.cluster, cfg.node_id, 0, orjson.dumps(reply), context=their))
        await writer.drain()
        decoder = FrameDecoder(cfg.secret, cfg.cluster, context=their + ours, max_frame=cfg.max_frame)
        expected_seq = 1
        tokens = cfg.rate_limit
        last = time.monotonic()
        while not self.closing:
            data = await reader.read(1 << 16)
            if not data:
                decoder.finish()
                return
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                if frame.seq != expected_seq:
                    raise FrameError(f"sequence {frame.seq}, expected {expected_seq} (replayed or reordered)")
                expected_seq += 1
                if frame.sender != peer:
                    raise FrameError(f"frame from {frame.sender!r} on {peer!r}'s connection")
                now = time.monotonic()
                tokens = min(cfg.rate_limit, tokens + (now - last) * cfg.rate_limit)
                last = now
                if tokens < 1:
                    self.stats.dropped_rate_limited += 1
                    self._rlog.warning(f"rate:{peer}", "node=%s event=frame_rate_limited peer=%s", cfg.node_id, peer)
                    continue
                tokens -= 1
                m = frame.message()
                if m.to != cfg.node_id:
                    raise FrameError(f"message for {m.to!r} delivered to {cfg.node_id!r}")
                self.stats.received += 1
                self.last_heard[peer] = now
                self.on_message(m)
