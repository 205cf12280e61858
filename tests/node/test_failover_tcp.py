"""Issue 17 through a live in-process mesh (real TCP on loopback): a
controller whose sockets all close is replaced by the connection-lost path
(not the election timeout), and a controller that closes connections on
purpose keeps its term."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mesh.node.runtime import MeshNode
from mesh.raft import Role
from tests.meshkit import InProcessMesh

SECRET = b"failover-tcp-secret-0123456"


async def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
async def mesh() -> AsyncIterator[InProcessMesh]:
    m = InProcessMesh(["a", "b", "c"], secret=SECRET)
    await m.start()
    try:
        await m.wait_leader()
        yield m
    finally:
        await m.stop()


def all_linked(m: InProcessMesh, nodes: list[MeshNode]) -> bool:
    """Every sender among `nodes` is connected."""
    ids = {n.node_id for n in nodes}
    return all(s.connected for n in nodes for peer, s in n.transport._peers.items() if peer in ids)


async def test_a_controller_whose_sockets_close_is_replaced_by_the_connection_lost_path(mesh: InProcessMesh) -> None:
    lead = await mesh.wait_leader()
    old = mesh.nodes[lead]
    term = old.core.raw.term
    survivors = [n for nid, n in mesh.nodes.items() if nid != lead]
    # Gone as a killed process is gone: every socket closes, nothing is
    # handed over. (The ticker stops too: it cannot heartbeat any more.)
    await old.stop(transfer=False)
    new = await mesh.wait_leader(exclude=lead)
    winner = mesh.nodes[new]
    assert winner.core.raw.term == term + 1
    assert winner.core.raw.campaign_cause == "connection_lost"
    assert b"hana_raft_campaigns_on_connection_lost_total 1.0" in winner.metrics_text()
    # Exactly one survivor campaigned: the other granted its pre-vote.
    assert sorted(n.core.raw.connection_lost_campaigns for n in survivors) == [0, 1]
    result = await survivors[0].propose({"op": "put", "key": "parameters/after", "value": 1})
    assert result["version"] == 1


async def test_a_controller_that_closes_connections_on_purpose_keeps_its_term(mesh: InProcessMesh) -> None:
    lead = await mesh.wait_leader()
    leader = mesh.nodes[lead]
    term = leader.core.raw.term
    followers = sorted(nid for nid in mesh.nodes if nid != lead)
    first = mesh.nodes[followers[0]]  # first in turn: campaigns at once when it notices
    everyone = list(mesh.nodes.values())

    # 1. The controller redials one follower (a reconnect): that follower
    # still has its own connection to the controller, so it notices nothing.
    leader.transport._stop_sender(first.node_id, "test_reconnect")
    leader.transport._sync_sender(first.node_id)
    await wait_for(lambda: all_linked(mesh, everyone))
    assert first.core.raw.connection_lost_campaigns == 0

    # 2. Worse: the controller drops every connection the followers dialed
    # and redials the first follower, which so sees every connection with
    # the controller closed by it, as after a crash. It campaigns at once,
    # but the other follower still hears the controller (in its lease) and
    # refuses: the controller keeps its term.
    for writer in list(leader.transport._inbound.values()):
        writer.close()
    leader.transport._stop_sender(first.node_id, "test_reconnect")
    leader.transport._sync_sender(first.node_id)
    await wait_for(lambda: first.core.raw.connection_lost_campaigns == 1)
    await wait_for(lambda: all_linked(mesh, everyone) and first.core.raw.lead == lead)
    # Two election timeouts more: nothing moves.
    await asyncio.sleep(2 * leader.cfg.tick * leader.cfg.election_ticks)
    assert [(n.node_id, n.core.raw.term, n.core.raw.lead) for n in everyone] == [
        (n.node_id, term, lead) for n in everyone
    ]
    assert leader.core.raw.role == Role.LEADER
