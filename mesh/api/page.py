"""The status page: `GET /` on every node, and what it is made of.

The page is static HTML, CSS and JavaScript shipped in the package
(mesh/api/static/, no build step, nothing fetched from elsewhere) and talks
to the node only through the public API, with the same rules as any client:
it is the node's own origin (so the Origin check lets it through, and no
other page gains anything), sends JSON as `Content-Type: application/json`
and a bearer token kept in the tab's sessionStorage. The files hold no data,
so they are served without a token (guard.PUBLIC_ROUTES): a browser must be
able to load the login form. Every answer carries a strict Content-Security-
Policy (scripts, styles and connections only from the node itself; no
framing), `nosniff` and `no-referrer`.

`GET /v1/whoami` answers who the caller is, `{"name", "role"}` (reader), so
the page offers only the buttons that role may use.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from mesh.api._http import IDENTITY, json_response

# name -> content type: the only files served (no path from the request
# ever reaches the file system).
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
UI_PREFIX = "/ui/"

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page changes with the node's version: ask again, cheaply.
    "Cache-Control": "no-cache",
}


def load_files() -> dict[str, bytes]:
    """The page's files, read once from the package."""
    root = resources.files("mesh.api") / "static"
    return {name: (root / name).read_bytes() for name in FILES}


PAGE_FILES = web.AppKey("page_files", dict)


def _file(request: web.Request, name: str) -> web.Response:
    body = request.app[PAGE_FILES][name]
    resp = web.Response(body=body, headers=HEADERS)
    resp.headers["Content-Type"] = FILES[name]
    return resp


async def index(request: web.Request) -> web.Response:
    return _file(request, "index.html")


async def ui_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in FILES or name == "index.html":
        raise web.HTTPNotFound()
    return _file(request, name)


async def whoami(request: web.Request) -> web.Response:
    ident = request[IDENTITY]
    return json_response({"name": ident.name, "role": ident.role})


def register(app: web.Application) -> None:
    app[PAGE_FILES] = load_files()
    app.router.add_get("/", index)
    app.router.add_get(UI_PREFIX + "{name}", ui_file)
    app.router.add_get("/v1/whoami", whoami)
