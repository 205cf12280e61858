"""`run_api` as `hana-node serve` calls it (in-process, 127.0.0.1:0), and
the admin token file."""

from __future__ import annotations

import aiohttp
import pytest

from mesh.api.app import create_app
from mesh.api.server import run_api
from tests.api.edge_kit import RawHttp, RecordingNode, error_of

TOKEN = "run-api-admin-token-0123456789"


async def test_run_api_serves_the_hardened_server() -> None:
    node = RecordingNode()
    app = create_app(node, admin_token=TOKEN)
    runner = await run_api(app, "127.0.0.1", 0, header_timeout=0.3)
    try:
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            # The node's names for a loopback bind, by the bound port.
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
                async with s.get(base + "/v1/status", headers={"Host": host}) as resp:
                    assert resp.status == 200, host
            async with s.get(base + "/v1/status", headers={"Host": f"attacker.example:{port}"}) as resp:
                assert resp.status == 421
            # Admin by token, operator without.
            async with s.get(base + "/v1/debug/state", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200
            async with s.get(base + "/v1/debug/state") as resp:
                assert resp.status == 403
        # aiohttp's own refusal, in JSON.
        raw = await RawHttp.open(port)
        try:
            await raw.send(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nBroken header\r\n\r\n")
            status, _, body = await raw.response()
            assert status == 400 and error_of(body)["code"] == "bad_request"
        finally:
            raw.close()
        # A slow head is cut off.
        raw = await RawHttp.open(port)
        try:
            await raw.send(b"GET /v1/status HTTP/1.1\r\n")
            status, _, body = await raw.response(timeout=20)
            assert status == 408 and error_of(body)["code"] == "request_timeout"
            assert await raw.closed()
        finally:
            raw.close()
        # A connection that sends nothing at all is closed too.
        raw = await RawHttp.open(port)
        try:
            assert await raw.closed(timeout=20)
        finally:
            raw.close()
    finally:
        await runner.cleanup()


def test_create_app_refuses_malformed_settings() -> None:
    node = RecordingNode()
    for kwargs in (
        {"allow_origins": ["null"]},
        {"allow_origins": ["evil.example"]},
        {"allow_origins": ["http://a/b"]},
        {"allow_hosts": ["bad host"]},
        {"max_body": 0},
        {"admin_token": "short"},
    ):
        with pytest.raises(ValueError):
            create_app(node, **kwargs)  # type: ignore[arg-type]


def test_host_names_of_a_connections_own_address() -> None:
    """A dual-stack socket sees IPv4 clients as ::ffff:a.b.c.d; their Host
    header says a.b.c.d."""
    from mesh.api._http import _host_name, is_loopback_name

    assert _host_name("::ffff:127.0.0.1") == "127.0.0.1" and is_loopback_name("127.0.0.1")
    assert _host_name("::1") == "[::1]" and is_loopback_name("[::1]")
    assert _host_name("10.0.0.5") == "10.0.0.5" and not is_loopback_name("10.0.0.5")
    assert _host_name("FE80::1") == "[fe80::1]"
