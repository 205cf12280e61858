"""`GET /v1/members` and `POST /v1/members` over the NodeHandle protocol:
against fakes (the route alone: what it reads from the handle and what it
hands to it) and against the in-process mesh (the composition root's
NodeAdapter over real nodes)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from mesh.api.handle import DiscoveredView, MembershipChange, MembersView, MemberView
from tests.api.conftest import ADMIN_HEADERS, JSON, Mesh
from tests.api.edge_kit import RecordingNode, api_client, error_of


class ViewNode(RecordingNode):
    """A follower of n2 with a fixed membership view."""

    def __init__(self) -> None:
        super().__init__(leader="n2")
        self.api_addresses = {"n2": "10.0.0.2:7070"}

    def members(self) -> MembersView:
        return MembersView(
            leader="n2",
            term=7,
            members=(
                MemberView("fake", "10.0.0.1:7071", "10.0.0.1:7070", True, "follower", None, 0.0, "self", None, None),
                MemberView("n2", "10.0.0.2:7071", None, True, "leader", None, 12.5, "mdns", None, None),
            ),
            discovered=(DiscoveredView("n9", "10.0.0.9:7071", None, "mdns", "fresh"),),
        )


async def test_get_members_is_the_handles_view() -> None:
    async with api_client(ViewNode()) as c:
        resp = await c.get("/v1/members")
        assert resp.status == 200
        assert orjson.loads(await resp.read()) == {
            "id": "fake",
            "cluster": "hana",
            "leader": "n2",
            "leader_api": "10.0.0.2:7070",
            "term": 7,
            "members": [
                {"id": "fake", "raft": "10.0.0.1:7071", "api": "10.0.0.1:7070", "voter": True, "role": "follower",
                 "match_index": None, "last_contact_ms": 0.0, "found": "self", "lag": None, "healthy": None},
                {"id": "n2", "raft": "10.0.0.2:7071", "api": None, "voter": True, "role": "leader",
                 "match_index": None, "last_contact_ms": 12.5, "found": "mdns", "lag": None, "healthy": None},
            ],
            "discovered": [{"id": "n9", "raft": "10.0.0.9:7071", "api": None, "found": "mdns", "state": "fresh"}],
            "pending": [],
        }  # fmt: skip


async def test_post_member_hands_the_change_with_who_and_where() -> None:
    node = RecordingNode()
    async with api_client(node) as c:
        body = {"id": "n9", "action": "add_voter", "raft": "[::1]:7071"}
        resp = await c.post("/v1/members", data=orjson.dumps(body), headers={**JSON, **ADMIN_HEADERS})
        assert resp.status == 200, await resp.text()
        doc = orjson.loads(await resp.read())
        assert doc["id"] == "n9" and doc["action"] == "add_voter" and doc["term"] == 1
        assert doc["conf"] == {"voters": ["fake"], "learners": []}
        resp = await c.post(
            "/v1/members", data=orjson.dumps({"id": "n3", "action": "remove"}), headers={**JSON, **ADMIN_HEADERS}
        )
        assert resp.status == 200, await resp.text()
    assert node.membership_changes == [
        MembershipChange("n9", "add_voter", author="admin", address="127.0.0.1", raft=("::1", 7071)),
        MembershipChange("n3", "remove", author="admin", address="127.0.0.1"),
    ]
    assert node.membership_changes[0].reason == "by hand"


async def test_post_member_refuses_bad_requests_before_the_handle() -> None:
    node = RecordingNode()
    async with api_client(node) as c:
        for body in (
            {"id": "n9", "action": "explode"},
            {"id": "n9", "action": ["add_learner"]},
            {"id": "", "action": "remove"},
            {"id": "a,b", "action": "remove"},
            {"id": "n9", "action": "add_learner", "raft": "nowhere"},
            {"id": "n9", "action": "add_learner", "raft": "h:70000"},
            {"id": "n9", "action": "add_learner", "extra": 1},
        ):
            resp = await c.post("/v1/members", data=orjson.dumps(body), headers={**JSON, **ADMIN_HEADERS})
            assert resp.status == 400, (body, resp.status)
            error_of(await resp.read())
    assert node.membership_changes == []


async def test_a_follower_names_the_controllers_api() -> None:
    node = ViewNode()
    async with api_client(node) as c:
        body = orjson.dumps({"id": "n9", "action": "add_learner"})
        resp = await c.post("/v1/members", data=body, headers={**JSON, **ADMIN_HEADERS})
        assert resp.status == 503
        err = error_of(await resp.read())
        assert err["code"] == "not_leader" and err["leader"] == "n2" and err["leader_api"] == "10.0.0.2:7070"
        node.leader = None
        resp = await c.post("/v1/members", data=body, headers={**JSON, **ADMIN_HEADERS})
        assert resp.status == 503
        err = error_of(await resp.read())
        assert err["code"] == "not_leader" and err["leader"] is None and err["leader_api"] is None
    assert node.membership_changes == []


async def _members(mesh: Mesh, nid: str) -> dict[str, Any]:
    resp = await mesh.clients[nid].get("/v1/members")
    assert resp.status == 200
    doc: dict[str, Any] = orjson.loads(await resp.read())
    return doc


async def test_members_of_the_in_process_mesh(mesh: Mesh) -> None:
    """Through NodeAdapter: found (self, or static from --peers), lag and
    health on the controller, null health elsewhere, no discovery."""
    lead = await mesh.wait_leader()
    async with asyncio.timeout(10):
        while True:
            doc = await _members(mesh, lead)
            if all(m["healthy"] for m in doc["members"]):
                break
            await asyncio.sleep(0.02)
    assert doc["id"] == lead and doc["leader"] == lead and doc["cluster"] == "hana" and doc["discovered"] == []
    assert doc["term"] == mesh.nodes[lead].replica.raft.term
    found = {m["id"]: m["found"] for m in doc["members"]}
    assert found == {nid: "self" if nid == lead else "static" for nid in mesh.nodes}
    assert all(isinstance(m["lag"], int) and m["lag"] >= 0 for m in doc["members"])
    follower = mesh.follower()
    doc = await _members(mesh, follower)
    assert doc["leader"] == lead
    assert [m["healthy"] for m in doc["members"]] == [None] * 3
    assert {m["id"]: m["found"] for m in doc["members"]}[follower] == "self"
    # The status document carries "found" too.
    status = await (await mesh.clients[follower].get("/v1/status")).json()
    assert {m["id"]: m["found"] for m in status["members"]}[follower] == "self"
