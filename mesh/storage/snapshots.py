"""Snapshot files: the state machine's bytes plus metadata, checksummed.

A snapshot file ``snap/<seq as 16 hex digits>.snap`` is::

    MAGIC (8) | u32 meta length | orjson meta | data | SHA-256 of all before

where meta is ``{"seq", "index", "term", "conf", "size"}``. Files are written
atomically (`mesh.storage.stable.write_atomic`, at the store's sync). Which snapshot is current is decided by the
write-ahead log (a SNAPSHOT or RESET record names its seq and digest), not by
the directory listing: a file whose record never became durable is an orphan
of a crash and is removed at open.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from mesh.raft.errors import MessageDecodeError
from mesh.raft.messages import ConfState, Snapshot, SnapshotMeta
from mesh.storage.errors import StorageCorruption

if TYPE_CHECKING:
    from mesh.storage.cipher import RecordCipher

SNAP_DIR = "snap"
SNAP_SUFFIX = ".snap"
_MAGIC = b"HMSNAP01"
_LEN = struct.Struct("<I")
_DIGEST = 32


@dataclass(slots=True, frozen=True)
class SnapshotRef:
    """What the log records about a snapshot file."""

    seq: int
    index: int
    term: int
    digest: str  # SHA-256 hex of the file body


def snapshot_name(seq: int) -> str:
    return f"{seq:016x}{SNAP_SUFFIX}"


def parse_snapshot_name(name: str) -> int | None:
    stem = name[: -len(SNAP_SUFFIX)]
    if not name.endswith(SNAP_SUFFIX) or len(stem) != 16:
        return None
    try:
        return int(stem, 16)
    except ValueError:
        return None


def encode_snapshot(seq: int, snap: Snapshot, cipher: RecordCipher | None = None) -> tuple[bytes, str]:
    data = snap.data
    fields: dict[str, object] = {
        "seq": seq,
        "index": snap.meta.index,
        "term": snap.meta.term,
        "conf": snap.meta.conf.to_dict(),
    }
    if cipher is not None:
        data = cipher.seal(data, cipher.snapshot_aad(seq, snap.meta.index, snap.meta.term))
        fields["enc"] = cipher.key_id
    fields["size"] = len(data)
    meta = orjson.dumps(fields)
    body = b"".join((_MAGIC, _LEN.pack(len(meta)), meta, data))
    digest = hashlib.sha256(body)
    return body + digest.digest(), digest.hexdigest()


def read_snapshot(path: Path, ref: SnapshotRef, cipher: RecordCipher | None = None) -> Snapshot:
    """Load and verify the snapshot file `ref` names (and decrypt it with
    `cipher`: `KeyMismatch` for another key or none, corruption for a
    snapshot that fails authentication)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StorageCorruption(path, None, f"snapshot {ref.seq} named by the log is missing") from None
    head = len(_MAGIC) + _LEN.size
    if len(data) < head + _DIGEST or data[: len(_MAGIC)] != _MAGIC:
        raise StorageCorruption(path, 0, "not a snapshot file (bad magic or too short)")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    actual = hashlib.sha256(body)
    if actual.digest() != digest:
        raise StorageCorruption(path, len(body), "snapshot SHA-256 mismatch")
    if actual.hexdigest() != ref.digest:
        raise StorageCorruption(path, len(body), "snapshot is not the one the log names (digest differs)")
    (n,) = _LEN.unpack_from(body, len(_MAGIC))
    if head + n > len(body):
        raise StorageCorruption(path, len(_MAGIC), f"snapshot meta length {n} out of range")
    try:
        meta = orjson.loads(body[head : head + n])
        if not isinstance(meta, dict):
            raise MessageDecodeError("meta is not an object")
        conf = ConfState.from_dict(meta.get("conf"), "snapshot.conf")
        seq, index, term, size = (meta.get(k) for k in ("seq", "index", "term", "size"))
    except (orjson.JSONDecodeError, MessageDecodeError) as exc:
        raise StorageCorruption(path, head, f"snapshot meta does not decode ({exc})") from exc
    payload = body[head + n :]
    if (seq, index, term) != (ref.seq, ref.index, ref.term) or size != len(payload):
        raise StorageCorruption(
            path, head, f"snapshot meta {seq}/{index}/{term}/{size} differs from the log's {ref} or its size"
        )
    from mesh.storage.cipher import AuthFailed, KeyMismatch, key_mismatch_reason

    why = key_mismatch_reason(meta.get("enc"), cipher)
    if why is not None:
        raise KeyMismatch(f"{path}: {why}")
    if cipher is not None:
        try:
            payload = cipher.open(payload, cipher.snapshot_aad(ref.seq, ref.index, ref.term))
        except AuthFailed as exc:
            raise StorageCorruption(path, head + n, f"snapshot {exc}") from None
    # index and term equal the log's (checked above): take them typed from there.
    return Snapshot(SnapshotMeta(ref.index, ref.term, conf), payload)


def list_snapshots(directory: Path) -> dict[int, Path]:
    """seq -> path of every snapshot file (temporaries excluded)."""
    out: dict[int, Path] = {}
    for name in os.listdir(directory):
        seq = parse_snapshot_name(name)
        if seq is not None:
            out[seq] = directory / name
    return out
