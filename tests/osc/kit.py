"""Helpers of the OSC tests: a fake of the node's live stream for unit tests
(the end-to-end tests run the real one), an OSC receiver (python-osc's
asyncio server), and packet builders."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_server import AsyncIOOSCUDPServer

from mesh.state.components import DEFAULT_REGISTRY, Registry
from mesh.state.kv import ChangeRecord
from mesh.state.model import HanaState
from tests.state.helpers import Driver


def message(address: str, *args: Any) -> bytes:
    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a)
    return bytes(b.build().dgram)


def bundle(*dgrams: bytes) -> bytes:
    from pythonosc.osc_message import OscMessage

    b = OscBundleBuilder(IMMEDIATELY)
    for d in dgrams:
        b.add_content(OscMessage(d))
    return bytes(b.build().dgram)


def fader(name: str, target: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return f"input_mappings/{name}", {"kind": "osc", "address": f"/{name}", "target": target, **extra}


@dataclass(frozen=True)
class FakeUpdate:
    values: dict[str, Any]
    gesture: str | None
    source: str
    seq: int


class FakeSubscription:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.queue: asyncio.Queue[FakeUpdate] = asyncio.Queue()
        self.closed = False

    def __aiter__(self) -> FakeSubscription:
        return self

    async def __anext__(self) -> FakeUpdate:
        return await self.queue.get()

    def close(self) -> None:
        self.closed = True


class FakeLiveNode:
    """A node with a real state machine and watch, and a recording fake of
    `live_set` / `live_end` / `live_subscribe` (validating like a write)."""

    def __init__(self, node_id: str = "n1", registry: Registry = DEFAULT_REGISTRY) -> None:
        self.node_id = node_id
        self.cluster = "hana"
        self.kv = HanaState(registry)
        self.driver = Driver(self.kv, node=node_id)
        self.sets: list[tuple[dict[str, Any], str | None, str]] = []
        self.ends: list[str] = []
        self.subs: list[FakeSubscription] = []
        self._watchers: list[asyncio.Queue[ChangeRecord]] = []
        self._seq = itertools.count(1)
        self.set_event = asyncio.Event()

    def put(self, key: str, value: Any, author: str = "alice") -> None:
        before = self.kv.revision
        result = self.driver("put", author=author, key=key, value=value)
        assert "error" not in result, result
        for rec in self.kv.changes_since(before + 1):
            for q in self._watchers:
                q.put_nowait(rec)

    async def watch(self, prefix: str, since: int) -> AsyncIterator[ChangeRecord]:
        q: asyncio.Queue[ChangeRecord] = asyncio.Queue()
        self._watchers.append(q)
        try:
            for rec in self.kv.changes_since(since, prefix):
                yield rec
            while True:
                rec = await q.get()
                if rec.key.startswith(prefix) and rec.revision >= since:
                    yield rec
        finally:
            self._watchers.remove(q)

    def live_set(self, values: dict[str, Any], *, gesture: str | None, author: str) -> None:
        for key, value in values.items():
            self.kv.registry.validate(key, value)
        self.sets.append((dict(values), gesture, author))
        self.set_event.set()
        self.publish(values, gesture)

    def publish(self, values: dict[str, Any], gesture: str | None = None, source: str | None = None) -> None:
        update = FakeUpdate(dict(values), gesture, source or self.node_id, next(self._seq))
        for sub in self.subs:
            if not sub.closed and any(k.startswith(sub.prefix) for k in values):
                sub.queue.put_nowait(update)

    def live_end(self, gesture: str, *, author: str) -> None:
        self.ends.append(gesture)

    def live_subscribe(self, prefix: str) -> FakeSubscription:
        sub = FakeSubscription(prefix)
        self.subs.append(sub)
        return sub


class Receiver:
    """An OSC server (python-osc, asyncio) on 127.0.0.1, OS-chosen port,
    recording (address, args) in order."""

    def __init__(self) -> None:
        self.got: list[tuple[str, tuple[Any, ...]]] = []
        self.event = asyncio.Event()
        self.transport: Any = None
        self.port = 0

    async def start(self) -> Receiver:
        d = Dispatcher()
        d.set_default_handler(self._on)
        server = AsyncIOOSCUDPServer(("127.0.0.1", 0), d, asyncio.get_running_loop())
        self.transport, _ = await server.create_serve_endpoint()
        self.port = int(self.transport.get_extra_info("sockname")[1])
        return self

    def _on(self, address: str, *args: Any) -> None:
        self.got.append((address, args))
        self.event.set()

    async def wait_for(self, pred: Any, timeout: float = 5.0) -> list[tuple[str, tuple[Any, ...]]]:
        async with asyncio.timeout(timeout):
            while not pred(self.got):
                self.event.clear()
                await self.event.wait()
        return self.got

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def until(pred: Any, timeout: float = 5.0, step: float = 0.01) -> None:
    """Poll `pred()` until true (fails the test after `timeout`)."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(step)


def _nested(depth: int) -> bytes:
    import struct

    packet = message("/fader1", 1.0)
    for _ in range(depth):
        packet = b"#bundle\x00" + b"\x00" * 7 + b"\x01" + struct.pack(">i", len(packet)) + packet
    return packet


# One of each kind of bad packet the issue lists, with its result label
# (the mappings /fader1 and /fader2 exist; /unmapped does not).
BAD_PACKETS: dict[str, tuple[bytes, str]] = {
    "truncated": (message("/fader1", 0.5)[:-4], "bad"),
    "truncated mid-word": (message("/fader1", 0.5)[:-1], "bad"),
    "wrong type tags": (b"/fader1\x00,x\x00\x00\x00\x00\x00\x01", "bad"),
    "a string for a fader": (message("/fader1", "loud"), "bad"),
    "no argument": (message("/fader1"), "bad"),
    "unmapped address": (message("/unmapped", 0.5), "unmapped"),
    "huge bundle": (bundle(*[message("/fader1", 0.5)] * 300), "too_large"),
    "huge datagram": (message("/fader1", "x" * 20_000), "too_large"),
    "deeply nested bundle": (_nested(6), "too_large"),
    "not OSC at all": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "bad"),
}
