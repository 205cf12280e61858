"""The API's edge against a hostile or careless client (issue 12): browser
safety, roles, bounded and undecoded bodies, strict decoding, JSON errors for
everything aiohttp refuses, header read timeout, failed-login limits and
audit, the state digest, and what every proposed command carries."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType, WSServerHandshakeError
from aiohttp.http_parser import DeflateBuffer
from aiohttp.test_utils import TestClient
from yarl import URL

from mesh.adapter import NodeAdapter
from mesh.api.app import create_app
from mesh.api.guard import GUARD
from mesh.api.kv_routes import DIGEST
from mesh.state.model import StateError
from tests.api.conftest import ADMIN_HEADERS, ADMIN_TOKEN, JSON, ApiTestServer, Mesh
from tests.api.edge_kit import (
    BOSS,
    OPERATOR,
    READER,
    RawHttp,
    RecordingNode,
    api_client,
    error_of,
    tokens_auth,
)


async def until(check: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


TXN = dumps({"ops": [{"op": "put", "key": "parameters/x", "value": 1}]})


# -- finding 2: any web page could drive the API ------------------------------------


async def test_finding_02_json_bodies_need_the_json_content_type() -> None:
    """finding 2: a browser's cross-origin "simple" request (text/plain, a
    form) must not run a command: JSON bodies need application/json (415)."""
    node = RecordingNode()
    async with api_client(node) as c:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"Content-Type": ctype} if ctype else {}
            for method, path, body in (
                ("POST", "/v1/txn", TXN),
                ("PUT", "/v1/kv/parameters/x", dumps({"value": 1})),
                ("POST", "/v1/members", dumps({"id": "evil", "action": "add_learner"})),
                ("POST", "/v1/undo", b"{}"),
                ("PUT", "/v1/saves/s", b"{}"),
            ):
                resp = await c.request(
                    method, path, data=body, headers={**headers, **ADMIN_HEADERS}, skip_auto_headers=["Content-Type"]
                )
                assert resp.status == 415, (ctype, path, resp.status)
                assert error_of(await resp.read())["code"] == "unsupported_media_type"
        ok = await c.post("/v1/txn", data=TXN, headers={"Content-Type": "application/json; charset=utf-8"})
        assert ok.status == 200
    assert [cmd["op"] for cmd in node.proposed] == ["txn"]


async def test_finding_02_foreign_origins_are_refused_websockets_included() -> None:
    """finding 2: a request carrying an Origin that is neither the node's own
    page nor allowed gets 403 origin_refused, WebSocket upgrades included;
    `Origin: null` is always refused."""
    node = RecordingNode()
    async with api_client(node, allow_origins=["http://show-laptop:8080"]) as c:
        port = c.server.port
        for origin in ("http://evil.example", "null", "https://127.0.0.1.evil.example", f"http://127.0.0.1:{port + 1}"):
            h = {"Origin": origin, **JSON}
            for method, path, body in (
                ("POST", "/v1/txn", TXN),
                ("POST", "/v1/members", dumps({"id": "evil", "action": "add_learner"})),
                ("GET", "/v1/kv?prefix=", None),
                ("DELETE", "/v1/kv/parameters/x", None),
            ):
                resp = await c.request(method, path, data=body, headers=h)
                assert resp.status == 403, (origin, path)
                assert error_of(await resp.read())["code"] == "origin_refused"
            with pytest.raises(WSServerHandshakeError) as refused:
                await c.ws_connect("/v1/watch", headers={"Origin": origin})
            assert refused.value.status == 403
        assert node.proposed == []
        # The node's own page, by any of its names, and the allowed origin.
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", "http://show-laptop:8080"):
            resp = await c.post("/v1/txn", data=TXN, headers={"Origin": origin, **JSON})
            assert resp.status == 200, (origin, await resp.text())
            ws = await c.ws_connect("/v1/watch", headers={"Origin": origin})
            await ws.close()
        # An allowed cross origin can read answers and passes its preflight.
        resp = await c.get("/v1/status", headers={"Origin": "http://show-laptop:8080"})
        assert resp.headers["Access-Control-Allow-Origin"] == "http://show-laptop:8080"
        pre = await c.options(
            "/v1/txn", headers={"Origin": "http://show-laptop:8080", "Access-Control-Request-Method": "POST"}
        )
        assert pre.status == 204 and "Content-Type" in pre.headers["Access-Control-Allow-Headers"]
        own = await c.get("/v1/status", headers={"Origin": f"http://127.0.0.1:{port}"})
        assert "Access-Control-Allow-Origin" not in own.headers


async def test_finding_02_foreign_host_is_misdirected() -> None:
    """finding 2: DNS rebinding makes a remote page look local, but its
    requests carry the attacker's name in Host: 421 misdirected."""
    node = RecordingNode()
    async with api_client(node, allow_hosts=["show.local"]) as c:
        port = c.server.port
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "bad host", "[zz]:1"):
            resp = await c.post("/v1/txn", data=TXN, headers={"Host": host, **JSON})
            assert resp.status == 421, host
            assert error_of(await resp.read())["code"] == "misdirected"
        with pytest.raises(WSServerHandshakeError) as refused:
            await c.ws_connect("/v1/watch", headers={"Host": f"evil.example:{port}"})
        assert refused.value.status == 421
        assert node.proposed == []
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"LOCALHOST:{port}",
            f"[::1]:{port}",
            f"show.local:{port}",
        ):
            resp = await c.get("/v1/status", headers={"Host": host})
            assert resp.status == 200, host


