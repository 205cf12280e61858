"""An in-memory cluster of RawNodes over MemoryStorage, driven by hand.

No simulator and no hidden randomness: every node gets a `random.Random`
seeded from its id and restart count, messages sit in one FIFO until a test
delivers or drops them, and the driver follows the Ready contract of
`mesh/raft/rawnode.py` exactly (persist, sync if asked, send, apply,
advance). Both the transcript harness and the property tests use it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.raft import (
    Config,
    ConfState,
    Entry,
    EntryType,
    Message,
    RawNode,
    Ready,
    bootstrap_entries,
)
from mesh.storage.memory import MemoryStorage


@dataclass
class NodeOptions:
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 256
    max_msg_bytes: int = 1 << 20
    learner_feed_ticks: int = 0


@dataclass
class Node:
    id: str
    storage: MemoryStorage
    opts: NodeOptions
    raw: RawNode
    restarts: int = 0
    # The toy state machine: the data of every applied normal entry, by index.
    applied: dict[int, bytes] = field(default_factory=dict)
    applied_index: int = 0
    # A Ready persisted but not yet synced (and so not yet sent, applied or
    # advanced), when the driver stopped half way.
    outstanding: Ready | None = None
    down: bool = False


def make_rng(node_id: str, restarts: int) -> random.Random:
    return random.Random(f"node-{node_id}-{restarts}")


def sm_snapshot(applied: dict[int, bytes], upto: int) -> bytes:
    items = {str(i): d.decode("utf-8", "replace") for i, d in applied.items() if i <= upto}
    return json.dumps(items, sort_keys=True).encode()


def sm_restore(data: bytes) -> dict[int, bytes]:
    if not data:
        return {}
    return {int(k): v.encode() for k, v in json.loads(data).items()}


@dataclass
class Handled:
    """What one processed Ready did (for the transcript and the checkers)."""

    node: str
    ready: Ready
    applied: list[Entry]
    # Position in ready.messages -> why the network lost that message.
    dropped: dict[int, str] = field(default_factory=dict)


class Cluster:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        # Messages in flight, oldest first.
        self.inflight: list[Message] = []
        # Node id -> partition group; nodes in different groups cannot talk.
        self.group: dict[str, int] = {}

    # -- membership of the test cluster ------------------------------------

    def add_node(self, nid: str, opts: NodeOptions, conf: ConfState | None) -> Node:
        """A node whose store is bootstrapped with `conf`, or empty (a member
        to be added later) when `conf` is None."""
        storage = MemoryStorage()
        if conf is not None:
            entries, hs = bootstrap_entries(conf)
            storage.append(entries)
            storage.set_hard_state(hs)
            storage.sync()
        node = Node(nid, storage, opts, self._rawnode(nid, opts, storage, 0))
        self.nodes[nid] = node
        self.group[nid] = 0
        return node

    @staticmethod
    def _rawnode(nid: str, opts: NodeOptions, storage: MemoryStorage, restarts: int) -> RawNode:
        cfg = Config(
            id=nid,
            rng=make_rng(nid, restarts),
            election_tick=opts.election_tick,
            heartbeat_tick=opts.heartbeat_tick,
            pre_vote=opts.pre_vote,
            check_quorum=opts.check_quorum,
            max_inflight=opts.max_inflight,
            max_msg_bytes=opts.max_msg_bytes,
            learner_feed_ticks=opts.learner_feed_ticks,
        )
        return RawNode(cfg, storage)

    def crash(self, nid: str) -> None:
        node = self.nodes[nid]
        node.down = True
        node.outstanding = None

    def restart(self, nid: str) -> None:
        node = self.nodes[nid]
        storage = node.storage.crash_image()
        node.storage = storage
        node.restarts += 1
        node.raw = self._rawnode(nid, node.opts, storage, node.restarts)
        snap = storage.snapshot()
        node.applied = sm_restore(snap.data)
        node.applied_index = snap.meta.index
        node.outstanding = None
        node.down = False

    def wipe(self, nid: str, conf: ConfState | None) -> None:
        """Restart `nid` with a fresh store, as a node whose data directory
        was deleted: bootstrapped with `conf` (as --peers does) or empty."""
        node = self.nodes[nid]
        storage = MemoryStorage()
        if conf is not None:
            entries, hs = bootstrap_entries(conf)
            storage.append(entries)
            storage.set_hard_state(hs)
            storage.sync()
        node.storage = storage
        node.restarts += 1
        node.raw = self._rawnode(nid, node.opts, storage, node.restarts)
        node.applied = {}
        node.applied_index = 0
        node.outstanding = None
        node.down = False
        if conf is not None:
            # Apply the bootstrap entry, as add_node's callers do.
            while self.has_ready(nid):
                self.handle_ready(nid)

    def up(self) -> list[Node]:
        return [n for _, n in sorted(self.nodes.items()) if not n.down]

    # -- the Ready contract --------------------------------------------------

    def persist(self, nid: str) -> Ready:
        """Step 1 of the contract: write what the Ready names, not yet synced."""
        node = self.nodes[nid]
        rd = node.raw.ready()
        if rd.snapshot is not None:
            node.storage.apply_snapshot(rd.snapshot)
        if rd.entries:
            node.storage.append(rd.entries)
        if rd.hard_state is not None:
            node.storage.set_hard_state(rd.hard_state)
        node.outstanding = rd
        return rd

    def finish(self, nid: str) -> Handled:
        """Steps 2-4: sync if asked, send, apply, advance."""
        node = self.nodes[nid]
        rd = node.outstanding
        assert rd is not None, f"{nid} has no outstanding Ready"
        if rd.must_sync:
            node.storage.sync()
        dropped: dict[int, str] = {}
        for i, m in enumerate(rd.messages):
            why = self.deliverable(m)
            if why:
                dropped[i] = why
            else:
                self.inflight.append(m)
        applied: list[Entry] = []
        if rd.snapshot is not None and rd.snapshot.meta.index > node.applied_index:
            node.applied = sm_restore(rd.snapshot.data)
            node.applied_index = rd.snapshot.meta.index
        for e in rd.committed_entries:
            if e.index <= node.applied_index:
                continue
            if e.type == EntryType.NORMAL and e.data:
                node.applied[e.index] = e.data
            node.applied_index = e.index
            applied.append(e)
        node.raw.advance(rd)
        node.outstanding = None
        return Handled(nid, rd, applied, dropped)

    def handle_ready(self, nid: str) -> Handled:
        self.persist(nid)
        return self.finish(nid)

    def has_ready(self, nid: str) -> bool:
        node = self.nodes[nid]
        return not node.down and node.outstanding is None and node.raw.has_ready()

    # -- the network ---------------------------------------------------------

    def connected(self, a: str, b: str) -> bool:
        return self.group.get(a, 0) == self.group.get(b, 0)

    def deliverable(self, m: Message) -> str:
        """'' if `m` can be delivered now, else why it is lost."""
        to = self.nodes.get(m.to)
        if to is None:
            return "unknown node"
        if to.down:
            return "node down"
        if not self.connected(m.frm, m.to):
            return "partition"
        return ""

    def take(self, to: str) -> list[Message]:
        out = [m for m in self.inflight if m.to == to]
        self.inflight = [m for m in self.inflight if m.to != to]
        return out

    def deliver(self, m: Message) -> str:
        """Step `m` into its node; returns why it was dropped, or ''."""
        why = self.deliverable(m)
        if not why:
            self.nodes[m.to].raw.step(m)
        return why

    def settle(
        self,
        record: list[Message] | None = None,
        drop: Callable[[Message], bool] | None = None,
        limit: int = 2000,
    ) -> int:
        """Handle Readies and deliver every message in flight until nothing
        moves; `record` gets every message sent (dropped ones too), `drop`
        picks messages lost on the way. Returns how many were delivered;
        fails if it never settles (a message storm)."""
        delivered = 0
        for _ in range(limit):
            moved = False
            for nid in sorted(self.nodes):
                if self.has_ready(nid):
                    self.handle_ready(nid)
                    moved = True
            msgs, self.inflight = self.inflight, []
            for m in msgs:
                moved = True
                if record is not None:
                    record.append(m)
                if drop is not None and drop(m):
                    continue
                self.deliver(m)
                delivered += 1
            if not moved:
                return delivered
        raise AssertionError(f"still moving after {limit} rounds ({delivered} messages): a message storm")

    def isolate(self, nid: str) -> None:
        self.group[nid] = max(self.group.values(), default=0) + 1

    def partition(self, groups: list[list[str]]) -> None:
        for i, g in enumerate(groups):
            for nid in g:
                self.group[nid] = i + 1

    def heal(self) -> None:
        for nid in self.group:
            self.group[nid] = 0

    # -- views ---------------------------------------------------------------

    def log_entries(self, nid: str) -> list[Entry]:
        """The node's whole log as it sees it (stable + unstable)."""
        return self.nodes[nid].raw.raft.log.all_entries()
