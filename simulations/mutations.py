"""Deliberately injected bugs, to prove the simulator catches them.

Each mutation monkeypatches a class of the core (or the replica) in this
process only; nothing is edited on disk. `apply_mutation(name)` returns a
function that undoes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mesh.raft.core import Raft
from mesh.raft.log import RaftLog
from mesh.replica import Replica


def _commit_old_term(self: RaftLog, index: int, term: int) -> bool:
    # Figure 8 bug: commit by counting replicas of an entry of an older term.
    if index > self.committed:
        self.commit_to(index)
        return True
    return False


_original_become_leader = Raft._become_leader


def _become_leader_without_noop(self: Raft) -> None:
    # The leader's no-op of its own term would mask the Figure 8 bug in this
    # core (every acknowledgement then covers a current-term entry), so the
    # mutation also drops it, as some implementations do. The core's own
    # _become_leader runs, with the append of the no-op suppressed.
    self._append_entries = lambda entries: None  # type: ignore[method-assign]
    try:
        _original_become_leader(self)
    finally:
        del self._append_entries


def _vote_ignores_log(self: RaftLog, last_index: int, term: int) -> bool:
    # Grant votes without the up-to-date check of Raft §5.4.1.
    return True


def _read_index_no_quorum(self: Raft, context: bytes, origin: str) -> None:
    # Answer ReadIndex at once, without the heartbeat round that proves the
    # leader is still the leader.
    self._answer_read(context, origin, self.log.committed)


def _skip_sync(self: Replica) -> None:
    # Send and acknowledge without making the writes durable first.
    return None


Patch = tuple[type, str, Callable[..., Any]]

# name -> (patches, what it breaks)
MUTATIONS: dict[str, tuple[list[Patch], str]] = {
    "commit_old_term": (
        [(RaftLog, "maybe_commit", _commit_old_term), (Raft, "_become_leader", _become_leader_without_noop)],
        "commit an entry of an older term by counting replicas (Raft Figure 8)",
    ),
    "vote_ignores_log": ([(RaftLog, "is_up_to_date", _vote_ignores_log)], "grant votes to candidates with stale logs"),
    "read_index_no_quorum": (
        [(Raft, "_leader_read_index", _read_index_no_quorum)],
        "answer ReadIndex without the heartbeat round",
    ),
    "skip_sync": ([(Replica, "sync", _skip_sync)], "send and acknowledge without fsync"),
}


def apply_mutation(name: str) -> Callable[[], None]:
    try:
        patches, _ = MUTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown mutation {name!r} (known: {', '.join(sorted(MUTATIONS))})") from None
    originals = [(cls, attr, cls.__dict__[attr]) for cls, attr, _ in patches]
    for cls, attr, replacement in patches:
        setattr(cls, attr, replacement)

    def undo() -> None:
        for cls, attr, original in originals:
            setattr(cls, attr, original)

    return undo
