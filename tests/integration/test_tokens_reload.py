"""A tokens file edited while the node runs takes effect (issue 18): a new
token is let in and a removed one refused, without a restart; a broken edit
keeps the tokens in force (and the log says so); SIGHUP reloads at once."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from mesh.client import ApiError, MeshClient
from tests.integration.harness import eventually, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

A = "token-a-0123456789abcdef"
B = "token-b-0123456789abcdef"
C = "token-c-0123456789abcdef"


def write(path: Path, raw: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(raw)
    tmp.chmod(0o600)
    tmp.replace(path)  # a new inode: seen even within one mtime tick


def tokens(name: str, token: str) -> bytes:
    return orjson.dumps({"tokens": [{"name": name, "token": token, "role": "admin"}]})


async def status_with(api: str, token: str) -> int:
    async with MeshClient(api, token=token, timeout=3.0) as c:
        try:
            await c.status()
            return 200
        except ApiError as exc:
            return exc.status


async def test_a_tokens_file_edited_while_running_takes_effect(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    write(path, tokens("ops", A))
    (tmp_path / "mesh").mkdir()
    with running_cluster(tmp_path / "mesh", 1, ["--tokens-file", str(path)]) as c:
        c.start_all()
        node = c.nodes["n1"]

        async def up() -> bool:
            try:
                return await status_with(node.api, A) == 200
            except Exception:
                return False

        await eventually(up, 30, "the node's API with token A")
        write(path, tokens("ops2", B))

        async def b_in() -> bool:
            return await status_with(node.api, B) == 200

        # Polled slowly: each refusal counts as a failed login.
        await eventually(b_in, 20, "token B accepted after the edit", interval=0.7)
        assert await status_with(node.api, A) == 401

        # A broken edit: B stays, the log says why.
        write(path, b"{broken")
        await eventually(
            lambda: _true(b"event=tokens_reload_refused" in node.log_path.read_bytes()), 20, "the refusal logged"
        )
        assert await status_with(node.api, B) == 200

        # SIGHUP reloads at once.
        write(path, tokens("ops3", C))
        c.signal("n1", signal.SIGHUP)
        await eventually(lambda: status_ok(node.api, C), 20, "token C after SIGHUP", interval=0.7)
        assert node.alive()


async def _true(v: bool) -> bool:
    return v


async def status_ok(api: str, token: str) -> bool:
    return await status_with(api, token) == 200
