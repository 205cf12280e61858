"""hana mesh's Raft consensus core: pure, sans-IO, deterministic.

No networking, files, clocks, threads or global randomness in here: the
driver feeds `tick()`, `step(message)` and proposals into a `RawNode`, and
carries out each `Ready` (persist, send, apply) before `advance()`. See
`rawnode.py` for the contract and `core.py` for the protocol.
"""

from mesh.raft.core import Config, LostLog, Raft, ReadState, Role
from mesh.raft.errors import (
    CompactedError,
    MessageDecodeError,
    ProposalDropped,
    RaftError,
    RaftUsageError,
    SnapshotTemporarilyUnavailable,
    StorageError,
    UnavailableError,
)
from mesh.raft.messages import (
    PROTOCOL_VERSION,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    Snapshot,
    SnapshotMeta,
    bootstrap_entries,
)
from mesh.raft.rawnode import PeerProgress, RawNode, Ready, SoftState
from mesh.raft.storage import LogStorage

__all__ = [
    "PROTOCOL_VERSION",
    "CompactedError",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "LogStorage",
    "LostLog",
    "Message",
    "MessageDecodeError",
    "MessageType",
    "NodeId",
    "PeerProgress",
    "ProposalDropped",
    "Raft",
    "RaftError",
    "RaftUsageError",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SnapshotTemporarilyUnavailable",
    "SoftState",
    "StorageError",
    "UnavailableError",
    "bootstrap_entries",
]
