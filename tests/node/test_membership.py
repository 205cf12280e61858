"""Membership changes through a live in-process mesh: a fresh node joins as a
learner, catches up, is promoted; a voter is removed; followers refuse."""

from __future__ import annotations

import asyncio

import pytest

from mesh.errors import Conflict, NotLeader
from mesh.raft import ConfChange, ConfChangeType, Role
from tests.meshkit import InProcessMesh

SECRET = b"membership-secret-0123"


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_join_promote_remove() -> None:
    mesh = InProcessMesh(["a", "b", "c"], ["d"], secret=SECRET)
    # d starts empty, with no initial configuration: it only joins.
    nodes = {i: mesh.nodes[i] for i in mesh.ids}
    newcomer = mesh.nodes["d"]
    try:
        await mesh.start()
        mesh.introduce_everyone()
        await wait_for(lambda: any(n.replica.raft.role == Role.LEADER for n in nodes.values()))
        lead = next(n for n in nodes.values() if n.replica.raft.role == Role.LEADER)
        follower = next(n for n in nodes.values() if n is not lead)
        for i in range(20):
            await lead.propose({"op": "put", "key": f"parameters/p{i}", "value": i})

        with pytest.raises(NotLeader):
            await follower.change_membership(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
        out = await lead.change_membership(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
        assert out["conf"]["learners"] == ["d"]
        await wait_for(lambda: newcomer.replica.applied >= lead.replica.applied and newcomer.kv.get("parameters/p19"))
        assert newcomer.replica.raft.is_learner()
        with pytest.raises(Conflict):
            await lead.change_membership(ConfChange(ConfChangeType.ADD_LEARNER, "d"))

        out = await lead.change_membership(ConfChange(ConfChangeType.PROMOTE_LEARNER, "d"))
        assert "d" in out["conf"]["voters"]
        victim = next(i for i, n in nodes.items() if n is not lead)
        out = await lead.change_membership(ConfChange(ConfChangeType.REMOVE_NODE, victim))
        assert victim not in out["conf"]["voters"]
        await wait_for(lambda: victim not in newcomer.replica.raft.conf_state().voters)
        # The new voter takes part in commits: writes still commit.
        await lead.propose({"op": "put", "key": "parameters/after", "value": 1})
        await wait_for(lambda: newcomer.kv.get("parameters/after") is not None)
    finally:
        await mesh.stop()
