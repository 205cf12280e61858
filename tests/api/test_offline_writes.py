"""Offline writes, conflicts, reset and confirm=all through the API of an
in-process mesh (issue 14): a node cut off from the controller queues
writes (202), shows them pending on local reads, replays them when healed
with their fates (applied, superseded, conflict) at GET /v1/outbox and on
its watch; conflicts are listed and resolved; the bad inputs change nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from mesh.api import offline_routes
from tests.api.offline_kit import JSON, OfflineMesh, next_message, offline_mesh, until

DISPLAY = {"name": "left", "width": 1920, "height": 1080}


@pytest.fixture
async def om() -> AsyncIterator[OfflineMesh]:
    async for m in offline_mesh(request_timeout=2.0, offline_wait=0.2):
        await m.start()
        await m.wait_leader()
        yield m


async def _json(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, (resp.status, await resp.text())
    return await resp.json()


async def _state(om: OfflineMesh, nid: str) -> tuple[int, Any]:
    """A node's revision and its keys (to show that nothing changed)."""
    c = om.clients[nid]
    items = await _json(await c.get("/v1/kv?prefix=&consistency=local"))
    return items["revision"], [(i["key"], i["value"], i["version"]) for i in items["items"]]


async def test_queue_pending_replay_fates_and_conflicts(om: OfflineMesh) -> None:
    lead = om.leader()
    assert lead is not None
    off = next(n for n in ("n1", "n2", "n3") if n != lead)
    co, cl = om.clients[off], om.clients[lead]
    await _json(await cl.put("/v1/kv/displays/left", json={"value": DISPLAY}, headers=JSON))
    await until(lambda: _has(om, off, "displays/left"), what="replicated")
    ws = await co.ws_connect("/v1/watch?prefix=")
    om.cut(off)

    async def cut_off() -> bool:
        return not (await _json(await co.get("/v1/status")))["connected"]

    await until(cut_off, what=f"{off} cut off")
    await om.wait_leader(exclude=off, agreed=False)
    majority = om.clients[om.leader(exclude=off) or lead]
    # a) made before the majority's write of the same key: superseded on replay.
    early = await _json(await co.put("/v1/kv/parameters/early?offline=queue", json={"value": "off"}, headers=JSON), 202)
    assert early["queued"].startswith(f"{off}.") and early["key"] == "parameters/early"
    assert early["base_version"] == 0 and early["outbox"] == 1
    await _json(await majority.put("/v1/kv/parameters/early", json={"value": "maj"}, headers=JSON))
    # b) made after the majority's write: the later edit wins.
    await _json(await majority.put("/v1/kv/parameters/late", json={"value": "maj"}, headers=JSON))
    late = await _json(await co.put("/v1/kv/parameters/late?offline=queue", json={"value": "off"}, headers=JSON), 202)
    # c) a manual (critical) component changed since the version the writer saw: a conflict.
    manual = await _json(
        await co.put("/v1/kv/displays/left?offline=queue", json={"value": {**DISPLAY, "width": 800}}, headers=JSON),
        202,
    )
    assert manual["base_version"] == 1
    await _json(await majority.put("/v1/kv/displays/left", json={"value": {**DISPLAY, "width": 640}}, headers=JSON))
    # d) a transaction and a delete, queued too.
    txn = await _json(
        await co.post(
            "/v1/txn?offline=queue",
            json={"ops": [{"op": "put", "key": "parameters/t1", "value": 1}, {"op": "delete", "key": "parameters/t2"}]},
            headers=JSON,
        ),
        202,
    )
    assert txn["keys"] == ["parameters/t1", "parameters/t2"] and txn["base_versions"] == {
        "parameters/t1": 0,
        "parameters/t2": 0,
    }
    # Local reads show queued values as pending, and stale.
    doc = await _json(await co.get("/v1/kv/parameters/late?consistency=local"))
    assert doc["value"] == "off" and doc["pending"] is True and doc["stale"] is True
    listing = await _json(await co.get("/v1/kv?prefix=parameters/&consistency=local"))
    assert {i["key"]: i.get("pending") for i in listing["items"]}["parameters/t1"] is True
    box = await _json(await co.get("/v1/outbox"))
    assert [i["state"] for i in box["items"]] == ["queued"] * 4 and box["queued"] == 4
    assert box["items"][0]["id"] == early["queued"] and box["items"][0]["made"]
    queued = await next_message(ws, "outbox")
    assert queued["id"] == early["queued"] and queued["state"] == "queued"

    om.heal(off)

    async def replayed() -> bool:
        return (await _json(await co.get("/v1/outbox")))["queued"] == 0

    await until(replayed, what="the outbox replayed")
    fates = {i["id"]: i for i in (await _json(await co.get("/v1/outbox")))["items"]}
    assert fates[early["queued"]]["state"] == "superseded"
    assert fates[late["queued"]]["state"] == "applied"
    assert fates[txn["queued"]]["state"] == "applied"
    conflict = fates[manual["queued"]]
    assert conflict["state"] == "conflict" and isinstance(conflict["result"]["conflict"], int)
    cid = conflict["result"]["conflict"]
    final = {}
    while len(final) < 4:
        msg = await next_message(ws, "outbox")
        if msg["state"] != "queued":
            final[msg["id"]] = msg["state"]
    assert final[early["queued"]] == "superseded" and final[manual["queued"]] == "conflict"
    opened = await next_message(ws, "conflict")
    assert opened["id"] == cid and opened["status"] == "open" and opened["critical"] is True
    assert opened["key"] == "displays/left" and opened["component"] == "displays"
    # Every node agrees; the lww keys hold the later edit.
    for nid in om.nodes:
        c = om.clients[nid]
        assert (await _json(await c.get("/v1/kv/parameters/early")))["value"] == "maj"
        assert (await _json(await c.get("/v1/kv/parameters/late")))["value"] == "off"
        listed = (await _json(await c.get("/v1/conflicts")))["conflicts"]
        assert [x["id"] for x in listed] == [cid]
    [view] = (await _json(await cl.get("/v1/conflicts")))["conflicts"]
    assert view["base_version"] == 1 and view["current"]["value"]["width"] == 640
    assert view["proposed"]["value"]["width"] == 800 and view["proposed"]["node"] == off
    assert view["status"] == "open" and view["critical"] is True
    metrics = (await (await cl.get("/metrics")).read()).decode()
    assert "hana_conflicts_open 1.0" in metrics and 'hana_conflicts_total{critical="true"} 1.0' in metrics

    # Bad input: nothing changes.
    before = await _state(om, lead)
    await _json(await cl.post("/v1/conflicts/9999/resolve", json={"take": "current"}, headers=JSON), 404)
    bad = await cl.post(f"/v1/conflicts/{cid}/resolve", json={"take": "value", "value": {"width": -3}}, headers=JSON)
    assert (await _json(bad, 400))["error"]["code"] == "invalid_value"
    await _json(await cl.post(f"/v1/conflicts/{cid}/resolve", json={"take": "mine"}, headers=JSON), 400)
    assert await _state(om, lead) == before
    assert [x["id"] for x in (await _json(await cl.get("/v1/conflicts")))["conflicts"]] == [cid]
    # Resolved: one revision, one undo step, audited.
    done = await _json(await cl.post(f"/v1/conflicts/{cid}/resolve", json={"take": "proposed"}, headers=JSON))
    assert done == {"id": cid, "take": "proposed", "revision": before[0] + 1, "key": "displays/left"}
    assert (await _json(await cl.get("/v1/kv/displays/left")))["value"]["width"] == 800
    after = await _state(om, lead)
    twice = await cl.post(f"/v1/conflicts/{cid}/resolve", json={"take": "current"}, headers=JSON)
    assert (await _json(twice, 409))["error"]["code"] == "conflict_resolved"
    assert await _state(om, lead) == after
    audit = (await _json(await cl.get("/v1/audit")))["entries"]
    assert audit[-1]["op"] == "resolve" and audit[-1]["conflict"] == cid
    assert (await _json(await cl.get(f"/v1/conflicts/{cid}")))["status"] == "resolved"
    undone = await _json(await cl.post("/v1/undo", json={}, headers=JSON))
    assert undone["undone"]["op"] == "resolve"
    await ws.close()


