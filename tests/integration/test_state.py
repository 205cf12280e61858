"""The state model over real processes: the CLI's save/export/import/restore/
undo/history commands, and a restore that races a controller crash."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from mesh.client import ApiError, Unreachable
from tests.integration.harness import SECRET, Cluster, eventually, running_cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, 3) as c:
        yield c


def cli(*args: str) -> str:
    env = dict(os.environ, HANA_SECRET=SECRET)
    out = subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


@pytest.mark.slow
async def test_cli_save_export_import_restore_undo_history(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_all()
    await cluster.wait_leader()
    api = cluster.nodes["n2"].api
    cli("put", "displays/left", '{"width": 1920, "height": 1080}', "--api", api)
    cli("put", "parameters/master", "0.5", "--api", api)
    cli("save", "opening", "--api", api)
    assert "opening" in cli("saves", "--api", api)
    file = tmp_path / "opening.hana"
    cli("export", "opening", str(file), "--api", api)
    doc = orjson.loads(file.read_bytes())
    assert doc["components"]["parameters"]["parameters/master"] == 0.5
    cli("import", str(file), "--name", "opening-copy", "--api", cluster.nodes["n3"].api)
    cli("put", "parameters/master", "0.9", "--api", api)
    restored = orjson.loads(cli("restore", "opening-copy", "--api", api, "--json"))
    assert restored["recovery_point"].startswith("recovery-")
    assert orjson.loads(cli("get", "parameters/master", "--api", api, "--json"))["value"] == 0.5
    cli("undo", "--api", api)
    assert orjson.loads(cli("get", "parameters/master", "--api", api, "--json"))["value"] == 0.9
    history = orjson.loads(cli("history", "--prefix", "parameters/master", "--api", api, "--json"))
    assert [r["value"] for r in history["records"]][:2] == [0.5, 0.9]


@pytest.mark.slow
async def test_restore_racing_a_controller_crash_is_all_or_nothing_everywhere(cluster: Cluster) -> None:
    cluster.start_all()
    leader = await cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    async with cluster.nodes[follower].admin_client(timeout=30) as c:
        await c.txn([{"op": "put", "key": f"parameters/p{i}", "value": "saved"} for i in range(300)])
        await c.save("before")
        await c.txn([{"op": "put", "key": f"parameters/p{i}", "value": "changed"} for i in range(300)])
        before = (await cluster.status(leader))["commit_index"]
        restore = asyncio.ensure_future(c.restore("before"))

        async def restore_reached_leader() -> bool:
            return restore.done() or (await cluster.status(leader))["commit_index"] > before

        # Kill the controller as soon as the restore is in its log and
        # committed there: followers may or may not have applied it yet.
        await eventually(restore_reached_leader, 10, "the restore to commit on the controller", interval=0.001)
        cluster.kill(leader)
        with contextlib.suppress(Unreachable):
            try:
                await restore
            except ApiError as exc:
                # No controller, or the outcome is unknown: never refused.
                assert exc.status in (503, 504), exc
    survivors = [n for n in cluster.nodes if n != leader]
    await cluster.wait_leader(survivors)
    cluster.start(leader)
    await cluster.wait_leader()

    async def values(nid: str) -> set[str]:
        async with cluster.nodes[nid].client() as c:
            items = (await c.list("parameters/p", consistency="linearizable"))["items"]
        return {i["value"] for i in items}

    async def agreed() -> set[str] | None:
        seen = [await values(nid) for nid in cluster.nodes]
        return seen[0] if all(s == seen[0] for s in seen) else None

    final = await eventually(agreed, 30, "every node to agree on the restored keys")
    # Fully applied or not at all: never a mix of saved and changed values.
    assert final in ({"saved"}, {"changed"}), final
