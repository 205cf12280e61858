"""Components, history, undo/redo, saves and audit through the HTTP API of a
live in-process 3-node mesh."""

from __future__ import annotations

import asyncio
import hashlib

import orjson

from tests.api.conftest import ADMIN_HEADERS, JSON, Mesh


async def call(client, method: str, path: str, body: object = None, raw: bytes | None = None, admin: bool = False):  # type: ignore[no-untyped-def]
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    headers = {**(JSON if data is not None else {}), **(ADMIN_HEADERS if admin else {})}
    resp = await client.request(method, path, data=data, headers=headers)
    payload = await resp.read()
    return resp.status, payload


async def ok(client, method: str, path: str, body: object = None, admin: bool = False) -> object:  # type: ignore[no-untyped-def]
    status, payload = await call(client, method, path, body, admin=admin)
    assert status == 200, (method, path, status, payload)
    return orjson.loads(payload)


async def test_components_in_dependency_order(mesh: Mesh) -> None:
    doc = await ok(mesh.clients["n1"], "GET", "/v1/components")
    names = [c["name"] for c in doc["components"]]  # type: ignore[index]
    assert names[:3] == ["environment", "display_groups", "displays"]
    assert names[-1] == "settings"
    for c in doc["components"]:  # type: ignore[index]
        assert {"prefix", "schema", "policy", "critical"} <= set(c)


async def test_save_is_identical_on_every_node_and_restore_is_one_undoable_change(mesh: Mesh) -> None:
    c = mesh.clients[mesh.follower()]
    await ok(c, "PUT", "/v1/kv/displays/left", {"value": {"width": 1920, "height": 1080}})
    await ok(c, "PUT", "/v1/kv/parameters/master", {"value": 0.5})
    meta = await ok(c, "POST", "/v1/saves", {"name": "show-a"})
    assert meta["name"] == "show-a"  # type: ignore[index]
    status, _ = await call(c, "POST", "/v1/saves", {"name": "show-a"})
    assert status == 409

    # Every node exports the identical file (the save went through the log).
    exports = {}
    for nid, client in mesh.clients.items():
        async with asyncio.timeout(10):
            while True:
                status, blob = await call(client, "GET", "/v1/saves/show-a?consistency=local")
                if status == 200:
                    break
                await asyncio.sleep(0.02)
        exports[nid] = hashlib.sha256(blob).hexdigest()
    assert len(set(exports.values())) == 1, exports
    listing = await ok(mesh.clients["n1"], "GET", "/v1/saves")
    assert [s["name"] for s in listing] == ["show-a"]  # type: ignore[union-attr]

    # Change things, then restore: one change, with a recovery point.
    await ok(c, "PUT", "/v1/kv/parameters/master", {"value": 0.9})
    await ok(c, "DELETE", "/v1/kv/displays/left")
    await ok(c, "PUT", "/v1/kv/parameters/extra", {"value": 1})
    restored = await ok(c, "POST", "/v1/saves/show-a/restore", {}, admin=True)
    assert restored["recovery_point"].startswith("recovery-")  # type: ignore[index]
    assert (await ok(c, "GET", "/v1/kv/parameters/master"))["value"] == 0.5  # type: ignore[index]
    assert (await ok(c, "GET", "/v1/kv/displays/left"))["value"]["width"] == 1920  # type: ignore[index]
    status, _ = await call(c, "GET", "/v1/kv/parameters/extra")
    assert status == 404

    # Undo reverts the whole restore at once (undoing a restore is an admin's).
    await ok(c, "POST", "/v1/undo", {}, admin=True)
    assert (await ok(c, "GET", "/v1/kv/parameters/master"))["value"] == 0.9  # type: ignore[index]
    assert (await ok(c, "GET", "/v1/kv/parameters/extra"))["value"] == 1  # type: ignore[index]
    status, _ = await call(c, "GET", "/v1/kv/displays/left")
    assert status == 404
    await ok(c, "POST", "/v1/redo", {}, admin=True)
    assert (await ok(c, "GET", "/v1/kv/parameters/master"))["value"] == 0.5  # type: ignore[index]


