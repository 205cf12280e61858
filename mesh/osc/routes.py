"""The OSC bridge's routes on the node's API (registered by `hana-node serve`
when it runs with --osc-listen or --osc-send; a node without the bridge
answers them 404 not_found).

- `GET /v1/osc` (reader): `{"listen": "host:port"|null, "oscquery":
  "host:port"|null, "send": [...], "mappings": [{"key", "address", "target",
  "type", "value"}], "refused_mappings": {key: reason}, "packets": {result:
  count}, "sent", "send_errors"}`.
- `GET /v1/osc/monitor` (reader, WebSocket): one text frame per incoming
  packet, `{"type": "osc", "time": ms, "from": "host:port", "result":
  "ok"|"bad"|"unmapped"|"too_large"|"rate_limited", "reason"?, "gesture"?,
  "messages": [{"address", "args", "maps_to": {key: value}|null}], "dropped"?}`
  (`dropped`: events this slow client missed; the queue holds 512).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import web

from mesh.osc.bridge import OscBridge

BRIDGE = web.AppKey("osc_bridge", OscBridge)
OSCQUERY_ADDRESS = web.AppKey("oscquery_address", str)


def register(app: web.Application, bridge: OscBridge, oscquery: str | None = None) -> None:
    app[BRIDGE] = bridge
    if oscquery is not None:
        app[OSCQUERY_ADDRESS] = oscquery
    app.router.add_get("/v1/osc", get_osc)
    app.router.add_get("/v1/osc/monitor", monitor)


async def get_osc(request: web.Request) -> web.Response:
    doc: dict[str, Any] = request.app[BRIDGE].status()
    doc["oscquery"] = request.app.get(OSCQUERY_ADDRESS)
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


async def monitor(request: web.Request) -> web.StreamResponse:
    bridge = request.app[BRIDGE]
    ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=4096)
    if not ws.can_prepare(request).ok:
        return web.Response(
            status=400,
            body=orjson.dumps({"error": {"code": "websocket_required", "message": "the monitor is a WebSocket"}}),
            content_type="application/json",
        )
    await ws.prepare(request)
    q = bridge.monitor()

    async def pump() -> None:
        while True:
            event = await q.queue.get()
            await ws.send_str(orjson.dumps(event).decode())

    sender = asyncio.ensure_future(pump())
    try:
        async for _ in ws:
            pass  # clients send nothing; reading notices a close
    finally:
        bridge.unmonitor(q)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError, RuntimeError):
            await sender
    return ws