async def _has(om: OfflineMesh, nid: str, key: str) -> bool:
    return om.nodes[nid].kv.get(key) is not None


async def test_offline_queue_on_a_non_write_is_refused_and_changes_nothing(om: OfflineMesh) -> None:
    c = om.clients[om.leader() or "n1"]
    await _json(await c.put("/v1/kv/parameters/a", json={"value": 1}, headers=JSON))
    before = await _state(om, om.leader() or "n1")
    for method, path in (
        ("GET", "/v1/kv/parameters/a?offline=queue"),
        ("GET", "/v1/kv?prefix=&offline=queue"),
        ("GET", "/v1/history?offline=queue"),
        ("POST", "/v1/undo?offline=queue"),
        ("POST", "/v1/saves?offline=queue"),
    ):
        resp = await c.request(method, path, json={"name": "s"} if path.startswith("/v1/saves") else {}, headers=JSON)
        assert (await _json(resp, 400))["error"]["code"] == "invalid_value", path
    bad = await c.put("/v1/kv/parameters/a?offline=later", json={"value": 2}, headers=JSON)
    await _json(bad, 400)
    assert await _state(om, om.leader() or "n1") == before
    assert (await _json(await c.get("/v1/saves"))) == []
    # A write with offline=queue while the controller is heard is applied at once (200).
    assert (await _json(await c.put("/v1/kv/parameters/a?offline=queue", json={"value": 3}, headers=JSON)))[
        "version"
    ] == 2


