"""`serve --encrypt-at-rest KEYFILE` with a real process (issue 18): the
data survives a restart with the key and is not in clear on disk; started
with another key the node refuses at once with one line saying what to do,
exits 1 and changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh.client import MeshClient
from tests.integration.harness import running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "show-secret-value-0123"


def key(path: Path, b: int) -> str:
    path.write_bytes(bytes([b] * 32))
    path.chmod(0o600)
    return str(path)


def files(data_dir: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file() and p.name != "LOCK"}


async def test_encrypt_at_rest_real_process(tmp_path: Path) -> None:
    good, bad = key(tmp_path / "k1", 1), key(tmp_path / "k2", 2)
    (tmp_path / "mesh").mkdir()
    with running_cluster(tmp_path / "mesh", 1, ["--encrypt-at-rest", good, "--snapshot-every", "3"]) as c:
        c.start_all()
        await c.wait_leader()
        node = c.nodes["n1"]
        async with MeshClient(node.api) as client:
            for i in range(5):
                await client.put(f"parameters/p{i}", SECRET)
        assert c.terminate("n1") == 0
        on_disk = files(node.data_dir / "wal") | files(node.data_dir / "snap")
        assert on_disk and not any(SECRET.encode() in b for b in on_disk.values())
        before = files(node.data_dir)
        # The offline audit check reads it with the key, and refuses without.
        verify = [sys.executable, "-m", "mesh.cli", "audit", "verify", "--data-dir", str(node.data_dir)]
        r = subprocess.run([*verify, "--encrypt-at-rest", good], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and " ok chained=" in r.stdout, r.stdout + r.stderr
        r = subprocess.run(verify, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "--encrypt-at-rest" in r.stderr, r.stdout + r.stderr

        mark = len(node.log_tail(10**9))
        c.start("n1", ["--encrypt-at-rest", bad])
        assert node.proc is not None
        assert node.proc.wait(timeout=60) == 1
        out = node.log_tail(10**9)[mark:]
        assert "Traceback" not in out, out
        (line,) = [x for x in out.splitlines() if "event=storage_unusable" in x]
        assert "another key" in line and "--encrypt-at-rest key" in line, line
        assert files(node.data_dir) == before

        c.start("n1")
        await c.wait_leader()
        async with MeshClient(node.api) as client:
            assert (await client.get("parameters/p4"))["value"] == SECRET
