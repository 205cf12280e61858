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

import ipaddress
from typing import Any

from aiohttp import web

from mesh.api._http import IDENTITY, NODE, json_response, read_json_object
from mesh.errors import BadRequest, NotLeader, NotReady, Timeout
from mesh.raft import ConfChange, ConfChangeType

ACTIONS = {
    "add_learner": ConfChangeType.ADD_LEARNER,
    "add_voter": ConfChangeType.ADD_VOTER,
    "promote": ConfChangeType.PROMOTE_LEARNER,
    "demote": ConfChangeType.DEMOTE_VOTER,
    "remove": ConfChangeType.REMOVE_NODE,
}
# Healthy: heard within this many ms (the autopilot's default contact_timeout).
HEALTHY_CONTACT_MS = 2000.0


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


def _leader_api(node: Any, leader: str | None) -> str | None:
    if not leader:
        return None
    if leader == node.node_id:
        return node.cfg.api_address if hasattr(node, "cfg") else None
    transport = getattr(node, "transport", None)
    api = transport.peer_api.get(leader) if transport is not None else None
    if not api:
        found = getattr(node, "discovered_peers", None)
        peer = found().get(leader) if found is not None else None
        api = peer.api if peer is not None else None
    return api or None


async def get_members(request: web.Request) -> web.Response:
    node = request.app[NODE]
    doc = node.status()
    is_leader = doc.get("leader") == doc.get("id")
    last_index = doc.get("commit_index") or 0
    raft = getattr(getattr(node, "replica", None), "raft", None)
    if raft is not None:
        last_index = raft.log.last_index()
    members = []
    for m in doc.get("members", []):
        contact = m.get("last_contact_ms")
        match = m.get("match_index")
        lag = None if match is None else max(0, last_index - match)
        healthy = None
        if is_leader:
            healthy = contact is not None and contact <= HEALTHY_CONTACT_MS and (lag is None or lag <= 250)
        members.append({**m, "found": m.get("found", "config"), "lag": lag, "healthy": healthy})
    member_ids = {m["id"] for m in members}
    discovered = []
    found_peers = getattr(node, "discovered_peers", None)
    if found_peers is not None:
        for nid, p in sorted(found_peers().items()):
            if nid in member_ids:
                continue
            discovered.append(
                {
                    "id": nid,
                    "raft": f"{p.raft_host}:{p.raft_port}",
                    "api": p.api or None,
                    "found": p.source,
                    "state": str(p.state),
                }
            )
    return json_response(
        {
            "id": doc.get("id"),
            "cluster": doc.get("cluster"),
            "leader": doc.get("leader"),
            "leader_api": _leader_api(node, doc.get("leader")),
            "term": doc.get("term"),
            "members": members,
            "discovered": discovered,
        }
    )


async def post_member(request: web.Request) -> web.Response:
    body = await read_json_object(request, frozenset({"id", "action", "raft"}))
    nid = body.get("id")
    if not isinstance(nid, str) or not nid or "," in nid or len(nid) > 128:
        raise BadRequest("id must be a node id (a non-empty string without commas)", code="invalid_value")
    action = body.get("action")
    if action not in ACTIONS:
        raise BadRequest(f"action must be one of {', '.join(ACTIONS)}", code="invalid_value")
    node = request.app[NODE]
    change = getattr(node, "change_membership", None)
    if change is None:
        raise NotReady("this node cannot change membership")
    raw = body.get("raft")
    dial = parse_raft_address(raw) if raw is not None else None
    if action not in ("add_learner", "add_voter") or nid in {m.get("id") for m in node.status().get("members", [])}:
        # Only a node joining gets an address here: an existing member (a
        # learner promoted with add_voter, say) keeps the one it has.
        dial = None
    # Where to dial the node changes only once the controller accepted the
    # change: a refused one (409: a member already, one pending, ...) or one
    # that never reached the log leaves this node's dialling as it was.
    try:
        # Who asked, and from where, travels with the change into the
        # audit trail of every node.
        who = {"author": request[IDENTITY].name, "address": request.remote or "unknown", "reason": "by hand"}
        result = await change(ConfChange(ACTIONS[action], nid, context=who))
    except NotLeader as exc:
        leader = exc.extra.get("leader")
        raise NotLeader(exc.message, leader=leader, leader_api=_leader_api(node, leader)) from None
    except Timeout:
        # In the log, outcome unknown: if it commits, the node must be reachable.
        if dial is not None:
            node.transport.set_peer(nid, dial)
        raise
    if dial is not None:
        node.transport.set_peer(nid, dial)
    return json_response({"id": nid, "action": action, **result})


def register(app: web.Application) -> None:
    app.router.add_get("/v1/members", get_members)
    app.router.add_post("/v1/members", post_member)
