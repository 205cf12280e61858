"""Routes of the hana state model: components, history, undo/redo, saves,
audit (shared/API.md). Changes go through the log like every write; queries
read the local replica after the requested consistency barrier."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mesh.api._http import (
    IDENTITY,
    NODE,
    int_query,
    json_response,
    linearizable,
    optional_json_object,
    path_segment,
    propose,
    query,
    read_body,
    read_json_object,
    require_json,
)
from mesh.errors import BadRequest, Forbidden, Gone, NoLeader, NotFound
from mesh.state.kv import Compacted
from mesh.state.model import StateError

MAX_NAME = 128
# Undoing or redoing one of these change groups is an admin action (the state
# machine decides; the API refuses early from its local state).
ADMIN_UNDO_OPS = frozenset({"restore", "import", "import_save"})


def _name(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("name must be a non-empty string", code="invalid_value")
    if len(raw) > MAX_NAME or any(ord(c) < 0x20 or c in "/\\" for c in raw):
        raise BadRequest(
            f"name must be at most {MAX_NAME} characters, without / \\ or control characters", code="invalid_value"
        )
    return raw


def _components(raw: Any) -> list[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(c, str) and c for c in raw):
        raise BadRequest("components must be a non-empty list of component names", code="invalid_value")
    return raw


async def get_components(request: web.Request) -> web.Response:
    node = request.app[NODE]
    stale = await local_ok_barrier(request)
    return _with_stale(json_response(_stale_doc(node.kv.components(), stale, request)), stale)


async def get_history(request: web.Request) -> web.Response:
    node = request.app[NODE]
    since = int_query(request, "since", 0) or 0
    limit = int_query(request, "limit", None)
    stale = await local_ok_barrier(request)
    try:
        doc = node.kv.history_query(query(request).get("prefix", ""), since, limit)
        return _with_stale(json_response(_stale_doc(doc, stale, request)), stale)
    except Compacted as exc:
        raise Gone(str(exc), oldest=exc.oldest) from exc


async def get_audit(request: web.Request) -> web.Response:
    node = request.app[NODE]
    since = int_query(request, "since", 0) or 0
    limit = int_query(request, "limit", None)
    stale = await local_ok_barrier(request)
    try:
        return _with_stale(json_response(_stale_doc(node.kv.audit(since, limit), stale, request)), stale)
    except Compacted as exc:
        raise Gone(str(exc), oldest=exc.oldest) from exc


async def local_ok_barrier(request: web.Request) -> bool:
    """The read barrier of a query that needs no controller (history,
    components, saves, export, audit; issue 14): True when it answers from
    local state that may be stale. Without an explicit `consistency`, a node
    that does not hear a controller answers at once from its local state
    (and one that loses it during the barrier falls back to it) instead of
    a 503 after the request timeout; `consistency=linearizable` given
    explicitly keeps the strict barrier, `local` reads locally."""
    node = request.app[NODE]
    lin = linearizable(request)
    if not lin:
        return not node.connected()
    if "consistency" in query(request):
        await node.read_barrier(True)
        return False
    if not node.connected():
        return True
    try:
        await node.read_barrier(True)
    except NoLeader:
        return True
    return False


def _stale_doc(doc: dict[str, Any], stale: bool, request: web.Request) -> dict[str, Any]:
    node = request.app[NODE]
    return {**doc, "stale": stale, "controller_contact_ms": node.controller_contact_ms()}


def _with_stale(resp: web.Response, stale: bool) -> web.Response:
    resp.headers.update(_stale_headers(stale))
    return resp


def _stale_headers(stale: bool) -> dict[str, str]:
    return {"X-Hana-Stale": "true" if stale else "false"}


def _early_undo_check(request: web.Request, op: str, stack: str) -> None:
    """A fast 403 when local state shows the group to undo (or redo) is a
    restore or import and the caller is not an admin; the state machine
    enforces it for good."""
    ident = request[IDENTITY]
    if ident.allows("admin"):
        return
    group = request.app[NODE].kv.undo.peek(op == "redo", stack)
    if group is not None and group.op in ADMIN_UNDO_OPS:
        raise Forbidden(f"{op} of a {group.op} (revision {group.revision}) needs the admin role")


async def _undo_redo(request: web.Request, op: str) -> web.Response:
    body = await optional_json_object(request, frozenset({"author", "force"}))
    command: dict[str, Any] = {"op": op}
    author = body.get("author")
    if author is not None:
        if not isinstance(author, str) or not author:
            raise BadRequest("author must be a non-empty string", code="invalid_value")
        command["stack"] = author
    _early_undo_check(request, op, author if author is not None else request[IDENTITY].name)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest("force must be a boolean", code="invalid_value")
    if force:
        command["force"] = True
    return json_response(await propose(request, command))


async def post_undo(request: web.Request) -> web.Response:
    return await _undo_redo(request, "undo")


async def post_redo(request: web.Request) -> web.Response:
    return await _undo_redo(request, "redo")


async def post_save(request: web.Request) -> web.Response:
    body = await read_json_object(request, frozenset({"name", "components"}))
    command: dict[str, Any] = {"op": "save", "name": _name(body.get("name"))}
    components = _components(body.get("components"))
    if components is not None:
        command["components"] = components
    return json_response(await propose(request, command))


async def list_saves(request: web.Request) -> web.Response:
    node = request.app[NODE]
    stale = await local_ok_barrier(request)
    # A list (the contract's shape): staleness travels in a header.
    return _with_stale(json_response(node.kv.saves()["saves"]), stale)


def _path_name(request: web.Request) -> str:
    return _name(path_segment(request, 3))  # /v1/saves/{name}[/restore]


async def export_save(request: web.Request) -> web.Response:
    name = _path_name(request)
    node = request.app[NODE]
    stale = await local_ok_barrier(request)
    try:
        blob = node.kv.export_save(name)
    except StateError as exc:
        raise NotFound(str(exc)) from exc
    return web.Response(
        body=blob,
        content_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{name}.hana"', **_stale_headers(stale)},
    )


async def import_save(request: web.Request) -> web.Response:
    name = _path_name(request)
    require_json(request)  # a save file is JSON
    raw = await read_body(request)
    if not raw:
        raise BadRequest("the body must be a save file (.hana)", code="invalid_save")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise BadRequest("a save file is UTF-8 JSON text", code="invalid_save") from exc
    # Validated (format, checksum, schema version, component schemas) by the
    # state machine's prevalidate before the log, and again when applied.
    return json_response(await propose(request, {"op": "import_save", "file": text, "name": name}))


async def restore_save(request: web.Request) -> web.Response:
    name = _path_name(request)
    body = await optional_json_object(request, frozenset({"components"}))
    command: dict[str, Any] = {"op": "restore", "name": name}
    components = _components(body.get("components"))
    if components is not None:
        command["components"] = components
    return json_response(await propose(request, command))


async def delete_save(request: web.Request) -> web.Response:
    name = _path_name(request)
    return json_response(await propose(request, {"op": "delete_save", "name": name}))


def register(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/components", get_components)
    r.add_get("/v1/history", get_history)
    r.add_get("/v1/audit", get_audit)
    r.add_post("/v1/undo", post_undo)
    r.add_post("/v1/redo", post_redo)
    r.add_post("/v1/saves", post_save)
    r.add_get("/v1/saves", list_saves)
    r.add_get("/v1/saves/{name}", export_save)
    r.add_put("/v1/saves/{name}", import_save)
    r.add_post("/v1/saves/{name}/restore", restore_save)
    r.add_delete("/v1/saves/{name}", delete_save)
