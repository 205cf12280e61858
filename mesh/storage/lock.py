"""Exclusive lock on a data directory (fcntl.flock on its LOCK file).

flock locks belong to the open file description, so a second `DirLock` on
the same directory fails even inside the same process; the kernel drops the
lock when the holder dies, so a crashed node never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mesh.storage.errors import StorageLocked

LOCK_FILE = "LOCK"


class DirLock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StorageLocked(
                f"data directory {directory} is locked by another store ({holder}); "
                "two processes must never open the same directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError as exc:
        return f"holder unknown: {exc}"
    return text or "holder unknown"
