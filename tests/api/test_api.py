"""The HTTP API of shared/API.md against a live in-process 3-node mesh."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType

from mesh.errors import NoLeader, Timeout
from mesh.node.runtime import MeshNode
from tests.api.conftest import Mesh


async def poll(check, what: str, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Poll `check` until it returns something truthy, failing after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def jput(client, path: str, body: object, **kw):  # type: ignore[no-untyped-def]
    return await client.put(path, data=orjson.dumps(body), headers={"Content-Type": "application/json"}, **kw)


async def test_write_on_any_node_then_read_everywhere(mesh: Mesh) -> None:
    for n, nid in enumerate(mesh.nodes):
        resp = await jput(mesh.clients[nid], f"/v1/kv/displays/wall-{n}", {"value": {"brightness": n}})
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
        assert doc["key"] == f"displays/wall-{n}" and doc["version"] == 1
    for nid in mesh.nodes:
        resp = await mesh.clients[nid].get("/v1/kv", params={"prefix": "displays/"})
        doc = await resp.json()
        assert [i["value"]["brightness"] for i in doc["items"]] == [0, 1, 2]
        assert doc["revision"] == 3


async def test_get_shape_and_percent_encoded_key(mesh: Mesh) -> None:
    c = mesh.clients[mesh.follower()]
    await jput(c, "/v1/kv/parameters/master/brightness", {"value": 0.5})
    for path in ("/v1/kv/parameters/master/brightness", "/v1/kv/parameters%2Fmaster%2Fbrightness"):
        resp = await c.get(path)
        assert resp.status == 200
        doc = await resp.json()
        assert set(doc) == {"key", "value", "version", "create_revision", "mod_revision", "revision"}
        assert doc["key"] == "parameters/master/brightness" and doc["value"] == 0.5
    local = await c.get("/v1/kv/parameters/master/brightness", params={"consistency": "local"})
    assert local.status == 200
    missing = await c.get("/v1/kv/parameters/none")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "not_found"


async def test_conditional_write_conflict_returns_current(mesh: Mesh) -> None:
    c = mesh.clients[mesh.follower()]
    assert (await jput(c, "/v1/kv/windows/w1", {"value": {"x": 1}, "expected_version": 0})).status == 200
    stale = await jput(c, "/v1/kv/windows/w1", {"value": {"x": 2}, "expected_version": 0})
    assert stale.status == 409
    err = (await stale.json())["error"]
    assert err["code"] == "version_conflict"
    assert err["current"]["value"] == {"x": 1} and err["current"]["version"] == 1
    ok = await jput(c, "/v1/kv/windows/w1", {"value": {"x": 2}, "expected_version": 1})
    assert (await ok.json())["version"] == 2


async def test_delete_and_txn(mesh: Mesh) -> None:
    c = mesh.clients[mesh.leader() or "n1"]
    await jput(c, "/v1/kv/parameters/x", {"value": 1})
    failed = await c.post(
        "/v1/txn",
        headers={"Content-Type": "application/json"},
        data=orjson.dumps(
            {
                "ops": [
                    {"op": "put", "key": "parameters/y", "value": 2},
                    {"op": "check", "key": "parameters/x", "expected_version": 7},
                ]
            }
        ),
    )
    assert failed.status == 409
    assert (await failed.json())["error"]["op_index"] == 1
    assert (await c.get("/v1/kv/parameters/y")).status == 404
    ok = await c.post(
        "/v1/txn",
        headers={"Content-Type": "application/json"},
        data=orjson.dumps(
            {
                "ops": [
                    {"op": "check", "key": "parameters/x", "expected_version": 1},
                    {"op": "put", "key": "parameters/y", "value": 2},
                ]
            }
        ),
    )
    assert ok.status == 200
    resp = await c.delete("/v1/kv/parameters/x", params={"expected_version": "3"})
    assert resp.status == 409
    resp = await c.delete("/v1/kv/parameters/x")
    assert resp.status == 200 and set(await resp.json()) == {"key", "revision"}
    assert (await c.delete("/v1/kv/parameters/x")).status == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("PUT", "/v1/kv/displays/a", b"{not json", 400, "invalid_json"),
        ("PUT", "/v1/kv/displays/a", b"[1,2]", 400, "invalid_json"),
        ("PUT", "/v1/kv/displays/a", b'{"valu": 1}', 400, "invalid_field"),
        ("PUT", "/v1/kv/displays/a", b'{"value": 1, "expected_version": "1"}', 400, "invalid_value"),
        ("PUT", "/v1/kv/displays/a", b'{"value": 1, "expected_version": -1}', 400, "invalid_value"),
        ("PUT", "/v1/kv/nocomponent", b'{"value": 1}', 400, "invalid_key"),
        ("PUT", "/v1/kv/a//b", b'{"value": 1}', 400, "invalid_key"),
        ("PUT", "/v1/kv/parameters/b", b"", 400, "invalid_json"),
        ("PUT", "/v1/kv/nosuch/x", b'{"value": 1}', 400, "unknown_component"),
        ("PUT", "/v1/kv/windows/w1", b'{"value": 5}', 400, "invalid_value"),
        ("PUT", "/v1/kv/windows/w1", b'{"value": {"x": "left"}}', 400, "invalid_value"),
        ("PUT", "/v1/kv/parameters/b", b'{"value": "' + b"x" * 70_000 + b'"}', 413, "too_large"),
        ("POST", "/v1/txn", b'{"ops": "nope"}', 400, "invalid_value"),
        ("POST", "/v1/txn", b'{"ops": [{"op": "drop", "key": "a/b"}]}', 400, "invalid_value"),
        ("GET", "/v1/kv/parameters/b?consistency=sometimes", b"", 400, "invalid_value"),
        ("DELETE", "/v1/kv/parameters/b?expected_version=x", b"", 400, "invalid_value"),
        ("GET", "/v1/nothing-here", b"", 404, "not_found"),
        ("POST", "/v1/status", b"", 405, "method_not_allowed"),
        ("GET", "/v1/watch", b"", 400, "websocket_required"),
    ],
)
async def test_bad_input_gets_clear_error_and_changes_nothing(
    mesh: Mesh, method: str, path: str, body: bytes, status: int, code: str
) -> None:
    c = mesh.clients["n1"]
    before = mesh.nodes["n1"].kv.snapshot()
    headers = {"Content-Type": "application/json"} if method in ("PUT", "POST") else {}
    resp = await c.request(method, path, data=body, headers=headers)
    assert resp.status == status, await resp.text()
    doc = await resp.json()
    assert doc["error"]["code"] == code
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    assert orjson.loads(mesh.nodes["n1"].kv.snapshot())["data"] == orjson.loads(before)["data"]


async def test_status_document(mesh: Mesh) -> None:
    doc = await (await mesh.clients["n2"].get("/v1/status")).json()
    for field in ("id", "cluster", "role", "term", "leader", "commit_index", "applied_index", "revision", "members"):
        assert field in doc
    assert doc["id"] == "n2" and doc["leader"] == mesh.leader()
    assert sorted(m["id"] for m in doc["members"]) == ["n1", "n2", "n3"]
    # As `hana-node serve` answers it (through the composition root's
    # NodeAdapter): each member also says how it was found.
    for m in doc["members"]:
        assert set(m) == {"id", "raft", "api", "voter", "role", "match_index", "last_contact_ms", "found"}


async def test_metrics_exposition(mesh: Mesh) -> None:
    await jput(mesh.clients["n1"], "/v1/kv/parameters/b", {"value": 1})
    text = await (await mesh.clients[mesh.leader() or "n1"].get("/metrics")).text()
    for name in ("hana_raft_term", "hana_raft_commit_index", "hana_raft_apply_lag", "hana_fsync_seconds_bucket"):
        assert name in text
    assert 'hana_raft_role{role="leader"} 1.0' in text


async def test_watch_resumes_with_since_exactly_once_in_order(mesh: Mesh) -> None:
    writer = mesh.clients[mesh.follower()]
    watcher = mesh.clients["n1"]
    for i in range(5):
        await jput(writer, "/v1/kv/parameters/p", {"value": i})
    seen: list[int] = []
    ws = await watcher.ws_connect("/v1/watch", params={"prefix": "parameters/", "since": "1"})
    async with asyncio.timeout(10):
        while len(seen) < 3:
            msg = await ws.receive()
            assert msg.type in (WSMsgType.BINARY, WSMsgType.TEXT)
            seen.append(orjson.loads(msg.data)["revision"])
    await ws.close()
    # Reconnect from the next revision; more writes land meanwhile.
    for i in range(5, 8):
        await jput(writer, "/v1/kv/parameters/p", {"value": i})
    ws = await watcher.ws_connect("/v1/watch", params={"prefix": "parameters/", "since": str(seen[-1] + 1)})
    async with asyncio.timeout(10):
        while len(seen) < 8:
            msg = await ws.receive()
            rec = orjson.loads(msg.data)
            assert set(rec) >= {"revision", "key", "op", "value", "prev_value", "author", "node", "time"}
            seen.append(rec["revision"])
    await ws.close()
    assert seen == list(range(1, 9))


async def test_watch_of_compacted_revision_says_so(mesh: Mesh) -> None:
    for node in mesh.nodes.values():
        node.kv.history_limit = 2
    c = mesh.clients["n1"]
    for i in range(5):
        await jput(c, "/v1/kv/parameters/q", {"value": i})
    ws = await c.ws_connect("/v1/watch", params={"since": "1"})
    msg = await ws.receive()
    assert orjson.loads(msg.data)["error"]["code"] == "compacted"
    await ws.close()


async def test_state_digest_agrees_across_replicas_once_applied(mesh: Mesh) -> None:
    """/v1/debug/state: equal applied logs give equal digests; a write moves it."""
    clients = list(mesh.clients.values())

    async def digests() -> list[dict[str, Any]]:
        out = []
        for c in clients:
            resp = await c.get("/v1/debug/state", headers=mesh.admin_headers)
            assert resp.status == 200
            out.append(await resp.json())
        return out

    async def converged() -> list[dict[str, Any]] | None:
        docs = await digests()
        return docs if len({(d["applied_index"], d["sha256"]) for d in docs}) == 1 else None

    before = await poll(converged, "replicas to converge")
    resp = await jput(clients[0], "/v1/kv/parameters/digest", {"value": 1})
    assert resp.status == 200
    after = await poll(converged, "replicas to converge after a write")
    assert after[0]["sha256"] != before[0]["sha256"]
    assert after[0]["revision"] == before[0]["revision"] + 1 and after[0]["bytes"] > 0


async def test_unanswered_forward_then_no_controller_is_unknown_not_refused(mesh: Mesh) -> None:
    """A follower's forward reaches the controller (which appends it) but the
    answer is lost, and then no controller is reachable until the deadline:
    the write may commit, so the node must say "unknown" (Timeout, 504),
    never NoLeader (503, "nothing happened")."""
    lead = await mesh.wait_leader()
    core = mesh.nodes[mesh.follower()].core

    def answer_lost(resp: object) -> None:
        return None  # appended on the controller; its answer never arrives

    def no_controller(w: Any, reason: str) -> None:
        core._fail(w, NoLeader(f"no controller reachable ({reason})"))  # the deadline passed meanwhile

    core._forward_answered = answer_lost  # type: ignore[method-assign]
    core._wait = no_controller  # type: ignore[method-assign]
    with pytest.raises(Timeout):
        await mesh.nodes[mesh.follower()].propose({"op": "put", "key": "parameters/lost-answer", "value": 1})
    # It did commit: a 503 would have told the client something false.
    await poll(lambda: _present(mesh.nodes[lead], "parameters/lost-answer"), "the write to be applied")


async def _present(node: MeshNode, key: str) -> bool:
    return node.kv.get(key) is not None
