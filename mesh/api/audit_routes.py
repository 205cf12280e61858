"""The audit trail's hash chain over HTTP (issue 18).

GET /v1/audit/verify[?at=SEQ]: this node's trail checked
(`mesh.state.audit.verify_chain`): {"node", "ok", "seq", "head",
"first_seq", "chained", "legacy", "breaks": [{"seq", "reason"}]}, and with
`at`, "at": {"seq", "hash"} (hash null when that entry is not held), so that
`hana-node audit verify` compares nodes at the same seq.
GET /v1/audit/trail: the whole trail held, for a signed export: {"node",
"seq", "head", "cut", "entries"}.
Both read this node's applied state (no read barrier: each node answers for
its own copy, which is the point).
"""

from __future__ import annotations

from aiohttp import web

from mesh.api._http import NODE, int_query, json_response
from mesh.state.audit import hash_at


async def get_verify(request: web.Request) -> web.Response:
    node = request.app[NODE]
    at = int_query(request, "at", None)
    trail = node.kv.audit_trail
    doc = {"node": node.node_id, **trail.verify()}
    if at is not None:
        doc["at"] = {"seq": at, "hash": hash_at([e for _, e in trail.entries], at)}
    return json_response(doc)


async def get_trail(request: web.Request) -> web.Response:
    node = request.app[NODE]
    trail = node.kv.audit_trail
    return json_response(
        {
            "node": node.node_id,
            "seq": trail.seq,
            "head": trail.head,
            "cut": trail.cut,
            "entries": [e for _, e in trail.entries],
        }
    )


def register(app: web.Application) -> None:
    app.router.add_get("/v1/audit/verify", get_verify)
    app.router.add_get("/v1/audit/trail", get_trail)
