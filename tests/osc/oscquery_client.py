"""A small OSCQuery client written from the proposal
(github.com/Vidvox/OSCQueryProposal, README: "Core Functionality",
"Optional Attributes", "Optional Bi-Directional Communication"), with no
code of the server under test: HOST_INFO, a walk of the tree through
CONTENTS, single attributes by query string, and LISTEN/IGNORE over a
WebSocket on which values arrive as binary OSC packets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
from pythonosc.osc_message import OscMessage


class OscQueryClient:
    def __init__(self, host: str, port: int) -> None:
        self.base = f"http://{host}:{port}"
        self.session = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.session.close()

    async def get(self, path: str, attribute: str | None = None) -> tuple[int, Any]:
        url = self.base + path + (f"?{attribute}" if attribute else "")
        async with self.session.get(url) as r:
            body = await r.read()
            return r.status, orjson.loads(body) if body and r.content_type == "application/json" else None

    async def host_info(self) -> dict[str, Any]:
        status, doc = await self.get("/", "HOST_INFO")
        assert status == 200
        return dict(doc)

    @staticmethod
    def methods(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every node with a TYPE (an OSC method) under `node`, depth first."""
        if "TYPE" in node:
            yield node
        for child in node.get("CONTENTS", {}).values():
            yield from OscQueryClient.methods(child)

    async def connect(self, host_info: dict[str, Any]) -> None:
        """The WebSocket: on WS_IP/WS_PORT if HOST_INFO names them, else on
        the HTTP server's own address."""
        base = self.base
        if "WS_PORT" in host_info:
            base = f"http://{host_info.get('WS_IP', self.base.split('//')[1].rsplit(':', 1)[0])}:{host_info['WS_PORT']}"
        self.ws = await self.session.ws_connect(base + "/")

    async def command(self, command: str, path: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(orjson.dumps({"COMMAND": command, "DATA": path}).decode())

    async def next_value(self) -> tuple[str, list[Any]]:
        """The next value streamed to a LISTENed path (binary OSC); text
        notifications (PATH_CHANGED…) are collected in `notes`."""
        assert self.ws is not None
        while True:
            msg = await self.ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                m = OscMessage(msg.data)
                return m.address, list(m.params)
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.notes.append(orjson.loads(msg.data))
                continue
            raise AssertionError(f"the WebSocket ended: {msg.type}")

    notes: list[dict[str, Any]] = []
