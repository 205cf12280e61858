"""The IO contract around the core, after etcd raft's RawNode.

    rd = node.ready()
    1. persist rd.snapshot, rd.entries (truncating any conflicting suffix) and
       rd.hard_state, and make them durable if rd.must_sync;
    2. send rd.messages (only now: they may promise what step 1 stored);
    3. install rd.snapshot into the state machine, apply rd.committed_entries
       in order, serve rd.read_states once applied reaches their index;
    4. node.advance(rd).

Exactly one Ready is outstanding at a time.

`RawNode` is the only way into the core for a driver: inputs (tick, step,
propose, ...), the Ready contract, and read-only accessors of its status
(`role`, `term`, `lead`, `committed`, `progress()`, ...). Two more outputs
exist for a driver that keeps heartbeats off the disk's path:
`take_urgent()` hands over the heartbeats and heartbeat answers the core
made since the last Ready (they promise nothing about unpersisted state, so
they may leave at once, see DESIGN "Lessons from the field"); what is left
comes with the next Ready. `inject_bug()` deliberately breaks one node, for
proving that the checkers catch it; nothing else ever changes the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.raft.core import Config, LostLog, Raft, ReadState, Role
from mesh.raft.errors import RaftUsageError
from mesh.raft.messages import ConfChange, ConfState, Entry, HardState, Message, MessageType, NodeId, Snapshot
from mesh.raft.progress import ProgressTracker
from mesh.raft.storage import LogStorage

# Messages that may leave before the Ready that holds them is persisted.
URGENT = frozenset({MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESP})

# Bugs `RawNode.inject_bug` knows (see there).
INJECTABLE = ("ack_unreplicated",)


@dataclass(slots=True, frozen=True)
class SoftState:
    """Volatile state worth reporting when it changes (not persisted)."""

    leader: NodeId | None
    role: Role


@dataclass(slots=True)
class Ready:
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    soft_state: SoftState | None = None
    # True when entries or term/vote changed: the write must reach the disk
    # before messages go out. A commit-index-only change may be written lazily.
    must_sync: bool = False
    # Configuration after this Ready (reported when it changed).
    conf_state: ConfState | None = None
    # Followers the leader found to have lost their log (report loudly).
    lost_logs: list[LostLog] = field(default_factory=list)

    def split_messages(self) -> tuple[list[Message], list[Message]]:
        """(early, late): a leader's appends, heartbeats and snapshots promise
        nothing about this Ready's writes and may be sent before they are
        durable; everything else (acknowledgements, votes) only after.
        A driver that sends all of `messages` after persisting is also right,
        just slower."""
        early: list[Message] = []
        late: list[Message] = []
        for m in self.messages:
            (early if m.type in _EARLY else late).append(m)
        return early, late


_EARLY = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})


@dataclass(slots=True, frozen=True)
class PeerProgress:
    """What a leader knows of one member (see `RawNode.progress`)."""

    match: int
    recent_active: bool
    learner: bool


class _CommitOnAnyCopy(ProgressTracker):
    """The injected bug "ack_unreplicated": the committed index is the
    largest index any voter stores (the leader's own copy, once durable),
    instead of a majority's."""

    __slots__ = ()

    def committed_index(self) -> int:
        return max((self.progress[v].match for v in self.voters), default=0)


class RawNode:
    def __init__(self, config: Config, storage: LogStorage) -> None:
        self.raft = Raft(config, storage)
        self._prev_hard = self.raft.hard_state()
        self._prev_soft = self._soft()
        self._prev_conf = self.raft.conf_state()
        self._outstanding = False

    def _soft(self) -> SoftState:
        return SoftState(self.raft.lead, self.raft.role)

    # Inputs are the core's, re-exported for the driver.
    def tick(self) -> None:
        self.raft.tick()

    def step(self, m: Message) -> None:
        self.raft.step(m)

    def quiet_ticks(self) -> int:
        """Raft.quiet_ticks: the next ticks that only count."""
        return self.raft.quiet_ticks()

    def campaign(self) -> None:
        self.raft.campaign()

    def propose(self, data: bytes) -> int:
        return self.raft.propose(data)

    def propose_batch(self, datas: list[bytes]) -> list[int]:
        return self.raft.propose_batch(datas)

    def propose_conf_change(self, cc: ConfChange) -> int:
        return self.raft.propose_conf_change(cc)

    def read_index(self, context: bytes) -> None:
        self.raft.read_index(context)

    def transfer_leader(self, to: NodeId) -> None:
        self.raft.transfer_leader(to)

    def step_down(self) -> None:
        self.raft.step_down()

    def report_unreachable(self, node: NodeId) -> None:
        self.raft.report_unreachable(node)

    def leader_connection_lost(self, node: NodeId) -> bool:
        """`node` closed its connections to this node (see the core): True if
        it was our leader and this node now campaigns (or takes its turn)."""
        return self.raft.leader_connection_lost(node)

    def hurry(self, node: NodeId, index: int) -> None:
        """Learner `node` waits for `index` (Config.learner_feed_ticks)."""
        self.raft.hurry(node, index)

    def report_snapshot(self, node: NodeId, ok: bool) -> None:
        self.raft.report_snapshot(node, ok)

    def report_snapshot_progress(self, node: NodeId) -> None:
        self.raft.report_snapshot_progress(node)

    def take_urgent(self) -> list[Message]:
        """Heartbeats and heartbeat answers made since the last Ready, taken
        out of it: send them now (they need nothing from the disk). Other
        messages stay for the Ready."""
        msgs = self.raft.msgs
        if not msgs:
            return []
        urgent = [m for m in msgs if m.type in URGENT]
        if urgent:
            self.raft.msgs = [m for m in msgs if m.type not in URGENT]
        return urgent

    # -- status (read only) ----------------------------------------------------

    @property
    def id(self) -> NodeId:
        return self.raft.id

    @property
    def role(self) -> Role:
        return self.raft.role

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def lead(self) -> NodeId | None:
        """The leader this node follows (itself when leading), or None."""
        return self.raft.lead

    @property
    def committed(self) -> int:
        return self.raft.log.committed

    @property
    def campaign_cause(self) -> str:
        """Why this node's last campaign started: "election_timeout",
        "connection_lost" (its leader's connection closed), "transfer" or
        "campaign" (asked); "" if it never campaigned."""
        return self.raft.campaign_cause

    @property
    def lost_leader_wait(self) -> int:
        """Ticks before this follower takes its turn to campaign after its
        leader's connection closed (0: none pending)."""
        return self.raft.lost_leader_wait

    @property
    def connection_lost_campaigns(self) -> int:
        """Campaigns started because the leader's connection closed."""
        return self.raft.connection_lost_campaigns

    @property
    def last_index(self) -> int:
        return self.raft.log.last_index()

    @property
    def last_term(self) -> int:
        return self.raft.log.last_term()

    def term_at(self, index: int) -> int:
        """The term of the entry at `index` in this node's log; 0 when it is
        not there (compacted into a snapshot, or beyond the last entry)."""
        return self.raft.log.zero_term_on_error(index)

    def is_learner(self) -> bool:
        return self.raft.is_learner()

    def is_member(self, node: NodeId) -> bool:
        """`node` is a voter or a learner of the configuration in effect."""
        return node in self.raft.tracker.progress

    def conf_state(self) -> ConfState:
        """The configuration in effect (membership changes take effect when
        committed)."""
        return self.raft.conf_state()

    def members(self) -> tuple[frozenset[NodeId], frozenset[NodeId]]:
        """(voters, learners) in effect: the same two objects until the
        configuration changes, so a caller may compare them by identity to
        notice a change cheaply."""
        tracker = self.raft.tracker
        return tracker.voters, tracker.learners

    def conf_change_pending(self) -> bool:
        """A membership change is proposed and not yet committed."""
        return self.raft.pending_conf_index > self.raft.log.committed

    def progress(self, any_role: bool = False) -> dict[NodeId, PeerProgress]:
        """On a leader, what it knows of every member (itself included);
        empty on any other role, unless `any_role` (then the figures of a
        non-leader are whatever its last term as leader left, or zeros)."""
        if self.raft.role != Role.LEADER and not any_role:
            return {}
        return {
            nid: PeerProgress(pr.match, pr.recent_active, pr.is_learner)
            for nid, pr in self.raft.tracker.progress.items()
        }

    def status(self) -> dict[str, object]:
        """Everything above as a document (for logs and failure reports)."""
        return self.raft.status()

    # -- deliberate bugs ---------------------------------------------------------

    def inject_bug(self, name: str) -> None:
        """Break this node on purpose (never in real use): `serve
        --inject-bug` and the simulator prove that their checkers catch it.
        Only this node changes; nothing is patched process-wide.
        "ack_unreplicated": as leader, count an entry committed once any
        voter stores it (its own durable copy), not a majority."""
        if name == "ack_unreplicated":
            self.raft.tracker.__class__ = _CommitOnAnyCopy
        else:
            raise ValueError(f"unknown bug {name!r} (known: {', '.join(INJECTABLE)})")

    def has_ready(self) -> bool:
        r = self.raft
        r.flush_proposals()
        return bool(
            r.msgs
            or r.read_states
            or r.lost_logs
            or r.log.unstable.entries
            or r.log.unstable.snapshot is not None
            or r.log.has_next_committed()
            or r.hard_state() != self._prev_hard
            or self._soft() != self._prev_soft
        )

    def ready(self) -> Ready:
        if self._outstanding:
            raise RaftUsageError("ready() called again before advance()")
        r = self.raft
        r.flush_proposals()
        rd = Ready(
            entries=r.log.unstable_entries(),
            snapshot=r.log.unstable.snapshot,
            committed_entries=r.log.next_committed(),
            messages=r.msgs,
            read_states=r.read_states,
            lost_logs=r.lost_logs,
        )
        r.msgs = []
        r.read_states = []
        r.lost_logs = []
        hs = r.hard_state()
        if hs != self._prev_hard:
            rd.hard_state = hs
            rd.must_sync = hs.term != self._prev_hard.term or hs.vote != self._prev_hard.vote
        if rd.entries or rd.snapshot is not None:
            rd.must_sync = True
        soft = self._soft()
        if soft != self._prev_soft:
            rd.soft_state = soft
        conf = r.conf_state()
        if conf != self._prev_conf:
            rd.conf_state = conf
        self._outstanding = True
        return rd

    def advance(self, rd: Ready) -> None:
        if not self._outstanding:
            raise RaftUsageError("advance() without an outstanding ready()")
        self._outstanding = False
        log = self.raft.log
        if rd.snapshot is not None:
            log.stable_snap_to(rd.snapshot.meta.index)
            if rd.snapshot.meta.index > log.applied:
                log.applied = rd.snapshot.meta.index
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
            self.raft.on_persisted(last.index, last.term)
        if rd.committed_entries:
            log.applied_to(rd.committed_entries[-1].index)
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.conf_state is not None:
            self._prev_conf = rd.conf_state
