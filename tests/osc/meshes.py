"""An in-process 3-node mesh (tests/meshkit.py, the real live stream) with
the API of each node and the OSC bridge on two of them, as `hana-node
serve --osc-listen / --osc-send` composes it (mesh/osc/service.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from pythonosc.udp_client import SimpleUDPClient

from mesh.adapter import NodeAdapter
from mesh.api.app import create_app
from mesh.osc.service import OscOptions, OscService, start_osc
from tests.api.conftest import ADMIN_TOKEN, JSON, ApiTestServer
from tests.meshkit import InProcessMesh
from tests.osc.kit import Receiver, fader


class OscMesh(InProcessMesh):
    def __init__(self) -> None:
        super().__init__(["n1", "n2", "n3"])
        self.clients: dict[str, TestClient] = {}
        self.osc: dict[str, OscService] = {}
        self.rx: Receiver | None = None

    async def get(self, nid: str, path: str) -> tuple[int, Any]:
        resp = await self.clients[nid].get(path)
        body = await resp.read()
        return resp.status, orjson.loads(body) if resp.content_type == "application/json" else body.decode()

    async def put(self, key: str, value: Any) -> None:
        resp = await self.clients["n1"].put(f"/v1/kv/{key}", data=orjson.dumps({"value": value}), headers=JSON)
        assert resp.status == 200, await resp.read()

    def udp(self) -> tuple[SimpleUDPClient, tuple[str, int]]:
        addr = self.osc["n1"].bridge.bound
        assert addr is not None
        return SimpleUDPClient(*addr), addr


async def eventually(cond: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def osc_mesh() -> AsyncIterator[OscMesh]:
    """n1 listens to OSC, n2 sends to a python-osc server (`rx`), n3 has no
    bridge; mappings /fader1 (-> parameters/brightness, 0..1 onto 0..100)
    and /fader2 (-> parameters/speed); brightness committed at 10."""
    m = OscMesh()
    peers = {nid: m.addrs[nid] for nid in m.ids}
    m.rx = await Receiver().start()
    try:
        await m.start()
        for nid, node in m.nodes.items():
            adapter = NodeAdapter(node, None, peers)
            app = create_app(adapter, admin_token=ADMIN_TOKEN, max_body=64 * 1024)
            if nid == "n1":
                opts = OscOptions(listen=("127.0.0.1", 0), settle_ms=250)
            elif nid == "n2":
                opts = OscOptions(listen=None, send=(("127.0.0.1", m.rx.port),))
            else:
                opts = None
            if opts is not None:
                m.osc[nid] = await start_osc(
                    opts, adapter, app, registry=node.metrics.registry, advertise=None, name=f"hana-{nid}"
                )
            client = TestClient(ApiTestServer(app))
            await client.start_server()
            m.clients[nid] = client
        await m.wait_leader()
        await m.put(*fader("fader1", "parameters/brightness", out_min=0, out_max=100))
        await m.put(*fader("fader2", "parameters/speed"))
        await m.put("parameters/brightness", 10.0)

        async def mapped_everywhere() -> bool:
            return all("/fader2" in s.bridge.table.by_address for s in m.osc.values())

        await eventually(mapped_everywhere)
        await m.rx.wait_for(lambda got: ("/fader1", (pytest.approx(0.1),)) in got)  # n2 sent the committed 10
        yield m
    finally:
        for service in m.osc.values():
            await service.stop()
        for client in m.clients.values():
            await client.close()
        await m.stop()
        m.rx.close()