async def test_undo_redo_and_conflicts(mesh: Mesh) -> None:
    c = mesh.clients["n1"]
    status, payload = await call(c, "POST", "/v1/undo", {})
    assert status == 409 and orjson.loads(payload)["error"]["code"] == "nothing_to_undo"
    await ok(c, "PUT", "/v1/kv/parameters/a", {"value": 1})
    await ok(c, "PUT", "/v1/kv/parameters/a", {"value": 2})
    await ok(c, "POST", "/v1/undo", {})
    assert (await ok(c, "GET", "/v1/kv/parameters/a"))["value"] == 1  # type: ignore[index]
    await ok(c, "POST", "/v1/redo", {})
    assert (await ok(c, "GET", "/v1/kv/parameters/a"))["value"] == 2  # type: ignore[index]
    status, payload = await call(c, "POST", "/v1/undo", {"force": "yes"})
    assert status == 400


async def test_history_and_audit_record_who_and_where(mesh: Mesh) -> None:
    follower = mesh.follower()
    c = mesh.clients[follower]
    await ok(c, "PUT", "/v1/kv/parameters/h", {"value": 1})
    await ok(c, "PUT", "/v1/kv/parameters/h", {"value": 2})
    hist = await ok(c, "GET", "/v1/history?prefix=parameters/h")
    recs = hist["records"]  # type: ignore[index]
    assert [r["value"] for r in recs] == [1, 2]
    assert recs[1]["prev_value"] == 1
    for r in recs:
        assert {"revision", "key", "op", "value", "prev_value", "author", "node", "time"} <= set(r)
        assert r["author"] == "anonymous" and r["node"] == follower
    # Routine writes are in the history only; a save is audited (issue 12, finding 12).
    await ok(c, "POST", "/v1/saves", {"name": "audited"})
    audit = await ok(c, "GET", "/v1/audit?since=1")
    entries = audit["entries"]  # type: ignore[index]
    assert [e["op"] for e in entries] == ["save"], entries
    assert entries[0]["author"] == "anonymous" and entries[0]["node"] == follower


async def test_bad_save_files_are_refused_and_change_nothing(mesh: Mesh) -> None:
    c = mesh.clients["n2"]
    await ok(c, "PUT", "/v1/kv/parameters/p", {"value": 1})
    await ok(c, "POST", "/v1/saves", {"name": "good"})
    _, blob = await call(c, "GET", "/v1/saves/good")
    doc = orjson.loads(blob)
    before = orjson.loads(mesh.nodes["n2"].kv.snapshot())

    tampered = dict(doc)
    tampered["sha256"] = "0" * 64
    future = dict(doc)
    future["schema_version"] = 99
    cases = {
        "checksum": (orjson.dumps(tampered), "checksum_mismatch"),
        "future": (orjson.dumps(future), "unsupported_schema_version"),
        "truncated": (blob[: len(blob) // 2], "invalid_save"),
        "not json": (b"\x00\x01", "invalid_save"),
    }
    for label, (body, code) in cases.items():
        status, payload = await call(c, "PUT", f"/v1/saves/import-{label.replace(' ', '-')}", raw=body, admin=True)
        assert status == 400, (label, status, payload)
        assert orjson.loads(payload)["error"]["code"] == code, (label, payload)
    after = orjson.loads(mesh.nodes["n2"].kv.snapshot())
    # Bookkeeping moves (the applied index, the memory of request ids and
    # their answers); the show does not.
    for doc in (before, after):
        doc.pop("applied_index", None)
        doc.pop("requests", None)
    assert after == before

    # The untouched file imports under a new name and restores.
    status, payload = await call(c, "PUT", "/v1/saves/copy", raw=blob, admin=True)
    assert status == 200, payload
    imported = orjson.loads(payload)
    assert imported["name"] == "copy"
    status, _ = await call(c, "DELETE", "/v1/saves/copy", admin=True)
    assert status == 200
    status, _ = await call(c, "GET", "/v1/saves/copy")
    assert status == 404
