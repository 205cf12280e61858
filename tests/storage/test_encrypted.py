"""Encryption at rest of the log and snapshots (issue 18): nothing of an
entry or a snapshot in clear on disk; a wrong key, no key, or a key given to
a store written in clear is refused at open (KeyMismatch, nothing changed);
an altered record or snapshot, even re-checksummed so that the storage's
CRCs and SHA-256 pass, is refused at open."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mesh.raft.messages import ConfState, Entry, HardState
from mesh.storage.cipher import KeyMismatch, RecordCipher
from mesh.storage.disk import DiskStorage
from mesh.storage.errors import StorageCorruption
from mesh.storage.records import HEADER_SIZE, RecordType, decode_record, frame
from mesh.storage.snapshots import SNAP_DIR, SnapshotRef, list_snapshots, read_snapshot

KEY = bytes(range(32))
OTHER = bytes([7] * 32)
SECRET = b"the-secret-show-value"
CONF = ConfState(voters=("n1",))


def build(path: Path, key: bytes | None = KEY) -> None:
    with DiskStorage(path, durability="unsafe_no_fsync", key=key) as st:
        st.append([Entry(i, 1, SECRET + b"-%d" % i) for i in range(1, 21)])
        st.set_hard_state(HardState(1, "n1", 20))
        st.create_snapshot(10, CONF, b"snapshot:" + SECRET)
        st.compact(5)
        st.sync()


def files(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != "LOCK"
    }


def test_round_trip_and_nothing_in_clear(tmp_path: Path) -> None:
    build(tmp_path)
    for name, blob in files(tmp_path).items():
        assert SECRET not in blob, name
    with DiskStorage(tmp_path, key=KEY) as st:
        assert st.snapshot().data == b"snapshot:" + SECRET
        assert [e.data for e in st.entries(6, 21)] == [SECRET + b"-%d" % i for i in range(6, 21)]
        assert st.hard_state().commit == 20
    # The same data written in clear does show it (the test can fail).
    clear = tmp_path / "clear"
    build(clear, key=None)
    assert any(SECRET in blob for blob in files(clear).values())


@pytest.mark.parametrize(("written", "opened"), [(KEY, OTHER), (KEY, None), (None, KEY)])
def test_the_wrong_key_is_refused_and_nothing_changes(
    tmp_path: Path, written: bytes | None, opened: bytes | None
) -> None:
    build(tmp_path, key=written)
    before = files(tmp_path)
    with pytest.raises(KeyMismatch) as info:
        DiskStorage(tmp_path, key=opened)
    assert "--encrypt-at-rest" in str(info.value) or "another key" in str(info.value)
    assert files(tmp_path) == before


def _rewrite_records(path: Path, change: object) -> int:
    """Apply `change(rtype, payload) -> payload | None` to every WAL record,
    re-checksumming what it changes; how many changed."""
    changed = 0
    for seg in sorted((path / "wal").iterdir()):
        buf = bytearray(seg.read_bytes())
        pos = 0
        while pos + HEADER_SIZE <= len(buf):
            rec = decode_record(bytes(buf), pos)
            new = change(rec.type, rec.payload)  # type: ignore[operator]
            if new is not None:
                assert len(new) == len(rec.payload)
                buf[pos : pos + rec.size] = frame(rec.type, new)
                changed += 1
            pos += rec.size
        seg.write_bytes(bytes(buf))
    return changed


def test_an_altered_entry_re_checksummed_is_refused_at_open(tmp_path: Path) -> None:
    build(tmp_path)
    done = []

    def flip(rtype: RecordType, payload: bytes) -> bytes | None:
        if rtype != RecordType.ENTRY or done:
            return None
        index = int.from_bytes(payload[:8], "little")
        if index < 12:
            return None
        done.append(index)
        b = bytearray(payload)
        b[-20] ^= 1  # in the ciphertext
        return bytes(b)

    assert _rewrite_records(tmp_path, flip) == 1
    with pytest.raises(StorageCorruption) as info:
        DiskStorage(tmp_path, key=KEY)
    assert f"entry {done[0]} fails authentication" in str(info.value)


def test_an_altered_metadata_record_re_checksummed_is_refused_at_open(tmp_path: Path) -> None:
    build(tmp_path)

    def commit(rtype: RecordType, payload: bytes) -> bytes | None:
        if rtype != RecordType.COMMIT:
            return None
        return payload.replace(b'"commit":20', b'"commit":19')

    assert _rewrite_records(tmp_path, commit) == 1
    with pytest.raises(StorageCorruption, match="mac does not match"):
        DiskStorage(tmp_path, key=KEY)


def test_an_altered_snapshot_re_hashed_is_refused_at_open(tmp_path: Path) -> None:
    build(tmp_path)
    ((seq, snap_path),) = list_snapshots(tmp_path / SNAP_DIR).items()
    raw = bytearray(snap_path.read_bytes())
    old = hashlib.sha256(raw[:-32]).hexdigest().encode()
    raw[-40] ^= 1  # in the encrypted data, before the file's SHA-256
    body = bytes(raw[:-32])
    new = hashlib.sha256(body).hexdigest().encode()
    snap_path.write_bytes(body + hashlib.sha256(body).digest())

    def digest(rtype: RecordType, payload: bytes) -> bytes | None:
        return payload.replace(old, new) if old in payload else None

    # The log's records naming the snapshot carry a mac over its digest: the
    # new digest written there fails at open.
    assert _rewrite_records(tmp_path, digest) >= 1
    with pytest.raises(StorageCorruption, match="mac does not match"):
        DiskStorage(tmp_path, key=KEY)
    # And the snapshot's own authentication, given a log that names it.
    ref = SnapshotRef(seq, 10, 1, new.decode())
    with pytest.raises(StorageCorruption, match="snapshot fails authentication"):
        read_snapshot(snap_path, ref, RecordCipher(KEY))
