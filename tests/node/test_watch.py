"""A watcher that is slow to consume still sees every change exactly once."""

from __future__ import annotations

import asyncio

from mesh.raft import Role
from tests.meshkit import InProcessMesh


async def test_slow_watcher_misses_nothing() -> None:
    mesh = InProcessMesh(["solo"], secret=b"watch-secret-0123456")
    node = mesh.nodes["solo"]
    await mesh.start()
    try:
        async with asyncio.timeout(10):
            while node.replica.raft.role != Role.LEADER:
                await asyncio.sleep(0.01)
        await node.propose({"op": "put", "key": "parameters/w", "value": 0})
        gate = asyncio.Event()
        seen: list[int] = []

        async def consume() -> None:
            async for rec in node.watch("parameters/", 1):
                seen.append(rec.revision)
                if len(seen) == 1:
                    # Hold the stream while 24 more changes are applied.
                    await gate.wait()
                if len(seen) == 25:
                    return

        consumer = asyncio.ensure_future(consume())
        async with asyncio.timeout(10):
            while not seen:
                await asyncio.sleep(0.01)
        for i in range(1, 25):
            await node.propose({"op": "put", "key": "parameters/w", "value": i})
        gate.set()
        await asyncio.wait_for(consumer, 10)
        assert seen == list(range(1, 26))
    finally:
        await mesh.stop()
