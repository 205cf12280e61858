"""Unit tests of the durable store and its modules."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from mesh.raft.errors import CompactedError, UnavailableError
from mesh.raft.messages import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from mesh.storage import records
from mesh.storage.disk import DiskStorage
from mesh.storage.errors import StorageClosed, StorageCorruption, StorageFailed, StorageLocked
from mesh.storage.records import FrameError, RecordType
from mesh.storage.stable import encode_hard_state, load_hard_state
from tests.storage.helpers import entry

STORAGE_DIR = Path(__file__).resolve().parents[2] / "mesh" / "storage"


def segments(path: Path) -> list[Path]:
    return sorted((path / "wal").iterdir())


# -- records ---------------------------------------------------------------


def test_record_round_trip() -> None:
    e = Entry(7, 3, b"\x00payload\xff", EntryType.CONF_CHANGE)
    rec = records.encode_entry(e)
    decoded = records.decode_record(rec, 0)
    assert decoded.type == RecordType.ENTRY and decoded.size == len(rec)
    assert records.decode_entry_payload(decoded.payload) == e
    meta = records.encode_meta(RecordType.TRUNCATE, {"index": 5})
    assert records.decode_meta(records.decode_record(meta, 0).payload) == {"index": 5}


def test_every_flipped_byte_of_a_record_is_detected() -> None:
    rec = records.encode_entry(Entry(1, 1, b"some data"))
    for at in range(len(rec)):
        for bit in (0x01, 0x80):
            bad = bytearray(rec)
            bad[at] ^= bit
            with pytest.raises(FrameError) as info:
                records.decode_record(bytes(bad), 0)
            assert not (info.value.torn and at >= records.HEADER_SIZE)


def test_cut_records_are_torn() -> None:
    rec = records.encode_entry(Entry(1, 1, b"some data"))
    for cut in range(1, len(rec)):
        with pytest.raises(FrameError) as info:
            records.decode_record(rec[:cut], 0)
        assert info.value.torn, cut
    with pytest.raises(FrameError) as info:
        records.decode_record(bytes(40), 0)
    assert info.value.torn  # a zero-filled tail (blocks allocated, never written)


# -- the store -------------------------------------------------------------


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        DiskStorage(tmp_path, durability="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="segment_bytes"):
        DiskStorage(tmp_path, segment_bytes=10)


def test_lock_in_process_and_release(tmp_path: Path) -> None:
    store = DiskStorage(tmp_path, durability="unsafe_no_fsync")
    with pytest.raises(StorageLocked, match="locked"):
        DiskStorage(tmp_path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageClosed):
        store.entries(1, 1)
    with pytest.raises(StorageClosed):
        store.append([entry(1, 1)])
    DiskStorage(tmp_path).close()


def test_fresh_store_answers_like_an_empty_log(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as store:
        assert (store.first_index(), store.last_index(), store.term(0)) == (1, 0, 0)
        assert store.initial_state() == (HardState(), ConfState())
        assert store.snapshot() == Snapshot()
        assert store.entries(1, 1) == []
        with pytest.raises(UnavailableError):
            store.term(1)
        with pytest.raises(UnavailableError):
            store.entries(1, 2)
    assert sorted(os.listdir(tmp_path)) == ["LOCK", "hardstate", "snap", "wal"]


def test_writes_survive_reopen_only_when_synced(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as store:
        store.append([entry(i, 1) for i in range(1, 6)])
        store.set_hard_state(HardState(1, "a", 3))
        store.sync()
        store.append([entry(i, 2) for i in range(4, 9)])
        store.set_hard_state(HardState(2, "b", 4))
        assert store.unsynced() == 2
    with DiskStorage(tmp_path) as store:
        assert store.last_index() == 5 and store.term(5) == 1
        assert store.hard_state() == HardState(1, "a", 3)
        assert store.entries(1, 6) == [entry(i, 1) for i in range(1, 6)]


def test_suffix_truncation_appends_a_record_and_rewrites_nothing(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, durability="unsafe_no_fsync") as store:
        store.append([entry(i, 1) for i in range(1, 11)])
        store.sync()
        (seg,) = segments(tmp_path)
        before = seg.read_bytes()
        store.append([entry(i, 2) for i in range(6, 8)])
        store.sync()
        after = seg.read_bytes()
        assert after.startswith(before) and len(after) > len(before)
        assert store.last_index() == 7
    with DiskStorage(tmp_path) as store:
        assert store.entries(1, 8) == [entry(i, 1) for i in range(1, 6)] + [entry(6, 2), entry(7, 2)]


def test_segments_roll_and_compaction_deletes_whole_segments(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, durability="unsafe_no_fsync", segment_bytes=1024) as store:
        for lo in range(1, 301, 10):
            store.append([entry(i, 1, 50) for i in range(lo, lo + 10)])
            store.sync()
        files = segments(tmp_path)
        assert len(files) > 10
        assert all(f.stat().st_size < 1024 + 200 for f in files)
        kept = {f.name: f.read_bytes() for f in files}
        store.create_snapshot(250, ConfState.of(["a"]), b"state at 250")
        store.compact(250)
        store.sync()
        left = segments(tmp_path)
        # ~12 entries a segment: the 50 entries left live in at most 6.
        assert 1 <= len(left) <= 6 < len(files) // 3
        # Surviving segments were not rewritten (only the active one grew).
        for f in left[:-1]:
            assert f.read_bytes() == kept[f.name]
        assert store.first_index() == 251
        with pytest.raises(CompactedError):
            store.entries(250, 252)
    with DiskStorage(tmp_path, segment_bytes=1024) as store:
        assert store.first_index() == 251 and store.last_index() == 300
        assert store.snapshot().data == b"state at 250"
        assert store.entries(251, 301) == [entry(i, 1, 50) for i in range(251, 301)]


def test_old_snapshots_are_pruned_and_orphans_removed(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, durability="unsafe_no_fsync") as store:
        store.append([entry(i, 1) for i in range(1, 30)])
        for at in (10, 20):
            store.create_snapshot(at, ConfState.of(["a"]), f"s{at}".encode())
            store.sync()
        assert len(os.listdir(tmp_path / "snap")) == 1
        store.apply_snapshot(Snapshot(SnapshotMeta(40, 3, ConfState.of(["a", "b"])), b"s40"))
        store.sync()
        (only,) = os.listdir(tmp_path / "snap")
    # A snapshot file no log record names (a crash before its record was
    # durable) and a temporary file are removed at open.
    (tmp_path / "snap" / "00000000000000ff.snap").write_bytes(b"junk")
    (tmp_path / "hardstate.tmp").write_bytes(b"junk")
    with DiskStorage(tmp_path) as store:
        assert store.snapshot().data == b"s40" and store.first_index() == 41
        assert store.initial_state()[1] == ConfState.of(["a", "b"])
    assert os.listdir(tmp_path / "snap") == [only]
    assert not (tmp_path / "hardstate.tmp").exists()


def test_corruption_names_file_and_offset(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, durability="unsafe_no_fsync") as store:
        store.append([entry(i, 1, 20) for i in range(1, 6)])
        store.sync()
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    rec = len(records.encode_entry(entry(1, 1, 20)))
    third = len(data) - 3 * rec  # the record of entry 3
    data[third + records.HEADER_SIZE + 2] ^= 1
    seg.write_bytes(bytes(data))
    with pytest.raises(StorageCorruption) as info:
        DiskStorage(tmp_path)
    assert info.value.path == str(seg) and info.value.offset == third
    assert "checksum" in str(info.value)


def test_bad_hard_state_file(tmp_path: Path) -> None:
    DiskStorage(tmp_path).close()
    (tmp_path / "hardstate").write_bytes(b"HMHARDS1garbage")
    with pytest.raises(StorageCorruption, match="hardstate"):
        DiskStorage(tmp_path)
    good = encode_hard_state(HardState(5, "x", 0))
    (tmp_path / "hardstate").write_bytes(good[:-1] + bytes([good[-1] ^ 2]))
    with pytest.raises(StorageCorruption, match="checksum"):
        DiskStorage(tmp_path)
    (tmp_path / "hardstate").write_bytes(good)
    assert load_hard_state(tmp_path / "hardstate") == HardState(5, "x", 0)
    # The log has no entry, yet the hard state claims a vote: still fine.
    DiskStorage(tmp_path).close()


def test_crash_during_initialisation_reinitialises(tmp_path: Path) -> None:
    DiskStorage(tmp_path).close()
    (seg,) = segments(tmp_path)
    os.truncate(seg, 10)  # the first segment's header was never completed
    with DiskStorage(tmp_path) as store:
        store.append([entry(1, 1)])
        store.sync()
    with DiskStorage(tmp_path) as store:
        assert store.entries(1, 2) == [entry(1, 1)]


def test_failed_sync_poisons_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DiskStorage(tmp_path)
    store.append([entry(1, 1)])
    store.sync()
    store.append([entry(2, 1)])

    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(OSError):
        store.sync()
    monkeypatch.undo()
    with pytest.raises(StorageFailed):
        store.append([entry(3, 1)])
    with pytest.raises(StorageFailed):
        store.sync()
    store.close()
    with DiskStorage(tmp_path) as again:
        assert again.last_index() in (1, 2)
        assert again.entries(1, again.last_index() + 1) == [entry(i, 1) for i in range(1, again.last_index() + 1)]


def test_storage_imports_only_sync_io_and_raft_types() -> None:
    allowed_project = {"mesh.raft.messages", "mesh.raft.errors", "mesh.raft.storage"}
    for path in STORAGE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"asyncio", "pickle"}, (path.name, name)
                if name.startswith("mesh.") and not name.startswith("mesh.storage."):
                    assert name in allowed_project, (path.name, name)


def test_invalid_batches_change_nothing(tmp_path: Path) -> None:
    from mesh.raft.errors import RaftUsageError

    with DiskStorage(tmp_path, durability="unsafe_no_fsync") as store:
        store.append([entry(1, 1)])
        bad = [
            [entry(3, 1)],  # a gap
            [entry(2, 1), entry(4, 1)],  # not contiguous
            [entry(2, 1), Entry(3, -1, b"")],  # a negative term
            [entry(2, 1), Entry(3, 1, "text")],  # type: ignore[arg-type]
        ]
        for batch in bad:
            with pytest.raises(RaftUsageError):
                store.append(batch)
            assert store.last_index() == 1 and store.unsynced() == 1
        store.sync()
    with DiskStorage(tmp_path) as store:
        assert store.entries(1, 2) == [entry(1, 1)]


def test_zero_filled_tail_after_power_loss_is_cut_but_a_flipped_byte_is_not(tmp_path: Path) -> None:
    """Pages of the last batch that never reached the disk read back as zeros:
    a torn write, repaired. A flipped byte in the same record is corruption."""
    for damage in ("zeros", "flip"):
        d = tmp_path / damage
        with DiskStorage(d) as s:
            s.append([Entry(i, 1, b"x" * 100) for i in range(1, 11)])
            s.sync()
            s.append([Entry(i, 1, b"y" * 5000) for i in range(11, 13)])
            s.sync()
        seg = sorted((d / "wal").iterdir())[-1]
        size = seg.stat().st_size
        with open(seg, "r+b") as f:
            if damage == "zeros":
                f.seek(size - 4096)
                f.write(b"\0" * 4096)
            else:
                f.seek(size - 100)
                byte = f.read(1)
                f.seek(size - 100)
                f.write(bytes([byte[0] ^ 0x40]))
        if damage == "zeros":
            with DiskStorage(d) as s:
                # Entries 1..10 were synced in an earlier batch and survive intact.
                assert 10 <= s.last_index() < 12
                assert [e.data for e in s.entries(1, 11)] == [b"x" * 100] * 10
        else:
            with pytest.raises(StorageCorruption):
                DiskStorage(d)
