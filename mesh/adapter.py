"""The node as the API sees it: `NodeAdapter` implements the API's
`NodeHandle` (mesh/api/handle.py) over a running `MeshNode` and its
`DiscoveryAgent` (None with --no-mdns).

It belongs to the composition root, beside mesh/serve.py, because it is the
one place that may see both sides: the API's protocol and value types above
(`MembersView`, `MembershipChange`), the node's concrete classes below. In
mesh/node it would make the node import the API (or push the API's value
types down into a module neither layer owns). It uses only the public
surface of `MeshNode` and `DiscoveryAgent`: what the API may ask of a node
is exactly what this class offers, and every member is spelled out here (no
forwarding of unknown attributes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from mesh.api.handle import DiscoveredView, MembershipAction, MembershipChange, MembersView, MemberView, NodeHandle
from mesh.errors import Timeout
from mesh.node.discovery_glue import DiscoveryAgent
from mesh.node.live import LiveSubscription
from mesh.node.runtime import MeshNode
from mesh.raft import ConfChange, ConfChangeType
from mesh.state.kv import ChangeRecord
from mesh.state.model import HanaState

CONF_CHANGE: dict[MembershipAction, ConfChangeType] = {
    "add_learner": ConfChangeType.ADD_LEARNER,
    "add_voter": ConfChangeType.ADD_VOTER,
    "promote": ConfChangeType.PROMOTE_LEARNER,
    "demote": ConfChangeType.DEMOTE_VOTER,
    "remove": ConfChangeType.REMOVE_NODE,
}
# The changes that may bring a node in, and so an address to dial it at.
JOINING: frozenset[MembershipAction] = frozenset({"add_learner", "add_voter"})
# Healthy: heard within this many ms (the autopilot's default contact_timeout)
# and at most this many entries behind the controller's log.
HEALTHY_CONTACT_MS = 2000.0
HEALTHY_LAG = 250


class NodeAdapter:
    """See the module docstring. `static_peers`: the ids of --peers (found
    "static" unless discovery found them too)."""

    def __init__(self, node: MeshNode, agent: DiscoveryAgent | None = None, static_peers: Iterable[str] = ()) -> None:
        self._node = node
        self._agent = agent
        self._static = frozenset(static_peers)

    @property
    def node_id(self) -> str:
        return self._node.node_id

    @property
    def cluster(self) -> str:
        return self._node.cluster

    @property
    def kv(self) -> HanaState:
        return self._node.kv

    async def read_barrier(self, linearizable: bool) -> None:
        await self._node.read_barrier(linearizable)

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        return await self._node.propose(command)

    def watch(self, prefix: str, since: int) -> AsyncIterator[ChangeRecord]:
        return self._node.watch(prefix, since)

    def watch_events(self, prefix: str, since: int) -> AsyncIterator[dict[str, Any]]:
        return self._node.watch_events(prefix, since)

    async def propose_offline(self, command: dict[str, Any]) -> dict[str, Any]:
        return await self._node.propose_offline(command)

    def outbox(self) -> dict[str, Any]:
        return self._node.outbox()

    def outbox_overlay(self, prefix: str) -> dict[str, tuple[str, Any]]:
        return self._node.outbox_overlay(prefix)

    def connected(self) -> bool:
        return self._node.connected()

    def controller_contact_ms(self) -> int | None:
        return self._node.controller_contact_ms()

    def metrics_text(self) -> bytes:
        return self._node.metrics_text()

    # -- live parameters -----------------------------------------------------------

    def live_set(self, values: dict[str, Any], *, gesture: str | None, author: str, role: str = "operator") -> None:
        self._node.live_set(values, gesture=gesture, author=author, role=role)

    def live_check(self, values: dict[str, Any], *, gesture: str | None, author: str, role: str = "operator") -> None:
        self._node.live_check(values, gesture=gesture, author=author, role=role)

    def live_end(self, gesture: str, *, author: str) -> None:
        self._node.live_end(gesture, author=author)

    def live_subscribe(self, prefix: str) -> LiveSubscription:
        return self._node.live_subscribe(prefix)

    # -- membership --------------------------------------------------------------

    def found(self) -> dict[str, str]:
        """How each known node was found: "self", "static" (--peers) or "mdns"."""
        out = dict.fromkeys(self._static, "static")
        if self._agent is not None:
            out.update(self._agent.found())
        out[self.node_id] = "self"
        return out

    def status(self) -> dict[str, Any]:
        """The node's status, each member with how it was found ("config":
        only known from the Raft configuration)."""
        doc = self._node.status()
        found = self.found()
        for m in doc.get("members", []):
            m["found"] = found.get(m.get("id"), "config")
        return doc

    def members(self) -> MembersView:
        doc = self.status()
        is_leader = doc.get("leader") == doc.get("id")
        last_index = self._node.last_index()
        members = []
        for m in doc.get("members", []):
            contact = m.get("last_contact_ms")
            match = m.get("match_index")
            lag = None if match is None else max(0, last_index - match)
            healthy = None
            if is_leader:
                healthy = contact is not None and contact <= HEALTHY_CONTACT_MS and (lag is None or lag <= HEALTHY_LAG)
            members.append(
                MemberView(
                    id=m["id"],
                    raft=m.get("raft"),
                    api=m.get("api"),
                    voter=bool(m.get("voter")),
                    role=str(m.get("role")),
                    match_index=match,
                    last_contact_ms=contact,
                    found=m["found"],
                    lag=lag,
                    healthy=healthy,
                )
            )
        member_ids = {m.id for m in members}
        discovered = []
        if self._agent is not None:
            for nid, p in sorted(self._agent.discovered_peers().items()):
                if nid in member_ids:
                    continue
                discovered.append(
                    DiscoveredView(
                        id=nid,
                        raft=f"{p.raft_host}:{p.raft_port}",
                        api=p.api or None,
                        found=p.source,
                        state=str(p.state),
                    )
                )
        return MembersView(doc.get("leader"), doc.get("term", 0), tuple(members), tuple(discovered))

    def api_address(self, node_id: str) -> str | None:
        api = self._node.api_address_of(node_id)
        if not api and self._agent is not None:
            peer = self._agent.discovered_peers().get(node_id)
            api = peer.api if peer is not None else None
        return api or None

    async def change_membership(self, change: MembershipChange) -> dict[str, Any]:
        dial = change.raft
        if change.action not in JOINING or change.node in {m.get("id") for m in self._node.status()["members"]}:
            # Only a node joining gets an address here: an existing member (a
            # learner promoted with add_voter, say) keeps the one it has.
            dial = None
        context = {"author": change.author, "address": change.address, "reason": change.reason}
        cc = ConfChange(CONF_CHANGE[change.action], change.node, context=context)
        # Where to dial the node changes only once the controller accepted the
        # change: a refused one (409: a member already, one pending, ...) or one
        # that never reached the log leaves this node's dialling as it was.
        try:
            result = await self._node.change_membership(cc)
        except Timeout:
            # In the log, outcome unknown: if it commits, the node must be reachable.
            if dial is not None:
                self._node.set_peer_address(change.node, dial)
            raise
        if dial is not None:
            self._node.set_peer_address(change.node, dial)
        return result


# The type checker holds the adapter to the API's protocol.
_: type[NodeHandle] = NodeAdapter
