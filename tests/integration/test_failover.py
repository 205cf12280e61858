"""Issue 17 with real `hana-node serve` processes: after a SIGKILL of the
controller a survivor takes over through the connection-lost path (its
controller's sockets closed), not after an election timeout. Times are for
bench/mesh.py; this test checks the path, by the term and the logs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.client import MeshClient
from tests.integration.harness import Cluster, eventually, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, 3) as c:
        yield c


async def test_sigkill_of_the_controller_elects_a_survivor_on_the_closed_connection(cluster: Cluster) -> None:
    cluster.start_all()
    leader = await cluster.wait_leader()
    async with cluster.nodes[leader].client() as client:
        await client.put("parameters/before", 1)
    term = (await cluster.status(leader))["term"]

    cluster.kill(leader)
    survivors = [n for n in cluster.nodes if n != leader]
    new = await cluster.wait_leader(survivors)

    # One election, in the next term, won by a campaign that the closed
    # connection started: the election timeout had no part in it.
    assert (await cluster.status(new))["term"] == term + 1
    elected = re.compile(rf"event=role_change role=leader term={term + 1} .*campaign=connection_lost")
    assert elected.search(cluster.nodes[new].log_tail(200_000)), cluster.logs()
    for nid in survivors:
        assert f"event=leader_connection_lost peer={leader} term={term}" in cluster.nodes[nid].log_tail(200_000)

    async def counted() -> bool:
        async with MeshClient(cluster.nodes[new].api) as client:
            text = (await client.raw("GET", "/metrics")).decode()
        return "hana_raft_campaigns_on_connection_lost_total 1.0" in text

    await eventually(counted, 10, "the winner's campaign counted in /metrics")
    for nid in survivors:
        async with cluster.nodes[nid].client() as client:
            assert (await client.put(f"parameters/after-{nid}", 2))["version"] == 1
