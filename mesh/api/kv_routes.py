"""Routes of the key-value core: status, keys, transactions, the watch,
metrics and the state digest (shared/API.md)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

import orjson
from aiohttp import web

from mesh.api import offline_routes
from mesh.api._http import (
    NODE,
    expected_version,
    int_query,
    json_response,
    linearizable,
    path_key,
    query,
    read_json_object,
    valid_key,
)
from mesh.api.handle import NodeHandle
from mesh.errors import BadRequest, Gone, NotFound
from mesh.state.kv import Compacted

log = logging.getLogger("mesh.api")

MAX_TXN_OPS = 1024


async def get_status(request: web.Request) -> web.Response:
    return json_response(request.app[NODE].status())


class DigestCache:
    """The state digest of `GET /v1/debug/state`, computed at most once per
    applied state (applied index and revision): serialising the whole state
    is the costliest thing a request can ask for, so callers asking about
    the same state share one computation."""

    def __init__(self) -> None:
        self._at: tuple[int, int] | None = None
        self._doc: dict[str, Any] | None = None
        self.computed = 0

    def get(self, node: NodeHandle) -> dict[str, Any]:
        kv = node.kv
        at = (kv.applied_index, kv.revision)
        if self._at != at or self._doc is None:
            blob = kv.snapshot()
            self.computed += 1
            self._doc = {
                "id": node.node_id,
                "applied_index": at[0],
                "revision": at[1],
                "sha256": hashlib.sha256(blob).hexdigest(),
                "bytes": len(blob),
            }
            self._at = at
        return self._doc


DIGEST = web.AppKey("digest_cache", DigestCache)


async def get_state_digest(request: web.Request) -> web.Response:
    """GET /v1/debug/state (admin): this node's applied state as a snapshot
    digest, so that a checker can tell whether replicas converged to
    identical state (the snapshot is canonical: equal logs give equal bytes)."""
    return json_response(request.app[DIGEST].get(request.app[NODE]))


def staleness(node: NodeHandle) -> dict[str, Any]:
    """What a local read adds (issue 14): whether this node is cut off from
    its controller, and since when it last heard one."""
    return {"stale": not node.connected(), "controller_contact_ms": node.controller_contact_ms()}


async def get_key(request: web.Request) -> web.Response:
    key = path_key(request)
    node = request.app[NODE]
    lin = linearizable(request)
    await node.read_barrier(lin)
    kv = node.kv.get(key)
    doc: dict[str, Any] | None = {**kv.to_dict(key), "revision": node.kv.revision} if kv is not None else None
    if not lin:
        doc = offline_routes.overlay_key(node, key, doc)
    if doc is None:
        raise NotFound(f"key {key!r} does not exist")
    if not lin:
        doc.update(staleness(node))
    return json_response(doc)


async def list_keys(request: web.Request) -> web.Response:
    prefix = query(request).get("prefix", "")
    node = request.app[NODE]
    lin = linearizable(request)
    await node.read_barrier(lin)
    items = [kv.to_dict(k) for k, kv in node.kv.range(prefix)]
    doc: dict[str, Any] = {"revision": node.kv.revision, "items": items}
    if not lin:
        doc["items"] = offline_routes.overlay_items(node, prefix, items)
        doc.update(staleness(node))
    return json_response(doc)


async def put_key(request: web.Request) -> web.Response:
    key = path_key(request)
    body = await read_json_object(request, frozenset({"value", "expected_version"}))
    if "value" not in body:
        raise BadRequest("body needs a value", code="invalid_value")
    command: dict[str, Any] = {"op": "put", "key": key, "value": body["value"]}
    expected = expected_version(body.get("expected_version"))
    if expected is not None:
        command["expected_version"] = expected
    return await offline_routes.write(request, command)


async def delete_key(request: web.Request) -> web.Response:
    key = path_key(request)
    command: dict[str, Any] = {"op": "delete", "key": key}
    expected = int_query(request, "expected_version", None)
    if expected is not None:
        command["expected_version"] = expected
    return await offline_routes.write(request, command)


async def post_txn(request: web.Request) -> web.Response:
    body = await read_json_object(request, frozenset({"ops"}))
    ops = body.get("ops")
    if not isinstance(ops, list) or not ops:
        raise BadRequest("ops must be a non-empty list", code="invalid_value")
    if len(ops) > MAX_TXN_OPS:
        raise BadRequest(f"at most {MAX_TXN_OPS} ops per transaction", code="invalid_value")
    clean = []
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            raise BadRequest(f"ops[{i}] must be an object", code="invalid_value")
        unknown = set(op) - {"op", "key", "value", "expected_version"}
        if unknown:
            raise BadRequest(f"ops[{i}]: unknown field(s) {', '.join(sorted(unknown))}", code="invalid_field")
        if op.get("op") not in ("put", "delete", "check"):
            raise BadRequest(f"ops[{i}].op must be put, delete or check", code="invalid_value")
        valid_key(request, op.get("key"), f"ops[{i}]: ")
        if op["op"] == "put" and "value" not in op:
            raise BadRequest(f"ops[{i}]: put needs a value", code="invalid_value")
        expected_version(op.get("expected_version"), f"ops[{i}]: ")
        clean.append(op)
    return await offline_routes.write(request, {"op": "txn", "ops": clean})


async def watch(request: web.Request) -> web.StreamResponse:
    prefix = query(request).get("prefix", "")
    node = request.app[NODE]
    since = int_query(request, "since", None)
    if since is None:
        since = node.kv.revision + 1
    ws = web.WebSocketResponse(heartbeat=15.0)
    if not ws.can_prepare(request).ok:
        raise BadRequest("watch is a WebSocket endpoint", code="websocket_required")
    await ws.prepare(request)

    async def pump() -> None:
        # JSON travels in text frames (API.md).
        try:
            async for msg in node.watch_events(prefix, since):
                await ws.send_str(orjson.dumps(msg).decode())
        except (Gone, Compacted) as exc:
            await ws.send_str(orjson.dumps({"error": {"code": "compacted", "message": str(exc)}}).decode())
            await ws.close(code=4410, message=b"compacted")

    # Read the client side too: that is how a close (or a dead peer, through
    # the heartbeat) is noticed while no change is being sent.
    sender = asyncio.ensure_future(pump())
    try:
        async for _ in ws:
            pass  # clients send nothing on a watch; ignore stray messages
    except ConnectionResetError:
        log.info("node=%s event=watch_client_gone prefix=%s", node.node_id, prefix)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            await sender
    return ws


async def metrics(request: web.Request) -> web.Response:
    body = request.app[NODE].metrics_text()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def register(app: web.Application) -> None:
    app[DIGEST] = DigestCache()
    r = app.router
    r.add_get("/v1/status", get_status)
    r.add_get("/v1/debug/state", get_state_digest)
    r.add_get("/v1/kv", list_keys)
    r.add_get("/v1/kv/{key:.+}", get_key)
    r.add_put("/v1/kv/{key:.+}", put_key)
    r.add_delete("/v1/kv/{key:.+}", delete_key)
    r.add_post("/v1/txn", post_txn)
    r.add_get("/v1/watch", watch)
    r.add_get("/metrics", metrics)
