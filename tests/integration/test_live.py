"""A fader gesture through `GET /v1/live` on real `hana-node serve`
processes: 600 values at 120 Hz on node A, watched on B and C, with B
stopped (SIGSTOP) for part of the gesture."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.integration.harness import eventually, running_cluster

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "parameters/master/fader"
GESTURE = "fader-test"
VALUES = 600
HZ = 120.0


async def watch(session: aiohttp.ClientSession, api: str, seen: list[float], ready: asyncio.Event) -> None:
    async with session.ws_connect(f"http://{api}/v1/live?prefix=parameters/master/", heartbeat=None) as ws:
        ready.set()
        async for msg in ws:
            doc = orjson.loads(msg.data)
            assert doc["type"] == "live", doc
            if KEY in doc["values"]:
                seen.append(doc["values"][KEY])


async def test_a_fader_gesture_reaches_every_node_settles_once_and_undoes_in_one_step(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3) as cluster:
        cluster.start_all()
        a = await cluster.wait_leader()
        b, c = (n for n in cluster.nodes if n != a)
        node = cluster.nodes
        async with node[a].client() as client:
            await client.put(KEY, 0.0)
        async with aiohttp.ClientSession() as session:
            seen: dict[str, list[float]] = {b: [], c: []}
            ready = {n: asyncio.Event() for n in (b, c)}
            watchers = [asyncio.ensure_future(watch(session, node[n].api, seen[n], ready[n])) for n in (b, c)]
            try:
                for n in (b, c):
                    async with asyncio.timeout(10):
                        await ready[n].wait()
                stopped = False
                async with session.ws_connect(f"http://{node[a].api}/v1/live") as source:
                    start = time.monotonic()
                    for i in range(1, VALUES + 1):
                        # Paced like a fader (load, not synchronisation).
                        delay = start + i / HZ - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        await source.send_str(orjson.dumps({"set": {KEY: i / VALUES}, "gesture": GESTURE}).decode())
                        if i == VALUES // 3:
                            cluster.signal(b, signal.SIGSTOP)
                            stopped = True
                    await source.send_str(orjson.dumps({"end": GESTURE}).decode())
                    # The source hears its own values too; never an error.
                    with contextlib.suppress(TimeoutError):
                        while True:
                            doc = orjson.loads(await source.receive_str(timeout=0.5))
                            assert doc["type"] == "live", doc
                # A and C have the settled value while B is stopped.
                await settled(cluster, [a, c], 1.0)
                cluster.signal(b, signal.SIGCONT)
                stopped = False
                await settled(cluster, [a, b, c], 1.0)

                async def watched_final() -> bool:
                    return all(s and s[-1] == 1.0 for s in seen.values())

                await eventually(watched_final, 20, "every watcher's last live value is the final one")
            finally:
                if stopped:
                    cluster.signal(b, signal.SIGCONT)
                for w in watchers:
                    w.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                        await w
        for n, values in seen.items():
            assert values == sorted(values), f"{n} saw values go backwards"
            assert len(set(values)) == len(values), f"{n} saw a value twice"
            assert values[-1] == 1.0
        assert len(seen[c]) > 10, seen[c]  # C followed the gesture, not only its end
        async with node[c].client() as client:
            history = await client.history(prefix=KEY)
        records = [r for r in history["records"] if r.get("gesture") == GESTURE]
        assert [r["value"] for r in records] == [1.0], history
        assert records[0]["prev_value"] == 0.0
        async with node[b].client() as client:
            await client.undo()
        await settled(cluster, [a, b, c], 0.0)


async def settled(cluster: Any, nodes: list[str], value: float) -> None:
    async def holds() -> bool:
        for n in nodes:
            async with cluster.nodes[n].client(timeout=2.0) as client:
                if (await client.get(KEY, consistency="local"))["value"] != value:
                    return False
        return True

    await eventually(holds, 20, f"{KEY} = {value} on {nodes}")
