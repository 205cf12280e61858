"""The aiohttp application: routes of shared/API.md over a `NodeHandle`.

Every answer, refusals included, is JSON ({"error": {"code", "message"}} with
its status). What a request meets before a route: the Host and Origin checks
and the content-coding refusal (guard.edge_middleware), then identity and
role (guard.auth_middleware). Bodies are read bounded (`max_body`, also while
streaming), JSON bodies must say `Content-Type: application/json`, and every
command carries its author and role and passes the state machine's
`prepare` (the state machine's own checks) before it is proposed. Serve it with `mesh.api.server.run_api`.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from mesh.api import (
    audit_routes,
    kv_routes,
    live_routes,
    members_routes,
    offline_routes,
    page,
    state_routes,
    trust_routes,
)
from mesh.api._http import NODE, SETTINGS, ApiSettings
from mesh.api.auth import TokenAuth
from mesh.api.guard import (
    GUARD,
    LoginGuard,
    auth_middleware,
    cors_headers,
    edge_middleware,
    errors_middleware,
    guard_task,
)
from mesh.api.handle import NodeHandle
from mesh.api.server import run_api
from mesh.api.tokens_reload import tokens_task
from mesh.state.limits import DEFAULT_MAX_BODY

__all__ = ["DEFAULT_MAX_BODY", "check_options", "create_app", "run_api"]


def check_options(allow_origins: Sequence[str], allow_hosts: Sequence[str], max_body: int) -> None:
    """Raise ValueError (saying which flag) for options `create_app` would
    refuse: so that a node refuses them before it binds anything."""
    ApiSettings.make(None, None, allow_origins, allow_hosts, max_body)


def create_app(
    node: NodeHandle,
    auth: TokenAuth | None = None,
    *,
    admin_token: str | None = None,
    allow_origins: Sequence[str] = (),
    allow_hosts: Sequence[str] = (),
    max_body: int = DEFAULT_MAX_BODY,
) -> web.Application:
    """The API of `node`.

    auth: the tokens file's tokens (then they alone count). Without it (a
    loopback API) a client without a token is an operator and
    `Authorization: Bearer <admin_token>` the admin; any other token is 401.
    allow_origins: pages (scheme://host[:port]) besides the node's own that
    may call the API from a browser. allow_hosts: names besides the node's
    own addresses that a Host header may carry (host or host:port).
    max_body: the largest request body in bytes.
    Raises ValueError for a malformed origin, host or limit."""
    settings = ApiSettings.make(auth, admin_token, allow_origins, allow_hosts, max_body)
    app = web.Application(
        middlewares=[errors_middleware, edge_middleware, auth_middleware, offline_routes.write_flags_middleware],
        client_max_size=max_body,
    )
    app[NODE] = node
    app[SETTINGS] = settings
    app[GUARD] = LoginGuard()
    app.cleanup_ctx.append(guard_task)
    app.cleanup_ctx.append(tokens_task)
    app.on_response_prepare.append(cors_headers)
    kv_routes.register(app)
    live_routes.register(app)
    state_routes.register(app)
    audit_routes.register(app)
    members_routes.register(app)
    offline_routes.register(app)
    trust_routes.register(app)
    page.register(app)
    return app
