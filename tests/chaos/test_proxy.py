"""The chaos proxy forwards bytes unchanged and in order, and injects its
faults (block, delay, loss) on one direction only, replayably from its seed.

Every test runs its own sink/echo server on 127.0.0.1 port 0. Nothing waits
by sleeping: `until` polls a condition with a deadline, and timing checks
are lower bounds only (data cannot arrive before its delay)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from mesh.transport.codec import encode_frame
from simulations.chaoskit.proxy import Fate, FaultProxy, chunk_fate, link_rng

HOST = "127.0.0.1"
# Float rounding of loop.time() sums (uvloop's clock counts milliseconds):
# a lower bound is checked as >= bound - EPS, which still cannot flake.
EPS = 1e-6


async def until(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Polls `cond` until it holds; fails after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


@dataclass
class Rec:
    """What one connection brought to a server."""

    data: bytearray = field(default_factory=bytearray)
    # (arrival time, total bytes so far) per read.
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    eof: bool = False


class Server:
    """Records each connection's bytes; echoes them back if `echo`."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.conns: list[Rec] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._accepted, HOST, 0)
        return HOST, self._server.sockets[0].getsockname()[1]

    def received(self) -> bytes:
        return b"".join(bytes(rec.data) for rec in self.conns)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec = Rec()
        self.conns.append(rec)
        self._writers.append(writer)
        task = asyncio.get_running_loop().create_task(self._handle(rec, reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, rec: Rec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(65536):
                rec.data += data
                rec.arrivals.append((loop.time(), len(rec.data)))
                if self.echo:
                    writer.write(data)
                    await writer.drain()
        except ConnectionError:
            pass  # the proxy reset it: rec.eof tells the test
        finally:
            rec.eof = True
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[tuple[Server, tuple[str, int]]]]]:
    started: list[Server] = []

    async def start(echo: bool = False) -> tuple[Server, tuple[str, int]]:
        server = Server(echo)
        started.append(server)
        return server, await server.start()

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    p = FaultProxy(seed=42)
    yield p
    await p.close()


async def dial(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port)


