"""Membership by hand: `GET /v1/members` and `POST /v1/members`.

GET answers the members of the status document (each with how it was found,
"self", "static", "mdns" or "config", and its health as this node sees it)
plus the nodes discovery sees that are not members. Health fields are
meaningful on the controller (it hears every member); elsewhere `healthy`
is null.

POST `{"id", "action", "raft"?}` proposes one change through the log on the
controller and answers once it is committed: `add_learner`, `add_voter`,
`promote`, `demote`, `remove`. `raft` ("host:port") tells the controller
where to dial a node that discovery has not found. A follower answers 503
`not_leader` with `leader` (its id) and `leader_api` (its API address) so
that a client can retry there. The autopilot runs alongside: a node removed
by hand while discovery still sees it is added back as a learner.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from aiohttp import web

from mesh.api._http import IDENTITY, NODE, json_response, read_json_object
from mesh.api.handle import MEMBERSHIP_ACTIONS, MembershipChange
from mesh.errors import BadRequest, NotLeader


def parse_raft_address(raw: Any) -> tuple[str, int]:
    """`host:port` or `[v6]:port` of a peer's Raft listener."""
    if not isinstance(raw, str) or not raw or len(raw) > 300:
        raise BadRequest("raft must be host:port", code="invalid_value")
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        raise BadRequest(f"raft {raw!r} must be host:port", code="invalid_value")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadRequest(f"raft {raw!r}: {host!r} is not an IPv6 address", code="invalid_value") from None
    elif ":" in host or any(c.isspace() or c in "/@[]" for c in host):
        raise BadRequest(f"raft {raw!r} must be host:port (IPv6 in brackets)", code="invalid_value")
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadRequest(f"raft {raw!r}: the port must be 1-65535", code="invalid_value")
    return host, int(port_text)


async def get_members(request: web.Request) -> web.Response:
    node = request.app[NODE]
    view = node.members()
    return json_response(
        {
            "id": node.node_id,
            "cluster": node.cluster,
            "leader": view.leader,
            "leader_api": node.api_address(view.leader) if view.leader else None,
            "term": view.term,
            "members": [dataclasses.asdict(m) for m in view.members],
            "discovered": [dataclasses.asdict(p) for p in view.discovered],
            # Machines without valid credentials, waiting for `hana-node members approve ID`.
            "pending": node.kv.trust.pending_list(),
        }
    )


async def post_member(request: web.Request) -> web.Response:
    body = await read_json_object(request, frozenset({"id", "action", "raft"}))
    nid = body.get("id")
    if not isinstance(nid, str) or not nid or "," in nid or len(nid) > 128:
        raise BadRequest("id must be a node id (a non-empty string without commas)", code="invalid_value")
    action = next((a for a in MEMBERSHIP_ACTIONS if a == body.get("action")), None)
    if action is None:
        raise BadRequest(f"action must be one of {', '.join(MEMBERSHIP_ACTIONS)}", code="invalid_value")
    raw = body.get("raft")
    # Who asked, and from where, travels with the change into the audit
    # trail of every node.
    change = MembershipChange(
        node=nid,
        action=action,
        author=request[IDENTITY].name,
        address=request.remote or "unknown",
        raft=parse_raft_address(raw) if raw is not None else None,
    )
    node = request.app[NODE]
    try:
        result = await node.change_membership(change)
    except NotLeader as exc:
        leader = exc.extra.get("leader")
        leader_api = node.api_address(leader) if isinstance(leader, str) and leader else None
        raise NotLeader(exc.message, leader=leader, leader_api=leader_api) from None
    return json_response({"id": nid, "action": action, **result})


def register(app: web.Application) -> None:
    app.router.add_get("/v1/members", get_members)
    app.router.add_post("/v1/members", post_member)
