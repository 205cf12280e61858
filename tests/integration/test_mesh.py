"""Real `hana-node serve` processes on loopback: elections, failover, pauses,
restarts, snapshot catch-up, conditional writes and resumable watches."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.client import ApiError, MeshClient
from tests.integration.harness import Cluster, eventually, running_cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, 3, ["--snapshot-every", "50", "--keep-entries", "10"]) as c:
        yield c


async def put_with_retry(client: MeshClient, key: str, value: object, attempts: int = 40) -> dict:
    """Retry only answers that mean "not committed" (503); a 504 is unknown
    and fails the test, since nothing here should leave a write in doubt."""
    for _ in range(attempts):
        try:
            return await client.put(key, value)
        except ApiError as exc:
            if exc.status != 503:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError(f"write of {key} never succeeded")


async def read_local(c: Cluster, nid: str, key: str) -> object:
    async with c.nodes[nid].client() as client:
        try:
            return (await client.get(key, consistency="local"))["value"]
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise


async def all_have(c: Cluster, nids: list[str], expected: dict[str, object], timeout: float = 20.0) -> None:
    async def check() -> bool:
        for nid in nids:
            async with c.nodes[nid].client() as client:
                items = (await client.list("parameters/k", consistency="local"))["items"]
            if {i["key"]: i["value"] for i in items} != expected:
                return False
        return True

    await eventually(check, timeout, f"{nids} to hold all {len(expected)} acknowledged writes")


async def test_writes_to_any_node_and_failover_keeps_acknowledged_writes(cluster: Cluster) -> None:
    cluster.start_all()
    leader = await cluster.wait_leader()
    acked: dict[str, object] = {}
    for i, nid in enumerate(cluster.nodes):
        async with cluster.nodes[nid].client() as client:
            res = await put_with_retry(client, f"parameters/k{i}", {"i": i, "via": nid})
        assert res["version"] == 1
        acked[f"parameters/k{i}"] = {"i": i, "via": nid}
    await all_have(cluster, list(cluster.nodes), acked)

    cluster.kill(leader)
    survivors = [n for n in cluster.nodes if n != leader]
    new_leader = await cluster.wait_leader(survivors)
    assert new_leader != leader
    for i in range(3, 13):
        async with cluster.nodes[survivors[i % 2]].client() as client:
            await put_with_retry(client, f"parameters/k{i}", i)
        acked[f"parameters/k{i}"] = i
    for nid in survivors:
        async with cluster.nodes[nid].client() as client:
            for key, value in acked.items():
                assert (await client.get(key))["value"] == value

    cluster.start(leader)
    await all_have(cluster, list(cluster.nodes), acked)


async def test_paused_node_catches_up_after_sigcont(cluster: Cluster) -> None:
    cluster.start_all()
    leader = await cluster.wait_leader()
    paused = next(n for n in cluster.nodes if n != leader)
    cluster.signal(paused, signal.SIGSTOP)
    acked = {}
    async with cluster.nodes[leader].client() as client:
        for i in range(20):
            await put_with_retry(client, f"parameters/k{i}", i)
            acked[f"parameters/k{i}"] = i
    cluster.signal(paused, signal.SIGCONT)
    await all_have(cluster, [paused], acked)


@pytest.mark.slow
async def test_restart_from_data_dir_keeps_state_and_far_behind_node_gets_snapshot(cluster: Cluster) -> None:
    cluster.start_all()
    leader = await cluster.wait_leader()
    behind = next(n for n in cluster.nodes if n != leader)
    assert cluster.terminate(behind) == 0
    acked = {}
    async with cluster.nodes[leader].client() as client:
        for i in range(120):
            await put_with_retry(client, f"parameters/k{i}", i)
            acked[f"parameters/k{i}"] = i
    # 120 entries with a snapshot every 50 and 10 kept: the log the stopped
    # node needs is gone, so it must catch up by snapshot.
    cluster.start(behind)
    await all_have(cluster, [behind], acked, timeout=30)
    log = cluster.nodes[behind].log_path.read_text()
    assert "event=snapshot_installed" in log

    # A clean restart of every node keeps the state.
    for nid in cluster.nodes:
        assert cluster.terminate(nid) == 0
    cluster.start_all()
    await cluster.wait_leader()
    await all_have(cluster, list(cluster.nodes), acked)


async def test_stale_conditional_write_gets_409_with_current(cluster: Cluster) -> None:
    cluster.start_all()
    await cluster.wait_leader()
    async with cluster.nodes["n2"].client() as client:
        await put_with_retry(client, "windows/w1", {"pos": 1})
        with pytest.raises(ApiError) as err:
            await client.put("windows/w1", {"pos": 2}, expected_version=0)
    assert err.value.status == 409
    assert err.value.body["error"]["current"]["value"] == {"pos": 1}


async def test_watch_resumed_on_another_node_sees_each_change_once(cluster: Cluster) -> None:
    cluster.start_all()
    await cluster.wait_leader()
    seen: list[int] = []

    async def collect(nid: str, since: int, until: int) -> None:
        async with cluster.nodes[nid].client() as client:
            async for rec in client.watch("parameters/k", since):
                seen.append(rec["revision"])
                if rec["revision"] >= until:
                    return

    async with cluster.nodes["n1"].client() as client:
        for i in range(10):
            await put_with_retry(client, f"parameters/k{i}", i)
    await asyncio.wait_for(collect("n1", 1, 5), 10)
    async with cluster.nodes["n3"].client() as client:
        for i in range(10, 15):
            await put_with_retry(client, f"parameters/k{i}", i)
    await asyncio.wait_for(collect("n2", seen[-1] + 1, 15), 10)
    assert seen == list(range(1, 16))


async def test_sigterm_of_controller_hands_over_leadership(cluster: Cluster) -> None:
    cluster.start_all()
    leader = await cluster.wait_leader()
    assert cluster.terminate(leader) == 0
    log = cluster.nodes[leader].log_path.read_text()
    assert "event=transfer_leadership" in log
    survivors = [n for n in cluster.nodes if n != leader]
    assert await cluster.wait_leader(survivors, timeout=5) in survivors


@pytest.mark.slow
async def test_node_without_quorum_answers_503_never_success(cluster: Cluster) -> None:
    cluster.start_all()
    await cluster.wait_leader()
    survivor = "n1"
    for nid in ("n2", "n3"):
        cluster.kill(nid)

    async def stepped_down() -> bool:
        return (await cluster.status(survivor))["role"] != "leader"

    await eventually(stepped_down, 10, "the isolated node to stop being leader")
    async with cluster.nodes[survivor].client(timeout=30) as client:
        with pytest.raises(ApiError) as err:
            await client.put("parameters/lonely", 1)
        assert err.value.status == 503
        assert err.value.code == "no_leader"
        with pytest.raises(ApiError) as err:
            await client.get("parameters/lonely")
        assert err.value.status == 503
        # A local read still answers from the last state it has.
        with pytest.raises(ApiError) as err:
            await client.get("parameters/lonely", consistency="local")
        assert err.value.status == 404
