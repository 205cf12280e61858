"""The aiohttp application: routes of shared/API.md over a `NodeHandle`.

Every error leaves as {"error": {"code", "message"}} with its status, bodies
are size-limited and validated before anything is proposed, and an API bound
beyond loopback requires a bearer token whose role covers the route.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from mesh.api.auth import ANONYMOUS_ADMIN, Identity, TokenAuth
from mesh.api.handle import NodeHandle
from mesh.errors import BadRequest, Conflict, Forbidden, Gone, MeshError, NotFound, TooLarge, Unauthorized
from mesh.state.kv import CommandError, Compacted, validate_key
from mesh.state.model import ERROR_STATUS

log = logging.getLogger("mesh.api")

NODE = web.AppKey("node", NodeHandle)
AUTH = web.AppKey("auth", TokenAuth | None)  # type: ignore[arg-type]
MAX_BODY = web.AppKey("max_body", int)
MAX_SAVE_BODY = web.AppKey("max_save_body", int)
IDENTITY = web.RequestKey("identity", Identity)
DEFAULT_MAX_BODY = 1 << 20
# Imported save files may be larger than any other request.
DEFAULT_MAX_SAVE_BODY = 32 << 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def error_response(exc: MeshError) -> web.Response:
    return json_response(exc.body(), exc.status)


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    400: "bad_request",
}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MeshError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason if exc.status != 404 else f"no route for {request.method} {request.path}"
        return json_response({"error": {"code": code, "message": message}}, exc.status)


def _needed_role(request: web.Request) -> str:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return "reader"
    path = request.path
    # Replacing the show, importing or deleting saves, and changing who is in
    # the mesh are admin decisions; everyday edits and undo are an operator's.
    if path.startswith("/v1/members") or (path.startswith("/v1/saves/") and request.method in ("PUT", "DELETE")):
        return "admin"
    if path.startswith("/v1/saves/") and path.endswith("/restore"):
        return "admin"
    return "operator"


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[AUTH]
    if auth is None:
        request[IDENTITY] = ANONYMOUS_ADMIN
        return await handler(request)
    ident = auth.identify(request.headers.get("Authorization"))
    if ident is None:
        raise Unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")
    needed = _needed_role(request)
    if not ident.allows(needed):
        raise Forbidden(f"role {ident.role} may not {request.method} {request.path} (needs {needed})")
    request[IDENTITY] = ident
    return await handler(request)


async def read_body(request: web.Request, limit: int) -> bytes:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise TooLarge(f"request body larger than {request.app[MAX_SAVE_BODY]} bytes") from exc
    if len(raw) > limit:
        raise TooLarge(f"request body of {len(raw)} bytes is larger than {limit}")
    return raw


async def read_json_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    raw = await read_body(request, request.app[MAX_BODY])
    if not raw:
        raise BadRequest("request body is empty; expected a JSON object", code="invalid_json")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    unknown = set(doc) - allowed
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", code="invalid_field")
    return doc


def _key(request: web.Request) -> str:
    return _valid_key(request, request.match_info["key"])


def _valid_key(request: web.Request, key: Any, where: str = "") -> str:
    """Syntax and component checked before anything is proposed (the state
    machine checks again, identically on every node)."""
    try:
        validate_key(key)
        request.app[NODE].kv.registry.component_of(key)
    except CommandError as exc:
        raise BadRequest(f"{where}{exc}", code="invalid_key") from exc
    except LookupError as exc:
        message = getattr(exc, "message", str(exc))
        raise BadRequest(f"{where}{message}", code="unknown_component") from exc
    return key


def _expected_version(raw: Any) -> int | None:
    if raw is None:
        return None
    if type(raw) is not int or raw < 0:
        raise BadRequest("expected_version must be a non-negative integer", code="invalid_value")
    return raw


def _linearizable(request: web.Request) -> bool:
    consistency = request.query.get("consistency", "linearizable")
    if consistency not in ("linearizable", "local"):
        raise BadRequest("consistency must be linearizable or local", code="invalid_value")
    return consistency == "linearizable"


def _int_query(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", code="invalid_value") from None
    if value < 0:
        raise BadRequest(f"{name} must not be negative", code="invalid_value")
    return value


def _result(result: dict[str, Any]) -> dict[str, Any]:
    """Map a state-machine result to the answer, raising its error with the
    status the state model assigns to its code."""
    err = result.get("error")
    if err is None:
        return result
    code = err.get("code", "error")
    message = err.get("message", code)
    extra = {k: v for k, v in err.items() if k not in ("code", "message")}
    status = ERROR_STATUS.get(code, 400)
    if status == 409:
        raise Conflict(message, code=code, **extra)
    if status == 404:
        raise NotFound(message, **extra)
    if status == 410:
        raise Gone(message, **extra)
    if status == 413:
        raise TooLarge(message, **extra)
    raise BadRequest(message, code=code, **extra)


async def _propose(request: web.Request, command: dict[str, Any]) -> dict[str, Any]:
    ident: Identity = request[IDENTITY]
    command["author"] = ident.name
    command["role"] = ident.role  # the state machine enforces admin-only ops (INTERFACES.md section 1)
    return _result(await request.app[NODE].propose(command))


# -- handlers ------------------------------------------------------------------


async def get_status(request: web.Request) -> web.Response:
    return json_response(request.app[NODE].status())


async def get_state_digest(request: web.Request) -> web.Response:
    """GET /v1/debug/state: this node's applied state as a snapshot digest,
    so that a checker can tell whether replicas converged to identical
    state (the snapshot is canonical: equal logs give equal bytes)."""
    kv = request.app[NODE].kv
    blob = kv.snapshot()
    return json_response(
        {
            "id": request.app[NODE].node_id,
            "applied_index": kv.applied_index,
            "revision": kv.revision,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob),
        }
    )


async def get_key(request: web.Request) -> web.Response:
    key = _key(request)
    node = request.app[NODE]
    await node.read_barrier(_linearizable(request))
    kv = node.kv.get(key)
    if kv is None:
        raise NotFound(f"key {key!r} does not exist")
    return json_response({**kv.to_dict(key), "revision": node.kv.revision})


async def list_keys(request: web.Request) -> web.Response:
    prefix = request.query.get("prefix", "")
    node = request.app[NODE]
    await node.read_barrier(_linearizable(request))
    items = [kv.to_dict(k) for k, kv in node.kv.range(prefix)]
    return json_response({"revision": node.kv.revision, "items": items})


async def put_key(request: web.Request) -> web.Response:
    key = _key(request)
    body = await read_json_object(request, frozenset({"value", "expected_version"}))
    if "value" not in body:
        raise BadRequest("body needs a value", code="invalid_value")
    command: dict[str, Any] = {"op": "put", "key": key, "value": body["value"]}
    expected = _expected_version(body.get("expected_version"))
    if expected is not None:
        command["expected_version"] = expected
    return json_response(await _propose(request, command))


async def delete_key(request: web.Request) -> web.Response:
    key = _key(request)
    command: dict[str, Any] = {"op": "delete", "key": key}
    expected = _int_query(request, "expected_version", None)
    if expected is not None:
        command["expected_version"] = expected
    return json_response(await _propose(request, command))


async def post_txn(request: web.Request) -> web.Response:
    body = await read_json_object(request, frozenset({"ops"}))
    ops = body.get("ops")
    if not isinstance(ops, list) or not ops:
        raise BadRequest("ops must be a non-empty list", code="invalid_value")
    if len(ops) > 1024:
        raise BadRequest("at most 1024 ops per transaction", code="invalid_value")
    clean = []
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            raise BadRequest(f"ops[{i}] must be an object", code="invalid_value")
        unknown = set(op) - {"op", "key", "value", "expected_version"}
        if unknown:
            raise BadRequest(f"ops[{i}]: unknown field(s) {', '.join(sorted(unknown))}", code="invalid_field")
        if op.get("op") not in ("put", "delete", "check"):
            raise BadRequest(f"ops[{i}].op must be put, delete or check", code="invalid_value")
        _valid_key(request, op.get("key"), f"ops[{i}]: ")
        if op["op"] == "put" and "value" not in op:
            raise BadRequest(f"ops[{i}]: put needs a value", code="invalid_value")
        _expected_version(op.get("expected_version"))
        clean.append(op)
    return json_response(await _propose(request, {"op": "txn", "ops": clean}))


async def watch(request: web.Request) -> web.StreamResponse:
    prefix = request.query.get("prefix", "")
    node = request.app[NODE]
    since = _int_query(request, "since", None)
    if since is None:
        since = node.kv.revision + 1
    ws = web.WebSocketResponse(heartbeat=15.0)
    if not ws.can_prepare(request).ok:
        raise BadRequest("watch is a WebSocket endpoint", code="websocket_required")
    await ws.prepare(request)

    async def pump() -> None:
        try:
            async for rec in node.watch(prefix, since):
                await ws.send_bytes(orjson.dumps(rec.to_dict()))
        except (Gone, Compacted) as exc:
            await ws.send_bytes(orjson.dumps({"error": {"code": "compacted", "message": str(exc)}}))
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


def add_state_routes(app: web.Application) -> None:
    from mesh.api import state_routes

    state_routes.register(app)


def add_members_routes(app: web.Application) -> None:
    from mesh.api import members_routes

    members_routes.register(app)


def create_app(
    node: NodeHandle,
    auth: TokenAuth | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    max_save_body: int = DEFAULT_MAX_SAVE_BODY,
) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=max(max_body, max_save_body)
    )
    app[MAX_SAVE_BODY] = max_save_body
    app[NODE] = node
    app[AUTH] = auth
    app[MAX_BODY] = max_body
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/debug/state", get_state_digest)
    app.router.add_get("/v1/kv", list_keys)
    app.router.add_get("/v1/kv/{key:.+}", get_key)
    app.router.add_put("/v1/kv/{key:.+}", put_key)
    app.router.add_delete("/v1/kv/{key:.+}", delete_key)
    app.router.add_post("/v1/txn", post_txn)
    app.router.add_get("/v1/watch", watch)
    app.router.add_get("/metrics", metrics)
    add_state_routes(app)
    add_members_routes(app)
    return app
