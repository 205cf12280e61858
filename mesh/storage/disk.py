"""The durable log store: `DiskStorage`.

Implements `mesh.raft.storage.LogStorage` and the write side of
`mesh.storage.memory.MemoryStorage` (same methods, same checks, same
answers). Writes change the live view at once and are buffered; `sync()`
makes everything since the previous sync durable with one fsync of the
log (group commit), in this order:

1. new snapshot files, each written atomically;
2. the buffered log records (a segment that fills is fsynced before the
   next one is created, then the log directory is fsynced);
3. the hard state, atomically, if it changed;
4. pruning: segments holding no live entry and superseded snapshot files.

A crash at any point leaves a prefix of the log records; a snapshot file
counts only once a durable log record names it. Writes not followed by
`sync()` are lost at `close()` or a crash, exactly as in the in-memory
twin's `crash_image()`.

Layout of the data directory::

    LOCK                  flock'ed while a store has the directory open
    hardstate             term, vote, commit (`stable`)
    wal/<seq>.wal         log segments (`wal`, `records`)
    snap/<seq>.snap       snapshots (`snapshots`)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from mesh.raft.errors import CompactedError, RaftUsageError, UnavailableError
from mesh.raft.messages import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from mesh.storage.cipher import RecordCipher
from mesh.storage.errors import StorageClosed, StorageCorruption, StorageFailed
from mesh.storage.lock import DirLock
from mesh.storage.records import (
    ENTRY_HEAD_SIZE,
    HEADER_SIZE,
    FrameError,
    RecordType,
    check_payload,
    decode_entry_payload,
    encode_entry,
    encode_meta,
    parse_header,
)
from mesh.storage.snapshots import (
    SNAP_DIR,
    SnapshotRef,
    encode_snapshot,
    list_snapshots,
    read_snapshot,
    snapshot_name,
)
from mesh.storage.stable import (
    HARD_STATE_FILE,
    TMP_SUFFIX,
    fsync_dir,
    load_hard_state,
    save_hard_state,
    write_atomic,
)
from mesh.storage.wal import WAL_DIR, LogIndex, Segment, ref_to_meta, scan, segment_header, segment_name

log = logging.getLogger("mesh.storage")

Durability = Literal["fsync", "unsafe_no_fsync"]
DURABILITIES: tuple[str, ...] = ("fsync", "unsafe_no_fsync")
DEFAULT_SEGMENT_BYTES = 64 << 20
MIN_SEGMENT_BYTES = 256
# Entry.size() counts 16 bytes of overhead besides the data.
_SIZE_DELTA = 16 - HEADER_SIZE - ENTRY_HEAD_SIZE


def _pwrite_all(fd: int, data: bytes | bytearray, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


class DiskStorage:
    """Write-ahead log, hard state and snapshots in one data directory.

    `durability="fsync"` (the default) makes `sync()` durable against power
    loss. `durability="unsafe_no_fsync"` skips every fsync: data survives a
    process crash but not a machine crash; for tests and benchmarks only.
    `key` (32 bytes): encrypt at rest (`mesh.storage.cipher`); the store
    must have been made with the same key, and every record is
    authenticated at open.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        durability: Durability = "fsync",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        key: bytes | None = None,
    ) -> None:
        if durability not in DURABILITIES:
            raise ValueError(f"durability must be one of {DURABILITIES}, got {durability!r}")
        if segment_bytes < MIN_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes must be at least {MIN_SEGMENT_BYTES}, got {segment_bytes}")
        self.path = Path(path)
        self.durability = durability
        self.segment_bytes = segment_bytes
        self._fsync = durability == "fsync"
        self._cipher = RecordCipher(key) if key is not None else None
        self._wal_dir = self.path / WAL_DIR
        self._snap_dir = self.path / SNAP_DIR
        self._hs_path = self.path / HARD_STATE_FILE
        self._segments: dict[int, Segment] = {}
        self._closed = False
        self._failed: BaseException | None = None
        self._hs = HardState()
        # What the hard-state file holds: term and vote changes rewrite it
        # (atomically, three fsyncs); a commit-only change is a COMMIT record
        # in the log, made durable by the log's own fsync (group commit).
        self._hs_saved = HardState()
        self._hs_dirty = False
        self._index = LogIndex()
        self._snapshot = Snapshot()
        self._snap_files: set[int] = set()
        self._next_snap_seq = 1
        self._pending_snaps: list[tuple[int, bytes]] = []
        self._unsynced = 0
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = DirLock(self.path)
        try:
            self._open()
        except BaseException:
            self._close_files()
            self._lock.release()
            self._closed = True
            raise

    # -- opening and recovery -------------------------------------------------

    def _open(self) -> None:
        self._wal_dir.mkdir(mode=0o700, exist_ok=True)
        self._snap_dir.mkdir(mode=0o700, exist_ok=True)
        # Validate everything first; repair only once nothing is wrong.
        hs = load_hard_state(self._hs_path)
        result = scan(self._wal_dir, self._cipher)
        snap_files = list_snapshots(self._snap_dir)
        stray = [d / n for d in (self.path, self._snap_dir) for n in os.listdir(d) if n.endswith(TMP_SUFFIX)]
        if result is not None:
            stray += result.stray
        if result is None or not result.seqs:
            if hs is not None and hs != HardState():
                raise StorageCorruption(self._wal_dir, None, f"the log has no segment but the hard state is {hs}")
            if snap_files:
                raise StorageCorruption(self._snap_dir, None, "snapshot files exist but the log has no segment")
            if result is not None and result.torn_seq is not None:
                self._remove(self._wal_dir / segment_name(result.torn_seq), "segment without a complete header")
            self._remove_stray(stray)
            self._initialise()
            return
        if hs is None:
            raise StorageCorruption(self._hs_path, None, "the hard state file is missing but the log exists")
        idx = result.index
        ref = idx.snapshot
        snapshot = Snapshot()
        if ref is not None:
            snapshot = read_snapshot(self._snap_dir / snapshot_name(ref.seq), ref, self._cipher)
        # -- repairs ---------------------------------------------------------
        if result.torn_seq is not None:
            torn = self._wal_dir / segment_name(result.torn_seq)
            if result.torn_at == 0:
                self._remove(torn, f"torn segment header ({result.torn_reason})")
            else:
                log.warning(
                    "storage: cutting a torn tail of %s at byte %d (%s)", torn, result.torn_at, result.torn_reason
                )
                fd = os.open(torn, os.O_RDWR)
                try:
                    os.ftruncate(fd, result.torn_at)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for seq, path in snap_files.items():
            if ref is None or seq != ref.seq:
                self._remove(path, "snapshot file not named by the log (superseded, or orphaned by a crash)")
        self._remove_stray(stray)
        # -- open ------------------------------------------------------------
        self._hs_saved = hs
        if idx.commit != hs.commit:
            hs = HardState(hs.term, hs.vote, idx.commit)
        self._hs = hs
        self._index = idx
        self._snapshot = snapshot
        self._snap_files = {ref.seq} if ref is not None else set()
        self._next_snap_seq = max([*snap_files, ref.seq if ref else 0]) + 1
        last = result.seqs[-1]
        for seq in result.seqs:
            path = self._wal_dir / segment_name(seq)
            fd = os.open(path, os.O_RDWR if seq == last else os.O_RDONLY)
            seg = Segment(seq, path, fd, result.sizes[seq], records=1)
            self._segments[seq] = seg
        self._active = self._segments[last]
        if self._cipher is not None:
            # Every live entry authenticated now: a wrong key or an altered
            # record stops the start, not a later read.
            lo, hi = idx.offset + 1, idx.last + 1
            for start in range(lo, hi, 1024):
                self.entries(start, min(start + 1024, hi))

    def _initialise(self) -> None:
        save_hard_state(self._hs_path, HardState(), self._fsync)
        self._new_segment(1)
        self._flush_segments()

    def _remove(self, path: Path, why: str) -> None:
        log.warning("storage: removing %s: %s", path, why)
        path.unlink()

    def _remove_stray(self, stray: list[Path]) -> None:
        for path in stray:
            self._remove(path, "temporary file left by an interrupted write")

    # -- read interface (LogStorage) --------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        self._check_open()
        return self._hs, self._snapshot.meta.conf

    def first_index(self) -> int:
        return self._index.offset + 1

    def last_index(self) -> int:
        return self._index.last

    def term(self, index: int) -> int:
        idx = self._index
        if index < idx.offset:
            raise CompactedError(f"index {index} is compacted (snapshot at {idx.offset})")
        if index > idx.last:
            raise UnavailableError(f"index {index} is beyond the last index {idx.last}")
        return idx.term_at(index)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        self._check_open()
        idx = self._index
        if lo <= idx.offset:
            raise CompactedError(f"index {lo} is compacted (snapshot at {idx.offset})")
        if hi > idx.last + 1:
            raise UnavailableError(f"entries [{lo}, {hi}) beyond last index {idx.last}")
        if lo >= hi:
            return []
        k0 = lo - idx.base - 1
        k1 = hi - idx.base - 1
        lens, segs, poss = idx.lens, idx.segs, idx.poss
        if max_bytes is not None:
            size = 0
            for k in range(k0, k1):
                size += lens[k] + _SIZE_DELTA
                if size > max_bytes and k > k0:
                    k1 = k
                    break
        out: list[Entry] = []
        k = k0
        while k < k1:
            # One read for each run of records stored back to back.
            seq, start = segs[k], poss[k]
            end = start + lens[k]
            j = k + 1
            while j < k1 and segs[j] == seq and poss[j] == end:
                end += lens[j]
                j += 1
            seg = self._segments[seq]
            buf = seg.read(start, end - start)
            pos = 0
            for i in range(k, j):
                out.append(self._decode_entry(seg, buf, pos, start + pos, idx.base + 1 + i, idx.terms[i]))
                pos += lens[i]
            k = j
        return out

    def _decode_entry(self, seg: Segment, buf: bytes, pos: int, file_pos: int, index: int, term: int) -> Entry:
        try:
            rtype, n, pcrc = parse_header(buf, pos, len(buf))
            if rtype != RecordType.ENTRY:
                raise FrameError(f"expected an entry record, found {RecordType(rtype).name}")
            check_payload(buf, pos + HEADER_SIZE, n, pcrc)
            e = decode_entry_payload(memoryview(buf)[pos + HEADER_SIZE : pos + HEADER_SIZE + n], self._cipher)
        except FrameError as exc:
            raise StorageCorruption(seg.path, file_pos, exc.reason) from None
        if e.index != index or e.term != term:
            raise StorageCorruption(
                seg.path, file_pos, f"record holds entry {e.index}/{e.term}, the index expects {index}/{term}"
            )
        return e

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- write interface (as MemoryStorage) -------------------------------------

    def hard_state(self) -> HardState:
        return self._hs

    def append(self, ents: list[Entry]) -> None:
        self._check_writable()
        if not ents:
            return
        idx = self._index
        first = ents[0].index
        if first <= idx.offset:
            # Entries at or below the snapshot are already covered by it.
            ents = ents[idx.offset + 1 - first :]
            if not ents:
                return
            first = ents[0].index
        last = idx.last
        if first > last + 1:
            raise RaftUsageError(f"append at {first} leaves a gap after {last}")
        for i, e in enumerate(ents):
            if e.index != first + i:
                raise RaftUsageError(f"append: entry {e.index} where {first + i} was expected")
            if not isinstance(e.data, bytes):
                raise RaftUsageError(f"append: entry {e.index} data is {type(e.data).__name__}, not bytes")
            if type(e.term) is not int or not 0 <= e.term < 1 << 63 or not isinstance(e.type, EntryType):
                # Checked up front: a batch is written whole or not at all.
                raise RaftUsageError(f"append: entry {e.index} has an invalid term or type")
        self._unsynced += 1
        if first <= last:
            self._write(encode_meta(RecordType.TRUNCATE, {"index": first}, self._cipher))
            idx.truncate(first)
        for e in ents:
            rec = encode_entry(e, self._cipher)
            seq, pos = self._write(rec)
            idx.add(e.term, seq, pos, len(rec))

    def set_hard_state(self, hs: HardState) -> None:
        self._check_writable()
        self._unsynced += 1
        if hs.term != self._hs_saved.term or hs.vote != self._hs_saved.vote:
            self._hs_dirty = True
        if hs.commit != self._index.commit:
            self._write(encode_meta(RecordType.COMMIT, {"commit": hs.commit}, self._cipher))
            self._index.commit = hs.commit
        self._hs = hs

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the log by an incoming snapshot (a follower installing one)."""
        self._check_writable()
        if snap.meta.index < self._snapshot.meta.index:
            raise RaftUsageError("snapshot older than the one held")
        ref = self._stage_snapshot(snap)
        self._write(encode_meta(RecordType.RESET, {"snapshot": ref_to_meta(ref)}, self._cipher))
        self._index.reset(snap.meta.index, snap.meta.term)
        self._index.snapshot = ref
        self._snapshot = snap

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        """Record the state machine at `index` (applied locally) as the snapshot."""
        self._check_writable()
        if index <= self._snapshot.meta.index:
            raise RaftUsageError(f"snapshot at {index} is not newer than {self._snapshot.meta.index}")
        if index > self.last_index():
            raise RaftUsageError(f"snapshot at {index} beyond last index {self.last_index()}")
        snap = Snapshot(SnapshotMeta(index, self.term(index), conf), data)
        ref = self._stage_snapshot(snap)
        self._write(encode_meta(RecordType.SNAPSHOT, {"snapshot": ref_to_meta(ref)}, self._cipher))
        self._index.snapshot = ref
        self._snapshot = snap
        return snap

    def compact(self, index: int) -> None:
        """Discard entries up to `index` (which must be covered by the snapshot)."""
        self._check_writable()
        if index > self._snapshot.meta.index:
            raise RaftUsageError(f"compact {index} beyond the snapshot at {self._snapshot.meta.index}")
        idx = self._index
        if index <= idx.offset:
            return
        if index > idx.last:
            raise RaftUsageError(f"compact {index} beyond last index {idx.last}")
        self._unsynced += 1
        term = idx.term_at(index)
        self._write(encode_meta(RecordType.COMPACT, {"index": index, "term": term}, self._cipher))
        idx.compact(index, term)

    def sync(self) -> None:
        """Make every write since the previous sync durable (group commit)."""
        self._check_writable()
        try:
            for seq, data in self._pending_snaps:
                write_atomic(self._snap_dir / snapshot_name(seq), data, fsync=self._fsync)
                self._snap_files.add(seq)
            self._pending_snaps.clear()
            self._flush_segments()
            if self._hs_dirty:
                save_hard_state(self._hs_path, self._hs, fsync=self._fsync)
                self._hs_saved = self._hs
                self._hs_dirty = False
            self._prune()
        except BaseException as exc:
            # What reached the disk is unknown (and a failed fsync must not be
            # retried): refuse further writes; reopening recovers from disk.
            self._failed = exc
            raise
        self._unsynced = 0

    def unsynced(self) -> int:
        return self._unsynced

    def close(self) -> None:
        """Release the files and the directory lock. Writes not synced are
        discarded (as a crash would)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._close_files()
        finally:
            self._lock.release()

    def __enter__(self) -> DiskStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosed(f"store at {self.path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._failed is not None:
            raise StorageFailed(f"an earlier write to {self.path} failed: {self._failed!r}") from self._failed

    def _stage_snapshot(self, snap: Snapshot) -> SnapshotRef:
        self._unsynced += 1
        seq = self._next_snap_seq
        self._next_snap_seq += 1
        data, digest = encode_snapshot(seq, snap, self._cipher)
        self._pending_snaps.append((seq, data))
        return SnapshotRef(seq, snap.meta.index, snap.meta.term, digest)

    def _new_segment(self, seq: int) -> Segment:
        seg = Segment(seq, self._wal_dir / segment_name(seq))
        seg.buf += segment_header(self._index, seq, self._cipher)
        self._segments[seq] = seg
        self._active = seg
        return seg

    def _write(self, rec: bytes) -> tuple[int, int]:
        seg = self._active
        if seg.size >= self.segment_bytes and seg.records > 0:
            seg = self._new_segment(seg.seq + 1)
        pos = seg.size
        seg.buf += rec
        seg.records += 1
        return seg.seq, pos

    def _flush_segments(self) -> None:
        created = False
        for seg in self._segments.values():
            if not seg.buf:
                continue
            if seg.fd is None:
                seg.fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                created = True
            _pwrite_all(seg.fd, seg.buf, seg.flushed)
            if self._fsync:
                # Segments are made durable in order, so a crash never leaves
                # a hole before the tail.
                os.fdatasync(seg.fd)
            seg.flushed += len(seg.buf)
            seg.buf = bytearray()
        if created and self._fsync:
            fsync_dir(self._wal_dir)

    def _prune(self) -> None:
        keep_from = self._index.first_live_segment()
        if keep_from is None:
            keep_from = self._active.seq
        for seq in [s for s in self._segments if s < keep_from]:
            seg = self._segments.pop(seq)
            seg.close()
            seg.path.unlink()
        ref = self._index.snapshot
        if ref is not None:
            for seq in [s for s in self._snap_files if s < ref.seq]:
                self._snap_files.discard(seq)
                (self._snap_dir / snapshot_name(seq)).unlink()

    def _close_files(self) -> None:
        for seg in self._segments.values():
            seg.close()
        self._segments.clear()
        self._pending_snaps.clear()
