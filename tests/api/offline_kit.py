"""An in-process 3-node mesh whose nodes start and stop one by one, each
with its API client, for the tests of a node cut off from its controller
(issue 14)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

from mesh.adapter import NodeAdapter
from mesh.api.app import create_app
from tests.api.conftest import ADMIN_TOKEN, ApiTestServer
from tests.meshkit import InProcessMesh

JSON = {"Content-Type": "application/json"}


class OfflineMesh(InProcessMesh):
    def __init__(self, **config: Any) -> None:
        super().__init__(["n1", "n2", "n3"], **config)
        self.clients: dict[str, TestClient] = {}

    async def open_clients(self) -> None:
        peers = {nid: self.addrs[nid] for nid in self.ids}
        for nid, node in self.nodes.items():
            app = create_app(NodeAdapter(node, None, peers), admin_token=ADMIN_TOKEN, max_body=256 * 1024)
            client = TestClient(ApiTestServer(app))
            await client.start_server()
            self.clients[nid] = client

    def cut(self, nid: str) -> None:
        """Partition `nid` from the others: every address between them points
        at a bound socket that does not listen (connections are refused)."""
        if not hasattr(self, "_dead"):
            self._dead = socket.socket()
            self._dead.bind(("127.0.0.1", 0))
        dead = ("127.0.0.1", int(self._dead.getsockname()[1]))
        for other in self.nodes:
            if other != nid:
                self.nodes[nid].transport.set_peer(other, dead)
                self.nodes[other].transport.set_peer(nid, dead)

    def heal(self, nid: str) -> None:
        for other in self.nodes:
            if other != nid:
                self.nodes[nid].transport.set_peer(other, self.addrs[other])
                self.nodes[other].transport.set_peer(nid, self.addrs[nid])

    async def stop_node(self, nid: str) -> None:
        node = self.nodes[nid]
        await node.stop(transfer=False)
        self._started.remove(node)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        await self.stop()
        if hasattr(self, "_dead"):
            self._dead.close()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `check` until it holds (or fail naming `what`)."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def next_message(ws: ClientWebSocketResponse, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next watch message of type `kind` (others are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive_json()
            if msg.get("type") == kind:
                return dict(msg)


async def offline_mesh(**config: Any) -> AsyncIterator[OfflineMesh]:
    m = OfflineMesh(**config)
    try:
        await m.open_clients()
        yield m
    finally:
        await m.close()
