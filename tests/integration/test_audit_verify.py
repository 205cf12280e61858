"""`hana-node audit verify` with real processes (issue 18).

A 3-node mesh records audited events (saves); verify finds every member's
chain whole and the members agreeing; a signed export verifies and, altered,
does not. Then one stopped node's snapshot is edited (one audit entry
changed, the snapshot file re-hashed and the log's records naming it
re-checksummed, so that the storage still loads it): the offline verify
exits 1 naming that entry, and once the node is back, so does the online
verify, naming the node and the entry."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from mesh.raft.messages import ConfState, Snapshot, SnapshotMeta
from mesh.storage.records import HEADER_SIZE, RecordType, decode_record, frame
from mesh.storage.snapshots import SNAP_DIR, encode_snapshot, list_snapshots
from mesh.storage.wal import WAL_DIR
from tests.integration.harness import eventually, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HANA = [sys.executable, "-m", "mesh.cli"]
_LEN = struct.Struct("<I")


def hana(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HANA, *args], capture_output=True, text=True, timeout=60)


def tamper_snapshot_audit_entry(data_dir: Path) -> int:
    """Change one audit entry in the node's newest snapshot, re-hash the
    file and re-checksum every log record naming it; the entry's seq."""
    seq, path = max(list_snapshots(data_dir / SNAP_DIR).items())
    raw = path.read_bytes()
    body = raw[:-32]
    old_digest = hashlib.sha256(body).hexdigest()
    (n,) = _LEN.unpack_from(body, 8)
    meta = orjson.loads(body[12 : 12 + n])
    doc = orjson.loads(body[12 + n :])
    chained = [e for _, e in doc["audit"]["entries"] if "prev" in e]
    assert len(chained) >= 3, doc["audit"]
    victim = chained[1]
    victim["author"] = "mallory"
    snap = Snapshot(
        SnapshotMeta(meta["index"], meta["term"], ConfState.from_dict(meta["conf"], "conf")), orjson.dumps(doc)
    )
    blob, new_digest = encode_snapshot(seq, snap)
    path.write_bytes(blob)
    renamed = 0
    for wal in sorted((data_dir / WAL_DIR).iterdir()):
        buf = bytearray(wal.read_bytes())
        pos = 0
        while pos + HEADER_SIZE <= len(buf):
            try:
                rec = decode_record(bytes(buf), pos)
            except ValueError:
                break
            if rec.type != RecordType.ENTRY and old_digest.encode() in rec.payload:
                payload = rec.payload.replace(old_digest.encode(), new_digest.encode())
                buf[pos : pos + rec.size] = frame(rec.type, payload)
                renamed += 1
            pos += rec.size
        wal.write_bytes(bytes(buf))
    assert renamed, "no log record names the snapshot"
    return int(victim["seq"])


async def test_audit_verify_finds_an_edited_record(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, ["--snapshot-every", "4"]) as c:
        c.start_all()
        leader = await c.wait_leader()
        async with c.nodes[leader].admin_client() as client:
            for i in range(8):
                await client.save(f"s{i}")
        api = c.nodes[leader].api

        async def all_agree() -> subprocess.CompletedProcess[str] | None:
            r = hana("audit", "verify", "--api", api)
            return r if r.returncode == 0 and "nodes=3 agree" in r.stdout else None

        ok = await eventually(all_agree, 30, "audit verify: three nodes agreeing")
        assert ok.stdout.count(" ok chained=") == 3, ok.stdout

        # Signed export: verifies; altered, it does not.
        export = tmp_path / "audit.json"
        r = hana("audit", "export", "--signed", str(export), "--api", api, "--data-dir", str(c.nodes[leader].data_dir))
        assert r.returncode == 0, r.stderr
        r = hana("audit", "verify", "--file", str(export))
        assert r.returncode == 0 and "signature ok" in r.stdout, r.stdout + r.stderr
        doc: dict[str, Any] = orjson.loads(export.read_bytes())
        doc["entries"][2]["author"] = "mallory"
        export.write_bytes(orjson.dumps(doc))
        r = hana("audit", "verify", "--file", str(export))
        assert r.returncode == 1 and "signature does not match" in r.stdout, r.stdout

        # Offline: one stopped node's snapshot edited.
        victim = next(n for n in c.nodes if n != leader)
        node = c.nodes[victim]
        assert c.terminate(victim) == 0
        r = hana("audit", "verify", "--data-dir", str(node.data_dir))
        assert r.returncode == 0, r.stdout + r.stderr
        seq = tamper_snapshot_audit_entry(node.data_dir)
        r = hana("audit", "verify", "--data-dir", str(node.data_dir))
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"node={victim} seq={seq} break:" in r.stdout, r.stdout

        # The storage still loads it: the node starts, and the online verify
        # names the node and the entry.
        c.start(victim)

        async def names_it() -> subprocess.CompletedProcess[str] | None:
            r = hana("audit", "verify", "--api", api)
            return r if f"node={victim} seq={seq} break:" in r.stdout else None

        r = await eventually(names_it, 30, "audit verify naming the edited entry")
        assert r.returncode == 1
