"""Bearer tokens with roles: reader < operator < admin."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from mesh.api.app import create_app
from mesh.api.auth import TokenAuth, TokensFileError, is_loopback
from tests.api.test_fuzz import FakeNode

TOKENS = {
    "tokens": [
        {"name": "wall", "token": "reader-token-0123456789", "role": "reader"},
        {"name": "ops", "token": "operator-token-0123456789", "role": "operator"},
        {"name": "boss", "token": "admin-token-0123456789ab", "role": "admin"},
    ]
}


@pytest.fixture
def auth(tmp_path: Path) -> TokenAuth:
    path = tmp_path / "tokens.json"
    path.write_bytes(orjson.dumps(TOKENS))
    return TokenAuth.from_file(path)


async def status_of(client: TestClient, method: str, path: str, token: str | None, body: object = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = orjson.dumps(body) if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    resp = await client.request(method, path, headers=headers, data=data)
    doc = await resp.json()
    if resp.status >= 400:
        assert set(doc) == {"error"} and doc["error"]["code"]
    return resp.status


async def test_roles(auth: TokenAuth) -> None:
    node = FakeNode()
    async with TestClient(TestServer(create_app(node, auth))) as c:
        assert await status_of(c, "GET", "/v1/status", None) == 401
        assert await status_of(c, "GET", "/v1/status", "wrong-token-000000000") == 401
        assert await status_of(c, "GET", "/v1/status", "reader-token-0123456789") == 200
        put = ("PUT", "/v1/kv/parameters/a", {"value": 1})
        assert await status_of(c, *put[:2], "reader-token-0123456789", put[2]) == 403
        assert await status_of(c, *put[:2], "operator-token-0123456789", put[2]) == 200
        # Replacing the show is an admin decision.
        assert await status_of(c, "POST", "/v1/saves", "operator-token-0123456789", {"name": "s"}) == 200
        assert await status_of(c, "POST", "/v1/saves/s/restore", "operator-token-0123456789", {}) == 403
        assert await status_of(c, "DELETE", "/v1/saves/s", "operator-token-0123456789") == 403
        assert await status_of(c, "POST", "/v1/saves/s/restore", "admin-token-0123456789ab", {}) == 200
    # The identity is the author recorded in history.
    assert node.kv.get("parameters/a") is not None
    assert node.kv.history_query("parameters/")["records"][0]["author"] == "ops"


@pytest.mark.parametrize(
    "content",
    [b"", b"{}", b'{"tokens": []}', b'{"tokens": [{"name": "x", "token": "short", "role": "reader"}]}',
     b'{"tokens": [{"name": "x", "token": "0123456789abcdef", "role": "root"}]}', b"not json"],
)  # fmt: skip
def test_bad_tokens_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(content)
    with pytest.raises(TokensFileError):
        TokenAuth.from_file(path)


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("display-1")
