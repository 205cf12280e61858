"""A small asyncio client of the HTTP API (used by the CLI, tests and benchmarks)."""

from __future__ import annotations

import builtins  # MeshClient.list shadows list in the class body
import contextlib
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

# No value given (None is a JSON value: null).
NO_VALUE: Any = object()
TAKES = ("current", "proposed", "value")
CONFIRM_CHOICES = ("all",)
OFFLINE_CHOICES = ("queue",)


def write_params(confirm: str | None, offline: str | None) -> dict[str, str] | None:
    """The query of a write: `?confirm=all`, `?offline=queue` (API.md)."""
    params: dict[str, str] = {}
    if confirm is not None:
        if confirm not in CONFIRM_CHOICES:
            raise ValueError(f"confirm must be 'all' or None, not {confirm!r}")
        params["confirm"] = confirm
    if offline is not None:
        if offline not in OFFLINE_CHOICES:
            raise ValueError(f"offline must be 'queue' or None, not {offline!r}")
        params["offline"] = offline
    return params or None


def is_queued(doc: Any) -> bool:
    """A write's answer says it was kept in the node's outbox (202)."""
    return isinstance(doc, dict) and isinstance(doc.get("queued"), str)


@dataclass(frozen=True)
class Freshness:
    """What a local read says about itself: `stale` (the node has not
    heard a controller within the election timeout), `pending` (the value
    is a queued write of this node, not yet applied by the controller) and
    how long ago the node last heard a controller (None: never, or not
    said)."""

    stale: bool
    pending: bool
    controller_contact_ms: float | None

    @classmethod
    def of(cls, doc: Any) -> Freshness:
        d = doc if isinstance(doc, dict) else {}
        contact = d.get("controller_contact_ms")
        ok = isinstance(contact, int | float) and not isinstance(contact, bool)
        return cls(d.get("stale") is True, d.get("pending") is True, contact if ok else None)

    @property
    def fresh(self) -> bool:
        return not (self.stale or self.pending)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class Unreachable(Exception):
    pass


class WatchClosed(Unreachable):
    """A watch's connection ended: the node stopped or stopped answering."""


