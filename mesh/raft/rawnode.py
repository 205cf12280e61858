"""The IO contract around the core, after etcd raft's RawNode.

    rd = node.ready()
    1. persist rd.snapshot, rd.entries (truncating any conflicting suffix) and
       rd.hard_state, and make them durable if rd.must_sync;
    2. send rd.messages (only now: they may promise what step 1 stored);
    3. install rd.snapshot into the state machine, apply rd.committed_entries
       in order, serve rd.read_states once applied reaches their index;
    4. node.advance(rd).

Exactly one Ready is outstanding at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.raft.core import Config, LostLog, Raft, ReadState, Role
from mesh.raft.errors import RaftUsageError
from mesh.raft.messages import ConfChange, ConfState, Entry, HardState, Message, MessageType, NodeId, Snapshot
from mesh.raft.storage import LogStorage


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

    def report_snapshot(self, node: NodeId, ok: bool) -> None:
        self.raft.report_snapshot(node, ok)

    def report_snapshot_progress(self, node: NodeId) -> None:
        self.raft.report_snapshot_progress(node)

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
