"""`GET /v1/live?prefix=P`: the live parameter stream (shared/API.md "Live
parameters"), a WebSocket for setting and subscribing.

A client sends text frames `{"set": {key: value, …}, "gesture"?: id}` and
`{"end": id}`; it receives `{"type":"live","values":{…},"gesture"?,
"source","seq"}` for every live value under its prefix, from every node,
and `{"type":"error","error":{"code","message",…}}` for a message it sent
that was refused (not JSON, unknown fields, an invalid value, a key of an
unknown component, a reader setting): a refused set goes nowhere.

A socket may publish `RATE` sets a second (a burst of `BURST`); what it
sends faster is coalesced (per gesture, the latest value per key) and
published as tokens come back, so a flooding client costs a bounded buffer
(at most `MAX_PENDING_KEYS` keys, beyond which its sets are refused) and
never more than `RATE` publications a second. Messages are at most
`MAX_MESSAGE` bytes (aiohttp closes the socket with 1009 beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from mesh.api._http import IDENTITY, NODE, query
from mesh.api.auth import Identity
from mesh.api.handle import NodeHandle
from mesh.errors import BadRequest
from mesh.state.errors import StateError

log = logging.getLogger("mesh.api")

RATE = 240.0
BURST = 60.0
MAX_PENDING_KEYS = 4096
MAX_MESSAGE = 1 << 20
_MESSAGE_FIELDS = frozenset({"set", "gesture", "end"})


def _error(code: str, message: str, **extra: Any) -> str:
    return orjson.dumps({"type": "error", "error": {"code": code, "message": message, **extra}}).decode()


def _refusal(exc: StateError) -> str:
    extra = {k: v for k, v in exc.extra.items() if k not in ("code", "message")}
    return _error(exc.code, str(exc), **extra)


class _Publisher:
    """One socket's sets: published at once while it has tokens, else
    coalesced (per gesture, latest value per key) until it has."""

    def __init__(self, node: NodeHandle, ident: Identity) -> None:
        self.node = node
        self.ident = ident
        self.tokens = BURST
        self.stamp = time.monotonic()
        self.pending: dict[str | None, dict[str, Any]] = {}
        self.pending_keys = 0
        self.coalesced = 0
        self.flusher: asyncio.Task[None] | None = None
        # Errors of coalesced sets, checked when published: answered on the
        # socket by its reader (bounded: the first few of a burst).
        self.refused: list[str] = []

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.stamp) * RATE)
        self.stamp = now

    def set(self, values: dict[str, Any], gesture: str | None) -> None:
        """Raises StateError (answered on the socket) for an invalid set."""
        self._refill()
        if self.tokens >= 1 and not self.pending:
            self.tokens -= 1
            self.node.live_set(values, gesture=gesture, author=self.ident.name, role=self.ident.role)
            return
        # Too fast: checked now (an invalid set is answered at once and goes
        # nowhere), coalesced, published as tokens come back.
        self.node.live_check(values, gesture=gesture, author=self.ident.name, role=self.ident.role)
        slot = self.pending.setdefault(gesture, {})
        for key, value in values.items():
            if key in slot:
                self.coalesced += 1
                del slot[key]
            elif self.pending_keys >= MAX_PENDING_KEYS:
                raise StateError("rate_limited", f"more than {MAX_PENDING_KEYS} values wait on this socket")
            else:
                self.pending_keys += 1
            slot[key] = value
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.ensure_future(self._flush())

    def end(self, gesture: str) -> None:
        if gesture in self.pending:
            self._publish(gesture)
        self.node.live_end(gesture, author=self.ident.name)

    def _publish(self, gesture: str | None) -> None:
        values = self.pending.pop(gesture)
        self.pending_keys -= len(values)
        try:
            self.node.live_set(values, gesture=gesture, author=self.ident.name, role=self.ident.role)
        except StateError as exc:
            self.refused.append(_refusal(exc))

    async def _flush(self) -> None:
        while self.pending:
            self._refill()
            if self.tokens < 1:
                await asyncio.sleep((1 - self.tokens) / RATE)
                continue
            self.tokens -= 1
            self._publish(next(iter(self.pending)))

    def close(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()


def _handle(text: str, pub: _Publisher) -> str | None:
    """One client message; the error to answer, if any."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return _error("invalid_json", f"a message must be a JSON object: {exc}")
    if not isinstance(msg, dict):
        return _error("invalid_json", "a message must be a JSON object")
    unknown = set(msg) - _MESSAGE_FIELDS
    if unknown:
        return _error("invalid_field", f"unknown field(s) {', '.join(sorted(unknown)[:8])}")
    if not pub.ident.allows("operator"):
        return _error("forbidden", f"the {pub.ident.role} role cannot set live values")
    try:
        if "set" in msg:
            if "end" in msg:
                return _error("invalid_command", "a message is a set or an end, not both")
            values, gesture = msg["set"], msg.get("gesture")
            if not isinstance(values, dict) or not values:
                return _error("invalid_value", "set needs an object of key: value")
            if gesture is not None and not isinstance(gesture, str):
                return _error("invalid_value", "gesture must be a string")
            pub.set(values, gesture)
        elif "end" in msg:
            gesture = msg["end"]
            if not isinstance(gesture, str) or not gesture or "gesture" in msg:
                return _error("invalid_value", 'end names a gesture id: {"end": "<gesture id>"}')
            pub.end(gesture)
        else:
            return _error("invalid_command", 'send {"set": {key: value, …}, "gesture"?: id} or {"end": id}')
    except StateError as exc:
        return _refusal(exc)
    return None


async def live(request: web.Request) -> web.StreamResponse:
    prefix = query(request).get("prefix", "")
    node = request.app[NODE]
    ident = request[IDENTITY]
    ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=MAX_MESSAGE)
    if not ws.can_prepare(request).ok:
        raise BadRequest("live is a WebSocket endpoint", code="websocket_required")
    await ws.prepare(request)
    sub = node.live_subscribe(prefix)
    pub = _Publisher(node, ident)

    async def pump() -> None:
        async for update in sub:
            doc: dict[str, Any] = {"type": "live", "values": update.values}
            if update.gesture is not None:
                doc["gesture"] = update.gesture
            doc["source"] = update.source
            doc["seq"] = update.seq
            # A text frame of orjson's UTF-8 as it is (send_str would
            # decode and encode it again).
            await ws.send_frame(orjson.dumps(doc), WSMsgType.TEXT)

    sender = asyncio.ensure_future(pump())
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                answer = _handle(msg.data, pub)
                if answer is not None:
                    await ws.send_str(answer)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_str(_error("invalid_json", "messages are JSON in text frames"))
            if pub.refused:
                refused, pub.refused = pub.refused[:8], []
                for answer in refused:
                    await ws.send_str(answer)
            # A socket with messages buffered would keep the loop: let the
            # others (Raft's ticks and peers, other requests) in between.
            await asyncio.sleep(0)
    except ConnectionResetError:
        log.info("node=%s event=live_client_gone prefix=%s", node.node_id, prefix)
    finally:
        pub.close()
        sub.close()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            await sender
        if pub.coalesced:
            log.info("node=%s event=live_socket_closed author=%s coalesced=%d", node.node_id, ident.name, pub.coalesced)
    return ws


def register(app: web.Application) -> None:
    app.router.add_get("/v1/live", live)
