"""The outbox's file (issue 14): `<data-dir>/outbox.log`, CRC-framed records
(mesh/node/outbox.py has the format) appended and fsynced before a queued
write is answered 202, so that it survives kill -9.

Opening reads it frame by frame, bounded (the file is refused above
`MAX_FILE` bytes, every frame's length checked before its payload is read).
A torn tail (a last frame cut short, a wrong checksum at the very end, or a
zero-filled tail: what a crash mid-append leaves) is cut off and logged, as
the write-ahead log does; damage followed by valid frames is corruption in
the middle: the node refuses to start and says what to do. Compaction
writes a temporary file, fsyncs it, renames it over the old one and fsyncs
the directory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mesh.node.outbox import MAX_FRAME, OutboxCorrupt, decode_frames, encode_frame

log = logging.getLogger("mesh.node")

FILE_NAME = "outbox.log"
# The largest outbox file read: far more than 10,000 queued writes of 4 KiB.
MAX_FILE = 1 << 30


class FileOutboxStore:
    def __init__(self, data_dir: str | os.PathLike[str], node_id: str = "") -> None:
        self.dir = Path(data_dir)
        self.path = self.dir / FILE_NAME
        self.node_id = node_id
        self._fd: int | None = None

    def load(self) -> list[dict[str, Any]]:
        self.dir.mkdir(parents=True, exist_ok=True)
        records: list[dict[str, Any]] = []
        if self.path.exists():
            size = self.path.stat().st_size
            if size > MAX_FILE:
                raise OutboxCorrupt(
                    f"{self.path} is {size} bytes, over {MAX_FILE}: not an outbox this node wrote; "
                    "move it aside to start (its queued writes are then lost)"
                )
            with open(self.path, "rb") as f:
                buf = f.read(size + 1)
            try:
                decoded = decode_frames(buf[:size])
            except OutboxCorrupt as exc:
                raise OutboxCorrupt(
                    f"{self.path}: {exc}; the outbox is damaged before its end. Copy it for inspection and move "
                    "it aside to start (writes still queued in it are then lost)"
                ) from exc
            records = decoded.records
            if decoded.torn:
                log.warning(
                    "node=%s event=outbox_torn_tail path=%s cut_at=%d bytes_dropped=%d reason=%r",
                    self.node_id,
                    self.path,
                    decoded.good,
                    size - decoded.good,
                    decoded.torn,
                )
                with open(self.path, "r+b") as f:
                    f.truncate(decoded.good)
                    f.flush()
                    os.fsync(f.fileno())
        self._open()
        return records

    def _open(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            _fsync_dir(self.dir)

    def append(self, records: list[dict[str, Any]]) -> None:
        self._open()
        assert self._fd is not None
        data = b"".join(encode_frame(r) for r in records)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for r in records:
                f.write(encode_frame(r))
            f.flush()
            os.fsync(f.fileno())
        self.close()
        os.replace(tmp, self.path)
        _fsync_dir(self.dir)
        self._open()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["FILE_NAME", "MAX_FILE", "MAX_FRAME", "FileOutboxStore"]
