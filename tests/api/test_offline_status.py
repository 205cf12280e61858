"""Knowing it is cut off (issue 14): `stale` and `controller_contact_ms` on
local reads, `connected` in status, status messages on watch streams, and
the reads that need no controller answering from local state."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.api.offline_kit import JSON, OfflineMesh, next_message, offline_mesh, until


@pytest.fixture
async def om() -> AsyncIterator[OfflineMesh]:
    async for m in offline_mesh(request_timeout=1.5):
        yield m


async def _connected(m: OfflineMesh, nid: str) -> bool:
    resp = await m.clients[nid].get("/v1/status")
    return bool((await resp.json())["connected"])


async def test_cut_off_node_knows_it_and_says_so(om: OfflineMesh) -> None:
    c1 = om.clients["n1"]
    await om.start("n1")
    # Alone of three voters: no controller was ever heard.
    doc = await (await c1.get("/v1/status")).json()
    assert doc["connected"] is False and doc["controller_contact_ms"] is None
    ws = await c1.ws_connect("/v1/watch?prefix=parameters/")
    await om.start("n2", "n3")
    regained = await next_message(ws, "status")
    assert regained["connected"] is True and regained["leader"] in ("n1", "n2", "n3")
    await om.wait_leader()
    resp = await c1.put("/v1/kv/parameters/a", json={"value": 1}, headers=JSON)
    assert resp.status == 200, await resp.text()
    change = await next_message(ws, "change")
    assert change["key"] == "parameters/a" and change["value"] == 1
    await until(lambda: _connected(om, "n1"), what="n1 connected")
    doc = await (await c1.get("/v1/kv/parameters/a?consistency=local")).json()
    assert doc["stale"] is False and isinstance(doc["controller_contact_ms"], int)
    lead = om.leader()
    others = [n for n in ("n1", "n2", "n3") if n != "n1"]
    for nid in others:
        await om.stop_node(nid)
    lost = await next_message(ws, "status")
    assert lost == {"type": "status", "connected": False, "leader": None}, lead
    doc = await (await c1.get("/v1/kv/parameters/a?consistency=local")).json()
    assert doc["value"] == 1 and doc["stale"] is True and doc["controller_contact_ms"] > 0
    listing = await (await c1.get("/v1/kv?prefix=parameters/&consistency=local")).json()
    assert listing["stale"] is True and [i["key"] for i in listing["items"]] == ["parameters/a"]
    status = await (await c1.get("/v1/status")).json()
    assert status["connected"] is False
    # Reads that need no controller answer from local state, marked stale.
    for path in ("/v1/history", "/v1/components", "/v1/audit"):
        resp = await c1.get(path)
        assert resp.status == 200, (path, await resp.text())
        assert (await resp.json())["stale"] is True, path
        assert resp.headers["X-Hana-Stale"] == "true"
    resp = await c1.get("/v1/saves")
    assert resp.status == 200 and resp.headers["X-Hana-Stale"] == "true"
    # An explicit linearizable read still refuses (503: no controller).
    resp = await c1.get("/v1/kv/parameters/a")
    assert resp.status == 503
    await ws.close()
