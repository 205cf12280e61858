"""Issue 17: the write route's per-request costs. A body that arrived whole
with its headers is taken without a timer or a read loop (the same limits
apply), and the Host check's answer is remembered per connection socket
(bind() forgets it)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
import pytest

from mesh.api._http import ApiSettings
from tests.api.edge_kit import RawHttp, RecordingNode, api_client, error_of


async def test_a_whole_body_is_taken_without_a_timer_and_within_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    node = RecordingNode()
    limit = 4096
    async with api_client(node, max_body=limit) as c:
        host = f"127.0.0.1:{c.server.port}"
        timers: list[str] = []
        real_timeout = asyncio.timeout

        def spy(delay: float | None) -> Any:
            timers.append(sys._getframe(1).f_code.co_name)
            return real_timeout(delay)

        monkeypatch.setattr(asyncio, "timeout", spy)
        raw = await RawHttp.open(c.server.port)
        try:
            body = orjson.dumps({"value": "v"})
            await raw.send(
                f"PUT /v1/kv/parameters/a HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            status, _, answer = await raw.response()
            assert status == 200, answer
            # A whole chunked body (no length announced) over the limit: 413.
            chunk = b"x" * 1024
            await raw.send(
                f"PUT /v1/kv/parameters/a HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
                + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(limit // len(chunk) + 1))
                + b"0\r\n\r\n"
            )
            status, _, answer = await raw.response()
            assert status == 413 and error_of(answer)["code"] == "too_large"
        finally:
            raw.close()
    assert [cmd["value"] for cmd in node.proposed] == ["v"]
    assert "read_body" not in timers


class _Transport:
    def __init__(self, sockname: tuple[str, int]) -> None:
        self.sockname = sockname

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sockname if name == "sockname" else default


class _Request:
    def __init__(self, sockname: tuple[str, int]) -> None:
        self.transport = _Transport(sockname)


def test_the_host_check_is_remembered_per_socket_and_bind_forgets_it() -> None:
    settings = ApiSettings.make(None, None, [], [], 1024)
    on_lan = _Request(("10.0.0.5", 8080))
    assert settings.is_own(on_lan, "10.0.0.5:8080", 80)  # the socket's own name
    assert not settings.is_own(on_lan, "show.local:8080", 80)
    assert not settings.is_own(on_lan, "show.local:8080", 80)  # remembered, same answer
    # Another socket of the node: its own names, not the first one's.
    assert not settings.is_own(_Request(("10.0.0.6", 8080)), "10.0.0.5:8080", 80)
    settings.bind("show.local", 8080)
    assert settings.is_own(on_lan, "show.local:8080", 80)
    for port in range(1000):
        settings.is_own(on_lan, f"other:{port}", 80)
    assert len(settings._own) <= 256
