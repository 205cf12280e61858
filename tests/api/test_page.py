"""The status page's routes (mesh/api/page.py): `GET /` and its static files,
served without a token but behind the Host check, with a strict CSP; and
`GET /v1/whoami`, by which the page learns which buttons to offer. The page
itself is driven in a real browser by tests/browser."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import orjson

from mesh.api.page import CSP, FILES
from tests.api.conftest import ADMIN_HEADERS
from tests.api.edge_kit import BOSS, OPERATOR, READER, RecordingNode, api_client, error_of, tokens_auth

STATIC = resources.files("mesh.api") / "static"


async def test_the_page_is_served_without_a_token_with_a_strict_policy(tmp_path: Path) -> None:
    """A browser must load the page (and its login form) before it has a
    token: the files are public, the API behind them is not."""
    async with api_client(RecordingNode(), auth=tokens_auth(tmp_path)) as c:
        page = await c.get("/")
        assert page.status == 200
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        html = await page.text()
        assert '<script src="/ui/app.js"' in html and 'href="/ui/app.css"' in html
        assert page.headers["Content-Security-Policy"] == CSP
        assert "frame-ancestors 'none'" in CSP and "connect-src 'self'" in CSP and "script-src 'self'" in CSP
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["Referrer-Policy"] == "no-referrer"
        for name, ctype in FILES.items():
            if name == "index.html":
                continue
            resp = await c.get(f"/ui/{name}")
            assert resp.status == 200, name
            assert resp.headers["Content-Type"] == ctype
            assert await resp.read() == (STATIC / name).read_bytes()
        assert (await c.head("/")).status == 200
        # The API behind it still needs a token.
        assert (await c.get("/v1/status")).status == 401


async def test_only_the_page_files_are_served() -> None:
    async with api_client(RecordingNode()) as c:
        for path in ("/ui/index.html", "/ui/page.py", "/ui/..%2Fpage.py", "/ui/%2E%2E%2Fapp.py", "/ui/", "/ui/x/y"):
            resp = await c.get(path)
            assert resp.status == 404, path
            assert error_of(await resp.read())["code"] == "not_found"
        put = await c.put("/", data=b"{}", headers={"Content-Type": "application/json"})
        assert put.status == 405


async def test_the_page_is_behind_the_host_check() -> None:
    """DNS rebinding must not reach the page either (it would run with the
    node's origin)."""
    async with api_client(RecordingNode()) as c:
        resp = await c.get("/", headers={"Host": f"evil.example:{c.server.port}"})
        assert resp.status == 421
        assert error_of(await resp.read())["code"] == "misdirected"
        foreign = await c.get("/", headers={"Origin": "http://evil.example"})
        assert foreign.status == 403


async def test_whoami_with_a_tokens_file(tmp_path: Path) -> None:
    async with api_client(RecordingNode(), auth=tokens_auth(tmp_path)) as c:
        seen = {}
        for headers in (READER, OPERATOR, BOSS):
            resp = await c.get("/v1/whoami", headers=headers)
            assert resp.status == 200
            doc = orjson.loads(await resp.read())
            seen[doc["role"]] = doc["name"]
        assert seen == {"reader": "wall", "operator": "ops", "admin": "boss"}
        assert (await c.get("/v1/whoami")).status == 401
        wrong = await c.get("/v1/whoami", headers={"Authorization": "Bearer not-a-token-0000000"})
        assert wrong.status == 401


async def test_whoami_on_a_loopback_api_without_tokens() -> None:
    async with api_client(RecordingNode()) as c:
        anonymous = orjson.loads(await (await c.get("/v1/whoami")).read())
        assert anonymous == {"name": "anonymous", "role": "operator"}
        admin = orjson.loads(await (await c.get("/v1/whoami", headers=ADMIN_HEADERS)).read())
        assert admin == {"name": "admin", "role": "admin"}


def test_the_page_uses_only_the_public_api_and_nothing_from_elsewhere() -> None:
    """Every API path the script names is a route of the app; no file loads
    anything from another site (no CDN, no font service)."""
    from mesh.api.app import create_app

    app = create_app(RecordingNode())
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    script = (STATIC / "app.js").read_text()
    used = set(re.findall(r"/v1/[a-z]+", script))
    assert {"/v1/status", "/v1/members", "/v1/watch", "/v1/whoami", "/v1/saves", "/v1/audit"} <= used
    for path in used:
        assert any(route == path or route.startswith(path + "/") for route in routes), path
    for name in ("index.html", "app.css", "app.js"):
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://", text), name
        assert "@import" not in text and "url(" not in text, name
