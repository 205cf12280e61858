"""The API's gatekeeping, in the order a request meets it:

1. `errors_middleware`: every refusal leaves as the contract's JSON error.
2. `edge_middleware`: a `Host` that is not one of the node's names -> 421
   `misdirected` (DNS rebinding); an `Origin` that is neither the node's own
   page nor in `--allow-origin` -> 403 `origin_refused` (`null` included,
   WebSocket upgrades included); a content coding other than identity ->
   415 before any byte of the body is read. Allowed cross origins get CORS
   headers and their preflights answered.
3. `auth_middleware`: who is asking (401, or 429 once an address failed too
   often) and whether the route allows that role (403).

`LoginGuard` counts failed logins per address, refuses an address for a
while after too many, and audits them through the log from a background task
(`security_event` commands, at most one per address per interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from mesh.api._http import (
    IDENTITY,
    NODE,
    SETTINGS,
    ApiError,
    ApiSettings,
    error_response,
    normalize_origin,
    prepare,
    refuse_encoded,
)
from mesh.api.auth import ADMIN, ANONYMOUS_OPERATOR, Identity, parse_bearer, same_token
from mesh.api.handle import NodeHandle
from mesh.errors import Forbidden, MeshError, Unauthorized

log = logging.getLogger("mesh.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}

CORS_ORIGIN = web.RequestKey("cors_origin", str)


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
        resp = error_response(ApiError(exc.status, code, message))
        if exc.status == 405 and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("event=api_internal_error method=%s path=%r", request.method, request.path[:200])
        return error_response(ApiError(500, "internal", "internal error; the node's log has the details"))


# -- the edge: Host, Origin, content coding ----------------------------------------


def _origin_allowed(request: web.Request, settings: ApiSettings, origin: str) -> bool:
    norm = normalize_origin(origin)
    if norm is None:
        return False  # `null`, opaque or malformed origins
    if norm in settings.allow_origins:
        return True
    scheme, _, authority = norm.partition("://")
    return settings.is_own(request, authority, 80 if scheme == "http" else 443)


def _same_origin(request: web.Request, origin: str) -> bool:
    host = request.headers.get(hdrs.HOST)
    return host is not None and normalize_origin(origin) == normalize_origin(f"{request.scheme}://{host}")


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    host = request.headers.get(hdrs.HOST)
    if host is not None and not settings.is_own(request, host, 443 if request.secure else 80):
        raise ApiError(
            421,
            "misdirected",
            f"Host {host[:100]!r} is not one of this node's names; ask it by its address "
            "(or start it with --allow-host)",
        )
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None:
        if not _origin_allowed(request, settings, origin):
            raise ApiError(
                403,
                "origin_refused",
                f"requests from pages at {origin[:100]!r} are refused; "
                "start the node with --allow-origin to allow them",
            )
        if not _same_origin(request, origin):
            request[CORS_ORIGIN] = origin
            if request.method == "OPTIONS" and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
                return web.Response(
                    status=204,
                    headers={
                        "Access-Control-Allow-Methods": "GET, PUT, POST, DELETE",
                        "Access-Control-Allow-Headers": "Authorization, Content-Type",
                        "Access-Control-Max-Age": "600",
                    },
                )
    refuse_encoded(request)
    return await handler(request)


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: an allowed cross origin may read the answer
    (errors included)."""
    origin = request.get(CORS_ORIGIN)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers.add("Vary", "Origin")


# -- identity and roles ------------------------------------------------------------

# Everything else: GET/HEAD readers, other methods operators. Restores,
# imports, deleted saves, membership and the state digest are admin
# decisions (undoing a restore is too: the state machine decides that one,
# and `post_undo` checks early against local state).
ADMIN_ROUTES = frozenset(
    {
        ("GET", "/v1/debug/state"),
        ("HEAD", "/v1/debug/state"),
        ("POST", "/v1/members"),
        ("PUT", "/v1/saves/{name}"),
        ("DELETE", "/v1/saves/{name}"),
        ("POST", "/v1/saves/{name}/restore"),
        # Cluster credentials (mesh/api/trust_routes.py).
        ("POST", "/v1/trust/invite"),
        ("POST", "/v1/trust/approve"),
        ("POST", "/v1/trust/rotate-ca"),
    }
)


# The status page's static files (mesh/api/page.py): they hold no data, and a
# browser must load them to show its login form. No token is asked or checked.
PUBLIC_ROUTES = frozenset(
    {
        ("GET", "/"),
        ("HEAD", "/"),
        ("GET", "/ui/{name}"),
        ("HEAD", "/ui/{name}"),
        # A join token, an approved key or a valid certificate is the
        # credential of these (mesh/api/trust_routes.py); the CA is public.
        ("GET", "/v1/trust/ca"),
        ("POST", "/v1/trust/join"),
        ("POST", "/v1/trust/request"),
        ("POST", "/v1/trust/renew"),
    }
)


def _route(request: web.Request) -> tuple[str, str]:
    resource = getattr(request.match_info.route, "resource", None)
    canonical = resource.canonical if resource is not None else request.path
    return request.method, canonical


def needed_role(request: web.Request) -> str:
    if _route(request) in ADMIN_ROUTES:
        return "admin"
    return "reader" if request.method in ("GET", "HEAD") else "operator"


