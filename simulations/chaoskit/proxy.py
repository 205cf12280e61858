"""A fault-injecting TCP proxy on loopback for chaos runs.

The chaos runner puts one proxy *link* on every ordered pair of mesh nodes.
A node dials one outbound TCP connection per peer and only ever sends on it
(the peer answers a handshake on it and nothing else), so the connection
that node src dials to dst carries exactly src's traffic to dst. Giving
each direction its own link therefore makes every direction a separate
fault domain: blocking (src, dst) cuts src -> dst and leaves dst -> src,
which runs over dst's own connection through link (dst, src), untouched.
Asymmetric partitions, one-way latency and one-way loss are then just
faults on single links. The runner starts each node with `--peers`
pointing at the ports `add_link` returned, so node src dials link
(src, dst) and the proxy dials dst's real raft port.

Faults act on the src -> dst byte stream, chunk by chunk (a chunk is what
one read from the dialer returned: often several frames). The reverse
direction (dst's handshake answer) is forwarded as is. `on_bytes`, when
set, sees every chunk of both directions (a wire capture).

- delay/jitter: a chunk is forwarded `delay + uniform(0, jitter)` seconds
  after it was read, but never before an earlier chunk of its connection
  (due time = max(previous due, now + delay + ...)): TCP never reorders.
- loss: TCP cannot lose bytes without corrupting the framed stream, so loss
  is modelled the way an application sees it over TCP. With probability
  `loss` a chunk is held back for a retransmission timeout (0.2 s, doubling
  on consecutive losses on the same connection up to 1.6 s, back to 0.2 s
  after a chunk that got through) before it is forwarded, order preserved.
  With probability `loss / 20` per chunk (a share of those losses) the
  connection is reset instead, both sides closed and the chunk dropped:
  a stalled connection that the sender gave up on. One draw decides:
  `r < loss/20` resets, `r < loss` holds, anything else passes.
- block: every open connection of the link is aborted at once (both
  sides); new connections are accepted but blackholed: no connection to the
  target, nothing forwarded, nothing answered (what the dialer sends is read
  and discarded, so a dialer that gives up frees its socket). That is a
  pulled cable as the dialer sees it (its handshake times out) rather than a
  refused connection. Unblocking (or `close()`) closes the blackholed ones.

Capturing hellos (for the hostile neighbours of `--hostile`, hostile.py):
with `capture_hellos` set, the first frame of every connection a link
forwards (a node's authenticated hello to the peer it dials) is kept in
`hellos[(src, dst)]`, the latest per link, as the bytes on the wire. That
is all an eavesdropper on the venue network gets; replaying them needs no
secret. Only a first chunk holding a whole frame is kept (on loopback the
hello arrives in one read; the dialer sends nothing else until answered).

Randomness comes only from generators owned by the proxy: each link has a
`random.Random` seeded from (proxy seed, src, dst) (`link_rng`), drawn once
per chunk for jitter (only when jitter > 0) and then once for loss (only
when loss > 0; `chunk_fate`). So the faults of a link depend on the seed and
on the sequence of chunks that link saw, not on what other links did: a run
is replayable from its seed as far as the proxy is concerned (the chunking
itself is up to the OS).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import struct
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# Bytes per read from either side.
CHUNK = 65536
# Bytes waiting in a connection's delay queue before the proxy stops reading
# from the dialer (TCP flow control, so a delayed link cannot eat memory).
MAX_QUEUED = 1 << 20
CONNECT_TIMEOUT = 3.0
# A reset is this share of the losses (probability loss / RESET_SHARE).
RESET_SHARE = 20
# Consecutive losses beyond this do not double the timeout any further.
_MAX_DOUBLINGS = 16

# A peer frame's length prefix and MAC (mesh/transport/codec.py), for
# capturing hellos without importing the mesh.
_FRAME_LEN = struct.Struct(">I")
_FRAME_MAC = 32

# Errors that end one connection and nothing else.
_CONN_ERRORS = (ConnectionError, OSError, asyncio.IncompleteReadError)


class Fate(enum.Enum):
    """What the loss model does to one chunk."""

    PASS = "pass"
    HOLD = "hold"
    RESET = "reset"


def link_rng(seed: int, src: str, dst: str) -> random.Random:
    """The generator of link (src, dst) of a proxy seeded with `seed`."""
    return random.Random(f"{seed}:{src}->{dst}")


def chunk_fate(rng: random.Random, loss: float) -> Fate:
    """Draws one chunk's fate at loss probability `loss` (no draw when 0)."""
    if loss <= 0.0:
        return Fate.PASS
    r = rng.random()
    if r < loss / RESET_SHARE:
        return Fate.RESET
    if r < loss:
        return Fate.HOLD
    return Fate.PASS


