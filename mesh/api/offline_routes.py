"""Routes of a node cut off from its controller (issue 14, shared/API.md "A
node cut off from the controller"): the outbox, conflicts, reset to
defaults, `?offline=queue` and `?confirm=all` on writes, and the pending
overlay of local reads.

`?confirm=all`: once the write is applied here, the answer waits (at most
`CONFIRM_TIMEOUT`, the request timeout) until every member of the
configuration has applied its revision, and adds `applied_by` and
`missing`. Each member is asked its applied state through its own API
(`GET /v1/status`, its `revision`: revisions are numbered in log order on
every node, so a member at revision >= R has applied the entry that made
R), with the caller's credentials. The controller's Raft progress
(`match_index`) says only that a member *stored* an entry, not that it
applied it, so it cannot answer "does this display have the scene".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from mesh.api._http import (
    IDENTITY,
    NODE,
    json_response,
    optional_json_object,
    path_segment,
    prepare,
    propose,
    query,
    raise_for_result,
    read_json_object,
    stamp,
)
from mesh.api.handle import NodeHandle
from mesh.errors import BadRequest, Conflict, Forbidden, NotFound
from mesh.state.components import SchemaError
from mesh.state.values import check_value

# How long `?confirm=all` waits for every member, at most (the request timeout).
CONFIRM_TIMEOUT = 5.0
CONFIRM_POLL = 0.05
TAKES = ("current", "proposed", "value")
_MAX_ID = (1 << 63) - 1


# -- query flags of writes ---------------------------------------------------------------


def _is_write(request: web.Request) -> bool:
    path = request.path
    if request.method in ("PUT", "DELETE"):
        return path.startswith("/v1/kv/")
    return request.method == "POST" and path == "/v1/txn"


@web.middleware
async def write_flags_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """`offline` and `confirm` are for writes (PUT/DELETE /v1/kv/{key}, POST
    /v1/txn): anywhere else they are refused (400) before anything runs."""
    raw = request.query_string
    if "offline" not in raw and "confirm" not in raw:
        return await handler(request)  # the query is the route's to parse (or not)
    q = query(request)
    if ("offline" in q or "confirm" in q) and not _is_write(request):
        name = "offline" if "offline" in q else "confirm"
        raise BadRequest(
            f"{name}= is for writes (PUT or DELETE /v1/kv/{{key}}, POST /v1/txn), not {request.method} {request.path}",
            code="invalid_value",
        )
    return await handler(request)


def offline_mode(request: web.Request) -> bool:
    raw = query(request).get("offline")
    if raw is None:
        return False
    if raw != "queue":
        raise BadRequest("offline must be queue", code="invalid_value")
    return True


def confirm_mode(request: web.Request) -> bool:
    raw = query(request).get("confirm")
    if raw is None:
        return False
    if raw != "all":
        raise BadRequest("confirm must be all", code="invalid_value")
    return True


async def write(request: web.Request, command: dict[str, Any]) -> web.Response:
    """Propose a write (put, delete, txn) with its `offline` and `confirm` flags."""
    offline = offline_mode(request)
    confirm = confirm_mode(request)
    node = request.app[NODE]
    if offline:
        if command["op"] == "txn" and all(op.get("op") == "check" for op in command["ops"]):
            raise BadRequest("a queued transaction needs a put or a delete", code="invalid_value")
        stamp(request, command)
        answer = await node.propose_offline(prepare(node, command))
        if "queued" in answer:
            return json_response(answer, status=202)
        result = raise_for_result(answer)
    else:
        result = await propose(request, command)
    if confirm and isinstance(result.get("revision"), int):
        result.update(await confirm_all(request, result["revision"]))
    return json_response(result)


async def confirm_all(request: web.Request, revision: int) -> dict[str, list[str]]:
    """`applied_by` and `missing`: which members have applied `revision`
    (see the module docstring)."""
    node = request.app[NODE]
    members = [str(m["id"]) for m in node.status().get("members", []) if m.get("id") is not None]
    applied: set[str] = set()
    deadline = time.monotonic() + CONFIRM_TIMEOUT
    # The caller's token only for a member that refuses to answer without
    # one (a shared --tokens-file): a node's own admin token (what the CLI
    # finds on this machine) is refused by every other node, as a failed login.
    auth = request.headers.get("Authorization")
    timeout = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            for nid in members:
                if nid in applied:
                    continue
                if nid == node.node_id:
                    if node.kv.revision >= revision:
                        applied.add(nid)
                    continue
                api = node.api_address(nid)
                if api and await _member_revision(session, api, auth) >= revision:
                    applied.add(nid)
            if len(applied) == len(members) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(CONFIRM_POLL)
    return {"applied_by": sorted(applied), "missing": sorted(set(members) - applied)}


async def _member_revision(session: aiohttp.ClientSession, api: str, auth: str | None = None) -> int:
    """A member's applied revision as its API says (-1: no answer); asked
    without a token first, with the caller's if the member wants one."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with session.get(f"http://{api}/v1/status") as resp:
            if resp.status == 401 and auth:
                return await _member_revision_as(session, api, auth)
            if resp.status == 200:
                doc = await resp.json()
                rev = doc.get("revision") if isinstance(doc, dict) else None
                return rev if isinstance(rev, int) else -1
    return -1