async def test_finding_02_no_anonymous_admin_on_loopback() -> None:
    """finding 2: without a tokens file a client without a token is an
    operator: it reads and writes, but restores, imports, deletes saves,
    changes members and reads the state digest only with the admin token;
    any other token is 401."""
    node = RecordingNode()
    async with api_client(node) as c:
        assert (await c.put("/v1/kv/parameters/a", data=dumps({"value": 1}), headers=JSON)).status == 200
        assert (await c.post("/v1/saves", data=dumps({"name": "s"}), headers=JSON)).status == 200
        export = await (await c.get("/v1/saves/s")).read()
        admin_only = [
            ("POST", "/v1/saves/s/restore", dumps({})),
            ("PUT", "/v1/saves/copy", export),
            ("DELETE", "/v1/saves/s", None),
            ("POST", "/v1/members", dumps({"id": "n9", "action": "add_learner"})),
            ("GET", "/v1/debug/state", None),
        ]
        before = len(node.proposed)
        for method, path, body in admin_only:
            resp = await c.request(method, path, data=body, headers=JSON)
            assert resp.status == 403, (path, resp.status)
            assert error_of(await resp.read())["code"] == "forbidden"
            bad = await c.request(
                method, path, data=body, headers={"Authorization": "Bearer not-the-token-000000", **JSON}
            )
            assert bad.status == 401
        assert len(node.proposed) == before
        for method, path, body in admin_only[:3] + admin_only[4:]:
            resp = await c.request(method, path, data=body, headers={**JSON, **ADMIN_HEADERS})
            assert resp.status == 200, (path, await resp.text())
    roles = {(cmd["op"], cmd["author"], cmd["role"]) for cmd in node.proposed}
    assert ("put", "anonymous", "operator") in roles
    assert {
        ("restore", "admin", "admin"),
        ("import_save", "admin", "admin"),
        ("delete_save", "admin", "admin"),
    } <= roles


async def test_undo_of_a_restore_needs_the_admin_role() -> None:
    """Undoing (or redoing) an admin's restore is a restore: an operator gets
    an early 403 from the API (the state machine is the authority)."""
    node = RecordingNode()
    async with api_client(node) as c:
        await c.put("/v1/kv/parameters/a", data=dumps({"value": 1}), headers=JSON)
        await c.post("/v1/saves", data=dumps({"name": "s"}), headers=JSON)
        await c.put("/v1/kv/parameters/a", data=dumps({"value": 2}), headers=JSON)
        resp = await c.post("/v1/saves/s/restore", headers=ADMIN_HEADERS)
        assert resp.status == 200, await resp.text()
        refused = await c.post("/v1/undo", data=dumps({"author": "admin"}), headers=JSON)
        assert refused.status == 403
        assert node.kv.get("parameters/a").value == 1  # type: ignore[union-attr]
        # The operator's own undo stack is theirs to use.
        mine = await c.post("/v1/undo", headers=JSON)
        assert mine.status in (200, 409)
        undone = await c.post("/v1/undo", headers=ADMIN_HEADERS)
        assert undone.status == 200, await undone.text()


