"""A disk that fills while the node runs (issue 16, "Failures give no
advice"): the node stops (exit 1, as for any storage failure) and its last
line says the disk is full and what to do, not only the errno."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path

import pytest

from mesh import serve
from mesh.cli import build_parser
from mesh.client import ApiError, MeshClient, Unreachable
from mesh.launcher import listening_socket
from mesh.storage.disk import DiskStorage


class FillingDisk(DiskStorage):
    """A store whose fsyncs start failing with ENOSPC once `full` is set."""

    full = False

    def sync(self) -> None:
        if FillingDisk.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().sync()


@pytest.mark.slow
async def test_disk_full_while_running_exits_1_saying_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    FillingDisk.full = False
    monkeypatch.setattr(serve, "open_storage", lambda data_dir, durability: FillingDisk(data_dir))
    api_sock, raft_sock = listening_socket(), listening_socket()
    api = f"127.0.0.1:{api_sock.getsockname()[1]}"
    raft = f"127.0.0.1:{raft_sock.getsockname()[1]}"
    args = build_parser().parse_args(
        ["serve", "--id", "n1", "--data-dir", str(tmp_path / "n1"), "--no-mdns", "--peers", f"n1={raft}",
         "--api", api, "--raft", raft, "--api-fd", str(api_sock.fileno()), "--raft-fd", str(raft_sock.fileno())]
    )  # fmt: skip
    monkeypatch.setenv("HANA_SECRET", "disk-full-test-secret-0123456789")
    caplog.set_level(logging.INFO)
    umask = os.umask(0o077)  # serve.run sets it for the process: put it back after
    node = asyncio.ensure_future(serve.run(args))
    try:
        async with MeshClient(api, timeout=2.0) as client:
            async with asyncio.timeout(20):
                while True:
                    try:
                        if (await client.status()).get("leader"):
                            break
                    except (Unreachable, ApiError):
                        pass
                    await asyncio.sleep(0.05)
            await client.put("parameters/a", 1)
            FillingDisk.full = True
            with pytest.raises((ApiError, Unreachable)):
                await client.put("parameters/b", 2)
        async with asyncio.timeout(20):
            rc = await node
    finally:
        if not node.done():
            node.cancel()
        FillingDisk.full = False
        os.umask(umask)
    assert rc == 1
    exits = [r.getMessage() for r in caplog.records if "event=exit" in r.getMessage()]
    assert len(exits) == 1, [r.getMessage() for r in caplog.records]
    assert "No space left on device" in exits[0]
    assert f"the disk holding {tmp_path / 'n1'} is full" in exits[0] and "df -h" in exits[0]
