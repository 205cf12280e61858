"""The leader's view of each follower (etcd raft's `tracker`), and quorum
arithmetic over the voters of a configuration."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable

from mesh.raft.messages import ConfState, NodeId


class ProgressState(enum.StrEnum):
    # Sending one append at a time until the follower's log position is found.
    PROBE = "probe"
    # Position known: stream appends, optimistically advancing `next`.
    REPLICATE = "replicate"
    # A snapshot is on its way; send nothing else until it lands or fails.
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "snapshot_rounds",
        "state",
    )

    def __init__(self, next_index: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        # Heard from since the last check-quorum round.
        self.recent_active = False
        self.probe_sent = False
        # Last index of each append in flight (replicate state), oldest first.
        self.inflights: deque[int] = deque()
        self.is_learner = is_learner
        # Check-quorum rounds spent waiting for the pending snapshot.
        self.snapshot_rounds = 0

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state}"
            f"{', learner' if self.is_learner else ''})"
        )

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_rounds = 0
        self.state = state
        self.inflights.clear()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """An append up to `index` was acknowledged. True if match moved."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def free_inflights_to(self, index: int) -> None:
        while self.inflights and self.inflights[0] <= index:
            self.inflights.popleft()

    def sent_entries(self, last_index: int | None, max_inflight: int) -> None:
        """Record an append just sent (last_index None: it carried no entries)."""
        if self.state == ProgressState.REPLICATE:
            if last_index is not None:
                self.next = last_index + 1
                self.inflights.append(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def reset_lost_log(self, hint: int) -> None:
        """The follower lost its log (its store was wiped: Raft assumes
        stable storage): forget what it acknowledged and probe again from
        where it says its log ends (append or snapshot)."""
        self._reset_state(ProgressState.PROBE)
        self.match = 0
        self.next = hint + 1

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append probing at `rejected`. Returns False
        if the rejection is stale (out of order), else moves `next` back."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        if match_hint < self.match and self.next == self.match + 1:
            # The probe at match was rejected, with a hint below match: a
            # reordered answer from before the follower caught up, or a
            # follower that lost its log. Probing match again at once would
            # get the same answer, in a loop for a lost log (finding 9's
            # message storm); wait for the next heartbeat, whose answer
            # tells a lost log apart (see Raft._handle_heartbeat).
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def is_paused(self, max_inflight: int) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflights) >= max_inflight
        return True


class ProgressTracker:
    """Progress of every member of the current configuration."""

    __slots__ = ("learners", "progress", "voters", "votes")

    def __init__(self) -> None:
        self.progress: dict[NodeId, Progress] = {}
        self.voters: frozenset[NodeId] = frozenset()
        self.learners: frozenset[NodeId] = frozenset()
        self.votes: dict[NodeId, bool] = {}

    def conf_state(self) -> ConfState:
        return ConfState.of(self.voters, self.learners)

    def apply_conf(self, conf: ConfState, next_index: int) -> None:
        """Switch to `conf`, keeping progress of members that stay."""
        old = self.progress
        self.voters = frozenset(conf.voters)
        self.learners = frozenset(conf.learners)
        self.progress = {}
        for nid in conf.voters + conf.learners:
            pr = old.get(nid)
            if pr is None:
                pr = Progress(next_index)
                # A new member starts as recently active so that adding it
                # does not make check-quorum depose the leader at once.
                pr.recent_active = True
            pr.is_learner = nid in self.learners
            self.progress[nid] = pr

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def committed_index(self) -> int:
        """The largest index stored on a majority of voters."""
        if not self.voters:
            return 0
        matches = sorted((self.progress[v].match for v in self.voters), reverse=True)
        return matches[self.quorum() - 1]

    def record_vote(self, nid: NodeId, granted: bool) -> None:
        self.votes.setdefault(nid, granted)

    def tally(self) -> tuple[int, int]:
        granted = sum(1 for v, g in self.votes.items() if g and v in self.voters)
        rejected = sum(1 for v, g in self.votes.items() if not g and v in self.voters)
        return granted, rejected

    def vote_result(self) -> str:
        """'won', 'lost' or 'pending' for the current election."""
        granted, rejected = self.tally()
        q = self.quorum()
        if granted >= q:
            return "won"
        if rejected > len(self.voters) - q:
            return "lost"
        return "pending"

    def quorum_active(self, self_id: NodeId) -> bool:
        active = sum(1 for v in self.voters if v == self_id or self.progress[v].recent_active)
        return active >= self.quorum()

    def has_quorum(self, ids: Iterable[NodeId]) -> bool:
        return len(self.voters.intersection(ids)) >= self.quorum()
