"""The API's edge as `hana-node serve` runs it: the admin token file, the
hardened server (JSON for aiohttp's own refusals, no decompression, header
read timeout) and the Host check, over a real process."""

from __future__ import annotations

import asyncio
import stat
import zlib
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.integration.harness import running_cluster

pytestmark = pytest.mark.integration


async def raw_exchange(port: int, data: bytes, timeout: float = 30.0) -> tuple[int, bytes, bool]:
    """Send `data`, read the answer: (status, body, closed by the server)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                int(v) for k, _, v in (line.partition(":") for line in lines) if k.lower() == "content-length"
            )
            body = await reader.readexactly(length)
            rest = await reader.read()
        return int(lines[0].split()[1]), body, rest == b""
    finally:
        writer.close()


@pytest.mark.slow
async def test_serve_writes_the_admin_token_and_runs_the_hardened_api(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 1) as c:
        c.start_all()
        await c.wait_leader()
        node = c.nodes["n1"]
        token_file = node.data_dir / "admin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        base = f"http://{node.api}"
        json = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession() as s:
            async with s.put(base + "/v1/kv/parameters/a", data=b'{"value": 1}', headers=json) as resp:
                assert resp.status == 200
            async with s.delete(base + "/v1/saves/none") as resp:
                assert resp.status == 403  # an operator's request
            async with s.delete(base + "/v1/saves/none", headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 404
            async with s.get(base + "/v1/status", headers={"Host": f"rebound.example:{node.api_port}"}) as resp:
                assert resp.status == 421
            bomb = zlib.compress(b"\0" * (32 << 20), 9)
            async with s.put(
                base + "/v1/kv/parameters/a", data=bomb, headers={"Content-Encoding": "deflate", **json}
            ) as resp:
                assert resp.status == 415
        host = f"Host: {node.api}\r\n".encode()
        status, body, closed = await raw_exchange(
            node.api_port, b"GET /v1/status HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 10_000 + b"\r\n\r\n"
        )
        assert status == 431 and orjson.loads(body)["error"]["code"] == "header_too_large" and closed
        # A head that never ends is cut off (the default header timeout, 10 s).
        status, body, closed = await raw_exchange(node.api_port, b"GET /v1/status HTTP/1.1\r\n" + host, timeout=60)
        assert status == 408 and orjson.loads(body)["error"]["code"] == "request_timeout" and closed