async def test_reset_is_one_revision_and_one_undo_step(om: OfflineMesh) -> None:
    c = om.clients[om.leader() or "n1"]
    for k in ("a", "b"):
        await _json(await c.put(f"/v1/kv/parameters/{k}", json={"value": k}, headers=JSON))
    rev = (await _json(await c.get("/v1/kv/parameters/b")))["revision"]
    await _json(await c.post("/v1/components/nope/reset", json={}, headers=JSON), 404)
    bad = await c.post("/v1/components/parameters/reset", json={"keys": ["windows/w"]}, headers=JSON)
    await _json(bad, 400)
    done = await _json(await c.post("/v1/components/parameters/reset", json={}, headers=JSON))
    assert done == {"revision": rev + 1, "keys": ["parameters/a", "parameters/b"]}
    await _json(await c.get("/v1/kv/parameters/a"), 404)
    undone = await _json(await c.post("/v1/undo", json={}, headers=JSON))
    assert undone["undone"]["op"] == "reset"
    assert (await _json(await c.get("/v1/kv/parameters/a")))["value"] == "a"


async def test_confirm_all_says_which_members_applied(om: OfflineMesh, monkeypatch: pytest.MonkeyPatch) -> None:
    lead = om.leader() or "n1"
    c = om.clients[lead]
    # The nodes' API addresses, as the handshake would carry them.
    for nid, node in om.nodes.items():
        node.cfg.api_address = f"127.0.0.1:{om.clients[nid].port}"
    for node in om.nodes.values():
        for other in om.nodes:
            node.transport.peer_api[other] = om.nodes[other].cfg.api_address
    res = await _json(await c.put("/v1/kv/parameters/c?confirm=all", json={"value": 1}, headers=JSON))
    assert res["applied_by"] == ["n1", "n2", "n3"] and res["missing"] == []
    off = next(n for n in om.nodes if n != lead)
    om.cut(off)
    monkeypatch.setattr(offline_routes, "CONFIRM_TIMEOUT", 0.5)
    await om.clients[off].close()  # its API cannot be reached either
    res = await _json(await c.put("/v1/kv/parameters/c?confirm=all", json={"value": 2}, headers=JSON))
    assert res["missing"] == [off] and off not in res["applied_by"] and lead in res["applied_by"]
    await _json(await c.put("/v1/kv/parameters/c?confirm=some", json={"value": 3}, headers=JSON), 400)