async def test_commands_carry_identity_and_pass_prepare_first() -> None:
    """Every proposed command has author and role from the identity (what
    the client sends cannot change them), and the state machine's
    prepare refuses before anything is proposed, with its status."""
    node = RecordingNode()
    seen: list[dict[str, Any]] = []

    def prepare(command: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(command))
        if command.get("value") == "deep":
            raise StateError("too_deep", "value nested deeper than 64")
        if command.get("value") == "huge":
            raise StateError("too_large", "value larger than 1 MiB", key=command.get("key"))
        return command

    node.kv.prepare = prepare  # type: ignore[method-assign]
    async with api_client(node, auth=None) as c:
        deep = await c.put("/v1/kv/parameters/a", data=dumps({"value": "deep"}), headers=JSON)
        assert deep.status == 400 and error_of(await deep.read())["code"] == "too_deep"
        huge = await c.put("/v1/kv/parameters/a", data=dumps({"value": "huge"}), headers=JSON)
        assert huge.status == 413 and error_of(await huge.read())["code"] == "too_large"
        assert node.proposed == []
        await c.post("/v1/undo", data=dumps({"author": "someone-else"}), headers=JSON)
        await c.put("/v1/kv/parameters/a", data=dumps({"value": 1}), headers={**JSON, **ADMIN_HEADERS})
    assert [(s["op"], s["author"], s["role"]) for s in seen] == [
        ("put", "anonymous", "operator"),
        ("put", "anonymous", "operator"),
        ("undo", "anonymous", "operator"),
        ("put", "admin", "admin"),
    ]
    assert seen[2]["stack"] == "someone-else"
    assert [(p["op"], p["author"], p["role"]) for p in node.proposed] == [
        ("undo", "anonymous", "operator"),
        ("put", "admin", "admin"),
    ]


async def test_watch_sends_json_in_text_frames() -> None:
    node = RecordingNode()
    async with api_client(node) as c:
        await c.put("/v1/kv/parameters/a", data=dumps({"value": 1}), headers=JSON)
        ws = await c.ws_connect("/v1/watch", params={"since": "1"})
        msg = await ws.receive(timeout=10)
        assert msg.type == WSMsgType.TEXT
        assert orjson.loads(msg.data)["key"] == "parameters/a"
        await ws.close()


# -- finding 4: compressed bodies ------------------------------------------------


async def test_finding_04_compressed_bodies_are_refused_unread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """finding 4: a gzip bomb without a token used to be decompressed (the
    loop stalled) before its 401. Now no body is ever decompressed, and any
    content coding but identity is refused with 415 before auth or reading."""
    decompressors: list[str] = []
    real_init = DeflateBuffer.__init__

    def counting_init(self: DeflateBuffer, *args: Any, **kwargs: Any) -> None:
        decompressors.append("made")
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(DeflateBuffer, "__init__", counting_init)
    bomb = zlib.compress(b"\0" * (64 << 20), 9)  # 64 MiB of zeros in ~64 KB
    gzip_bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    gz = gzip_bomb.compress(b"\0" * (64 << 20)) + gzip_bomb.flush()
    node = RecordingNode()
    lags: list[float] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - t - 0.01)

    tick = asyncio.ensure_future(ticker())
    try:
        for auth in (None, tokens_auth(tmp_path)):
            async with api_client(node, auth=auth) as c:
                for coding, body in (("gzip", gz), ("deflate", bomb), ("br", bomb), ("gzip, identity", gz)):
                    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
                        resp = await c.put(
                            "/v1/kv/parameters/a",
                            data=body,
                            headers={"Content-Encoding": coding, **JSON, **headers},
                        )
                        assert resp.status == 415, (coding, resp.status)
                        assert error_of(await resp.read())["code"] == "unsupported_media_type"
                # Identity is what every body is taken as: compressed bytes are not JSON.
                plain = await c.put(
                    "/v1/kv/parameters/a",
                    data=gz,
                    headers={"Content-Encoding": "identity", **JSON, **(OPERATOR if auth else {})},
                )
                assert plain.status == 400
    finally:
        tick.cancel()
    assert decompressors == []
    assert node.proposed == []
    print(f"finding 4: max event-loop lag during 16 compressed bodies: {max(lags, default=0.0) * 1000:.1f} ms")


# -- finding 6: limits enforced while reading -----------------------------------------


