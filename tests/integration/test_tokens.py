"""A node with a tokens file refuses anonymous clients; the CLI presents a token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.integration.harness import Cluster

pytestmark = pytest.mark.integration


async def test_cli_with_and_without_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_bytes(orjson.dumps({"tokens": [{"name": "ops", "token": "ops-token-0123456789", "role": "admin"}]}))
    tokens.chmod(0o600)
    (tmp_path / "mesh").mkdir()
    c = Cluster.create(tmp_path / "mesh", 1, extra_args=["--tokens-file", str(tokens)])
    try:
        c.start_all()

        def cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if k != "HANA_TOKEN"}
            if token:
                env["HANA_TOKEN"] = token
            return subprocess.run(
                [sys.executable, "-m", "mesh.cli", *args, "--api", c.nodes["n1"].api],
                capture_output=True, text=True, timeout=60, env=env,
            )  # fmt: skip

        # Wait for the API, authenticated.
        for _ in range(200):
            ok = cli("status", "--json", token="ops-token-0123456789")
            if ok.returncode == 0 and '"leader": "n1"' in ok.stdout:
                break
        assert ok.returncode == 0, ok.stderr
        denied = cli("put", "parameters/x", "1")
        assert denied.returncode != 0 and "401" in denied.stderr
        allowed = cli("put", "parameters/x", "1", "--token", "ops-token-0123456789")
        assert allowed.returncode == 0, allowed.stderr
        history = cli("history", "--json", token="ops-token-0123456789")
        assert orjson.loads(history.stdout)["records"][0]["author"] == "ops"
    finally:
        c.stop_everything()
