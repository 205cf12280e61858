"""The segmented write-ahead log: segment files, the in-memory index, replay.

Segments are ``wal/<seq as 16 hex digits>.wal``, numbered without gaps. Each
starts with a SEGMENT record carrying the log's state when it was opened
(first index it will hold, compaction point, current snapshot), then ENTRY,
TRUNCATE, COMPACT, SNAPSHOT and RESET records (see `records`).

Replaying the surviving segments in order rebuilds the log exactly:
compaction deletes whole segments only when no live entry is stored in them,
so the first survivor's SEGMENT record plus the records after it describe
everything. `scan` only reads: it validates every record and returns the
rebuilt index and the repairs to make (a torn tail), or raises
`StorageCorruption` naming the file and byte offset.
"""

from __future__ import annotations

import itertools
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh.raft.messages import EntryType
from mesh.storage.errors import StorageCorruption
from mesh.storage.records import (
    ENTRY_HEAD,
    ENTRY_HEAD_SIZE,
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    FrameError,
    RecordType,
    crc32,
    decode_meta,
    encode_meta,
    meta_int,
    parse_header,
)
from mesh.storage.snapshots import SnapshotRef

if TYPE_CHECKING:
    from mesh.storage.cipher import RecordCipher

WAL_DIR = "wal"
SEG_SUFFIX = ".wal"
FORMAT_VERSION = 1

_REC_ENTRY = int(RecordType.ENTRY)
_MAX_ENTRY_TYPE = max(int(t) for t in EntryType)


def segment_name(seq: int) -> str:
    return f"{seq:016x}{SEG_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    stem = name[: -len(SEG_SUFFIX)]
    if not name.endswith(SEG_SUFFIX) or len(stem) != 16:
        return None
    try:
        return int(stem, 16)
    except ValueError:
        return None