class MeshClient:
    """`token_optional`: the token is a guess (an admin token found on this
    machine for that address, which another node may now answer on): if the
    node refuses it (401), go on without a token, once, and say so."""

    def __init__(
        self,
        api: str,
        token: str | None = None,
        timeout: float = 10.0,
        *,
        token_optional: bool = False,
        ca: str | Path | None = None,
    ) -> None:
        # `ca`: the cluster CA bundle an HTTPS node is verified against (a
        # bare HOST:PORT then means https://); None: the system's CAs.
        self.base = api if api.startswith("http") else f"{'https' if ca else 'http'}://{api}"
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._token_optional = token_optional
        connector = None
        if self.base.startswith("https://"):
            context = ssl.create_default_context(cafile=str(ca) if ca else None)
            connector = aiohttp.TCPConnector(ssl=context)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        # No silent second attempt of a PUT or DELETE when a connection drops:
        # the first may have been applied, and the caller must be told the
        # outcome is unknown (Unreachable), not see a retry's answer. The
        # attribute is private (aiohttp's test client sets it the same way).
        self._session._retry_connection = False

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    def _drop_guessed_token(self, status: int) -> bool:
        """After a 401 to a guessed token: True if the request should be
        sent again without it (a 401 means nothing was done)."""
        if status != 401 or not self._token_optional or not self._auth:
            return False
        self._auth = {}
        print(f"note: {self.base} refused the admin token found on this machine; going on without a token",
              file=sys.stderr)  # fmt: skip
        return True

    async def _send(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        extra = kwargs.pop("headers", None) or {}
        while True:
            try:
                async with self._session.request(
                    method, self.base + path, headers={**self._auth, **extra}, **kwargs
                ) as resp:
                    raw = await resp.read()
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise Unreachable(f"cannot reach {self.base}: {exc}") from exc
            if not self._drop_guessed_token(resp.status):
                return resp.status, raw

    async def request(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        status, raw = await self._send(
            method, path, data=data, params=params, headers={"Content-Type": "application/json"}
        )
        try:
            doc = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            raise ApiError(status, "invalid_response", raw[:200].decode(errors="replace"), {}) from None
        if status >= 400:
            err = (doc or {}).get("error", {}) if isinstance(doc, dict) else {}
            raise ApiError(status, err.get("code", "error"), err.get("message", ""), doc or {})
        return doc

    @staticmethod
    def key_path(key: str) -> str:
        return "/v1/kv/" + quote(key, safe="/")

    async def status(self) -> dict[str, Any]:
        return await self.request("GET", "/v1/status")

    async def get(self, key: str, consistency: str = "linearizable") -> dict[str, Any]:
        return await self.request("GET", self.key_path(key), params={"consistency": consistency})

    async def list(self, prefix: str = "", consistency: str = "linearizable") -> dict[str, Any]:
        return await self.request("GET", "/v1/kv", params={"prefix": prefix, "consistency": consistency})

    async def put(
        self,
        key: str,
        value: Any,
        expected_version: int | None = None,
        *,
        confirm: str | None = None,
        offline: str | None = None,
    ) -> dict[str, Any]:
        """PUT a key. `confirm="all"`: the answer waits until every
        reachable member applied it and names them (`applied_by`,
        `missing`). `offline="queue"`: when no controller is reachable the
        node keeps the write in its outbox and answers 202 `{"queued": id,
        …}` (see `is_queued`); its fate is in `outbox()` later."""
        body: dict[str, Any] = {"value": value}
        if expected_version is not None:
            body["expected_version"] = expected_version
        return await self.request("PUT", self.key_path(key), body, params=write_params(confirm, offline))

    async def delete(
        self,
        key: str,
        expected_version: int | None = None,
        *,
        confirm: str | None = None,
        offline: str | None = None,
    ) -> dict[str, Any]:
        params = write_params(confirm, offline) or {}
        if expected_version is not None:
            params["expected_version"] = str(expected_version)
        return await self.request("DELETE", self.key_path(key), params=params or None)

    async def txn(
        self, ops: builtins.list[dict[str, Any]], *, confirm: str | None = None, offline: str | None = None
    ) -> dict[str, Any]:
        return await self.request("POST", "/v1/txn", {"ops": ops}, params=write_params(confirm, offline))

    # -- a node cut off from the controller (API.md) ---------------------------------

    async def outbox(self) -> dict[str, Any]:
        """GET /v1/outbox: this node's queued writes and the fates of the
        last final ones, `{"items":[{"id","key"|"keys","op","state",…}]}`."""
        return await self.request("GET", "/v1/outbox")

    async def conflicts(self, include_resolved: bool = False) -> dict[str, Any]:
        """GET /v1/conflicts: `{"conflicts":[{"id","key","component","status",…}]}`,
        the open ones (and the resolved ones the node keeps, with `include_resolved`)."""
        params = {"status": "all"} if include_resolved else None
        return await self.request("GET", "/v1/conflicts", params=params)

    async def conflict(self, conflict_id: str | int) -> dict[str, Any]:
        """One conflict by id, open or resolved; ApiError 404 `not_found` if
        the node knows no such conflict."""
        doc = await self.conflicts(include_resolved=True)
        for c in doc.get("conflicts") or []:
            if isinstance(c, dict) and str(c.get("id")) == str(conflict_id):
                return c
        raise ApiError(404, "not_found", f"no conflict {conflict_id!r} on this node", {})

    async def resolve(self, conflict_id: str | int, take: str, value: Any = NO_VALUE) -> dict[str, Any]:
        """POST /v1/conflicts/{id}/resolve: `take` is "current",
        "proposed" or "value" (then `value` is the value to keep)."""
        if take not in TAKES:
            raise ValueError(f"take must be one of {', '.join(TAKES)}, not {take!r}")
        if (take == "value") != (value is not NO_VALUE):
            raise ValueError('a value is given with take="value", and only then')
        body: dict[str, Any] = {"take": take}
        if value is not NO_VALUE:
            body["value"] = value
        return await self.request("POST", "/v1/conflicts/" + quote(str(conflict_id), safe="") + "/resolve", body)

    async def reset(self, component: str, keys: builtins.list[str] | None = None) -> dict[str, Any]:
        """POST /v1/components/{name}/reset: the component's keys (or only
        `keys`) back to their schema defaults, one revision and undo step."""
        body: dict[str, Any] = {"keys": list(keys)} if keys else {}
        return await self.request("POST", "/v1/components/" + quote(component, safe="") + "/reset", body)

    async def raw(self, method: str, path: str, body: bytes | None = None) -> bytes:
        headers = {"Content-Type": "application/json"} if body is not None else None
        status, payload = await self._send(method, path, data=body, headers=headers)
        if status >= 400:
            try:
                err = orjson.loads(payload).get("error", {})
            except (orjson.JSONDecodeError, AttributeError):
                err = {}
            raise ApiError(status, err.get("code", "error"), err.get("message", ""), {"error": err})
        return payload

    @staticmethod
    def save_path(name: str) -> str:
        return "/v1/saves/" + quote(name, safe="")

    async def save(self, name: str, components: builtins.list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name}
        if components:
            body["components"] = components
        return await self.request("POST", "/v1/saves", body)

    async def saves(self) -> builtins.list[dict[str, Any]]:
        return await self.request("GET", "/v1/saves")

    async def restore(self, name: str, components: builtins.list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"components": components} if components else {}
        return await self.request("POST", self.save_path(name) + "/restore", body)

    async def export_save(self, name: str) -> bytes:
        return await self.raw("GET", self.save_path(name))

    async def import_save(self, name: str, blob: bytes) -> dict[str, Any]:
        return orjson.loads(await self.raw("PUT", self.save_path(name), blob))

    async def delete_save(self, name: str) -> dict[str, Any]:
        return await self.request("DELETE", self.save_path(name))

    async def history(self, prefix: str = "", since: int = 0, limit: int | None = None) -> dict[str, Any]:
        params = {"prefix": prefix, "since": str(since)}
        if limit is not None:
            params["limit"] = str(limit)
        return await self.request("GET", "/v1/history", params=params)

    async def audit(self, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        params = {"since": str(since)}
        if limit is not None:
            params["limit"] = str(limit)
        return await self.request("GET", "/v1/audit", params=params)

    async def members(self) -> dict[str, Any]:
        return await self.request("GET", "/v1/members")

    async def undo(self, author: str | None = None, force: bool = False, redo: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if author:
            body["author"] = author
        if force:
            body["force"] = True
        return await self.request("POST", "/v1/redo" if redo else "/v1/undo", body)

    async def watch(
        self, prefix: str = "", since: int | None = None, heartbeat: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch's messages, in order. It never ends quietly: a closed
        connection (the node stopped, or, with `heartbeat` seconds, stopped
        answering pings) raises WatchClosed; a `compacted` error ApiError."""
        params = {"prefix": prefix}
        if since is not None:
            params["since"] = str(since)
        while True:
            try:
                ws = await self._session.ws_connect(
                    self.base + "/v1/watch",
                    params=params,
                    headers=self._auth,
                    heartbeat=heartbeat,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                )
                break
            except aiohttp.WSServerHandshakeError as exc:
                if not self._drop_guessed_token(exc.status):
                    raise ApiError(exc.status, "watch_refused", exc.message, {}) from None
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise Unreachable(f"cannot reach {self.base}: {exc}") from exc
        async with ws:
            try:
                async for msg in ws:
                    if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                        break
                    doc = orjson.loads(msg.data)
                    if "error" in doc:
                        err = doc["error"]
                        raise ApiError(410, err.get("code", "error"), err.get("message", ""), doc)
                    yield doc
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise WatchClosed(f"the connection broke: {exc}") from exc
            missed_pongs = isinstance(ws.exception(), aiohttp.ServerTimeoutError)
        raise WatchClosed("no answer to pings" if missed_pongs else "the connection closed")

    # -- a JSON WebSocket (the live stream, the OSC monitor: mesh/cli_live.py) --

    @contextlib.asynccontextmanager
    async def socket(
        self, path: str, params: dict[str, str] | None = None, heartbeat: float | None = 10.0
    ) -> AsyncIterator[JsonSocket]:
        """A WebSocket at `path` speaking JSON text frames. A refused
        handshake raises ApiError (its HTTP status; 404 for a route the node
        does not serve), no connection Unreachable."""
        while True:
            try:
                ws = await self._session.ws_connect(
                    self.base + path,
                    params=params,
                    headers=self._auth,
                    heartbeat=heartbeat,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                )
                break
            except aiohttp.WSServerHandshakeError as exc:
                if not self._drop_guessed_token(exc.status):
                    code = "not_found" if exc.status == 404 else "websocket_refused"
                    raise ApiError(exc.status, code, exc.message, {}) from None
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise Unreachable(f"cannot reach {self.base}: {exc}") from exc
        async with ws:
            yield JsonSocket(ws)


class JsonSocket:
    """JSON documents over a client WebSocket: `send(doc)`, `receive()`
    (None once the connection is closed), or `async for doc in socket`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def send(self, doc: Any) -> None:
        try:
            await self._ws.send_str(orjson.dumps(doc).decode())
        except (aiohttp.ClientConnectionError, ConnectionResetError) as exc:
            raise WatchClosed(f"the connection broke: {exc}") from exc

    async def receive(self) -> Any:
        try:
            msg = await self._ws.receive()
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise WatchClosed(f"the connection broke: {exc}") from exc
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return None
        try:
            return orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            raise ApiError(0, "invalid_response", str(msg.data)[:200], {}) from None

    def __aiter__(self) -> JsonSocket:
        return self

    async def __anext__(self) -> Any:
        doc = await self.receive()
        if doc is None:
            raise StopAsyncIteration
        return doc