async def sees_end(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True once the connection ended (EOF or reset) with no data on it."""
    try:
        return await asyncio.wait_for(reader.read(65536), timeout) == b""
    except ConnectionError:
        return True


async def test_bytes_pass_unchanged_and_in_order_both_ways(proxy: FaultProxy, servers) -> None:
    server, target = await servers(echo=True)
    port = await proxy.add_link("a", "b", target)
    rng = random.Random(1)
    payload = rng.randbytes(1 << 20)
    reader, writer = await dial(port)

    async def send() -> None:
        pos = 0
        while pos < len(payload):
            n = rng.randint(1, 4096)
            writer.write(payload[pos : pos + n])
            pos += n
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    echoed = await asyncio.wait_for(reader.read(-1), 10)  # until the server's EOF, passed on
    await sender
    writer.close()
    assert bytes(server.conns[0].data) == payload
    assert echoed == payload
    st = proxy.stats()[("a", "b")]
    assert st["bytes"] == len(payload) and st["connections"] == 1 and st["resets"] == 0


async def test_block_cuts_open_connections_and_blackholes_new_ones(proxy: FaultProxy, servers) -> None:
    server, target = await servers()
    port = await proxy.add_link("a", "b", target)
    r1, w1 = await dial(port)
    w1.write(b"hello")
    await until(lambda: server.received() == b"hello", "first connection's data")

    proxy.block("a", "b")
    assert await sees_end(r1), "the open connection was not closed"
    await until(lambda: server.conns[0].eof, "the target side closed as well")

    r2, w2 = await dial(port)  # accepted, but blackholed
    w2.write(b"secret")
    await w2.drain()
    # Causality: the proxy has read (and dropped) the bytes; nothing went on.
    await until(lambda: proxy.stats()[("a", "b")]["blackholed_bytes"] == 6, "the proxy to read the blackholed bytes")
    assert len(server.conns) == 1 and server.received() == b"hello"
    assert proxy.stats()[("a", "b")]["blackholed"] == 1

    proxy.unblock("a", "b")
    assert await sees_end(r2), "the blackholed connection was not closed on unblock"
    _r3, w3 = await dial(port)
    w3.write(b"again")
    await until(lambda: server.received() == b"helloagain", "a new connection after unblock")
    assert b"secret" not in server.received()
    for w in (w1, w2, w3):
        w.close()


async def test_block_is_one_direction_only(proxy: FaultProxy, servers) -> None:
    server_a, target_a = await servers()
    server_b, target_b = await servers()
    port_ab = await proxy.add_link("a", "b", target_b)
    port_ba = await proxy.add_link("b", "a", target_a)
    r_ab, w_ab = await dial(port_ab)
    _r_ba, w_ba = await dial(port_ba)
    w_ab.write(b"x")
    w_ba.write(b"y")
    await until(lambda: server_b.received() == b"x" and server_a.received() == b"y", "both directions")

    proxy.block("a", "b")
    assert await sees_end(r_ab)
    w_ba.write(b"z")
    await until(lambda: server_a.received() == b"yz", "b -> a still open")
    _, w_ba2 = await dial(port_ba)
    w_ba2.write(b"!")
    await until(lambda: server_a.received() == b"yz!", "a new b -> a connection")
    assert not proxy.stats()[("b", "a")]["blackholed"]
    assert server_b.received() == b"x"
    for w in (w_ab, w_ba, w_ba2):
        w.close()


async def test_delay_is_a_lower_bound(proxy: FaultProxy, servers) -> None:
    server, target = await servers()
    port = await proxy.add_link("a", "b", target)
    proxy.set_delay("a", "b", 0.3)
    _, writer = await dial(port)
    loop = asyncio.get_running_loop()
    sent = loop.time()
    writer.write(b"late")
    await until(lambda: server.received() == b"late", "the delayed chunk")
    assert server.conns[0].arrivals[0][0] - sent >= 0.3 - EPS
    writer.close()


async def test_jitter_keeps_order(proxy: FaultProxy, servers) -> None:
    server, target = await servers()
    port = await proxy.add_link("a", "b", target)
    proxy.set_delay("a", "b", 0.005, jitter=0.05)
    _, writer = await dial(port)
    records = [b"%06d\n" % i for i in range(400)]
    for rec in records:
        writer.write(rec)
        await writer.drain()
    writer.write_eof()
    await until(lambda: bool(server.conns) and server.conns[0].eof, "the end of the stream")
    assert bytes(server.conns[0].data) == b"".join(records)
    writer.close()


async def test_loss_keeps_the_stream_intact_and_replays_from_the_seed(servers) -> None:
    """One chunk at a time (each one read by the proxy on its own), so the
    proxy draws exactly one loss decision per send: its stats must match the
    decisions replayed from the same seed. A reset loses the connection and
    the chunk: reconnect and send it again, as a node would."""
    seed, loss = 7, 0.5
    proxy = FaultProxy(seed)
    proxy.rto_min, proxy.rto_max = 0.002, 0.016  # keep the test short
    try:
        server, target = await servers()
        port = await proxy.add_link("a", "b", target)
        proxy.set_loss("a", "b", loss)
        chunks = [b"%03d" % i + bytes([i]) * 61 for i in range(40)]
        expected = b""
        sends = 0
        writer: asyncio.StreamWriter | None = None
        for chunk in chunks:
            while True:
                if writer is None:
                    n_conns = len(server.conns)
                    _, writer = await dial(port)
                    await until(lambda n=n_conns: len(server.conns) == n + 1, "the proxy to reach the target")
                rec = server.conns[-1]
                writer.write(chunk)
                sends += 1
                want = expected + chunk
                await until(lambda w=want, r=rec: server.received() == w or r.eof, "the chunk or a reset")
                if server.received() == want:
                    expected = want
                    break
                writer.close()  # reset by the proxy: the chunk is gone
                writer = None
        assert writer is not None
        writer.close()
        assert server.received() == b"".join(chunks)

        rng = link_rng(seed, "a", "b")
        replay = [chunk_fate(rng, loss) for _ in range(sends)]
        st = proxy.stats()[("a", "b")]
        assert st["held"] == replay.count(Fate.HOLD) > 0
        assert st["resets"] == replay.count(Fate.RESET) > 0  # seed 7 resets the first chunk (and another)
        assert st["connections"] == 1 + st["resets"]
        other = link_rng(seed + 1, "a", "b")
        assert [chunk_fate(other, loss) for _ in range(sends)] != replay
    finally:
        await proxy.close()


async def test_loss_bulk_stream_arrives_whole_or_is_reset(servers) -> None:
    proxy = FaultProxy(3)
    proxy.rto_min, proxy.rto_max = 0.002, 0.016
    try:
        server, target = await servers()
        port = await proxy.add_link("a", "b", target)
        proxy.set_loss("a", "b", 0.5)
        payload = random.Random(5).randbytes(32 * 1024)
        for _attempt in range(40):
            n_conns = len(server.conns)
            _, writer = await dial(port)
            for i in range(0, len(payload), 1024):
                writer.write(payload[i : i + 1024])
                await writer.drain()
            writer.write_eof()
            await until(lambda n=n_conns: len(server.conns) > n and server.conns[n].eof, "the end of the attempt")
            writer.close()
            got = bytes(server.conns[-1].data)
            assert payload.startswith(got), "bytes changed or reordered"
            if got == payload:
                break
        else:
            raise AssertionError("every attempt was reset")
        st = proxy.stats()[("a", "b")]
        assert st["bytes"] >= len(payload)
        assert st["held"] > 0  # seed 3 holds the first chunk back, however the stream was cut into chunks
    finally:
        await proxy.close()


async def test_held_chunks_wait_a_doubling_retransmission_timeout(servers) -> None:
    def first_fates(seed: int) -> list[Fate]:
        rng = link_rng(seed, "a", "b")
        return [chunk_fate(rng, 1.0), chunk_fate(rng, 1.0)]

    # A seed whose first two decisions at loss 1.0 are holds (not resets).
    seed = next(s for s in range(100) if first_fates(s) == [Fate.HOLD, Fate.HOLD])
    proxy = FaultProxy(seed)
    try:
        server, target = await servers()
        port = await proxy.add_link("a", "b", target)
        proxy.set_loss("a", "b", 1.0)
        _, writer = await dial(port)
        loop = asyncio.get_running_loop()
        sent1 = loop.time()
        writer.write(b"one")
        await until(lambda: server.received() == b"one", "the first held chunk")
        sent2 = loop.time()
        writer.write(b"two")
        await until(lambda: server.received() == b"onetwo", "the second held chunk")
        arrivals = server.conns[0].arrivals
        assert arrivals[0][0] - sent1 >= proxy.rto_min - EPS
        assert arrivals[1][0] - sent2 >= 2 * proxy.rto_min - EPS
        assert proxy.stats()[("a", "b")]["held"] == 2
        writer.close()
    finally:
        await proxy.close()


async def test_unreachable_target_closes_the_client_and_set_target_fixes_it(proxy: FaultProxy, servers) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind((HOST, 0))
        dead = s.getsockname()[1]
    port = await proxy.add_link("a", "b", (HOST, dead))
    reader, writer = await dial(port)
    assert await sees_end(reader)
    writer.close()

    server, target = await servers()
    proxy.set_target("a", "b", target)
    _, writer = await dial(port)
    writer.write(b"ok")
    await until(lambda: server.received() == b"ok", "the new target")
    writer.close()


async def test_close_leaves_no_task_and_no_listener(servers) -> None:
    before = asyncio.all_tasks()
    server, target = await servers()
    proxy = FaultProxy(1)
    ports = [await proxy.add_link(src, dst, target) for src, dst in (("a", "b"), ("b", "a"), ("a", "c"))]
    proxy.set_delay("b", "a", 30.0)  # keeps chunks queued
    proxy.block("a", "c")
    conns = [await dial(port) for port in ports]
    for _, writer in conns:
        writer.write(b"data")
    await until(lambda: len(server.conns) == 2 and server.conns[0].data == b"data", "the open connections")
    await until(lambda: proxy.stats()[("a", "c")]["blackholed_bytes"] == 4, "the blackholed connection")
    assert any(t.get_name().startswith("proxy") for t in asyncio.all_tasks())

    await proxy.close()

    left = {t for t in asyncio.all_tasks() - before - server.tasks if not t.done()}
    left.discard(asyncio.current_task())  # type: ignore[arg-type]
    assert not left, left
    for reader, writer in conns:
        assert await sees_end(reader)
        writer.close()
    for port in ports:
        with pytest.raises(OSError):
            await dial(port)
    assert server.received() == b"data"  # the delayed chunk never went out


async def test_capture_keeps_the_first_frame_of_each_new_connection(proxy: FaultProxy, servers) -> None:
    """The hostile replayer's capture step: with capture_hellos set, the
    first whole frame a link forwards on a connection is kept (the bytes on
    the wire, nothing else); later frames, and a first chunk too short to
    hold a frame, are not."""
    server, target = await servers()
    port = await proxy.add_link("a", "b", target)
    first = encode_frame(b"k" * 32, "hana", "a", 0, b'{"hello": 1}')
    later = encode_frame(b"k" * 32, "hana", "a", 1, b'{"later": 2}')
    _, w1 = await dial(port)
    w1.write(first)
    await w1.drain()
    await until(lambda: server.received() == first, "the first connection's frame forwarded")
    assert proxy.hellos == {}  # not capturing yet
    proxy.capture_hellos = True
    second = encode_frame(b"k" * 32, "hana", "a", 0, b'{"hello": 3}')
    _, w2 = await dial(port)
    w2.write(second)
    await w2.drain()
    await until(lambda: ("a", "b") in proxy.hellos, "the hello captured")
    assert proxy.hellos[("a", "b")] == second
    w2.write(later)
    await w2.drain()
    await until(lambda: server.received().endswith(later), "the later frame forwarded")
    assert proxy.hellos[("a", "b")] == second  # only a connection's first frame
    # A first chunk shorter than its frame is not kept.
    _, w3 = await dial(port)
    w3.write(later[:10])
    await w3.drain()
    await until(lambda: server.received().endswith(later[:10]), "the short chunk forwarded")
    assert proxy.hellos[("a", "b")] == second
    for w in (w1, w2, w3):
        w.close()
