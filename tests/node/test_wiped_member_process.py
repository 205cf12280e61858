"""Finding 9 of issue 12 with real `hana-node serve` processes: a member
restarted with an empty data directory catches up."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mesh.client import ApiError
from tests.integration.harness import eventually, running_cluster

pytestmark = pytest.mark.integration


async def test_finding_09_member_restarted_with_an_empty_data_dir_catches_up(tmp_path: Path) -> None:
    """finding 9: a member restarted with an empty data directory never caught
    up (leader and member exchanged ~20,000 messages/s, forever). Now the
    leader notices the lost log (event=follower_lost_log), resets its
    progress and catches the member up: by snapshot here, since the entries
    it needs are compacted away, then by appends."""
    with running_cluster(tmp_path, 3, ["--snapshot-every", "20", "--keep-entries", "0"]) as c:
        c.start_all()
        leader = await c.wait_leader()
        async with c.nodes[leader].client() as client:
            for i in range(30):
                await client.put(f"parameters/k{i}", i)
        victim = next(n for n in c.nodes if n != leader)
        c.kill(victim)
        shutil.rmtree(c.nodes[victim].data_dir)
        c.start(victim)

        async def caught_up() -> bool:
            async with c.nodes[victim].client(timeout=2.0) as client:
                try:
                    return (await client.get("parameters/k29", consistency="local"))["value"] == 29
                except ApiError as exc:
                    if exc.status == 404:
                        return False
                    raise

        try:
            await eventually(caught_up, 30.0, f"wiped {victim} to hold the writes made before")
            leader = await c.wait_leader()
            async with c.nodes[leader].client() as client:
                await client.put("parameters/after", "wipe")

            async def has_after() -> bool:
                async with c.nodes[victim].client(timeout=2.0) as client:
                    try:
                        return (await client.get("parameters/after", consistency="local"))["value"] == "wipe"
                    except ApiError as exc:
                        if exc.status == 404:
                            return False
                        raise

            await eventually(has_after, 20.0, f"wiped {victim} to receive new writes")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{c.logs()}") from None
        logs = "".join(n.log_path.read_text(errors="replace") for n in c.nodes.values())
        assert f"event=follower_lost_log peer={victim}" in logs
