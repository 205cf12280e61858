"""Peer side of issue 12 through a live in-process mesh (real TCP on
loopback): snapshots over the frame limit, dialling after a removal,
forwarded writes from non-members, the command size cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mesh.errors import NoLeader, TooLarge
from mesh.node.runtime import MeshNode
from mesh.raft import ConfChange, ConfChangeType, Role
from mesh.state.limits import MAX_COMMAND_BYTES
from mesh.transport.codec import ForwardRequest
from mesh.transport.tcp import TcpTransport, TransportConfig
from tests.meshkit import InProcessMesh

SECRET = b"peer-hardening-secret-0123"
SMALL = {"max_frame": 64 << 10, "snapshot_chunk": 16 << 10}


async def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


class Mesh(InProcessMesh):
    async def start(self, *nids: str) -> None:
        await super().start(*nids)
        self.introduce_everyone()

    async def leader_node(self) -> MeshNode:
        await wait_for(lambda: any(n.replica.raft.role == Role.LEADER for n in self.nodes.values()))
        return next(n for n in self.nodes.values() if n.replica.raft.role == Role.LEADER)


@pytest.fixture
async def mesh_factory() -> AsyncIterator:  # type: ignore[type-arg]
    made: list[Mesh] = []

    async def make(ids: list[str], joiners: list[str] = (), **cfg: object) -> Mesh:  # type: ignore[assignment]
        m = Mesh(ids, list(joiners), secret=SECRET, **cfg)
        made.append(m)
        await m.start()
        return m

    yield make
    for m in made:
        await m.stop()


async def test_finding_08_snapshot_over_the_frame_limit_reaches_a_new_learner(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    """finding 8: a state larger than the peer frame limit could never reach
    a new learner (one frame, over the limit, retried for ever). With a
    64 KiB frame limit and a ~400 KB state, the learner gets the snapshot in
    chunks, applies it and then catches up by appends."""
    m = await mesh_factory(["a", "b", "c"], ["d"], snapshot_every=5, keep_entries=0, **SMALL)
    lead = await m.leader_node()
    big = "x" * 20_000
    for i in range(20):
        await lead.propose({"op": "put", "key": f"parameters/p{i}", "value": f"{i}{big}"})
    await wait_for(lambda: lead.storage.snapshot().meta.index > 0 and lead.storage.first_index() > 2)
    assert len(lead.storage.snapshot().data) > 5 * SMALL["max_frame"]
    await lead.change_membership(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    d = m.nodes["d"]
    await wait_for(lambda: d.kv.get("parameters/p19") is not None)
    assert d.replica.raft.is_learner()
    assert lead.transport.stats.snapshots_sent >= 1 and d.transport.stats.snapshots_received >= 1
    await lead.propose({"op": "put", "key": "parameters/after", "value": 1})
    await wait_for(lambda: d.kv.get("parameters/after") is not None)
    for i in (0, 7, 19):
        assert d.kv.get(f"parameters/p{i}") == lead.kv.get(f"parameters/p{i}")


async def test_finding_17_leader_stops_dialing_a_removed_member(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    """finding 17: a removed member was still dialed 17 minutes later. When
    the removal commits, every remaining member stops its sender to it (its
    address stays in the address book: discovery may still see it)."""
    m = await mesh_factory(["a", "b", "c", "d"])
    lead = await m.leader_node()
    victim = next(i for i, n in m.nodes.items() if n is not lead)
    await wait_for(lambda: victim in lead.transport.peer_rtt_ms())
    await lead.change_membership(ConfChange(ConfChangeType.REMOVE_NODE, victim))
    others = [n for i, n in m.nodes.items() if i != victim]
    await wait_for(lambda: all(victim not in n.replica.raft.conf_state().members() for n in others))
    for n in others:
        await wait_for(lambda n=n: victim not in n.transport.peer_rtt_ms())
        assert victim in n.transport.peers()
    # The remaining members still replicate.
    await lead.propose({"op": "put", "key": "parameters/after", "value": 1})
    for n in others:
        await wait_for(lambda n=n: n.kv.get("parameters/after") is not None)


def forwards_refused(node: MeshNode, reason: str) -> float:
    return node.metrics.registry.get_sample_value("hana_forwards_refused_total", {"reason": reason}) or 0.0


async def test_finding_03_forwarded_write_from_a_non_member_is_dropped(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    """finding 3: a process that is not a member (but has the secret) forged a
    forwarded write and a compact. The controller serves forwarded writes
    from members of the applied configuration only: the rest are dropped
    and counted."""
    m = await mesh_factory(["a", "b", "c"])
    lead = await m.leader_node()
    rogue = TcpTransport(TransportConfig("rogue", "hana", SECRET), lambda msg: None)
    await rogue.listen("127.0.0.1", 0)
    try:
        rogue.set_peer(lead.node_id, m.addrs[lead.node_id])
        forged = b'{"op":"put","key":"parameters/forged","value":1,"author":"admin","rid":"rogue.1.1"}'
        rogue.send(ForwardRequest(lead.node_id, "rogue", 1, forged))
        compact = b'{"op":"compact","revision":1,"rid":"rogue.1.2"}'
        rogue.send(ForwardRequest(lead.node_id, "rogue", 2, compact))
        await wait_for(lambda: forwards_refused(lead, "not_member") >= 2 or lead.kv.get("parameters/forged"))
        assert lead.kv.get("parameters/forged") is None
        assert forwards_refused(lead, "not_member") == 2
        # A member's forwarded write still goes through.
        follower = next(n for n in m.nodes.values() if n is not lead)
        await follower.propose({"op": "put", "key": "parameters/ok", "value": 1})
        assert lead.kv.get("parameters/forged") is None
    finally:
        await rogue.close()


async def test_a_node_that_is_not_a_member_refuses_writes_at_once(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    """The other side of finding 3: a node outside the configuration (a joiner
    not added yet) would forward into silence; it answers 503 at once."""
    m = await mesh_factory(["a", "b", "c"], ["d"])
    await m.leader_node()
    d = m.nodes["d"]
    with pytest.raises(NoLeader, match="not a member"):
        await d.propose({"op": "put", "key": "parameters/x", "value": 1})


async def test_finding_03_command_over_the_cap_is_refused_before_the_log(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    """finding 3 / INTERFACES section 6: an encoded command over
    MAX_COMMAND_BYTES is refused with TooLarge (413 too_large) on the node
    that receives it, before it reaches the log or a peer frame."""
    m = await mesh_factory(["a", "b", "c"])
    lead = await m.leader_node()
    follower = next(n for n in m.nodes.values() if n is not lead)
    last = lead.replica.raft.log.last_index()
    value = "v" * (MAX_COMMAND_BYTES + 1)
    for node in (lead, follower):
        with pytest.raises(TooLarge) as err:
            await node.propose({"op": "put", "key": "parameters/huge", "value": value})
        assert err.value.status == 413 and err.value.code == "too_large"
    assert lead.replica.raft.log.last_index() == last
