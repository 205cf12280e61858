"""Record framing of the write-ahead log: pure encode/decode, no IO.

Every record is a 16-byte header followed by its payload::

    length  u32   payload length in bytes
    type    u8    record type (`RecordType`)
    (pad)   3     zero
    hcrc    u32   CRC-32 of length, type and pad (so a damaged length is
                  told apart from a write that was cut short)
    pcrc    u32   CRC-32 of the payload

Entry payloads are a fixed binary prefix (index u64, term u64, entry type u8)
followed by the entry's opaque bytes: entry data is opaque, and carrying it in
JSON would mean base64 (a third larger, and every record of a million-entry
log decoded at start-up). Every other record's payload is an orjson object.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from mesh.raft.messages import Entry, EntryType

if TYPE_CHECKING:
    from mesh.storage.cipher import RecordCipher

HEADER = struct.Struct("<IB3xII")
HEADER_SIZE = HEADER.size  # 16
_LENTYPE = struct.Struct("<IB3x")
ENTRY_HEAD = struct.Struct("<QQB")
ENTRY_HEAD_SIZE = ENTRY_HEAD.size  # 17
# A record larger than this is certainly a damaged length field.
MAX_PAYLOAD = 1 << 30

crc32 = zlib.crc32


class RecordType(enum.IntEnum):
    SEGMENT = 1  # first record of every segment: the log state when it was opened
    ENTRY = 2  # one log entry (binary payload)
    TRUNCATE = 3  # drop entries >= index (a follower replacing a divergent suffix)
    COMPACT = 4  # drop entries <= index (covered by the snapshot)
    SNAPSHOT = 5  # a snapshot was created (the log is unchanged)
    RESET = 6  # a snapshot was installed: the whole log is replaced by it
    COMMIT = 7  # the commit index advanced (term and vote unchanged): no hard-state file write


_TYPES = frozenset(int(t) for t in RecordType)


class FrameError(ValueError):
    """A frame fails validation. `torn` says it looks like a write cut short
    (only acceptable at the very end of the log)."""

    def __init__(self, reason: str, torn: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.torn = torn


def frame(rtype: int, payload: bytes) -> bytes:
    n = len(payload)
    return HEADER.pack(n, rtype, crc32(_LENTYPE.pack(n, rtype)), crc32(payload)) + payload


def encode_entry(e: Entry, cipher: RecordCipher | None = None) -> bytes:
    head = ENTRY_HEAD.pack(e.index, e.term, e.type)
    return frame(RecordType.ENTRY, head + (e.data if cipher is None else cipher.seal(e.data, head)))


def encode_meta(rtype: RecordType, fields: dict[str, Any], cipher: RecordCipher | None = None) -> bytes:
    return frame(rtype, orjson.dumps(fields if cipher is None else cipher.sign_meta(fields)))


def parse_header(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int, int]:
    """Validate the header at `pos` of `buf[:end]`; return (type, payload
    length, payload crc). Raises `FrameError` (torn when the header itself is
    cut short, or is all zero bytes up to the end)."""
    if end - pos < HEADER_SIZE:
        raise FrameError(f"record header cut short ({end - pos} of {HEADER_SIZE} bytes)", torn=True)
    n, rtype, hcrc, pcrc = HEADER.unpack_from(buf, pos)
    # Over the bytes as stored (pad included), not as re-packed.
    if crc32(buf[pos : pos + _LENTYPE.size]) != hcrc:
        raise FrameError("record header checksum mismatch", torn=_all_zero(buf, pos, end))
    if rtype not in _TYPES:
        raise FrameError(f"unknown record type {rtype}")
    if n > MAX_PAYLOAD:
        raise FrameError(f"record length {n} out of range")
    if pos + HEADER_SIZE + n > end:
        raise FrameError(f"record of {n} bytes cut short at the end of the file", torn=True)
    return rtype, n, pcrc


def _all_zero(buf: bytes | memoryview, pos: int, end: int) -> bool:
    return not any(bytes(buf[pos:end]))


def check_payload(buf: bytes | memoryview, start: int, n: int, pcrc: int) -> None:
    if crc32(buf[start : start + n]) != pcrc:
        raise FrameError("record payload checksum mismatch")


@dataclass(slots=True, frozen=True)
class Record:
    type: RecordType
    offset: int  # where the record starts in its file
    size: int  # header + payload
    payload: bytes


def decode_record(buf: bytes | memoryview, pos: int, end: int | None = None) -> Record:
    """Decode and fully verify the record at `pos`."""
    if end is None:
        end = len(buf)
    rtype, n, pcrc = parse_header(buf, pos, end)
    start = pos + HEADER_SIZE
    check_payload(buf, start, n, pcrc)
    return Record(RecordType(rtype), pos, HEADER_SIZE + n, bytes(buf[start : start + n]))


def decode_entry_payload(payload: bytes | memoryview, cipher: RecordCipher | None = None) -> Entry:
    if len(payload) < ENTRY_HEAD_SIZE:
        raise FrameError(f"entry record of {len(payload)} bytes is shorter than its fixed part")
    index, term, etype = ENTRY_HEAD.unpack_from(payload, 0)
    try:
        entry_type = EntryType(etype)
    except ValueError:
        raise FrameError(f"entry record with unknown entry type {etype}") from None
    if cipher is None:
        return Entry(index, term, bytes(payload[ENTRY_HEAD_SIZE:]), entry_type)
    from mesh.storage.cipher import AuthFailed

    try:
        data = cipher.open(payload[ENTRY_HEAD_SIZE:], bytes(payload[:ENTRY_HEAD_SIZE]))
    except AuthFailed as exc:
        raise FrameError(f"entry {index} {exc}") from None
    return Entry(index, term, data, entry_type)


def decode_meta(payload: bytes | memoryview) -> dict[str, Any]:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"record payload is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise FrameError("record payload is not a JSON object")
    return value


def meta_int(d: dict[str, Any], key: str) -> int:
    value = d.get(key)
    if type(value) is not int or value < 0:
        raise FrameError(f"record field {key!r} must be a non-negative integer, got {value!r}")
    return value
