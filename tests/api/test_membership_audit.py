"""Membership changes are audited with who asked and from where (issue 12
finding 12): through the API by hand, on every node of the mesh."""

from __future__ import annotations

import asyncio

from tests.api.conftest import ADMIN_HEADERS, JSON, Mesh


async def test_finding_12_membership_change_by_hand_is_audited_everywhere(mesh: Mesh) -> None:
    lead = await mesh.wait_leader()
    c = mesh.clients[lead]
    body = {"id": "n9", "action": "add_learner", "raft": "127.0.0.1:9"}
    resp = await c.post("/v1/members", json=body, headers={**JSON, **ADMIN_HEADERS})
    assert resp.status == 200, await resp.text()
    resp = await c.post("/v1/members", json={"id": "n9", "action": "remove"}, headers={**JSON, **ADMIN_HEADERS})
    assert resp.status == 200, await resp.text()

    async def audited(nid: str) -> list[dict[str, object]]:
        async with asyncio.timeout(10):
            while True:
                doc = await (await mesh.clients[nid].get("/v1/audit", params={"consistency": "local"})).json()
                entries = [e for e in doc["entries"] if e["op"] == "membership" and e.get("member") == "n9"]
                if len(entries) == 2:
                    return entries
                await asyncio.sleep(0.02)

    for nid in mesh.nodes:
        entries = await audited(nid)
        assert [e["change"] for e in entries] == ["add_learner", "remove_node"]
        for e in entries:
            assert e["author"] == "admin" and e["address"] == "127.0.0.1" and e["reason"] == "by hand", e
