"""The controller checks forwarded commands with the state machine's own
stateless checks before they reach its log (issue 12: one validation shared
by the API, save import and the controller's handling of forwards). A
member that skips its API's check (a bug, or an old version) still cannot
put an invalid command in the log, and learns why at once (no retry)."""

from __future__ import annotations

from typing import Any

import orjson

from mesh.raft.messages import EntryType
from tests.api.conftest import Mesh


def _deep(n: int) -> Any:
    v: Any = 1
    for _ in range(n):
        v = [v]
    return v


def _commands_after(mesh: Mesh, node_id: str, index: int) -> list[dict[str, Any]]:
    """The state-machine commands a node's log holds after `index`. Counted
    by content, not by index: under load an election may add a new
    controller's empty entry, which is no command."""
    log = mesh.nodes[node_id].replica.raft.log
    entries = log.slice(index + 1, log.last_index() + 1)
    return [orjson.loads(e.data) for e in entries if e.type == EntryType.NORMAL and e.data]


async def test_invalid_forwarded_commands_are_refused_before_the_log(mesh: Mesh) -> None:
    lead = await mesh.wait_leader()
    follower_id = mesh.follower()
    follower = mesh.nodes[follower_id]
    before = mesh.nodes[lead].replica.raft.log.last_index()
    refused = {
        "too_deep": {"op": "put", "key": "parameters/a", "value": _deep(80)},
        "unknown_component": {"op": "put", "key": "nosuch/a", "value": 1},
        "invalid_command": {"op": "explode"},
    }
    for code, command in refused.items():
        result = await follower.propose(dict(command))
        assert result["error"]["code"] == code, result
    # The follower has applied everything the controller appended before
    # answering its next write, so its log shows what reached the log.
    ok = await follower.propose({"op": "put", "key": "parameters/a", "value": 1})
    assert "error" not in ok
    commands = _commands_after(mesh, follower_id, before)
    assert [(c["op"], c.get("key")) for c in commands] == [("put", "parameters/a")], commands
