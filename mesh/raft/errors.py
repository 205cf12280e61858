"""Errors of the consensus core.

Split as h11 splits them: `RaftUsageError` means the caller broke the
contract of the core (a bug in the code that drives it); `MessageDecodeError`
means a peer sent something that is not a valid message. `StorageError`s are
what a log store answers when asked for what it no longer (or does not yet)
hold; the core handles those itself.
"""

from __future__ import annotations


class RaftError(Exception):
    """Base of every error raised by `mesh.raft`."""


class RaftUsageError(RaftError):
    """The driver called the core in a way its contract forbids."""


class ProposalDropped(RaftError):
    """A proposal was not appended: this node is not the leader, a transfer
    is in progress, or a configuration change is already pending."""

    def __init__(self, reason: str, leader: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.leader = leader


class MessageDecodeError(RaftError, ValueError):
    """A message (or part of one) from the outside world is malformed."""


class StorageError(RaftError):
    """Base of the answers a log store gives for entries it cannot serve."""


class CompactedError(StorageError):
    """The requested index is at or below the snapshot: it was compacted."""


class UnavailableError(StorageError):
    """The requested index is above the last index held."""


class SnapshotTemporarilyUnavailable(StorageError):
    """The store is building a snapshot; ask again later."""