async def _member_revision_as(session: aiohttp.ClientSession, api: str, auth: str) -> int:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with session.get(f"http://{api}/v1/status", headers={"Authorization": auth}) as resp:
            if resp.status == 200:
                doc = await resp.json()
                rev = doc.get("revision") if isinstance(doc, dict) else None
                return rev if isinstance(rev, int) else -1
    return -1


# -- local reads: queued values are pending ------------------------------------------------


def _pending_doc(key: str, kind: str, value: Any, doc: dict[str, Any] | None, revision: int) -> dict[str, Any]:
    base = dict(doc) if doc is not None else {"key": key, "version": 0, "create_revision": 0, "mod_revision": 0}
    base.setdefault("revision", revision)
    if kind == "put":
        base["value"] = value
    else:
        base["value"] = None
        base["deleted"] = True
    base["pending"] = True
    return base


def overlay_key(node: NodeHandle, key: str, doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """A local read of `key` with this node's queued write of it, if any."""
    queued = node.outbox_overlay(key).get(key)
    if queued is None:
        return doc
    return _pending_doc(key, queued[0], queued[1], doc, node.kv.revision)


def overlay_items(node: NodeHandle, prefix: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A local prefix read with this node's queued writes under it."""
    queued = node.outbox_overlay(prefix)
    if not queued:
        return items
    by_key = {item["key"]: item for item in items}
    for key, (kind, value) in queued.items():
        by_key[key] = _pending_doc(key, kind, value, by_key.get(key), node.kv.revision)
        by_key[key].pop("revision", None)
    return [by_key[k] for k in sorted(by_key)]


# -- the outbox ----------------------------------------------------------------------------


async def get_outbox(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return json_response({**node.outbox(), "connected": node.connected()})


# -- conflicts -----------------------------------------------------------------------------


def _conflict_id(request: web.Request) -> int:
    raw = path_segment(request, 3)  # /v1/conflicts/{id}[/resolve]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > _MAX_ID:
        raise NotFound(f"no conflict {raw!r}")
    return int(raw)


async def list_conflicts(request: web.Request) -> web.Response:
    """`GET /v1/conflicts[?status=open|all]`: open conflicts (or also the
    resolved ones held), from local state (marked stale when this node
    hears no controller)."""
    node = request.app[NODE]
    status = query(request).get("status", "open")
    if status not in ("open", "all"):
        raise BadRequest("status must be open or all", code="invalid_value")
    doc = node.kv.conflicts(include_resolved=status == "all")
    return json_response({**doc, "stale": not node.connected()})


async def get_conflict(request: web.Request) -> web.Response:
    node = request.app[NODE]
    cid = _conflict_id(request)
    view = node.kv.conflict(cid)
    if view is None:
        raise NotFound(f"no conflict {cid}")
    return json_response(view)


async def resolve_conflict(request: web.Request) -> web.Response:
    """`POST /v1/conflicts/{id}/resolve` `{"take": "current"|"proposed"|"value", "value"?}`
    (operator role): one revision, one undo step, audited. Checked against
    local state first (404 unknown, 409 resolved already, 400 invalid value);
    the state machine decides for good, identically on every node."""
    cid = _conflict_id(request)
    body = await read_json_object(request, frozenset({"take", "value"}))
    if not request[IDENTITY].allows("operator"):
        raise Forbidden("resolving a conflict needs the operator role")
    take = body.get("take")
    if take not in TAKES:
        raise BadRequest("take must be current, proposed or value", code="invalid_value")
    node = request.app[NODE]
    kv = node.kv
    pending = kv.pending.get(cid)
    if pending is None:
        if cid in kv.resolved:
            raise Conflict(f"conflict {cid} is resolved already", code="conflict_resolved", id=cid)
        raise NotFound(f"no conflict {cid}")
    command: dict[str, Any] = {"op": "resolve", "id": cid, "take": take}
    if take == "value":
        if "value" not in body:
            raise BadRequest("take value needs a value", code="invalid_value")
        key = pending.get("key") or pending["ops"][0][1]
        try:
            check_value(body["value"], "value")
            kv.registry.validate(key, body["value"])
        except SchemaError as exc:
            raise BadRequest(str(exc), code="invalid_value", key=key) from exc
        command["value"] = body["value"]
    elif "value" in body:
        raise BadRequest(f"take {take} takes no value", code="invalid_value")
    return json_response(await propose(request, command))


# -- reset to defaults ---------------------------------------------------------------------


async def reset_component(request: web.Request) -> web.Response:
    """`POST /v1/components/{name}/reset` `{"keys"?: [...]}`: the component's
    keys (or the chosen ones) set to their defaults, keys without one
    deleted; one revision and one undo step."""
    name = path_segment(request, 3)  # /v1/components/{name}/reset
    node = request.app[NODE]
    if name not in node.kv.registry:
        raise NotFound(f"no component {name!r}")
    body = await optional_json_object(request, frozenset({"keys"}))
    command: dict[str, Any] = {"op": "reset", "component": name}
    if "keys" in body:
        command["keys"] = body["keys"]
    result = await propose(request, command)
    return json_response(result)


def register(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/outbox", get_outbox)
    r.add_get("/v1/conflicts", list_conflicts)
    r.add_get("/v1/conflicts/{id}", get_conflict)
    r.add_post("/v1/conflicts/{id}/resolve", resolve_conflict)
    r.add_post("/v1/components/{name}/reset", reset_component)
