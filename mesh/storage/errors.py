"""Errors of the durable store.

These are not `mesh.raft.errors.StorageError`s: those are answers the core
handles itself (compacted, unavailable). A `DiskStorageError` means the store
cannot be trusted or used and must reach an operator.
"""

from __future__ import annotations

from pathlib import Path


class DiskStorageError(Exception):
    """Base of every error the durable store raises about its files."""


class StorageCorruption(DiskStorageError):
    """A file of the data directory fails validation. The store refuses to
    open (or to serve the damaged record) rather than return wrong data."""

    def __init__(self, path: str | Path, offset: int | None, reason: str) -> None:
        self.path = str(path)
        self.offset = offset
        self.reason = reason
        where = self.path if offset is None else f"{self.path} at byte offset {offset}"
        super().__init__(f"storage corruption in {where}: {reason}")


class StorageLocked(DiskStorageError):
    """Another process (or another open store in this one) holds the data
    directory."""


class StorageFailed(DiskStorageError):
    """An earlier write or fsync failed; the on-disk state is unknown, so the
    store refuses further use. Reopen it to recover from what is on disk."""


class StorageClosed(DiskStorageError):
    """The store was closed."""
