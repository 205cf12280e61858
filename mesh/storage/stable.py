"""Small files replaced atomically, and the hard state file.

`write_atomic` writes a temporary file next to the target, fsyncs it, renames
it over the target and fsyncs the directory, so a crash leaves either the old
file or the new one, never a mix. Leftover temporaries (`*.tmp`) are removed
by the store when it opens.

The hard state file is ``MAGIC | u32 length | u32 crc32 | orjson payload``.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import orjson

from mesh.raft.errors import MessageDecodeError
from mesh.raft.messages import HardState
from mesh.storage.errors import StorageCorruption

TMP_SUFFIX = ".tmp"
HARD_STATE_FILE = "hardstate"
_HS_MAGIC = b"HMHARDS1"
_HS_HEAD = struct.Struct("<II")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Replace `path` by `data` atomically (temp file, fsync, rename, fsync dir)."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def encode_hard_state(hs: HardState) -> bytes:
    payload = orjson.dumps(hs.to_dict())
    return _HS_MAGIC + _HS_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def decode_hard_state(data: bytes, path: Path) -> HardState:
    head = len(_HS_MAGIC) + _HS_HEAD.size
    if len(data) < head or data[: len(_HS_MAGIC)] != _HS_MAGIC:
        raise StorageCorruption(path, 0, "not a hard state file (bad magic or too short)")
    n, crc = _HS_HEAD.unpack_from(data, len(_HS_MAGIC))
    payload = data[head:]
    if len(payload) != n:
        raise StorageCorruption(path, len(_HS_MAGIC), f"payload is {len(payload)} bytes, header says {n}")
    if zlib.crc32(payload) != crc:
        raise StorageCorruption(path, head, "hard state checksum mismatch")
    try:
        return HardState.from_dict(orjson.loads(payload))
    except (orjson.JSONDecodeError, MessageDecodeError) as exc:
        raise StorageCorruption(path, head, f"hard state does not decode ({exc})") from exc


def load_hard_state(path: Path) -> HardState | None:
    """The hard state in `path`, or None if there is no such file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return decode_hard_state(data, path)


def save_hard_state(path: Path, hs: HardState, fsync: bool = True) -> None:
    write_atomic(path, encode_hard_state(hs), fsync)
