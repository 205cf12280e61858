"""An in-process 3-node mesh (memory storage, real TCP on loopback) with the
HTTP API of each node (over the composition root's `NodeAdapter`, without
discovery) served by aiohttp's test server over the hardened server of
mesh.api.server (as `hana-node serve` runs it).

Clients are anonymous (the operator role of a loopback API);
`Mesh.admin_headers` carries the admin token."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mesh.adapter import NodeAdapter
from mesh.api.app import create_app
from mesh.api.server import ApiRunner
from mesh.node.runtime import MeshNode, NodeConfig
from mesh.raft import Role
from mesh.storage.memory import MemoryStorage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {"Content-Type": "application/json"}


class ApiTestServer(TestServer):
    """aiohttp's TestServer on the API's hardened server."""

    def __init__(self, app: web.Application, **runner_options: object) -> None:
        super().__init__(app)
        self._runner_options = runner_options

    async def _make_runner(self, **kwargs: object) -> web.AppRunner:  # type: ignore[override]
        return ApiRunner(self.app, **{**kwargs, **self._runner_options})  # type: ignore[arg-type]


@dataclass
class Mesh:
    nodes: dict[str, MeshNode]
    clients: dict[str, TestClient]
    admin_headers = ADMIN_HEADERS

    def leader(self) -> str | None:
        for nid, n in self.nodes.items():
            if n.replica.raft.role == Role.LEADER:
                return nid
        return None

    def follower(self) -> str:
        lead = self.leader()
        return next(nid for nid in self.nodes if nid != lead)

    async def wait_leader(self, timeout: float = 10.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                lead = self.leader()
                if lead is not None and all(n.replica.raft.lead == lead for n in self.nodes.values()):
                    return lead
                await asyncio.sleep(0.02)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    ids = ["n1", "n2", "n3"]
    peers = {i: ("127.0.0.1", free_port()) for i in ids}
    nodes = {
        i: MeshNode(
            NodeConfig(i, "hana", b"test-secret-0123456789", raft_port=peers[i][1], peers=peers, seed=n),
            MemoryStorage(),
        )
        for n, i in enumerate(ids)
    }
    clients: dict[str, TestClient] = {}
    for i, node in nodes.items():
        await node.start()
        client = TestClient(
            ApiTestServer(create_app(NodeAdapter(node, None, peers), admin_token=ADMIN_TOKEN, max_body=64 * 1024))
        )
        await client.start_server()
        clients[i] = client
    m = Mesh(nodes, clients)
    await m.wait_leader()
    yield m
    for client in clients.values():
        await client.close()
    for node in nodes.values():
        await node.stop(transfer=False)
