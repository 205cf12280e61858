"""What a node leaves on disk is private, and a node off loopback needs a
secret (findings 3 and 16 of issue 12), with real processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, eventually

pytestmark = pytest.mark.integration


def test_finding_03_serve_off_loopback_without_secret_refuses_to_start(tmp_path: Path) -> None:
    """Finding 3: the node used to start with the public development secret
    and a warning. It must refuse before binding anything (192.0.2.0/24 is
    TEST-NET-1: never reached, since nothing is bound or dialled)."""
    env = {k: v for k, v in os.environ.items() if k != "HANA_SECRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "serve", "--id", "n1", "--no-mdns", "--data-dir", str(tmp_path / "n1"),
         "--raft", "192.0.2.10:7071", "--peers", "n1=192.0.2.10:7071"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--secret-file" in proc.stderr and "not loopback" in proc.stderr
    assert not (tmp_path / "n1").exists()


async def test_finding_16_data_dir_private_and_nodes_share_the_user_secret(tmp_path: Path) -> None:
    """Finding 16: data directories were 0755 and files 0644 (the WAL holds
    the whole show). Also finding 3: with no secret given, loopback nodes of
    one user agree through the per-user secret file, not a built-in one."""
    c = Cluster.create(tmp_path, 3, extra_args=["--snapshot-every", "5"])
    c.secret = None  # no HANA_SECRET: the per-user secret file
    try:
        c.start_all()
        lead = await c.wait_leader()
        async with c.nodes[lead].client() as cl:
            for i in range(12):
                await cl.put(f"displays/d{i}", {"width": 100 + i})

        async def everywhere() -> bool:
            for nid in c.nodes:
                if (await c.status(nid))["applied_index"] < 12:
                    return False
            return True

        await eventually(everywhere, 20, "every node applied the writes")
        secret = Path(os.environ["XDG_CONFIG_HOME"]) / "hana" / "secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        for node in c.nodes.values():
            modes = {}
            for path in [node.data_dir, *node.data_dir.rglob("*")]:
                modes[str(path.relative_to(tmp_path))] = stat.S_IMODE(path.stat().st_mode)
            wanted = {p: (0o700 if (tmp_path / p).is_dir() else 0o600) for p in modes}
            assert modes == wanted
            assert (node.data_dir / "admin-token").exists()
    finally:
        c.stop_everything()
