"""The controller checks forwarded commands with the state machine's own
stateless checks before they reach its log (issue 12: one validation shared
by the API, save import and the controller's handling of forwards). A
member that skips its API's check (a bug, or an old version) still cannot
put an invalid command in the log, and learns why at once (no retry)."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Mesh


def _deep(n: int) -> Any:
    v: Any = 1
    for _ in range(n):
        v = [v]
    return v


async def test_invalid_forwarded_commands_are_refused_before_the_log(mesh: Mesh) -> None:
    lead = await mesh.wait_leader()
    follower = mesh.nodes[mesh.follower()]
    leader = mesh.nodes[lead]
    before = leader.replica.raft.log.last_index()
    refused = {
        "too_deep": {"op": "put", "key": "parameters/a", "value": _deep(80)},
        "unknown_component": {"op": "put", "key": "nosuch/a", "value": 1},
        "invalid_command": {"op": "explode"},
    }
    for code, command in refused.items():
        result = await follower.propose(dict(command))
        assert result["error"]["code"] == code, result
    assert leader.replica.raft.log.last_index() == before
    # A valid one goes through the same path.
    ok = await follower.propose({"op": "put", "key": "parameters/a", "value": 1})
    assert "error" not in ok and leader.replica.raft.log.last_index() == before + 1