async def test_finding_06_body_limit_is_enforced_while_reading() -> None:
    """finding 6: bodies were read whole (up to 32 MiB) before the limit was
    checked. Now a declared Content-Length over the limit is refused before
    reading, and a chunked body as soon as it passes the limit: the 413
    arrives while most of the body was never sent."""
    node = RecordingNode()
    limit = 64 * 1024
    async with api_client(node, max_body=limit) as c:
        host = f"127.0.0.1:{c.server.port}"
        raw = await RawHttp.open(c.server.port)
        try:
            await raw.send(
                f"PUT /v1/kv/parameters/a HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {8 << 20}\r\n\r\n".encode()
                + b'{"value": "'
            )
            status, _, body = await raw.response()
            assert status == 413 and error_of(body)["code"] == "too_large"
        finally:
            raw.close()
        raw = await RawHttp.open(c.server.port)
        try:
            await raw.send(
                f"PUT /v1/kv/parameters/a HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            chunk = b"x" * 8192
            for _ in range(limit // len(chunk) + 2):  # just over the limit, never terminated
                await raw.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            status, _, body = await raw.response()
            assert status == 413 and error_of(body)["code"] == "too_large"
        finally:
            raw.close()
        # At the limit itself the body is read and judged.
        value = "v" * (limit - 100)
        ok = await c.put("/v1/kv/parameters/a", data=dumps({"value": value}), headers=JSON)
        assert ok.status == 200
    assert len(node.proposed) == 1


# -- finding 13: the state digest ----------------------------------------------------


async def test_finding_13_state_digest_is_admin_only_and_computed_once_per_state(tmp_path: Path) -> None:
    """finding 13: every GET /v1/debug/state serialised the whole state on
    the loop, for any reader. Now it is admin-only, and callers asking
    about the same applied state share one computation."""
    node = RecordingNode()
    snapshots = 0
    real = node.kv.snapshot

    def counting_snapshot() -> bytes:
        nonlocal snapshots
        snapshots += 1
        return real()

    node.kv.snapshot = counting_snapshot  # type: ignore[method-assign]
    async with api_client(node, auth=tokens_auth(tmp_path)) as c:
        for headers in (READER, OPERATOR):
            resp = await c.get("/v1/debug/state", headers=headers)
            assert resp.status == 403
        assert snapshots == 0
        answers = await asyncio.gather(*(c.get("/v1/debug/state", headers=BOSS) for _ in range(20)))
        docs = [await r.json() for r in answers]
        assert all(r.status == 200 for r in answers)
        assert len({d["sha256"] for d in docs}) == 1
        assert snapshots == 1
        await c.put("/v1/kv/parameters/a", data=dumps({"value": 1}), headers={**JSON, **OPERATOR})
        again = await asyncio.gather(*(c.get("/v1/debug/state", headers=BOSS) for _ in range(5)))
        assert len({(await r.json())["sha256"] for r in again} | {docs[0]["sha256"]}) == 2
        assert snapshots == 2 and c.app[DIGEST].computed == 2


# -- finding 14: integers, percent-encoding, aiohttp's own refusals, Bearer ------------


async def test_finding_14_out_of_range_integers_are_400() -> None:
    """finding 14: a 30-digit expected_version gave a plain-text 500."""
    node = RecordingNode()
    big = "1" * 30
    async with api_client(node) as c:
        await c.put("/v1/kv/parameters/a", data=dumps({"value": 1}), headers=JSON)
        for method, path, body in (
            ("DELETE", f"/v1/kv/parameters/a?expected_version={big}", None),
            ("DELETE", f"/v1/kv/parameters/a?expected_version={1 << 63}", None),
            ("DELETE", "/v1/kv/parameters/a?expected_version=%2B1", None),
            ("GET", f"/v1/history?since={big}", None),
            ("GET", f"/v1/history?limit={big}", None),
            ("GET", f"/v1/watch?since={big}", None),
            ("PUT", "/v1/kv/parameters/a", b'{"value": 1, "expected_version": 18446744073709551615}'),
            ("PUT", "/v1/kv/parameters/a", b'{"value": 1, "expected_version": ' + big.encode() + b"}"),
            (
                "POST",
                "/v1/txn",
                b'{"ops": [{"op": "check", "key": "parameters/a", "expected_version": 9223372036854775808}]}',
            ),
        ):
            resp = await c.request(method, URL(path, encoded=True), data=body, headers=JSON if body else {})
            assert resp.status == 400, (path, resp.status, await resp.text())
            assert error_of(await resp.read())["code"] == "invalid_value"
        fine = await c.delete(f"/v1/kv/parameters/a?expected_version={(1 << 63) - 1}")
        assert fine.status == 409
    assert [p["op"] for p in node.proposed] == ["put", "delete"]


async def test_finding_14_keys_are_decoded_strictly_from_the_raw_path() -> None:
    """finding 14: `%ff%fe` was stored literally, the same key as
    `%25ff%25fe`. Now bad percent-encoding or bytes that are not UTF-8 are
    400, `%2F` and `/` are alike, and `%25` is a percent sign."""
    node = RecordingNode()
    async with api_client(node) as c:
        for path in (
            "/v1/kv/parameters/%ff%fe",
            "/v1/kv/parameters/%zz",
            "/v1/kv/parameters/a%2",
            "/v1/kv/parameters/%C3",
        ):
            resp = await c.put(URL(path, encoded=True), data=dumps({"value": 1}), headers=JSON)
            assert resp.status == 400, path
            assert error_of(await resp.read())["code"] == "invalid_encoding"
            get = await c.get(URL(path, encoded=True))
            assert get.status == 400
        ok = await c.put(URL("/v1/kv/parameters/%25ff%25fe", encoded=True), data=dumps({"value": 2}), headers=JSON)
        assert ok.status == 200 and (await ok.json())["key"] == "parameters/%ff%fe"
        slash = await c.put(URL("/v1/kv/parameters%2Fcaf%C3%A9", encoded=True), data=dumps({"value": 3}), headers=JSON)
        assert slash.status == 200 and (await slash.json())["key"] == "parameters/café"
        bad_query = await c.get(URL("/v1/kv?prefix=%ff", encoded=True))
        assert bad_query.status == 400
    assert [p["key"] for p in node.proposed] == ["parameters/%ff%fe", "parameters/café"]


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /v1/status HTTP/1.1\r\nHost: {host}\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "header_too_large"),
        (
            b"GET /v1/status HTTP/1.1\r\nHost: {host}\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
            + b"\r\n",
            431,
            "header_too_large",
        ),
        (b"GET /v1/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: {host}\r\n\r\n", 431, "header_too_large"),
        (b"G\x01T /v1/status HTTP/1.1\r\nHost: {host}\r\n\r\n", 400, "bad_method"),
        (b"GET /v1/status HTTP/1.1\r\nHost: {host}\r\nNo colon here\r\n\r\n", 400, "bad_request"),
        (
            b"GET /v1/status HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
            "bad_request",
        ),
        (b"GET /v1/status HTTP/9.9\r\nHost: {host}\r\n\r\n", 400, "bad_request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "bad_method"),
        (b"GET /v1/nothing HTTP/1.1\r\nHost: {host}\r\n\r\n", 404, "not_found"),
        (b"PATCH /v1/status HTTP/1.1\r\nHost: {host}\r\n\r\n", 405, "method_not_allowed"),
    ],
    ids=[
        "big-header",
        "many-headers",
        "long-line",
        "bad-method",
        "bad-header",
        "two-lengths",
        "version",
        "tls",
        "404",
        "405",
    ],
)
async def test_finding_14_aiohttps_own_refusals_are_json(request_bytes: bytes, status: int, code: str) -> None:
    """finding 14: oversized or too many headers gave a plain-text 400; every
    refusal aiohttp makes by itself now has the contract's error shape."""
    async with api_client(RecordingNode()) as c:
        raw = await RawHttp.open(c.server.port)
        try:
            await raw.send(request_bytes.replace(b"{host}", f"127.0.0.1:{c.server.port}".encode()))
            got, headers, body = await raw.response()
        finally:
            raw.close()
    assert (got, error_of(body)["code"]) == (status, code)
    assert headers["content-type"].startswith("application/json")


