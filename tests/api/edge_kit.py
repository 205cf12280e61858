"""Helpers for the tests of the API's edge: a fake node that records what is
proposed, servers on the hardened runner, and raw HTTP over a socket (for
what an aiohttp client refuses to send)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from mesh.api.app import create_app
from mesh.api.auth import TokenAuth
from mesh.api.handle import NodeHandle
from tests.api.conftest import ADMIN_TOKEN, ApiTestServer
from tests.api.test_fuzz import FakeNode

TOKENS = {
    "tokens": [
        {"name": "wall", "token": "reader-token-0123456789", "role": "reader"},
        {"name": "ops", "token": "operator-token-0123456789", "role": "operator"},
        {"name": "boss", "token": "admin-token-0123456789ab", "role": "admin"},
    ]
}
READER = {"Authorization": "Bearer reader-token-0123456789"}
OPERATOR = {"Authorization": "Bearer operator-token-0123456789"}
BOSS = {"Authorization": "Bearer admin-token-0123456789ab"}


class RecordingNode(FakeNode):
    """A FakeNode that records every proposed command (as proposed) and
    says which controller it knows (`leader`; None: none known)."""

    def __init__(self, leader: str | None = "fake") -> None:
        super().__init__()
        self.proposed: list[dict[str, Any]] = []
        self.leader = leader
        self.hold_security_events: asyncio.Event | None = None

    def status(self) -> dict[str, Any]:
        return {**super().status(), "leader": self.leader}

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        self.proposed.append(dict(command))
        if command.get("op") == "security_event":
            if self.hold_security_events is not None:
                await self.hold_security_events.wait()
            return {"revision": self.kv.revision}
        return await super().propose(command)


def tokens_auth(tmp_path: Path) -> TokenAuth:
    path = tmp_path / "tokens.json"
    path.write_bytes(orjson.dumps(TOKENS))
    return TokenAuth.from_file(path)


@asynccontextmanager
async def api_client(
    node: NodeHandle, *, runner_options: dict[str, Any] | None = None, **app_options: Any
) -> AsyncIterator[TestClient]:
    app_options.setdefault("admin_token", ADMIN_TOKEN if app_options.get("auth") is None else None)
    app = create_app(node, **app_options)
    async with TestClient(ApiTestServer(app, **(runner_options or {}))) as client:
        yield client


class RawHttp:
    """One TCP connection speaking HTTP/1.1 by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawHttp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of the next response."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    async def closed(self, timeout: float = 10.0) -> bool:
        """True once the server closed the connection (reading what is left)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await self.reader.read(1 << 16)
                except ConnectionResetError:
                    return True
                if not chunk:
                    return True

    def close(self) -> None:
        self.writer.close()


def error_of(body: bytes) -> dict[str, Any]:
    """The contract's error object (asserting the shape)."""
    doc = orjson.loads(body)
    assert set(doc) == {"error"}, doc
    assert isinstance(doc["error"]["code"], str) and doc["error"]["code"]
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return doc["error"]
