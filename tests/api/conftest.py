"""An in-process 3-node mesh (memory storage, real TCP on loopback) with the
HTTP API of each node (over the composition root's `NodeAdapter`, without
discovery) served by aiohttp's test server over the hardened server of
mesh.api.server (as `hana-node serve` runs it).

Clients are anonymous (the operator role of a loopback API);
`Mesh.admin_headers` carries the admin token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mesh.adapter import NodeAdapter
from mesh.api.app import create_app
from mesh.api.server import ApiRunner
from tests.meshkit import InProcessMesh

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


class Mesh(InProcessMesh):
    """The in-process mesh (tests/meshkit.py) with an API client per node."""

    admin_headers = ADMIN_HEADERS

    def __init__(self) -> None:
        super().__init__(["n1", "n2", "n3"])
        self.clients: dict[str, TestClient] = {}


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    m = Mesh()
    peers = {nid: m.addrs[nid] for nid in m.ids}
    try:
        await m.start()
        for nid, node in m.nodes.items():
            app = create_app(NodeAdapter(node, None, peers), admin_token=ADMIN_TOKEN, max_body=64 * 1024)
            client = TestClient(ApiTestServer(app))
            await client.start_server()
            m.clients[nid] = client
        await m.wait_leader()
        yield m
    finally:
        for client in m.clients.values():
            await client.close()
        await m.stop()
