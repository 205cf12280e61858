"""Cluster credentials over the API (issue 18).

Admin:  POST /v1/trust/invite {"expires"?: "10m", "role"?: "voter"|"learner"}
            -> {"token","id","expires","role","controllers"}
        POST /v1/trust/approve {"id"} -> {"id","approved":true,"fingerprint"}
        POST /v1/trust/rotate-ca -> {"phase":"roll","bundle","new_ca"}
Reader: GET /v1/trust -> the trust state (tokens without their hashes, issued and revoked serials,
        pending machines, admissions, signers, the CA roll)
Public (a token, an approval or a certificate is the credential; no bearer token):
        GET /v1/trust/ca -> {"cluster","certs":[PEM…]}
        POST /v1/trust/join {"token","node_id","csr","raft"?,"api"?}
            -> {"cluster","node_id","role","cert","ca":[PEM…],"signers"}
        POST /v1/trust/request {"node_id","csr","raft"?,"api"?} -> 202 {"pending":true,"fingerprint"} or 200 as join
        POST /v1/trust/renew {"cert","csr"} -> as join
A node without credentials (PSK mode) answers 404 `no_credentials`.
"""

from __future__ import annotations

from aiohttp import web

from mesh.api._http import IDENTITY, NODE, ApiError, json_response, read_json_object
from mesh.trust import tokens
from mesh.trust.service import TrustFailure, TrustService

TRUST = web.AppKey("trust", TrustService)


def _service(request: web.Request) -> TrustService:
    service = request.app.get(TRUST)
    if service is None:
        raise ApiError(
            404,
            "no_credentials",
            "this node runs without cluster credentials (PSK mode): run `hana-node init` on a new cluster",
        )
    return service


def _fail(exc: TrustFailure, request: web.Request | None = None) -> ApiError:
    if request is not None and TRUST in request.app:
        request.app[TRUST].log_refusal(request.path, exc, request.remote or "unknown")
    extra = {k: v for k, v in exc.extra.items() if v is not None}
    return ApiError(exc.status, exc.code, str(exc), **extra)


async def get_ca(request: web.Request) -> web.Response:
    return json_response(_service(request).ca_doc())


async def get_trust(request: web.Request) -> web.Response:
    service = _service(request)
    return json_response({"cluster": service.cluster, **request.app[NODE].kv.trust.view()})


async def post_invite(request: web.Request) -> web.Response:
    service = _service(request)
    body = await read_json_object(request, frozenset({"expires", "role"}))
    try:
        seconds = tokens.parse_duration(str(body.get("expires", "10m")))
    except ValueError as exc:
        raise ApiError(400, "invalid_value", f"expires: {exc}") from None
    role = body.get("role", "learner")
    if role not in tokens.ROLES:
        raise ApiError(400, "invalid_value", "role must be voter or learner")
    try:
        return json_response(await service.invite(seconds, role, request[IDENTITY].name))
    except TrustFailure as exc:
        raise _fail(exc, request) from None


async def post_approve(request: web.Request) -> web.Response:
    service = _service(request)
    body = await read_json_object(request, frozenset({"id"}))
    try:
        return json_response(await service.approve(body.get("id"), request[IDENTITY].name))
    except TrustFailure as exc:
        raise _fail(exc, request) from None


async def post_rotate(request: web.Request) -> web.Response:
    service = _service(request)
    try:
        return json_response(await service.rotate_ca(request[IDENTITY].name))
    except TrustFailure as exc:
        raise _fail(exc, request) from None


async def post_join(request: web.Request) -> web.Response:
    service = _service(request)
    body = await read_json_object(request, frozenset({"token", "node_id", "csr", "raft", "api"}))
    try:
        return json_response(await service.join(body))
    except TrustFailure as exc:
        raise _fail(exc, request) from None


async def post_request(request: web.Request) -> web.Response:
    service = _service(request)
    body = await read_json_object(request, frozenset({"node_id", "csr", "raft", "api"}))
    try:
        status, doc = await service.request_join(body, request.remote or "unknown")
    except TrustFailure as exc:
        raise _fail(exc, request) from None
    return json_response(doc, status)


async def post_renew(request: web.Request) -> web.Response:
    service = _service(request)
    body = await read_json_object(request, frozenset({"cert", "csr"}))
    try:
        return json_response(await service.renew(body))
    except TrustFailure as exc:
        raise _fail(exc, request) from None


def register(app: web.Application) -> None:
    app.router.add_get("/v1/trust", get_trust)
    app.router.add_get("/v1/trust/ca", get_ca)
    app.router.add_post("/v1/trust/invite", post_invite)
    app.router.add_post("/v1/trust/approve", post_approve)
    app.router.add_post("/v1/trust/rotate-ca", post_rotate)
    app.router.add_post("/v1/trust/join", post_join)
    app.router.add_post("/v1/trust/request", post_request)
    app.router.add_post("/v1/trust/renew", post_renew)