@dataclass
class _Pending:
    count: int
    path: str


class LoginGuard:
    """Failed logins per client address: after `limit` failures within
    `window` seconds the address gets 429 without its token being checked,
    until the oldest failure leaves the window. Failures are also collected
    per address and audited by `run` (one `security_event` per address per
    `interval`), never on the request path. Bounded: at most `max_addresses`
    addresses are tracked (the least recently failing are forgotten)."""

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        interval: float = 10.0,
        max_addresses: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.interval = interval
        self.max_addresses = max_addresses
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self.dropped = 0  # failures never audited (no controller, or too many addresses)
        # Other security events to audit the same way (the peer transport's
        # bans, mesh.transport.bans): callables returning commands.
        self.sources: list[Callable[[], list[dict[str, Any]]]] = []

    def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None if it may now."""
        times = self._failures.get(address)
        if times is None:
            return None
        now = self.clock()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        if len(times) < self.limit:
            return None
        return max(1, math.ceil(times[0] + self.window - now))

    def failed(self, address: str, path: str) -> None:
        times = self._failures.pop(address, None) or deque(maxlen=self.limit)
        times.append(self.clock())
        self._failures[address] = times
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
        pending = self._pending.get(address)
        if pending is not None:
            pending.count += 1
        elif len(self._pending) < self.max_addresses:
            self._pending[address] = _Pending(1, path[:256])
        else:
            self.dropped += 1

    # At most this many events (addresses) per interval; beyond it, a flood
    # from many addresses is logged and counted, not proposed one by one.
    max_events = 64

    def take(self) -> list[dict[str, Any]]:
        """The security events to propose now (and forget them)."""
        if len(self._pending) > self.max_events:
            extra = list(self._pending.items())[self.max_events :]
            count = sum(p.count for _, p in extra)
            self.dropped += count
            log.warning(
                "event=security_events_dropped reason=too_many_addresses addresses=%d failures=%d",
                len(extra),
                count,
            )
            for address, _ in extra:
                del self._pending[address]
        events = [
            {
                "op": "security_event",
                "event": "login_failed",
                "address": address,
                "count": p.count,
                "path": p.path,
                "author": "unknown",
            }
            for address, p in self._pending.items()
        ]
        self._pending.clear()
        for source in self.sources:
            events.extend(source())
        return events

    async def flush(self, node: NodeHandle) -> int:
        """Propose the collected events; returns how many were proposed. With
        no controller known they are dropped and logged, not proposed."""
        events = self.take()
        if not events:
            return 0
        try:
            leader = node.status().get("leader")
        except Exception:
            log.exception("node=%s event=security_event_status_failed", node.node_id)
            leader = None
        if not leader:
            count = sum(e["count"] for e in events)
            self.dropped += count
            log.warning(
                "node=%s event=security_events_dropped reason=no_controller addresses=%d failures=%d",
                node.node_id,
                len(events),
                count,
            )
            return 0
        proposed = 0
        for event in events:
            log.warning(
                "node=%s event=%s address=%s count=%d path=%r",
                node.node_id,
                event["event"],
                event["address"],
                event["count"],
                event["path"],
            )
            try:
                result = await node.propose(prepare(node, event))
            except MeshError as exc:
                log.warning(
                    "node=%s event=security_event_not_recorded address=%s error=%r",
                    node.node_id,
                    event["address"],
                    str(exc),
                )
                continue
            if "error" in result:
                log.warning(
                    "node=%s event=security_event_refused address=%s code=%s",
                    node.node_id,
                    event["address"],
                    result["error"].get("code"),
                )
                continue
            proposed += 1
        return proposed

    async def run(self, node: NodeHandle) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush(node)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node=%s event=security_event_flush_failed", node.node_id)


GUARD = web.AppKey("login_guard", LoginGuard)


async def guard_task(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the background task that audits failed logins."""
    task = asyncio.get_running_loop().create_task(app[GUARD].run(app[NODE]), name="api-login-audit")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _identify(request: web.Request, settings: ApiSettings) -> Identity:
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None and settings.auth is None:
        return ANONYMOUS_OPERATOR
    guard = request.app[GUARD]
    address = request.remote or "unknown"
    wait = guard.retry_after(address)
    if wait is not None:
        raise ApiError(
            429,
            "too_many_requests",
            f"too many failed logins from {address}; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    if header is None:
        raise Unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")
    ident: Identity | None
    if settings.auth is not None:
        ident = settings.auth.identify(header)
    else:
        token = parse_bearer(header)
        admin = settings.admin_token
        ident = ADMIN if token is not None and admin is not None and same_token(token, admin) else None
    if ident is None:
        guard.failed(address, request.path)
        if settings.auth is None:
            raise Unauthorized(
                "the token is not this node's admin token (<data-dir>/admin-token); "
                "leave the token out for operator access"
            )
        raise Unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")
    return ident


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _route(request) in PUBLIC_ROUTES:
        return await handler(request)
    ident = _identify(request, request.app[SETTINGS])
    needed = needed_role(request)
    if not ident.allows(needed):
        raise Forbidden(f"role {ident.role} may not {request.method} {request.path} (needs {needed})")
    request[IDENTITY] = ident
    return await handler(request)
