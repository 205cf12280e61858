"""The synchronous glue between the consensus core, a log store and a state
machine: one `Replica` per node.

No asyncio, no clock, no sockets: the asyncio node and the deterministic
simulator drive the very same object. The driver feeds inputs (`tick`,
`step`, `propose`, `read_index`, ...) and, whenever `has_ready()`, carries
out the core's IO contract (see `mesh/raft/rawnode.py`) in three steps:

    rd = replica.ready()
    early = replica.persist(rd)   # write snapshot, entries, hard state (not
                                  # yet durable); send `early` now: a
                                  # leader's appends and heartbeats promise
                                  # nothing about this write
    if rd.must_sync:
        replica.sync()            # make it durable (a driver may do this in
                                  # a worker thread and step messages meanwhile)
    out = replica.finish(rd)      # send out.messages (acknowledgements and
                                  # votes: only now), apply, snapshot, advance

`finish` installs a snapshot into the state machine, applies committed
entries, resolves the proposals they answer and the reads they release,
takes a snapshot and compacts the log every `snapshot_every` entries, and
`advance()`s the core. `handle_ready()` does all three at once. The steps
are separate so that the simulator can crash a node between writing and
syncing, and the asyncio node can fsync off its event loop.

The proposal tracker. Every proposal made through this replica
(`propose`, `propose_conf_change`) and every entry another node appended on
this node's behalf (`expect`: a write forwarded to the controller, which
answered with its index and term) is tracked by index until it is decided:
a `ProposalOutcome` in the `ReadyOutcome` of the Ready that applies it (ok,
with the state machine's result, when the entry applied there has the
proposal's term), that truncates it (another entry took the index: not
applied), or that installs a snapshot covering it (outcome unknown). A
proposal may carry an opaque `token` (the caller's request), handed back
with its outcome. This is the node's only proposal tracker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from mesh.raft import (
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    LogStorage,
    Message,
    NodeId,
    Raft,
    RawNode,
    Ready,
    Snapshot,
    bootstrap_entries,
)
from mesh.raft.errors import MessageDecodeError


class StateMachine(Protocol):
    """What the application supplies (after hashicorp/raft's FSM).

    `apply` must be deterministic: the same data at the same index gives the
    same result and the same state on every node. `snapshot` serializes the
    whole state; `restore` replaces the state by a snapshot taken at `index`.
    """

    def apply(self, entry_index: int, data: bytes) -> object: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes, index: int) -> None: ...


class ConfChangeHook(Protocol):
    """Optional on a state machine: `apply_conf_change(index, cc)` is called
    for every committed membership entry, in log order with `apply` (so the
    state machine can audit membership changes). Must be deterministic and
    must not raise."""

    def __call__(self, index: int, cc: ConfChange) -> None: ...


class ReplicaStorage(LogStorage, Protocol):
    """The read side the core needs plus the write side the replica uses
    (`mesh.storage.memory.MemoryStorage` is one)."""

    def append(self, ents: list[Entry]) -> None: ...

    def set_hard_state(self, hs: HardState) -> None: ...

    def apply_snapshot(self, snap: Snapshot) -> None: ...

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot: ...

    def compact(self, index: int) -> None: ...

    def sync(self) -> None: ...


def bootstrap(storage: ReplicaStorage, conf: ConfState) -> None:
    """Write the initial configuration into the fresh store of an initial
    member and make it durable. Members added later start empty."""
    if storage.last_index() != 0:
        raise ValueError("bootstrap needs an empty store")
    entries, hs = bootstrap_entries(conf)
    storage.append(entries)
    storage.set_hard_state(hs)
    storage.sync()


@dataclass(slots=True, frozen=True)
class ProposalOutcome:
    """The answer to a proposal tracked by this replica.

    ok: the entry was committed and applied at `index` (with `result` from the
    state machine). Not ok: another entry took the index (`overwritten`: it
    was not applied), or, with `unknown`, the index was covered by an
    installed snapshot (or applied before its result could be collected), so
    the outcome is unknown. `token` is the one given when tracking began.
    """

    index: int
    term: int
    ok: bool
    result: object = None
    reason: str = ""
    token: object = None
    unknown: bool = False


@dataclass(slots=True, frozen=True)
class ReadOutcome:
    """A linearizable read that may be served now: the state machine has
    applied `applied`, at least the read index `index`."""

    context: bytes
    index: int
    applied: int


@dataclass(slots=True)
class ReadyOutcome:
    messages: list[Message] = field(default_factory=list)
    # Every entry applied in this round (normal, empty and conf changes).
    applied: list[Entry] = field(default_factory=list)
    proposals: list[ProposalOutcome] = field(default_factory=list)
    reads: list[ReadOutcome] = field(default_factory=list)
    # Set when a snapshot was installed into the state machine.
    installed: Snapshot | None = None
    # Set when this round took a local snapshot.
    snapshot_taken: Snapshot | None = None


class Replica:
    # Results of the last applied entries, for an entry whose index is
    # learned only after this node applied it (`expect`).
    RECENT = 4096

    def __init__(
        self,
        config: Config,
        storage: ReplicaStorage,
        state_machine: StateMachine,
        *,
        snapshot_every: int = 1000,
        keep_entries: int = 100,
    ) -> None:
        if snapshot_every <= 0 or keep_entries < 0:
            raise ValueError("snapshot_every must be positive and keep_entries not negative")
        self.id: NodeId = config.id
        self.storage = storage
        self.sm = state_machine
        self._on_conf_change: ConfChangeHook | None = getattr(state_machine, "apply_conf_change", None)
        self.snapshot_every = snapshot_every
        self.keep_entries = keep_entries
        snap = storage.snapshot()
        if not snap.is_empty():
            # The core replays the committed entries after it as Readies.
            state_machine.restore(snap.data, snap.meta.index)
        self.applied = snap.meta.index
        self.last_snapshot = snap.meta.index
        self.node = RawNode(config, storage)
        # index -> (term, token) of proposals awaiting their outcome.
        self._proposals: dict[int, tuple[int, object]] = {}
        # index -> (term, result) of the last RECENT applied normal entries.
        self._recent: dict[int, tuple[int, object]] = {}
        self._reads: list[tuple[bytes, int]] = []
        # Outcomes known outside of applying (reported with the next Ready).
        self._resolved: list[ProposalOutcome] = []
        # Messages of the Ready being handled that wait for its sync.
        self._held: list[Message] | None = None

    # -- inputs --------------------------------------------------------------

    @property
    def raft(self) -> Raft:
        """The core itself, for tests and the simulator's checkers to
        inspect. Drivers go through `node` (the RawNode) only."""
        return self.node.raft

    def tick(self) -> None:
        self.node.tick()

    def step(self, m: Message) -> None:
        self.node.step(m)

    def propose(self, data: bytes, token: object = None) -> int:
        """Propose `data`; returns its index. Raises ProposalDropped. The
        outcome comes later in a ReadyOutcome (with `token`)."""
        index = self.node.propose(data)
        self._track(index, self.node.term, token)
        return index

    def propose_conf_change(self, cc: ConfChange, token: object = None) -> int:
        index = self.node.propose_conf_change(cc)
        self._track(index, self.node.term, token)
        return index

    def expect(self, index: int, term: int, token: object = None) -> ProposalOutcome | None:
        """Track the entry the leader appended at `index` in `term` on this
        node's behalf (a forwarded write). Returns its outcome at once if
        this node already applied that index (the entry can arrive before
        the leader's answer), else None: the outcome comes with a Ready."""
        if index > self.applied:
            self._track(index, term, token)
            return None
        seen = self._recent.get(index)
        if seen is not None:
            applied_term, result = seen
            if applied_term == term:
                return ProposalOutcome(index, term, True, result, token=token)
            return ProposalOutcome(index, term, False, None, f"overwritten by term {applied_term}", token)
        applied_term = self.node.term_at(index)
        if applied_term and applied_term != term:
            return ProposalOutcome(index, term, False, None, f"overwritten by term {applied_term}", token)
        return ProposalOutcome(
            index, term, False, None, "applied before its result could be collected: outcome unknown", token, True
        )

    def _track(self, index: int, term: int, token: object) -> None:
        old = self._proposals.get(index)
        if old is not None:
            # This node lost and regained leadership (or a forwarded write
            # landed where an earlier one was): the older entry at the same
            # index was truncated away.
            self._resolved.append(
                ProposalOutcome(index, old[0], False, None, "overwritten by a later proposal", old[1])
            )
        self._proposals[index] = (term, token)

    def read_index(self, context: bytes) -> None:
        self.node.read_index(context)

    def transfer_leader(self, to: NodeId) -> None:
        self.node.transfer_leader(to)

    def has_ready(self) -> bool:
        # Reads wait for applies, which come with a Ready of their own.
        return bool(self._resolved) or self.node.has_ready()

    # -- the IO contract -------------------------------------------------------

    def handle_ready(self) -> ReadyOutcome:
        """The three steps at once; `out.messages` holds every message."""
        rd = self.ready()
        early = self.persist(rd)
        if rd.must_sync:
            self.sync()
        out = self.finish(rd)
        out.messages = early + out.messages
        return out

    def ready(self) -> Ready:
        return self.node.ready()

    def persist(self, rd: Ready) -> list[Message]:
        """Write what `rd` names (not yet durable). Returns the messages that
        may be sent now; `finish` returns the others."""
        if rd.snapshot is not None:
            self.storage.apply_snapshot(rd.snapshot)
        if rd.entries:
            self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        early, self._held = rd.split_messages()
        return early

    def sync(self) -> None:
        """Make what `persist` wrote durable (when the Ready's `must_sync`)."""
        self.storage.sync()

    def finish(self, rd: Ready) -> ReadyOutcome:
        """After `persist` (and `sync` if `rd.must_sync`): release the held
        messages, apply, resolve proposals and reads, snapshot, advance."""
        messages = self._held if self._held is not None else rd.messages
        self._held = None
        out = ReadyOutcome(messages=messages, proposals=self._resolved)
        self._resolved = []
        if rd.snapshot is not None and rd.snapshot.meta.index > self.applied:
            self._install(rd.snapshot, out)
        for e in rd.committed_entries:
            self._apply(e, out)
        self._reads.extend((rs.context, rs.index) for rs in rd.read_states)
        self._release_reads(out)
        self.node.advance(rd)
        self._maybe_snapshot(out)
        return out

    def _install(self, snap: Snapshot, out: ReadyOutcome) -> None:
        index = snap.meta.index
        self.sm.restore(snap.data, index)
        self.applied = index
        self.last_snapshot = index
        out.installed = snap
        for i in sorted(i for i in self._proposals if i <= index):
            term, token = self._proposals.pop(i)
            out.proposals.append(
                ProposalOutcome(i, term, False, None, "covered by a snapshot: outcome unknown", token, True)
            )

    def _apply(self, e: Entry, out: ReadyOutcome) -> None:
        if e.index <= self.applied:
            return
        result = None
        if e.type == EntryType.NORMAL and e.data:
            result = self.sm.apply(e.index, e.data)
        elif e.type == EntryType.CONF_CHANGE and self._on_conf_change is not None:
            try:
                cc = ConfChange.decode(e.data)
            except MessageDecodeError:
                # The core has already applied this entry (it decodes it
                # first), so this cannot happen; there is nothing to audit.
                cc = None
            if cc is not None:
                self._on_conf_change(e.index, cc)
        self.applied = e.index
        out.applied.append(e)
        if e.type == EntryType.NORMAL:
            recent = self._recent
            recent[e.index] = (e.term, result)
            if len(recent) > self.RECENT:
                del recent[next(iter(recent))]
        tracked = self._proposals.pop(e.index, None)
        if tracked is not None:
            term, token = tracked
            if term == e.term:
                out.proposals.append(ProposalOutcome(e.index, term, True, result, token=token))
            else:
                out.proposals.append(
                    ProposalOutcome(e.index, term, False, None, f"overwritten by term {e.term}", token)
                )

    def _release_reads(self, out: ReadyOutcome) -> None:
        keep: list[tuple[bytes, int]] = []
        for ctx, index in self._reads:
            if self.applied >= index:
                out.reads.append(ReadOutcome(ctx, index, self.applied))
            else:
                keep.append((ctx, index))
        self._reads = keep

    def _maybe_snapshot(self, out: ReadyOutcome) -> None:
        # raft.conf_state() is the configuration at the *commit* index, so a
        # snapshot is taken only when everything committed has been applied.
        if self.applied - self.last_snapshot < self.snapshot_every:
            return
        if self.node.committed != self.applied:
            return
        conf = self.node.conf_state()
        snap = self.storage.create_snapshot(self.applied, conf, self.sm.snapshot())
        self.last_snapshot = self.applied
        compact_to = self.applied - self.keep_entries
        if compact_to >= self.storage.first_index():
            self.storage.compact(compact_to)
        out.snapshot_taken = snap
