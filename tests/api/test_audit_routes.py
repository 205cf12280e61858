"""GET /v1/audit/verify and /v1/audit/trail on an in-process mesh, and the
cross-node comparison of `hana-node audit verify` (issue 18)."""

from __future__ import annotations

import argparse
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mesh import cli_audit
from mesh.state.audit import entry_hash
from mesh.state.model import HanaState
from tests.api.conftest import Mesh
from tests.api.test_state_api import ok
from tests.integration.harness import eventually
from tests.state.helpers import Driver


async def test_every_node_answers_for_its_own_chain(mesh: Mesh) -> None:
    c = mesh.clients["n1"]
    for i in range(3):
        await ok(c, "POST", "/v1/saves", {"name": f"s{i}"})
    seqs = set()
    for nid, client in mesh.clients.items():

        async def caught_up(client: Any = client) -> dict[str, Any] | None:
            doc = await ok(client, "GET", "/v1/audit/verify")
            return doc if doc["chained"] >= 4 else None  # type: ignore[index]

        doc = await eventually(caught_up, 10, f"{nid} to apply the saves")
        assert doc["node"] == nid and doc["ok"] and doc["breaks"] == []
        seqs.add(doc["seq"])
    seq = min(seqs)
    hashes = set()
    for client in mesh.clients.values():
        doc = await ok(client, "GET", f"/v1/audit/verify?at={seq}")
        hashes.add(doc["at"]["hash"])  # type: ignore[index]
    assert len(hashes) == 1 and None not in hashes
    trail = await ok(c, "GET", "/v1/audit/trail")
    entries = trail["entries"]  # type: ignore[index]
    assert entry_hash(entries[-1]) == trail["head"]  # type: ignore[index]
    assert trail["node"] == "n1"  # type: ignore[index]


class FakeClient:
    """What verify_online asks of a MeshClient, over in-memory trails."""

    def __init__(self, states: dict[str, HanaState], api: str) -> None:
        self.states, self.nid = states, api

    async def members(self) -> dict[str, Any]:
        return {"id": self.nid, "members": [{"id": n, "api": n} for n in self.states]}

    async def request(self, method: str, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        trail = self.states[self.nid].audit_trail
        doc: dict[str, Any] = {"node": self.nid, **trail.verify()}
        if params and "at" in params:
            at = int(params["at"])
            doc["at"] = {"seq": at, "hash": next((entry_hash(e) for _, e in trail.entries if e["seq"] == at), None)}
        return doc


async def test_a_node_whose_chain_was_rewritten_whole_is_named_where_it_parts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    drivers = {n: Driver() for n in ("n1", "n2")}
    for d in drivers.values():
        for i in range(10):
            d("save", name=f"s{i}")
    # n2's entry 6 altered and every hash after it recomputed: its own chain
    # holds, only the comparison with n1 shows it.
    trail = drivers["n2"].hs.audit_trail
    entries = [e for _, e in trail.entries]
    entries[5]["author"] = "mallory"
    for before, after in itertools.pairwise(entries[5:]):
        after["prev"] = entry_hash(before)
    trail.head = entry_hash(entries[-1])
    assert trail.verify()["ok"]
    states = {n: d.hs for n, d in drivers.items()}

    @contextlib.asynccontextmanager
    async def make_client(api: str, args: argparse.Namespace) -> AsyncIterator[FakeClient]:
        yield FakeClient(states, api)

    args = argparse.Namespace(api="n1")
    assert await cli_audit.verify_online(args, make_client) == 1
    out = capsys.readouterr().out
    assert "node=n2 seq=6 break: entry 6 differs from node n1's" in out, out
    # Untouched, they agree.
    drivers["n3"] = Driver()
    for i in range(10):
        drivers["n3"]("save", name=f"s{i}")
    states = {"n1": drivers["n1"].hs, "n3": drivers["n3"].hs}
    assert await cli_audit.verify_online(args, make_client) == 0
    assert "nodes=2 agree" in capsys.readouterr().out