async def test_finding_14_bearer_scheme_in_any_case(tmp_path: Path) -> None:
    """finding 14: `Authorization: bearer …` (lower case) was refused."""
    async with api_client(RecordingNode(), auth=tokens_auth(tmp_path)) as c:
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            resp = await c.get("/v1/status", headers={"Authorization": f"{scheme} reader-token-0123456789"})
            assert resp.status == 200, scheme
        for header in ("Basic reader-token-0123456789", "Bearer", "Bearerreader-token-0123456789"):
            assert (await c.get("/v1/status", headers={"Authorization": header})).status == 401
    async with api_client(RecordingNode()) as c:
        resp = await c.get("/v1/debug/state", headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
        assert resp.status == 200


# -- finding 15: header read timeout ------------------------------------------------


async def trickle(raw: RawHttp, stop: asyncio.Event) -> None:
    """A slow-header client: one byte of a header value every 50 ms, far
    below every size limit, never the end of the head."""
    try:
        await raw.send(b"X-Slow: ")
        while not stop.is_set():
            await raw.send(b"a")
            await asyncio.sleep(0.05)
    except (ConnectionError, RuntimeError):
        return


async def test_finding_15_slow_headers_are_cut_off() -> None:
    """finding 15: a client sending its headers slowly held its connection
    for 100 s or more. Now the head must arrive within the header timeout,
    for the first request and for each later one on a kept-alive
    connection: the server answers 408 and closes while the client is still
    sending."""
    async with api_client(RecordingNode(), runner_options={"header_timeout": 0.5}) as c:
        host = f"127.0.0.1:{c.server.port}".encode()
        for first in (True, False):
            raw = await RawHttp.open(c.server.port)
            stop = asyncio.Event()
            try:
                if not first:  # one normal request on the connection first
                    await raw.send(b"GET /v1/status HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
                    assert (await raw.response())[0] == 200
                await raw.send(b"GET /v1/status HTTP/1.1\r\nHost: " + host + b"\r\n")
                slow = asyncio.ensure_future(trickle(raw, stop))
                status, _, body = await raw.response(timeout=20)
                assert status == 408 and error_of(body)["code"] == "request_timeout"
                assert await raw.closed(timeout=20)
                assert not slow.done() or slow.exception() is None
            finally:
                stop.set()
                raw.close()


async def test_header_timeout_leaves_watches_alone(mesh: Mesh) -> None:
    """The header timeout is about request heads only: a watch open for many
    header timeouts keeps streaming."""
    app = create_app(NodeAdapter(mesh.nodes["n1"]))
    async with TestClient(ApiTestServer(app, header_timeout=0.2)) as c:
        ws = await c.ws_connect("/v1/watch", params={"prefix": "parameters/"})
        loop = asyncio.get_running_loop()
        until_t = loop.time() + 1.0
        i = 0
        while loop.time() < until_t:
            i += 1
            assert (await c.put("/v1/kv/parameters/a", data=dumps({"value": i}), headers=JSON)).status == 200
            msg = await ws.receive(timeout=10)
            assert msg.type == WSMsgType.TEXT and orjson.loads(msg.data)["value"] == i
            await asyncio.sleep(0.05)  # a paced writer, as a person at a desk
        assert i > 3 and not ws.closed
        await ws.close()


# -- finding 12: failed logins ------------------------------------------------------


async def test_finding_12_failed_logins_are_rate_limited_and_audited(tmp_path: Path) -> None:
    """finding 12: failed logins were neither audited nor rate-limited. Now
    after 10 failures in 60 s an address gets 429 (with Retry-After) without
    its token being checked, and the failures become one security_event per
    address and interval."""
    node = RecordingNode()
    async with api_client(node, auth=tokens_auth(tmp_path)) as c:
        guard = c.app[GUARD]
        now = [1000.0]
        guard.clock = lambda: now[0]
        for i in range(10):
            resp = await c.get(f"/v1/kv/parameters/{i}", headers={"Authorization": f"Bearer guess-{i:020d}"})
            assert resp.status == 401
        for headers in ({"Authorization": "Bearer guess-x"}, READER):
            limited = await c.get("/v1/status", headers=headers)
            assert limited.status == 429
            assert error_of(await limited.read())["code"] == "too_many_requests"
            assert 1 <= int(limited.headers["Retry-After"]) <= 60
        now[0] += 61
        assert (await c.get("/v1/status", headers=READER)).status == 200
        assert await guard.flush(node) == 1
    assert node.proposed == [
        {
            "op": "security_event",
            "event": "login_failed",
            "address": "127.0.0.1",
            "count": 10,
            "path": "/v1/kv/parameters/0",
            "author": "unknown",
        }
    ]


async def test_finding_12_failed_logins_are_audited_off_the_request_path(tmp_path: Path) -> None:
    """finding 12: the audit is proposed by a background task; a proposal
    that hangs holds up no answer."""
    node = RecordingNode()
    node.hold_security_events = asyncio.Event()  # the audit's proposals hang
    app = create_app(node, tokens_auth(tmp_path))
    app[GUARD].interval = 0.01
    async with TestClient(ApiTestServer(app)) as c:
        assert (await c.get("/v1/status", headers={"Authorization": "Bearer guess-1"})).status == 401
        await until(lambda: [p for p in node.proposed if p["op"] == "security_event"], "the audit")
        for _ in range(3):
            assert (await c.get("/v1/status", headers={"Authorization": "Bearer guess-2"})).status == 401
        node.hold_security_events.set()
        await until(lambda: sum(p["count"] for p in node.proposed) == 4, "the later failures' audit")
    assert {p["address"] for p in node.proposed} == {"127.0.0.1"}


async def test_finding_12_no_security_event_without_a_controller(tmp_path: Path) -> None:
    """finding 12: with no controller known, failures are dropped (and
    logged), never proposed."""
    node = RecordingNode(leader=None)
    async with api_client(node, auth=tokens_auth(tmp_path)) as c:
        guard = c.app[GUARD]
        for _ in range(3):
            assert (await c.get("/v1/status", headers={"Authorization": "Bearer nope-0000000000000000"})).status == 401
        assert await guard.flush(node) == 0
        assert guard.dropped == 3
        assert node.proposed == []
        node.leader = "fake"
        assert (await c.get("/v1/status", headers={"Authorization": "Bearer nope-0000000000000000"})).status == 401
        assert await guard.flush(node) == 1
        assert node.proposed[0]["count"] == 1


# -- finding 10: a refused membership change ----------------------------------------


async def test_finding_10_refused_membership_change_leaves_dialling_alone(mesh: Mesh) -> None:
    """finding 10: a refused membership request (409) still changed where the
    controller dialled the member, and the member dropped out. Now the
    address changes only with an accepted change."""
    lead = await mesh.wait_leader()
    node = mesh.nodes[lead]
    member = mesh.follower()
    c = mesh.clients[lead]
    before = node.transport.peers()
    assert member in before
    for action in ("add_learner", "add_voter"):
        resp = await c.post(
            "/v1/members",
            data=dumps({"id": member, "action": action, "raft": "127.0.0.1:9"}),
            headers={**JSON, **ADMIN_HEADERS},
        )
        assert resp.status == 409, await resp.text()
        assert error_of(await resp.read())["code"] == "membership_refused"
    bad = await c.post(
        "/v1/members",
        data=dumps({"id": "n9", "action": "add_learner", "raft": "nowhere"}),
        headers={**JSON, **ADMIN_HEADERS},
    )
    assert bad.status == 400
    assert node.transport.peers() == before
    # The member is still replicated to: a write reaches it.
    assert (await c.put("/v1/kv/parameters/after", data=dumps({"value": 1}), headers=JSON)).status == 200
    await until(lambda: mesh.nodes[member].kv.get("parameters/after") is not None, "the member to apply the write")
    # An accepted change does set the address.
    added = await c.post(
        "/v1/members",
        data=dumps({"id": "n9", "action": "add_learner", "raft": "127.0.0.1:9"}),
        headers={**JSON, **ADMIN_HEADERS},
    )
    assert added.status == 200, await added.text()
    assert node.transport.peers()["n9"] == ("127.0.0.1", 9)
    # Promoting that learner with add_voter and another address is accepted,
    # but an existing member's address is not changed by it.
    promoted = await c.post(
        "/v1/members",
        data=dumps({"id": "n9", "action": "add_voter", "raft": "127.0.0.1:10"}),
        headers={**JSON, **ADMIN_HEADERS},
    )
    assert promoted.status in (200, 504), await promoted.text()
    assert node.transport.peers()["n9"] == ("127.0.0.1", 9)


def test_login_guard_is_bounded() -> None:
    """Failed logins from many addresses: memory and proposals stay bounded."""
    from mesh.api.guard import LoginGuard

    guard = LoginGuard(max_addresses=100)
    for i in range(1000):
        guard.failed(f"10.0.{i // 256}.{i % 256}", "/v1/status")
    assert len(guard._failures) == 100
    events = guard.take()
    assert len(events) == guard.max_events
    assert guard.dropped == 1000 - guard.max_events
    assert guard.take() == []
