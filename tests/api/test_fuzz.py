"""Random bodies, paths and queries thrown at the API: every answer is either
a success or the contract's error shape with a 4xx status, never a 500, and a
rejected request changes nothing."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.api.app import create_app
from mesh.api.handle import MembershipChange, MembersView, MemberView, NodeHandle
from mesh.errors import NotLeader
from mesh.state.kv import ChangeRecord
from mesh.state.model import HanaState
from tests.api.conftest import ADMIN_HEADERS, ADMIN_TOKEN, ApiTestServer


class FakeNode:
    """A NodeHandle whose 'log' is applied at once: the API alone is under
    test. A cluster of one, the controller unless its status names another
    leader; membership changes are recorded (`membership_changes`) and take
    a log index; `api_addresses` is what it knows of other nodes' APIs."""

    node_id = "fake"
    cluster = "hana"

    def __init__(self) -> None:
        self._kv = HanaState()
        self._index = itertools.count(1)
        self.membership_changes: list[MembershipChange] = []
        self.api_addresses: dict[str, str] = {}

    @property
    def kv(self) -> HanaState:
        return self._kv

    def status(self) -> dict[str, Any]:
        return {"id": self.node_id, "cluster": self.cluster, "members": []}

    async def read_barrier(self, linearizable: bool) -> None:
        return None

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        return self._kv.apply(next(self._index), orjson.dumps(command))

    async def watch(self, prefix: str, since: int) -> AsyncIterator[ChangeRecord]:
        for rec in self._kv.changes_since(since, prefix):
            yield rec

    async def watch_events(self, prefix: str, since: int) -> AsyncIterator[dict[str, Any]]:
        for rec in self._kv.changes_since(since, prefix):
            yield {"type": "change", **rec.to_dict()}

    async def propose_offline(self, command: dict[str, Any]) -> dict[str, Any]:
        return await self.propose(command)

    def outbox(self) -> dict[str, Any]:
        return {"items": [], "queued": 0}

    def outbox_overlay(self, prefix: str) -> dict[str, tuple[str, Any]]:
        return {}

    def connected(self) -> bool:
        return True

    def controller_contact_ms(self) -> int | None:
        return 0

    def metrics_text(self) -> bytes:
        return b""

    def _leader(self) -> str | None:
        return self.status().get("leader", self.node_id)

    def members(self) -> MembersView:
        role = "leader" if self._leader() == self.node_id else "follower"
        me = MemberView(self.node_id, None, None, True, role, None, 0.0, "self", 0, None)
        return MembersView(self._leader(), 1, (me,), ())

    def api_address(self, node_id: str) -> str | None:
        return self.api_addresses.get(node_id)

    async def change_membership(self, change: MembershipChange) -> dict[str, Any]:
        leader = self._leader()
        if leader != self.node_id:
            raise NotLeader(f"membership changes go to the controller ({leader or 'unknown'})", leader=leader)
        self.membership_changes.append(change)
        return {"index": next(self._index), "term": 1, "conf": {"voters": [self.node_id], "learners": []}}


# The type checker holds the fake to the protocol.
_: type[NodeHandle] = FakeNode


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(orjson.dumps),
    st.fixed_dictionaries(
        {}, optional={"value": json_values, "expected_version": json_values, "extra": json_values}
    ).map(orjson.dumps),
    st.fixed_dictionaries(
        {
            "ops": st.lists(
                st.dictionaries(st.sampled_from(["op", "key", "value", "expected_version", "x"]), json_values)
            )
        }
    ).map(orjson.dumps),
)
paths = st.one_of(
    st.sampled_from(
        [
            "/v1/kv/parameters/b",
            "/v1/kv/displays/x",
            "/v1/txn",
            "/v1/kv",
            "/v1/status",
            "/v1/kv/a",
            "/v1/zzz",
            "/v1/undo",
            "/v1/redo",
            "/v1/saves",
            "/v1/saves/show",
            "/v1/saves/show/restore",
            "/v1/history",
            "/v1/audit",
            "/v1/components",
        ]
    ),
    st.text(alphabet="abc/%2F.-_", max_size=20).map(lambda t: "/v1/kv/" + t),
)
methods = st.sampled_from(["GET", "PUT", "POST", "DELETE"])
headers = st.sampled_from(
    [
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json", **ADMIN_HEADERS},
        {},
        {"Content-Type": "text/plain"},
    ]
)
queries = st.dictionaries(
    st.sampled_from(["consistency", "expected_version", "prefix", "since"]), st.text(max_size=6), max_size=2
)


@pytest.mark.slow
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_random_requests_get_contract_answers(data: st.DataObject) -> None:
    node = FakeNode()
    node._kv.apply(0, orjson.dumps({"op": "put", "key": "parameters/b", "value": 1}))
    async with TestClient(ApiTestServer(create_app(node, admin_token=ADMIN_TOKEN, max_body=4096))) as client:
        for _ in range(3):
            method, path, body, query = data.draw(methods), data.draw(paths), data.draw(bodies), data.draw(queries)
            before = node.kv.snapshot()
            resp = await client.request(method, path, data=body, params=query, headers=data.draw(headers))
            raw = await resp.read()
            assert resp.status < 500, (method, path, body, resp.status, raw)
            doc = orjson.loads(raw)
            if resp.status >= 400:
                assert set(doc) == {"error"}
                assert isinstance(doc["error"]["code"], str) and doc["error"]["code"]
                assert isinstance(doc["error"]["message"], str)
                assert orjson.loads(node.kv.snapshot())["data"] == orjson.loads(before)["data"]