def _new_stats() -> dict[str, int]:
    # connections: accepted (blackholed ones included); bytes: forwarded
    # src -> dst; resets: connections reset by the loss model; blackholed:
    # connections accepted while blocked; blackholed_bytes: what they sent;
    # held: chunks held back by the loss model.
    return {"connections": 0, "bytes": 0, "resets": 0, "blackholed": 0, "blackholed_bytes": 0, "held": 0}


@dataclass(slots=True, eq=False)
class _Link:
    src: str
    dst: str
    target: tuple[str, int]
    rng: random.Random
    server: asyncio.Server | None = None
    port: int = 0
    blocked: bool = False
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    conns: set[_Conn] = field(default_factory=set)
    holes: set[_Conn] = field(default_factory=set)
    stats: dict[str, int] = field(default_factory=_new_stats)


class _Conn:
    """One dialer connection through a link, and its connection to the target."""

    __slots__ = (
        "client_r",
        "client_w",
        "closed",
        "last_due",
        "link",
        "losses",
        "queue",
        "queued",
        "room",
        "tasks",
        "up_r",
        "up_w",
        "wake",
    )

    def __init__(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.link = link
        self.client_r = reader
        self.client_w = writer
        self.up_r: asyncio.StreamReader | None = None
        self.up_w: asyncio.StreamWriter | None = None
        # (due time, chunk); chunk None is the dialer's end of stream.
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued = 0
        self.last_due = 0.0
        self.losses = 0
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.closed = False
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Closes both sides at once, discarding anything not yet sent."""
        if self.closed:
            return
        self.closed = True
        self.client_w.transport.abort()
        if self.up_w is not None:
            self.up_w.transport.abort()
        self.queue.clear()
        self.room.set()
        try:
            current = asyncio.current_task()
        except RuntimeError:
            current = None
        for task in self.tasks:
            if task is not current:
                task.cancel()


class FaultProxy:
    """Proxy links (src -> dst) on loopback with per-link faults."""

    # Retransmission timeout of a held-back chunk: doubles on consecutive
    # losses of a connection up to rto_max.
    rto_min: float = 0.2
    rto_max: float = 1.6

    def __init__(self, seed: int, host: str = "127.0.0.1") -> None:
        self.seed = seed
        self.host = host
        self._links: dict[tuple[str, str], _Link] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # Unexpected errors (bugs of the proxy, not dropped connections): a
        # run with any cannot trust that its faults were applied.
        self.errors: list[str] = []
        # The first frame of each link's latest connection (see the module
        # docstring), kept only while capture_hellos is set.
        self.capture_hellos = False
        self.hellos: dict[tuple[str, str], bytes] = {}
        # Wire capture (tests/integration/test_tls.py: no plaintext on a
        # link): called with (src, dst, "up" or "down", bytes) for every
        # chunk read from either side, before any fault acts on it.
        self.on_bytes: Callable[[str, str, str, bytes], None] | None = None

    def _proxy_error(self, link: _Link, exc: Exception) -> None:
        self.errors.append(f"{link.src}->{link.dst}: {exc!r}")

    # -- links -----------------------------------------------------------

    async def add_link(self, src: str, dst: str, target: tuple[str, int]) -> int:
        """Listens for src's connections to dst on an OS-chosen port of `host`
        and forwards them to `target`; returns the port."""
        if self._closed:
            raise RuntimeError("proxy is closed")
        if (src, dst) in self._links:
            raise ValueError(f"link {src}->{dst} exists")
        link = _Link(src, dst, target, link_rng(self.seed, src, dst))

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._accepted(link, reader, writer)

        link.server = await asyncio.start_server(accepted, self.host, 0)
        link.port = link.server.sockets[0].getsockname()[1]
        self._links[(src, dst)] = link
        log.debug("event=proxy_link_added src=%s dst=%s port=%d target=%s:%d", src, dst, link.port, *target)
        return link.port

    def _link(self, src: str, dst: str) -> _Link:
        try:
            return self._links[(src, dst)]
        except KeyError:
            raise KeyError(f"no link {src}->{dst}") from None

    def set_target(self, src: str, dst: str, target: tuple[str, int]) -> None:
        """New connections of the link go to `target` (open ones stay)."""
        self._link(src, dst).target = target

    def block(self, src: str, dst: str) -> None:
        link = self._link(src, dst)
        link.blocked = True
        for conn in list(link.conns):
            conn.abort()
        log.debug("event=proxy_block src=%s dst=%s", src, dst)

    def unblock(self, src: str, dst: str) -> None:
        link = self._link(src, dst)
        link.blocked = False
        for conn in list(link.holes):
            conn.abort()
        log.debug("event=proxy_unblock src=%s dst=%s", src, dst)

    def set_delay(self, src: str, dst: str, delay: float, jitter: float = 0.0) -> None:
        if delay < 0 or jitter < 0:
            raise ValueError("delay and jitter must be >= 0")
        link = self._link(src, dst)
        link.delay = delay
        link.jitter = jitter

    def set_loss(self, src: str, dst: str, loss: float) -> None:
        if not 0.0 <= loss <= 1.0:
            raise ValueError("loss must be within 0..1")
        self._link(src, dst).loss = loss

    def heal(self, src: str, dst: str) -> None:
        self.unblock(src, dst)
        self.set_delay(src, dst, 0.0)
        self.set_loss(src, dst, 0.0)

    def heal_all(self) -> None:
        for src, dst in self._links:
            self.heal(src, dst)

    def stats(self) -> dict[tuple[str, str], dict[str, int]]:
        return {key: dict(link.stats) for key, link in self._links.items()}

    async def close(self) -> None:
        """Stops listening, aborts every connection, ends every task."""
        self._closed = True
        for link in self._links.values():
            if link.server is not None:
                link.server.close()
            for conn in list(link.conns) + list(link.holes):
                conn.abort()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for res in results:
                if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                    log.error("event=proxy_task_failed error=%r", res, exc_info=res)
                    self.errors.append(f"task failed: {res!r}")
        for link in self._links.values():
            if link.server is not None:
                await link.server.wait_closed()

    # -- connections -----------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _accepted(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed:
            writer.transport.abort()
            return
        conn = _Conn(link, reader, writer)
        link.stats["connections"] += 1
        name = f"proxy {link.src}->{link.dst}"
        if link.blocked:
            link.holes.add(conn)
            link.stats["blackholed"] += 1
            conn.tasks.append(self._spawn(self._blackhole(conn), name + " blackholed"))
        else:
            link.conns.add(conn)
            self._spawn(self._serve(conn), name)

    def _log_closed(self, conn: _Conn, exc: BaseException) -> None:
        log.debug("event=proxy_conn_closed src=%s dst=%s error=%r", conn.link.src, conn.link.dst, exc)

    async def _blackhole(self, conn: _Conn) -> None:
        link = conn.link
        log.debug("event=proxy_blackholed src=%s dst=%s", link.src, link.dst)
        try:
            while data := await conn.client_r.read(CHUNK):
                link.stats["blackholed_bytes"] += len(data)
        except _CONN_ERRORS as exc:
            self._log_closed(conn, exc)
        except Exception as exc:
            log.exception("event=proxy_error src=%s dst=%s", link.src, link.dst)
            self._proxy_error(link, exc)
        finally:
            link.holes.discard(conn)
            conn.abort()

    async def _serve(self, conn: _Conn) -> None:
        """Connects to the target, then pumps dialer -> target here (through
        the delay queue and its writer task) and target -> dialer in a task."""
        link = conn.link
        graceful = False
        try:
            if conn.closed:
                return
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*link.target), CONNECT_TIMEOUT)
            except (*_CONN_ERRORS, TimeoutError) as exc:
                log.debug(
                    "event=proxy_target_unreachable src=%s dst=%s target=%s:%d error=%r",
                    link.src,
                    link.dst,
                    *link.target,
                    exc,
                )
                return
            conn.up_r, conn.up_w = up_r, up_w
            if conn.closed:  # blocked or closed while connecting
                up_w.transport.abort()
                return
            name = f"proxy {link.src}->{link.dst}"
            conn.tasks.append(self._spawn(self._write_loop(conn), name + " writer"))
            conn.tasks.append(self._spawn(self._pump_down(conn), name + " answers"))
            await self._pump_up(conn)
            if not conn.closed:
                await asyncio.wait(conn.tasks)
                graceful = not conn.closed
        except _CONN_ERRORS as exc:
            self._log_closed(conn, exc)
        except Exception as exc:
            log.exception("event=proxy_error src=%s dst=%s", link.src, link.dst)
            self._proxy_error(link, exc)
        finally:
            link.conns.discard(conn)
            try:
                if graceful:
                    await self._close_gracefully(conn)
            finally:
                conn.abort()
                if conn.tasks:
                    await asyncio.gather(*conn.tasks, return_exceptions=True)

    async def _close_gracefully(self, conn: _Conn) -> None:
        for writer in (conn.client_w, conn.up_w):
            if writer is None:
                continue
            writer.close()
            try:
                await writer.wait_closed()
            except _CONN_ERRORS as exc:
                self._log_closed(conn, exc)

    async def _pump_up(self, conn: _Conn) -> None:
        """Dialer -> target: straight through while the link has no delay or
        loss and nothing is queued, else through the delay queue."""
        link = conn.link
        reader = conn.client_r
        up = conn.up_w
        assert up is not None
        queue = conn.queue
        loop = asyncio.get_running_loop()
        first = True
        while True:
            data = await reader.read(CHUNK)
            if not data or conn.closed:
                break
            if self.on_bytes is not None:
                self.on_bytes(link.src, link.dst, "up", data)
            if first and self.capture_hellos:
                self._capture(link, data)
            first = False
            if not queue and not (link.delay or link.jitter or link.loss):
                up.write(data)
                link.stats["bytes"] += len(data)
                await up.drain()
                continue
            now = loop.time()
            due = now + link.delay
            if link.jitter:
                due += link.rng.uniform(0.0, link.jitter)
            if link.loss:
                fate = chunk_fate(link.rng, link.loss)
                if fate is Fate.RESET:
                    link.stats["resets"] += 1
                    log.debug("event=proxy_conn_reset src=%s dst=%s reason=loss", link.src, link.dst)
                    conn.abort()
                    return
                if fate is Fate.HOLD:
                    due += min(self.rto_min * 2 ** min(conn.losses, _MAX_DOUBLINGS), self.rto_max)
                    conn.losses += 1
                    link.stats["held"] += 1
                else:
                    conn.losses = 0
            due = max(due, conn.last_due)
            conn.last_due = due
            queue.append((due, data))
            conn.queued += len(data)
            conn.wake.set()
            if conn.queued > MAX_QUEUED:
                conn.room.clear()
                await conn.room.wait()
        if not conn.closed:
            # End of stream from the dialer: after everything queued.
            queue.append((max(loop.time(), conn.last_due), None))
            conn.wake.set()

    def _capture(self, link: _Link, chunk: bytes) -> None:
        """Keep the first frame of a connection (u32 body length, body, a
        32-byte MAC: mesh/transport/codec.py) if the chunk holds all of it."""
        if len(chunk) < _FRAME_LEN.size:
            return
        (body,) = _FRAME_LEN.unpack_from(chunk)
        end = _FRAME_LEN.size + body + _FRAME_MAC
        if len(chunk) >= end:
            self.hellos[(link.src, link.dst)] = bytes(chunk[:end])

    async def _write_loop(self, conn: _Conn) -> None:
        """Writes queued chunks to the target once due, in order."""
        link = conn.link
        up = conn.up_w
        assert up is not None
        queue = conn.queue
        loop = asyncio.get_running_loop()
        try:
            while not conn.closed:
                if not queue:
                    conn.wake.clear()
                    await conn.wake.wait()
                    continue
                wait = queue[0][0] - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                now = loop.time()
                parts: list[bytes] = []
                eof = False
                while queue and queue[0][0] <= now:
                    data = queue.popleft()[1]
                    if data is None:
                        eof = True
                        break
                    parts.append(data)
                if parts:
                    blob = parts[0] if len(parts) == 1 else b"".join(parts)
                    up.write(blob)
                    conn.queued -= len(blob)
                    link.stats["bytes"] += len(blob)
                    if conn.queued <= MAX_QUEUED:
                        conn.room.set()
                if eof:
                    if up.can_write_eof():
                        up.write_eof()
                    await up.drain()
                    return
                await up.drain()
        except _CONN_ERRORS as exc:
            self._log_closed(conn, exc)
            conn.abort()
        except Exception as exc:
            log.exception("event=proxy_error src=%s dst=%s", link.src, link.dst)
            self._proxy_error(link, exc)
            conn.abort()

    async def _pump_down(self, conn: _Conn) -> None:
        """Target -> dialer (the handshake answer), unchanged."""
        link = conn.link
        up_r = conn.up_r
        assert up_r is not None
        client = conn.client_w
        try:
            while data := await up_r.read(CHUNK):
                if conn.closed:
                    return
                if self.on_bytes is not None:
                    self.on_bytes(link.src, link.dst, "down", data)
                client.write(data)
                await client.drain()
            if not conn.closed and client.can_write_eof():
                client.write_eof()
        except _CONN_ERRORS as exc:
            self._log_closed(conn, exc)
            conn.abort()
        except Exception as exc:
            log.exception("event=proxy_error src=%s dst=%s", link.src, link.dst)
            self._proxy_error(link, exc)
            conn.abort()
