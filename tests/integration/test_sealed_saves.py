"""`hana-node export/import --key`: a save file encrypted and signed at rest
(issue 18). No value in clear in the file; a wrong key, a tampered file or
a missing key is refused with a clear error and nothing is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.integration.harness import SECRET, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HANA_SECRET=SECRET)
    cmd = [sys.executable, "-m", "mesh.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def key(path: Path, b: int) -> str:
    path.write_bytes(bytes([b] * 32))
    path.chmod(0o600)
    return str(path)


async def test_encrypted_save_files(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "mesh", 1) as c:
        c.start_all()
        await c.wait_leader()
        api = c.nodes["n1"].api
        assert cli("put", "parameters/secret", '"hunter2-value"', "--api", api).returncode == 0
        assert cli("save", "opening", "--api", api).returncode == 0
        good, bad = key(tmp_path / "k1", 1), key(tmp_path / "k2", 2)
        file = tmp_path / "opening.hana"
        r = cli("export", "opening", str(file), "--key", good, "--api", api)
        assert r.returncode == 0, r.stderr
        assert b"hunter2-value" not in file.read_bytes() and b"parameters" not in file.read_bytes()

        def saves() -> list[str]:
            doc = orjson.loads(cli("saves", "--json", "--api", api).stdout)
            return sorted(s["name"] for s in doc)

        before = saves()
        r = cli("import", str(file), "--name", "copy", "--key", bad, "--api", api)
        assert r.returncode == 2 and "another key" in r.stderr, r.stderr
        r = cli("import", str(file), "--name", "copy", "--api", api)
        assert r.returncode == 2 and "is encrypted: give --key" in r.stderr, r.stderr
        tampered = tmp_path / "tampered.hana"
        blob = bytearray(file.read_bytes())
        blob[40] ^= 0x01
        tampered.write_bytes(bytes(blob))
        r = cli("import", str(tampered), "--name", "copy", "--key", good, "--api", api)
        assert r.returncode == 2 and "altered" in r.stderr, r.stderr
        assert saves() == before
        r = cli("import", str(file), "--name", "copy", "--key", good, "--api", api)
        assert r.returncode == 0, r.stderr
        assert saves() == sorted([*before, "copy"])
