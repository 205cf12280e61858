"""A corrupted WAL (issue 16, "Failures give no advice"): `hana-node serve`
used to print a 30-line traceback. It now logs one line naming the file and
the byte offset of the damaged record and what to do, changes nothing on
disk and exits 1 (a storage failure, as before). And what that line tells
the operator to do works: remove the member, move the data directory
aside, start it again, add it back as a learner; it catches up."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.client import ApiError, MeshClient
from mesh.storage.records import HEADER_SIZE
from mesh.storage.wal import WAL_DIR, scan, segment_name
from tests.integration.harness import eventually, running_cluster

pytestmark = pytest.mark.integration

HANA = [sys.executable, "-m", "mesh.cli"]


def flip_middle_record(data_dir: Path) -> tuple[Path, int]:
    """Flip one payload byte of the log record in the middle of the
    node's WAL; the file and the record's byte offset."""
    wal = data_dir / WAL_DIR
    result = scan(wal)
    assert result is not None
    idx = result.index
    n = len(idx.poss)
    assert n >= 10, f"only {n} entries in the log"
    k = n // 2
    path = wal / segment_name(idx.segs[k])
    pos = idx.poss[k]
    blob = bytearray(path.read_bytes())
    blob[pos + HEADER_SIZE + 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    return path, pos


def files(data_dir: Path) -> dict[str, bytes]:
    """The store's files (LOCK aside: it only names its holder)."""
    return {
        str(p.relative_to(data_dir)): p.read_bytes()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and p.name != "LOCK"
    }


def hana(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HANA, *args], capture_output=True, text=True, timeout=timeout)


async def local_value(api: str, key: str) -> object:
    async with MeshClient(api, timeout=2.0) as client:
        try:
            return (await client.get(key, consistency="local"))["value"]
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise


@pytest.mark.slow
async def test_corrupt_wal_one_line_with_file_offset_and_remedy_that_works(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, ["--snapshot-every", "1000"]) as c:
        c.start_all()
        leader = await c.wait_leader()
        async with c.nodes[leader].client() as client:
            for i in range(40):
                await client.put(f"parameters/k{i}", i)
        victim = next(n for n in c.nodes if n != leader)
        node = c.nodes[victim]

        async def has_all() -> bool:
            return await local_value(node.api, "parameters/k39") == 39

        await eventually(has_all, 20, f"{victim} to apply every write")
        assert c.terminate(victim) == 0
        path, offset = flip_middle_record(node.data_dir)
        before = files(node.data_dir)

        # The damaged node: one line, no traceback, exit 1, nothing changed.
        mark = len(node.log_tail(10**9))
        c.start(victim)
        assert node.proc is not None
        assert node.proc.wait(timeout=60) == 1
        out = node.log_tail(10**9)[mark:]
        assert "Traceback" not in out, out
        lines = [line for line in out.splitlines() if "event=storage_corrupt" in line]
        assert len(lines) == 1, out
        line = lines[0]
        assert "level=critical" in line
        assert f"file={path} " in line and f"offset={offset} " in line, line
        assert "reason='record payload checksum mismatch'" in line, line
        assert f"`hana-node members remove {victim}`" in line
        assert f"mv {node.data_dir} {node.data_dir}.damaged" in line
        assert f"`hana-node members add {victim} --raft HOST:PORT`" in line
        assert "If it was the only node" in line and "docs/operations.md" in line
        assert files(node.data_dir) == before

        # The remedy, as the line says: remove it on a healthy member, move
        # the directory aside, start again, add it back (a --peers mesh).
        healthy = c.nodes[leader]
        token = ["--token-file", str(healthy.data_dir / "admin-token")]
        removed = hana("members", "remove", victim, "--api", healthy.api, *token)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        shutil.move(node.data_dir, f"{node.data_dir}.damaged")
        c.start(victim)
        added = hana("members", "add", victim, "--raft", node.raft, "--api", healthy.api, *token)
        assert added.returncode == 0, added.stdout + added.stderr

        try:
            await eventually(has_all, 30, f"{victim}, started empty, to catch up")
            async with healthy.client() as client:
                await client.put("parameters/after", "repair")

            async def has_after() -> bool:
                return await local_value(node.api, "parameters/after") == "repair"

            await eventually(has_after, 20, f"{victim} to receive new writes")
            promoted = hana("members", "promote", victim, "--api", healthy.api, *token)
            assert promoted.returncode == 0, promoted.stdout + promoted.stderr

            async def voter_again() -> bool:
                doc = await c.status(leader)
                return any(m["id"] == victim and m["voter"] for m in doc["members"])

            await eventually(voter_again, 20, f"{victim} to be a voter again")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{c.logs()}") from None
        assert node.alive()


def test_locked_data_dir_says_another_process_uses_it(tmp_path: Path) -> None:
    """Another process holds the data directory: one line saying so and
    what to do, exit 1 (it used to be a traceback too)."""
    from mesh.storage.disk import DiskStorage

    data = tmp_path / "n1"
    with DiskStorage(data):
        out = hana(
            "serve", "--id", "n1", "--data-dir", str(data), "--no-mdns", "--peers", "n1=127.0.0.1:1",
            "--api", "127.0.0.1:0", "--raft", "127.0.0.1:0",
        )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "event=storage_unusable" in out.stderr and "another process uses this data directory" in out.stderr


def test_storage_advice_names_what_to_do() -> None:
    import errno

    from mesh.serve import storage_advice
    from mesh.storage.errors import StorageFailed

    here = Path("/var/lib/hana/wall-1")
    full = OSError(errno.ENOSPC, "No space left on device")
    assert "is full" in storage_advice(full, here, "wall-1") and "df -h /var/lib/hana/wall-1" in storage_advice(
        full, here, "wall-1"
    )
    # A write that failed earlier is judged by its cause.
    failed = StorageFailed("an earlier write failed")
    failed.__cause__ = full
    assert "is full" in storage_advice(failed, here, "wall-1")
    assert "chown" in storage_advice(PermissionError(errno.EACCES, "Permission denied"), here, "wall-1")
    assert "input/output" in storage_advice(OSError(errno.EIO, "I/O error"), here, "wall-1")
