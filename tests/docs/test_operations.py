"""The backup script of docs/operations.md, run as written (paths pointed at
a test node): it saves, exports a file that imports back, and keeps the 14
newest nightly saves."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.client import MeshClient
from tests.integration.harness import running_cluster

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_the_nightly_backup_script_saves_exports_and_prunes(tmp_path: Path) -> None:
    script = re.search(r"```sh\n(.*?)```", (REPO / "docs" / "operations.md").read_text(), re.S)
    assert script is not None
    hana_node = shutil.which("hana-node", path=str(Path(sys.executable).parent))
    assert hana_node is not None
    with running_cluster(tmp_path, 1) as c:
        c.start_all()
        await c.wait_leader()
        node = c.nodes["n1"]
        token = node.data_dir / "admin-token"
        backups = tmp_path / "backups"
        text = (
            script.group(1)
            .replace("/etc/hana/backup.token", str(token))
            .replace("10.0.0.11:7070", node.api)
            .replace("/opt/hana/.venv/bin/hana-node", hana_node)
            .replace("/var/backups/hana", str(backups))
        )
        async with MeshClient(node.api, token=token.read_text().strip()) as admin:
            await admin.put("displays/left-wall", {"brightness": 0.8})
            for day in range(1, 16):
                await admin.save(f"nightly-202611{day:02d}")
            await admin.save("opening")
            today = subprocess.run(["date", "+%Y%m%d"], capture_output=True, text=True, check=True).stdout.strip()
            run = subprocess.run(["sh", "-c", text], capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stdout + run.stderr
            names = sorted(s["name"] for s in await admin.saves())
            nightly = [n for n in names if n.startswith("nightly-")]
            assert len(nightly) == 14 and nightly[-1] == f"nightly-{today}"
            assert nightly[0] == "nightly-20261103"  # the two oldest of 16 went
            assert "opening" in names  # other saves are not touched
            exported = backups / f"nightly-{today}.hana"
            imported = await admin.import_save("from-file", exported.read_bytes())
            assert imported["name"] == "from-file"