def ref_to_meta(ref: SnapshotRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {"seq": ref.seq, "index": ref.index, "term": ref.term, "digest": ref.digest}


def ref_from_meta(d: Any) -> SnapshotRef | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise FrameError("snapshot reference is not an object")
    digest = d.get("digest")
    if not isinstance(digest, str) or len(digest) != 64:
        raise FrameError("snapshot reference has no valid digest")
    return SnapshotRef(meta_int(d, "seq"), meta_int(d, "index"), meta_int(d, "term"), digest)


class LogIndex:
    """Where every live entry is: term, segment, byte offset and record size
    per index, in flat arrays (about 24 bytes per entry).

    Entries ``base+1 .. last`` are indexed; ``offset`` is the compaction
    point (its term is ``offset_term``). Outside replay ``base == offset``;
    during replay ``offset < base`` means entries whose segments were not
    (yet) seen."""

    __slots__ = ("base", "commit", "lens", "offset", "offset_term", "poss", "segs", "snapshot", "terms")

    def __init__(self, offset: int = 0, offset_term: int = 0, base: int | None = None) -> None:
        self.offset = offset
        self.offset_term = offset_term
        self.base = offset if base is None else base
        self.terms = array("Q")
        self.segs = array("I")
        self.poss = array("Q")
        self.lens = array("I")
        self.snapshot: SnapshotRef | None = None
        # The commit index as the log records it (SEGMENT headers and COMMIT
        # records; the last one wins). The log, not the hard-state file, is
        # authoritative for commit: it is flushed first in every sync.
        self.commit = 0

    @property
    def last(self) -> int:
        return self.base + len(self.terms)

    def term_at(self, index: int) -> int:
        if index == self.offset:
            return self.offset_term
        return self.terms[index - self.base - 1]

    def add(self, term: int, seq: int, pos: int, size: int) -> None:
        self.terms.append(term)
        self.segs.append(seq)
        self.poss.append(pos)
        self.lens.append(size)

    def truncate(self, index: int) -> None:
        """Drop entries >= index."""
        if not self.offset < index <= self.last:
            raise FrameError(f"truncate at {index} outside the log ({self.offset}, {self.last}]")
        if index <= self.base:
            # Everything indexed goes; entries offset+1..index-1 stay unseen.
            self.base = index - 1
            cut = 0
        else:
            cut = index - self.base - 1
        for a in (self.terms, self.segs, self.poss, self.lens):
            del a[cut:]

    def compact(self, index: int, term: int) -> None:
        """Drop entries <= index; `term` is the term of entry `index`."""
        if not self.offset < index <= self.last:
            raise FrameError(f"compact at {index} outside the log ({self.offset}, {self.last}]")
        if index > self.base:
            if self.terms[index - self.base - 1] != term:
                raise FrameError(f"compact at {index} names term {term}, the log holds {self.term_at(index)}")
            cut = index - self.base
            for a in (self.terms, self.segs, self.poss, self.lens):
                del a[:cut]
            self.base = index
        self.offset = index
        self.offset_term = term

    def reset(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot at (index, term)."""
        self.offset = self.base = index
        self.offset_term = term
        for a in (self.terms, self.segs, self.poss, self.lens):
            del a[:]

    def segment_meta(self, seq: int) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "seq": seq,
            "first_index": self.last + 1,
            "offset": self.offset,
            "offset_term": self.offset_term,
            "snapshot": ref_to_meta(self.snapshot),
            "commit": self.commit,
        }

    def first_live_segment(self) -> int | None:
        return self.segs[0] if len(self.segs) else None


def segment_header(index: LogIndex, seq: int, cipher: RecordCipher | None = None) -> bytes:
    meta = index.segment_meta(seq)
    if cipher is not None:
        meta["enc"] = cipher.key_id  # which key (mesh.storage.cipher); absent: in clear
    return encode_meta(RecordType.SEGMENT, meta, cipher)


@dataclass(slots=True)
class Segment:
    """One segment file. Bytes past `flushed` are still in `buf` (written at
    the next sync); `fd` is None until the file is created."""

    seq: int
    path: Path
    fd: int | None = None
    flushed: int = 0
    # records after the SEGMENT record (only "has any" matters: a segment is
    # rolled once full and not empty)
    records: int = 0
    buf: bytearray = field(default_factory=bytearray)

    @property
    def size(self) -> int:
        return self.flushed + len(self.buf)

    def read(self, pos: int, n: int) -> bytes:
        """Bytes [pos, pos+n) of the segment, from the file and/or the buffer."""
        if pos >= self.flushed:
            start = pos - self.flushed
            return bytes(self.buf[start : start + n])
        assert self.fd is not None
        on_disk = min(n, self.flushed - pos)
        data = os.pread(self.fd, on_disk, pos)
        if len(data) != on_disk:
            raise StorageCorruption(self.path, pos, f"file ends after {len(data)} of {on_disk} bytes of a record")
        if on_disk < n:
            data += self.buf[: n - on_disk]
        return data

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


@dataclass(slots=True)
class ScanResult:
    index: LogIndex
    seqs: list[int]
    # (seq, size): bytes of each segment that are valid
    sizes: dict[int, int]
    # repairs: the last segment's torn tail is cut at `torn_at` (0: the file
    # holds no complete segment record and is removed)
    torn_seq: int | None = None
    torn_at: int = 0
    torn_reason: str = ""
    stray: list[Path] = field(default_factory=list)


def list_segments(directory: Path) -> tuple[list[int], list[Path]]:
    seqs: list[int] = []
    stray: list[Path] = []
    for name in os.listdir(directory):
        seq = parse_segment_name(name)
        if seq is not None:
            seqs.append(seq)
        elif name.endswith(".tmp"):
            stray.append(directory / name)
    seqs.sort()
    return seqs, stray


def scan(directory: Path, cipher: RecordCipher | None = None) -> ScanResult | None:
    """Validate and replay every segment. None if there are none. With
    `cipher` (an encrypted store) every metadata record's mac is checked;
    a store written with another key, or none, raises `KeyMismatch`."""
    seqs, stray = list_segments(directory)
    if not seqs:
        return None
    for a, b in itertools.pairwise(seqs):
        if b != a + 1:
            raise StorageCorruption(directory / segment_name(a + 1), None, f"segment {a + 1} is missing")
    result = ScanResult(LogIndex(), seqs, {}, stray=stray)
    idx: LogIndex | None = None
    for i, seq in enumerate(seqs):
        path = directory / segment_name(seq)
        last_segment = i == len(seqs) - 1
        data = path.read_bytes()
        size, idx, torn = _replay_segment(path, seq, data, idx, last_segment, cipher)
        result.sizes[seq] = size
        if torn is not None:
            result.torn_seq, result.torn_at, result.torn_reason = seq, size, torn
    if result.torn_seq is not None and result.torn_at == 0:
        # The last segment never got its SEGMENT record: it holds nothing.
        result.seqs.pop()
        del result.sizes[seq]
        if not result.seqs:
            if seq != 1:
                raise StorageCorruption(
                    directory / segment_name(seq), 0, "the only segment has no complete segment record"
                )
            return result
    assert idx is not None
    if idx.offset != idx.base:
        first = directory / segment_name(result.seqs[0])
        raise StorageCorruption(
            first, 0, f"entries {idx.offset + 1}..{idx.base} are in no segment (an earlier segment is missing)"
        )
    snap = idx.snapshot
    if (snap is None and idx.offset != 0) or (snap is not None and idx.offset > snap.index):
        raise StorageCorruption(directory, None, f"log compacted to {idx.offset} beyond the snapshot {snap}")
    result.index = idx
    return result


def _replay_segment(
    path: Path, seq: int, data: bytes, idx: LogIndex | None, last_segment: bool, cipher: RecordCipher | None = None
) -> tuple[int, LogIndex | None, str | None]:
    """Replay one segment onto `idx` (None: this is the first segment).
    Returns (valid size, index, torn reason or None)."""
    mv = memoryview(data)
    end = len(data)
    pos = 0
    # -- the SEGMENT record -------------------------------------------------
    try:
        rtype, n, pcrc = parse_header(mv, 0, end)
        if rtype != RecordType.SEGMENT:
            raise FrameError(f"segment starts with a {RecordType(rtype).name} record, not SEGMENT")
        if crc32(mv[HEADER_SIZE : HEADER_SIZE + n]) != pcrc:
            raise FrameError("record payload checksum mismatch")
        meta = decode_meta(mv[HEADER_SIZE : HEADER_SIZE + n])
        _check_key(path, meta, cipher)
        if meta.get("version") != FORMAT_VERSION:
            raise FrameError(f"unsupported segment format version {meta.get('version')!r}")
        if meta_int(meta, "seq") != seq:
            raise FrameError(f"segment record says seq {meta.get('seq')}, the file name says {seq}")
        first_index = meta_int(meta, "first_index")
        offset = meta_int(meta, "offset")
        offset_term = meta_int(meta, "offset_term")
        ref = ref_from_meta(meta.get("snapshot"))
        commit = meta_int(meta, "commit")
        if first_index < offset + 1:
            raise FrameError(f"first index {first_index} at or below the compaction point {offset}")
    except FrameError as exc:
        if exc.torn and last_segment:
            return 0, idx, exc.reason
        raise StorageCorruption(path, 0, exc.reason) from None
    if idx is None:
        idx = LogIndex(offset, offset_term, base=first_index - 1)
        idx.snapshot = ref
        idx.commit = commit
    elif (first_index, offset, offset_term, ref) != (idx.last + 1, idx.offset, idx.offset_term, idx.snapshot):
        raise StorageCorruption(
            path,
            0,
            f"index continuity broken: segment opens at index {first_index} (compacted to {offset}, "
            f"snapshot {ref}) but the previous segment ends at {idx.last} (compacted to {idx.offset}, "
            f"snapshot {idx.snapshot})",
        )
    pos = HEADER_SIZE + n
    # -- the records --------------------------------------------------------
    unpack_header = HEADER.unpack_from
    unpack_entry = ENTRY_HEAD.unpack_from
    terms, segs, poss, lens = idx.terms, idx.segs, idx.poss, idx.lens
    last = idx.last
    while pos < end:
        # Fast path for entries; everything else (and every failure) goes
        # through the checked path below.
        if end - pos >= HEADER_SIZE:
            n, rtype, hcrc, pcrc = unpack_header(mv, pos)
            start = pos + HEADER_SIZE
            if (
                rtype == _REC_ENTRY
                and ENTRY_HEAD_SIZE <= n <= MAX_PAYLOAD
                and start + n <= end
                and crc32(mv[pos : pos + 8]) == hcrc
                and crc32(mv[start : start + n]) == pcrc
            ):
                index, term, etype = unpack_entry(mv, start)
                if index != last + 1:
                    raise StorageCorruption(path, pos, f"index continuity broken: entry {index} follows entry {last}")
                if etype > _MAX_ENTRY_TYPE:
                    raise StorageCorruption(path, pos, f"entry {index} has unknown entry type {etype}")
                terms.append(term)
                segs.append(seq)
                poss.append(pos)
                lens.append(HEADER_SIZE + n)
                last = index
                pos = start + n
                continue
        try:
            rtype, n, pcrc = parse_header(mv, pos, end)
            start = pos + HEADER_SIZE
            if crc32(mv[start : start + n]) != pcrc:
                raise FrameError("record payload checksum mismatch", torn=_zero_filled_tail(mv, start + n, end))
            if rtype == RecordType.ENTRY:
                raise FrameError("malformed entry record")
            if rtype == RecordType.SEGMENT:
                raise FrameError("a SEGMENT record in the middle of a segment")
            meta = decode_meta(mv[start : start + n])
            _check_mac(meta, cipher)
            if rtype == RecordType.TRUNCATE:
                idx.truncate(meta_int(meta, "index"))
            elif rtype == RecordType.COMPACT:
                idx.compact(meta_int(meta, "index"), meta_int(meta, "term"))
            elif rtype == RecordType.SNAPSHOT:
                idx.snapshot = ref_from_meta(meta.get("snapshot"))
            elif rtype == RecordType.COMMIT:
                idx.commit = meta_int(meta, "commit")
            elif rtype == RecordType.RESET:
                ref = ref_from_meta(meta.get("snapshot"))
                if ref is None:
                    raise FrameError("RESET without a snapshot")
                idx.reset(ref.index, ref.term)
                idx.snapshot = ref
        except FrameError as exc:
            if exc.torn and last_segment:
                return pos, idx, exc.reason
            raise StorageCorruption(path, pos, exc.reason) from None
        last = idx.last
        pos = start + n
    return pos, idx, None


def _check_key(path: Path, meta: dict[str, Any], cipher: RecordCipher | None) -> None:
    """The SEGMENT record says which key (if any) the store is written with."""
    from mesh.storage.cipher import KeyMismatch, key_mismatch_reason

    why = key_mismatch_reason(meta.get("enc"), cipher)
    if why is not None:
        raise KeyMismatch(f"{path}: {why}")
    _check_mac(meta, cipher)


def _check_mac(meta: dict[str, Any], cipher: RecordCipher | None) -> None:
    if cipher is None:
        return
    from mesh.storage.cipher import AuthFailed

    try:
        cipher.check_meta(meta)
    except AuthFailed as exc:
        raise FrameError(str(exc)) from None


def _zero_filled_tail(mv: memoryview, record_end: int, end: int) -> bool:
    """A record whose payload fails its checksum is a torn write, not damage,
    when it ends in zero bytes and only zero bytes follow it to the end of
    the file: after a power loss, pages of the last batch that never reached
    the disk read back as zeros (etcd's WAL treats them the same way). A
    flipped byte leaves no such zero run and stays corruption."""
    zero_run = 8
    return record_end - zero_run >= 0 and not any(bytes(mv[record_end - zero_run : end]))
