"""The OSC bridge: UDP in (--osc-listen), UDP out (--osc-send), in the node.

In: each datagram is one gesture step. It is framed and parsed
(mesh/osc/codec.py), each message's address is looked up in the mapping
table (mesh/osc/mapping.py, built from `input_mappings/`), and the values
of the whole packet go to the live stream in one `live_set` (a bundle of 64
faders is one step). A sender's packets form one gesture until it has been
silent for --settle-ms; the live stream then settles the gesture into the
log (one history record per key, one undo step, author "osc"). A packet
that cannot be read, carries an argument its mapping cannot take, or holds
a value the state refuses changes nothing: none of its values go anywhere.

Every packet is counted by its result in `hana_osc_packets_total{result}`:
ok, bad (unreadable, wrong type tags, refused values), unmapped (no message
of it maps to a key), too_large (over 16 KiB, more than 256 messages, or
bundles nested deeper than 4) and rate_limited (over `rate` packets a
second, dropped before parsing: a flood costs little). Refusals are logged
once per result kind every 5 seconds, with how many were left out.

Out: every change of a mapped key, live (from `live_subscribe`) or
committed (from `watch`: settled gestures, PUTs, undo), is sent to every
--osc-send target at each of its addresses, scaled back into the mapping's
input range; the changes of one live update go out as one bundle. A value
equal to the one last sent at an address is not sent again. The same
changes feed OSCQuery's LISTEN (mesh/osc/oscquery.py) and VALUE.

Observers: `monitor()` gives a bounded queue of one event per packet (what
came in and what it mapped to) for `GET /v1/osc/monitor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

from mesh.errors import Gone
from mesh.osc import codec
from mesh.osc.mapping import PREFIX, Table
from mesh.state.kv import ChangeRecord, Compacted
from mesh.state.model import HanaState

log = logging.getLogger("mesh.osc")

RESULTS = ("ok", "bad", "unmapped", "too_large", "rate_limited")
AUTHOR = "osc"
# Packets a second the listener reads (and its burst): far above a desk's
# 64 faders at 120 Hz in bundles, below what would starve the node.
DEFAULT_RATE = 5_000.0
DEFAULT_BURST = 1_000.0
MAX_SOURCES = 1_024
MONITOR_QUEUE = 512
LOG_PERIOD = 5.0
RESYNC_PAUSE = 0.5


class LiveNode(Protocol):
    """What the bridge needs of a node: the API's NodeHandle with the live
    stream (mesh/api/handle.py, `live_set`/`live_end`/`live_subscribe`)."""

    @property
    def node_id(self) -> str: ...

    @property
    def kv(self) -> HanaState: ...

    def watch(self, prefix: str, since: int) -> AsyncIterator[ChangeRecord]: ...

    def live_set(self, values: dict[str, Any], *, gesture: str | None, author: str) -> None: ...

    def live_end(self, gesture: str, *, author: str) -> None: ...

    def live_subscribe(self, prefix: str) -> Any: ...


class RateLimitedLog:
    """One log line per kind per `period` seconds, with how many were left out."""

    def __init__(self, period: float = LOG_PERIOD, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self.clock = clock
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, kind: str, level: int, fmt: str, *args: Any) -> bool:
        now = self.clock()
        if now - self._last.get(kind, -math.inf) < self.period:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return False
        self._last[kind] = now
        log.log(level, fmt + " suppressed=%d", *args, self._skipped.pop(kind, 0))
        return True


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Sender:
    gesture: str
    last: float


@dataclass
class MonitorQueue:
    """One observer of incoming packets: a bounded queue; when full, the
    oldest events are dropped and counted (`dropped`)."""

    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(MONITOR_QUEUE))
    dropped: int = 0

    def put(self, event: dict[str, Any]) -> None:
        while self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)


def json_arg(value: Any) -> Any:
    """An OSC argument as JSON (blobs as hex, MIDI/timetags as lists)."""
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [json_arg(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, bridge: OscBridge) -> None:
        self.bridge = bridge

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.bridge.handle_packet(data, f"{addr[0]}:{addr[1]}")

    def error_received(self, exc: Exception) -> None:
        log.debug("node=%s event=osc_socket_error error=%r", self.bridge.node.node_id, str(exc))


class _Out(asyncio.DatagramProtocol):
    def __init__(self, bridge: OscBridge, target: str) -> None:
        self.bridge = bridge
        self.target = target

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the receiver is not running.
        self.bridge.send_errors += 1
        self.bridge.limited.log(
            "send_error",
            logging.WARNING,
            "node=%s event=osc_send_failed target=%s error=%r action=%r",
            self.bridge.node.node_id,
            self.target,
            str(exc),
            "is the OSC receiver at this --osc-send address running?",
        )


class OscBridge:
    """See the module docstring. `listen` None: no listener (send only);
    `send`: the --osc-send targets. `settle_ms`: the node's --settle-ms
    (a sender silent this long starts a new gesture). `registry`: the
    node's metrics registry (None: a private one)."""

    def __init__(
        self,
        node: LiveNode,
        *,
        listen: tuple[str, int] | None,
        send: list[tuple[str, int]] | tuple[tuple[str, int], ...] = (),
        settle_ms: float = 250.0,
        registry: CollectorRegistry | None = None,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.listen = listen
        self.send_targets = list(send)
        self.settle = settle_ms / 1000.0
        self.clock = clock
        self.bucket = TokenBucket(rate, burst, clock)
        self.limited = RateLimitedLog(clock=clock)
        self.packets = Counter(
            "hana_osc_packets",
            "OSC packets received by --osc-listen, by result",
            ["result"],
            registry=registry if registry is not None else CollectorRegistry(),
        )
        for result in RESULTS:
            self.packets.labels(result=result)
        self.counts = dict.fromkeys(RESULTS, 0)
        self.sent = 0
        self.send_errors = 0
        self.table = Table({}, {}, {})
        self.current: dict[str, Any] = {}  # mapped target -> its latest value (live or committed)
        self._last_sent: dict[str, tuple[Any, ...]] = {}  # address -> args last sent
        self._senders: OrderedDict[str, _Sender] = OrderedDict()
        self._gesture_ids = itertools.count(1)
        self._gesture_prefix = f"osc-{node.node_id}-{int(time.time() * 1000):x}"
        self._monitors: list[MonitorQueue] = []
        self._value_listeners: list[Callable[[str, bytes], None]] = []
        self._structure_listeners: list[Callable[[], None]] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._outs: list[asyncio.DatagramTransport] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.bound: tuple[str, int] | None = None
        self._load_table()
        self._load_values()

    # -- life ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.listen is not None:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Listener(self), local_addr=self.listen)
            self._transport = transport
            sockname = transport.get_extra_info("sockname")
            self.bound = (str(sockname[0]), int(sockname[1]))
            log.info(
                "node=%s event=osc_listening addr=%s:%d mappings=%d",
                self.node.node_id,
                self.bound[0],
                self.bound[1],
                len(self.table),
            )
        for host, port in self.send_targets:
            out, _ = await loop.create_datagram_endpoint(
                lambda t=f"{host}:{port}": _Out(self, t),  # type: ignore[misc]
                remote_addr=(host, port),
            )
            self._outs.append(out)
        if self.send_targets:
            log.info(
                "node=%s event=osc_sending targets=%s",
                self.node.node_id,
                ",".join(f"{h}:{p}" for h, p in self.send_targets),
            )
        self._tasks.append(asyncio.ensure_future(self._follow_log()))
        self._tasks.append(asyncio.ensure_future(self._follow_live()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for out in self._outs:
            out.close()
        self._outs.clear()

    # -- observers ----------------------------------------------------------------

    def monitor(self) -> MonitorQueue:
        q = MonitorQueue()
        self._monitors.append(q)
        return q

    def unmonitor(self, q: MonitorQueue) -> None:
        with contextlib.suppress(ValueError):
            self._monitors.remove(q)

    def on_value(self, callback: Callable[[str, bytes], None]) -> Callable[[], None]:
        """`callback(address, osc_message_bytes)` for every value change at
        a mapped address; returns the function that unregisters it."""
        self._value_listeners.append(callback)
        return lambda: self._value_listeners.remove(callback) if callback in self._value_listeners else None

    def on_structure(self, callback: Callable[[], None]) -> Callable[[], None]:
        """`callback()` whenever the mapping table changes."""
        self._structure_listeners.append(callback)
        return lambda: self._structure_listeners.remove(callback) if callback in self._structure_listeners else None

    def status(self) -> dict[str, Any]:
        return {
            "listen": f"{self.bound[0]}:{self.bound[1]}" if self.bound else None,
            "send": [f"{h}:{p}" for h, p in self.send_targets],
            "mappings": [
                {
                    "key": m.name,
                    "address": m.address,
                    "target": m.target,
                    "type": m.tag,
                    "value": self.current.get(m.target),
                }
                for ms in self.table.by_address.values()
                for m in ms
            ],
            "refused_mappings": dict(self.table.refused),
            "packets": dict(self.counts),
            "sent": self.sent,
            "send_errors": self.send_errors,
        }

    # -- in -----------------------------------------------------------------------

    def handle_packet(self, data: bytes, source: str) -> str:
        """Read one datagram from `source` ("host:port"); return its result
        label. Never raises: whatever is wrong with the packet is counted,
        logged (rate-limited) and changes nothing."""
        if not self.bucket.take():
            return self._count(source, "rate_limited", f"over {self.bucket.rate:g} packets/s", len(data))
        try:
            messages = codec.parse(data)
        except codec.BadPacket as exc:
            return self._count(source, exc.result, exc.reason, len(data))
        values: dict[str, Any] = {}
        shown: list[dict[str, Any]] = []
        for msg in messages:
            maps_to: dict[str, Any] = {}
            for m in self.table.by_address.get(msg.address, ()):
                try:
                    maps_to[m.target] = m.to_value(msg.args)
                except ValueError as exc:
                    return self._count(source, "bad", str(exc), len(data), messages)
            values.update(maps_to)
            shown.append({"address": msg.address, "args": json_arg(list(msg.args)), "maps_to": maps_to or None})
        if not values:
            return self._count(source, "unmapped", "no mapped address", len(data), messages)
        gesture = self._gesture(source)
        try:
            self.node.live_set(values, gesture=gesture, author=AUTHOR)
        except Exception as exc:  # StateError and friends: the state refuses a value
            return self._count(source, "bad", f"refused: {exc}", len(data), messages)
        self.counts["ok"] += 1
        self.packets.labels(result="ok").inc()
        if self._monitors:
            self._emit({"from": source, "result": "ok", "gesture": gesture, "messages": shown})
        return "ok"

    def _gesture(self, source: str) -> str:
        now = self.clock()
        sender = self._senders.get(source)
        if sender is None or now - sender.last >= self.settle:
            sender = _Sender(f"{self._gesture_prefix}-{next(self._gesture_ids)}", now)
            self._senders[source] = sender
            while len(self._senders) > MAX_SOURCES:
                self._senders.popitem(last=False)
        sender.last = now
        self._senders.move_to_end(source)
        return sender.gesture

    def _count(
        self, source: str, result: str, reason: str, size: int, messages: list[codec.Message] | None = None
    ) -> str:
        self.counts[result] += 1
        self.packets.labels(result=result).inc()
        level = logging.INFO if result == "unmapped" else logging.WARNING
        first = messages[0].address if messages else "-"
        self.limited.log(
            result,
            level,
            "node=%s event=osc_packet_dropped result=%s from=%s bytes=%d address=%s reason=%r",
            self.node.node_id,
            result,
            source,
            size,
            first,
            reason,
        )
        if self._monitors:
            event: dict[str, Any] = {"from": source, "result": result, "reason": reason, "bytes": size}
            if messages:
                event["messages"] = [
                    {"address": m.address, "args": json_arg(list(m.args)), "maps_to": None} for m in messages[:16]
                ]
            self._emit(event)
        return result

    def _emit(self, event: dict[str, Any]) -> None:
        event = {"type": "osc", "time": int(time.time() * 1000), **event}
        for q in self._monitors:
            q.put(dict(event, dropped=q.dropped) if q.dropped else event)

    # -- out ----------------------------------------------------------------------

    def _load_table(self) -> None:
        old = self.table
        self.table = Table.build(((k, kv.value) for k, kv in self.node.kv.range(PREFIX)), self.node.kv.registry)
        for name, why in self.table.refused.items():
            if old.refused.get(name) != why:
                log.warning(
                    "node=%s event=osc_mapping_refused key=%s reason=%r action=%r",
                    self.node.node_id,
                    name,
                    why,
                    "fix the mapping with hana-node put (see docs/api.md: OSC)",
                )
        if (old.by_address, old.by_target) != (self.table.by_address, self.table.by_target):
            for cb in list(self._structure_listeners):
                cb()

    def _load_values(self) -> None:
        for target in self.table.by_target:
            kv = self.node.kv.get(target)
            if kv is not None:
                self.current[target] = kv.value

    def changed(self, values: dict[str, Any]) -> None:
        """Mapped keys took these values (live or committed): remember them,
        send them to --osc-send targets and LISTENing OSCQuery clients."""
        dgrams: list[bytes] = []
        for key, value in values.items():
            mappings = self.table.by_target.get(key)
            if not mappings:
                continue
            self.current[key] = value
            for m in mappings:
                args = m.to_osc(value)
                if args is None:
                    continue
                flat = tuple(a for pair in args for a in pair)
                if self._last_sent.get(m.address) == flat:
                    continue
                self._last_sent[m.address] = flat
                dgram = codec.encode_message(m.address, args)
                dgrams.append(dgram)
                for cb in list(self._value_listeners):
                    cb(m.address, dgram)
        if not dgrams or not self._outs:
            return
        packets = (
            [dgrams[0]]
            if len(dgrams) == 1
            else [codec.encode_bundle(dgrams[i : i + 64]) for i in range(0, len(dgrams), 64)]
        )
        for out in self._outs:
            for p in packets:
                out.sendto(p)
                self.sent += 1

    async def _follow_log(self) -> None:
        """Committed changes: mapping edits rebuild the table; changes of
        mapped keys go out. Resumes from the current state if it falls
        behind the retained history."""
        while True:
            since = self.node.kv.revision + 1
            try:
                async for rec in self.node.watch("", since):
                    if rec.key.startswith(PREFIX):
                        self._load_table()
                        self._load_values()
                        continue
                    if rec.key in self.table.by_target:
                        if rec.op == "delete":
                            self.current.pop(rec.key, None)
                        else:
                            self.changed({rec.key: rec.value})
            except (Gone, Compacted) as exc:
                log.warning("node=%s event=osc_watch_resync reason=%r", self.node.node_id, str(exc))
                self._load_table()
                self._load_values()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("node=%s event=osc_watch_failed error=%r", self.node.node_id, repr(exc))
            await asyncio.sleep(RESYNC_PAUSE)

    async def _follow_live(self) -> None:
        """Live values of mapped keys (from any node) go out as they come."""
        while True:
            sub = self.node.live_subscribe("")
            try:
                async for update in sub:
                    self.changed(update.values)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("node=%s event=osc_live_failed error=%r", self.node.node_id, repr(exc))
            finally:
                sub.close()
            await asyncio.sleep(RESYNC_PAUSE)
