"""OSCQuery (the Vidvox proposal, github.com/Vidvox/OSCQueryProposal): the
parameter tree of a node's OSC bridge over HTTP and WebSocket.

Served by a node with --osc-listen, on the same host (port --oscquery-port,
default OS-chosen), advertised over mDNS as `_oscjson._tcp`.

HTTP (GET, JSON):
- `/?HOST_INFO` (any path): NAME, OSC_IP (unless the listener is bound to
  every address), OSC_PORT, OSC_TRANSPORT "UDP", EXTENSIONS (ACCESS, VALUE,
  RANGE, DESCRIPTION, CLIPMODE, LISTEN, PATH_CHANGED: true; the rest false).
- `/path`: the node at that OSC address with everything below it
  (FULL_PATH, CONTENTS for containers; TYPE, VALUE, RANGE, ACCESS 3,
  DESCRIPTION, CLIPMODE for mapped addresses); `/path?ATTR`: `{ATTR: …}`
  only (`{}` when the node has none). Unknown path 404; an unknown
  attribute 400; a known attribute this server does not provide (TAGS,
  UNIT, …) 204. TYPE and RANGE come from the mapping's scaling and the
  target component's schema; VALUE is the target's current value (live or
  committed) in the mapping's input range, as a client would send it.

WebSocket (same port, any path): text frames `{"COMMAND": "LISTEN"|"IGNORE",
"DATA": "/path"}`; every change of a LISTENed address is pushed as one
binary frame holding an OSC message (per client and address the latest
value wins, so a slow client never makes the node buffer more than one
message per address). `{"COMMAND": "PATH_CHANGED", "DATA": "/"}` is sent
when the mappings change. Binary frames from a client are OSC packets and
go through the bridge like UDP ones (same checks, same counting). A text
frame holding a query path (`/path?ATTR`, as some libossia-based clients
send) is answered on the socket with the JSON HTTP would give.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from mesh.osc.bridge import OscBridge
from mesh.osc.mapping import OscMapping

log = logging.getLogger("mesh.osc")

NODE_ATTRIBUTES = ("FULL_PATH", "CONTENTS", "TYPE", "VALUE", "RANGE", "ACCESS", "DESCRIPTION", "CLIPMODE")
# Known to the proposal but not provided here: 204.
UNSUPPORTED = ("TAGS", "EXTENDED_TYPE", "UNIT", "CRITICAL", "OVERLOADS", "HTML")
EXTENSIONS = {
    "ACCESS": True,
    "VALUE": True,
    "RANGE": True,
    "DESCRIPTION": True,
    "CLIPMODE": True,
    "LISTEN": True,
    "PATH_CHANGED": True,
    "TAGS": False,
    "EXTENDED_TYPE": False,
    "UNIT": False,
    "CRITICAL": False,
    "OVERLOADS": False,
    "HTML": False,
    "PATH_ADDED": False,
    "PATH_REMOVED": False,
    "PATH_RENAMED": False,
}
MAX_CLIENTS = 64
MAX_LISTENS = 4096
MAX_WS_MESSAGE = 16 * 1024


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


class _Client:
    """One WebSocket client: the addresses it LISTENs to and the latest
    message per address waiting to be sent."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.listening: set[str] = set()
        self.pending: dict[str, bytes] = {}
        self.texts: list[bytes] = []
        self.wake = asyncio.Event()

    def push(self, address: str, dgram: bytes) -> None:
        if address in self.listening:
            self.pending[address] = dgram
            self.wake.set()

    def note(self, doc: dict[str, Any]) -> None:
        if len(self.texts) < 16:
            self.texts.append(orjson.dumps(doc))
            self.wake.set()

    async def pump(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            texts, self.texts = self.texts, []
            pending, self.pending = self.pending, {}
            for text in texts:
                await self.ws.send_str(text.decode())
            for dgram in pending.values():
                await self.ws.send_bytes(dgram)


class OscQueryServer:
    """See the module docstring. `host`: --osc-listen's host; `port`:
    --oscquery-port (0: OS-chosen)."""

    def __init__(self, bridge: OscBridge, host: str, port: int = 0, name: str = "hana") -> None:
        self.bridge = bridge
        self.host = host
        self.port = port
        self.name = name
        self.bound: tuple[str, int] | None = None
        self._clients: set[_Client] = set()
        self._runner: web.AppRunner | None = None
        self._unhook: list[Any] = []

    # -- life ---------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=4096)
        app.router.add_get("/{path:.*}", self._get)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockname = self._runner.addresses[0]
        self.bound = (str(sockname[0]), int(sockname[1]))
        self._unhook.append(self.bridge.on_value(self._value))
        self._unhook.append(self.bridge.on_structure(self._structure))
        log.info("node=%s event=oscquery_listening addr=%s:%d", self.bridge.node.node_id, *self.bound)

    async def stop(self) -> None:
        for unhook in self._unhook:
            unhook()
        self._unhook.clear()
        for client in list(self._clients):
            with contextlib.suppress(Exception):
                await client.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def listeners(self) -> dict[str, int]:
        """How many WebSocket clients LISTEN to each address."""
        out: dict[str, int] = {}
        for client in self._clients:
            for address in client.listening:
                out[address] = out.get(address, 0) + 1
        return out

    # -- the tree -----------------------------------------------------------------

    def host_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"NAME": self.name, "OSC_TRANSPORT": "UDP", "EXTENSIONS": EXTENSIONS}
        if self.bridge.bound is not None:
            host, port = self.bridge.bound
            with contextlib.suppress(ValueError):
                if not ipaddress.ip_address(host).is_unspecified:
                    info["OSC_IP"] = host
            info["OSC_PORT"] = port
        return info

    def _method(self, address: str, mappings: tuple[OscMapping, ...]) -> dict[str, Any]:
        m = mappings[0]
        doc: dict[str, Any] = {
            "FULL_PATH": address,
            "TYPE": m.tag,
            "ACCESS": 3,
            "DESCRIPTION": "; ".join(dict.fromkeys(x.description for x in mappings)),
        }
        if m.target in self.bridge.current:
            value = m.osc_value(self.bridge.current[m.target])
            if value is not None:
                doc["VALUE"] = [value]
        if m.choices is not None and not m.scaled:
            doc["RANGE"] = [{"VALS": list(m.choices)}]
        else:
            lo, hi = m.osc_range()
            rng = {k: v for k, v in (("MIN", lo), ("MAX", hi)) if v is not None}
            if rng and m.tag in ("f", "i"):
                doc["RANGE"] = [rng]
        if m.scaled:
            doc["CLIPMODE"] = ["both"]
        return doc

    def tree(self) -> dict[str, Any]:
        root: dict[str, Any] = {"FULL_PATH": "/", "ACCESS": 0, "DESCRIPTION": self.name, "CONTENTS": {}}
        for address, mappings in sorted(self.bridge.table.by_address.items()):
            node = root
            parts = address.strip("/").split("/")
            for i, part in enumerate(parts):
                contents = node.setdefault("CONTENTS", {})
                path = "/" + "/".join(parts[: i + 1])
                node = contents.setdefault(part, {"FULL_PATH": path, "ACCESS": 0, "DESCRIPTION": ""})
            node.update(self._method(address, mappings))
        return root

    def find(self, path: str) -> dict[str, Any] | None:
        node: dict[str, Any] | None = self.tree()
        for part in [p for p in path.split("/") if p]:
            node = (node or {}).get("CONTENTS", {}).get(part)
            if node is None:
                return None
        return node

    # -- HTTP ---------------------------------------------------------------------

    def answer(self, path: str, query_string: str) -> tuple[int, dict[str, Any] | None]:
        """(HTTP status, JSON document) for a query of `path?query_string`."""
        attr = query_string.split("&", 1)[0].split("=", 1)[0]
        if attr == "HOST_INFO":
            return 200, self.host_info()
        node = self.find(path)
        if node is None:
            return 404, {"error": f"no OSC node at {path[:256]}"}
        if not attr:
            return 200, node
        if attr in UNSUPPORTED:
            return 204, None
        if attr not in NODE_ATTRIBUTES:
            return 400, {"error": f"unknown attribute {attr[:64]!r}"}
        return 200, ({attr: node[attr]} if attr in node else {})

    async def _get(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        status, doc = self.answer(request.path, request.query_string)
        return web.Response(status=status) if doc is None else _json(doc, status)

    # -- WebSocket ----------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= MAX_CLIENTS:
            return _json({"error": "too many OSCQuery clients"}, status=503)
        ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=MAX_WS_MESSAGE)
        await ws.prepare(request)
        client = _Client(ws)
        self._clients.add(client)
        peer = request.remote or "?"
        pump = asyncio.ensure_future(client.pump())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._command(client, msg.data, peer)
                elif msg.type == WSMsgType.BINARY:
                    self.bridge.handle_packet(msg.data, f"ws:{peer}")
                else:
                    break
        except ConnectionResetError:
            pass
        finally:
            self._clients.discard(client)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError, RuntimeError):
                await pump
        return ws

    def _command(self, client: _Client, text: str, peer: str) -> None:
        if text.startswith("/"):
            # A query sent over the WebSocket as its URL path (some clients
            # of the libossia family do): answered on the socket, as JSON.
            path, _, query_string = text.partition("?")
            _, doc = self.answer(path, query_string)
            if doc is not None:
                client.note(doc)
            return
        try:
            doc = orjson.loads(text)
            command, data = doc["COMMAND"], doc["DATA"]
            if not isinstance(command, str) or not isinstance(data, str):
                raise TypeError("COMMAND and DATA must be strings")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self.bridge.limited.log(
                "oscquery_bad_command",
                logging.WARNING,
                "node=%s event=oscquery_bad_command from=%s error=%r",
                self.bridge.node.node_id,
                peer,
                str(exc),
            )
            return
        if command == "LISTEN":
            if data in self.bridge.table.by_address and len(client.listening) < MAX_LISTENS:
                client.listening.add(data)
        elif command == "IGNORE":
            client.listening.discard(data)
            client.pending.pop(data, None)
        else:
            log.debug("node=%s event=oscquery_unknown_command command=%r", self.bridge.node.node_id, command[:64])

    def _value(self, address: str, dgram: bytes) -> None:
        for client in self._clients:
            client.push(address, dgram)

    def _structure(self) -> None:
        for client in self._clients:
            client.listening &= set(self.bridge.table.by_address)
            client.note({"COMMAND": "PATH_CHANGED", "DATA": "/"})
