"""The whole-node simulator's cluster: every node is the production node core
(`mesh.node.core.NodeCore`, with `HanaState` as its state machine) over the
in-memory transport twin (`mesh.transport.memory.MemoryTransport`, whose
link is the simulated network), a `MemoryStorage`, and a clock read from the
world (each node with its own wall-clock skew).

Each node is driven as the asyncio runtime drives it: ticks every
`tick_us` (with skew and jitter), peer payloads handed to the core as they
arrive, heartbeats sent the moment the core makes them, and a ready loop
whose fsync takes simulated time while the node keeps stepping messages and
ticking (a crash inside that window loses what was not synced, a torn
write). A paused node (SIGSTOP) does nothing: its inbound messages, client
requests and fsync completions wait for it. A node that goes down (crash,
stop, removal) closes its connections: each peer it can reach hears of it a
network delay later (`MemoryTransport.peer_closed`; a partition or a pause
closes nothing), so a follower replaces a crashed controller at once. A stopped node first hands
leadership over (SIGTERM), then goes down like a crashed one.

The Raft-level checkers of simulations/sim/checkers.py (election safety,
log matching, leader completeness) run after every Ready, plus
`AppliedAgreement` (every node applies the same entries in the same order).
Client histories are checked at the end (simulations/sim/clients.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.node.config import NodeConfig
from mesh.node.core import NodeCore
from mesh.node.outbox import MemoryOutboxStore
from mesh.raft import ConfChange, ConfChangeType, ConfState, EntryType, Message, ProposalDropped, Ready, Role
from mesh.replica import ReadyOutcome, Replica, bootstrap
from mesh.storage.memory import MemoryStorage
from mesh.transport.codec import LiveFrame, LiveInterest, PeerPayload
from mesh.transport.memory import MemoryTransport
from simulations.sim.checkers import ElectionSafety, LeaderCompleteness, LogMatching, Violation
from simulations.sim.network import Network
from simulations.sim.options import NodeOptions
from simulations.sim.world import MS, SECOND, World

UP, PAUSED, CRASHED, REMOVED = "up", "paused", "crashed", "removed"
WALL_EPOCH_MS = 1_700_000_000_000


class WorldClock:
    """A node's clock (mesh.clock.Clock) read from the simulated world: its
    monotonic clock starts anywhere, its wall clock runs `skew_ms` off."""

    __slots__ = ("offset", "skew_ms", "world")

    def __init__(self, world: World, offset: float, skew_ms: int) -> None:
        self.world = world
        self.offset = offset
        self.skew_ms = skew_ms

    def monotonic(self) -> float:
        return self.offset + self.world.now / SECOND

    def wall_ms(self) -> int:
        return WALL_EPOCH_MS + self.world.now // MS + self.skew_ms


class _Link:
    """The simulated network as a transport's link (its `carry`)."""

    __slots__ = ("send",)

    def __init__(self, network: Network) -> None:
        self.send = network.carry


class AppliedAgreement:
    """Every node applies one global sequence of entries, in order, without
    gaps (after a restart or a snapshot install it continues from there)."""

    def __init__(self) -> None:
        self.history: dict[int, tuple[int, EntryType, bytes]] = {}
        self.cursor: dict[str, int] = {}

    def on_start(self, node: str, index: int) -> None:
        self.cursor[node] = index

    def on_ready(self, node: str, out: ReadyOutcome) -> None:
        cur = self.cursor.get(node, 0)
        if out.installed is not None:
            cur = out.installed.meta.index
        for e in out.applied:
            if e.index != cur + 1:
                raise Violation("state machine safety", f"{node} applied {e.index} after {cur}: a gap")
            rec = (e.term, e.type, e.data)
            known = self.history.setdefault(e.index, rec)
            if known != rec:
                raise Violation(
                    "state machine safety", f"{node} applied {e.index}@{e.term} {e.data!r}, another node {known!r}"
                )
            cur = e.index
        self.cursor[node] = cur


@dataclass(slots=True)
class NodeCheckers:
    election: ElectionSafety = field(default_factory=ElectionSafety)
    log: LogMatching = field(default_factory=LogMatching)
    completeness: LeaderCompleteness = field(default_factory=LeaderCompleteness)
    applied: AppliedAgreement = field(default_factory=AppliedAgreement)


class WholeNode:
    __slots__ = (
        "clock",
        "core",
        "epoch",
        "http",
        "id",
        "inbox",
        "outbox_store",
        "ready_pending",
        "skew",
        "state",
        "storage",
        "synced",
        "transport",
    )

    def __init__(self, nid: str, skew: float, clock: WorldClock) -> None:
        self.id = nid
        self.state = CRASHED
        self.epoch = 0
        self.skew = skew
        self.clock = clock
        self.storage = MemoryStorage()
        # The offline outbox (issue 14): appended durably, so it survives crashes as it is.
        self.outbox_store = MemoryOutboxStore()
        self.core: NodeCore | None = None
        self.transport: MemoryTransport | None = None
        # What arrived while paused, replayed on resume.
        self.inbox: list[Callable[[], None]] = []
        self.ready_pending = False
        # A Ready whose fsync completed while the node was paused.
        self.synced: Ready | None = None
        # Client requests this node is working on: request id -> callback
        # telling the client its connection dropped.
        self.http: dict[int, Callable[[], None]] = {}

    @property
    def replica(self) -> Replica | None:
        return self.core.replica if self.core is not None else None


class NodeCluster:
    def __init__(self, world: World, opts: NodeOptions, checkers: NodeCheckers, inject_bug: str | None = None) -> None:
        self.world = world
        self.opts = opts
        self.checkers = checkers
        self.inject_bug = inject_bug
        self.faults: Counter[str] = Counter()
        # Followers that saw their controller's connections close and so
        # elected a successor at once (Raft's leader_connection_lost).
        self.controller_closed = 0
        self.nodes: dict[str, WholeNode] = {}
        self.network = Network(world, opts, self._deliver)
        self.network.on_snapshot_done = self._snapshot_done
        self.link = _Link(self.network)
        self.faults_active = True
        # Told when a node applied something (watch pumps) and when it goes
        # down (clients' connections drop).
        self.on_applied: Callable[[WholeNode], None] = lambda node: None
        self.on_down: Callable[[WholeNode], None] = lambda node: None
        initial = [f"n{i}" for i in range(1, opts.nodes + 1)]
        conf = ConfState.of(initial)
        self._next_id = opts.nodes + 1
        for nid in initial:
            node = self._new_node(nid)
            bootstrap(node.storage, conf)
            self._start(node)

    # -- lifecycle ----------------------------------------------------------

    def _new_node(self, nid: str) -> WholeNode:
        o = self.opts
        n = len(self.nodes)
        clock = WorldClock(self.world, 1000.0 * (n + 1), o.wall_skew_ms[n % len(o.wall_skew_ms)])
        node = WholeNode(nid, o.skew[n % len(o.skew)], clock)
        self.nodes[nid] = node
        return node

    def new_node_id(self) -> str:
        nid = f"n{self._next_id}"
        self._next_id += 1
        return nid

    def config(self, nid: str) -> NodeConfig:
        o = self.opts
        return NodeConfig(
            nid,
            "sim",
            b"",
            tick_seconds=o.tick_us / SECOND,
            election_ticks=o.election_tick,
            heartbeat_ticks=o.heartbeat_tick,
            request_timeout=o.request_timeout_us / SECOND,
            forward_timeout=o.forward_timeout_us / SECOND,
            snapshot_every=o.snapshot_every,
            keep_entries=o.keep_entries,
            history_limit=1_000_000,
            max_inflight=o.max_inflight,
            max_msg_bytes=o.max_msg_bytes,
            inject_bug=self.inject_bug,
            live_expire_ms=2_000,
        )

    def _start(self, node: WholeNode) -> None:
        o = self.opts
        rng = self.world.fork_rng()
        node.transport = MemoryTransport(node.id, self.link, node.clock)
        node.core = NodeCore(
            self.config(node.id),
            node.storage,
            node.transport,
            node.clock,
            rng=rng,
            boot_id=f"{node.epoch + 1}{rng.getrandbits(16):04x}",
            outbox=node.outbox_store,
        )
        core = node.core
        node.transport.on_message = core.receive
        node.transport.on_unreachable = core.report_unreachable
        node.transport.on_snapshot_status = core.report_snapshot
        node.transport.on_peer_closed = core.peer_closed
        node.state = UP
        node.epoch += 1
        node.inbox = []
        node.ready_pending = False
        node.synced = None
        self.checkers.applied.on_start(node.id, core.applied)
        self.checkers.completeness.reset(node.id)
        raw = core.raw
        self.trace(node, f"start: last={raw.last_index} commit={raw.committed} applied={core.applied}")
        self.world.after(self.world.rng.randrange(o.tick_us), self._tick, node, node.epoch)
        self.kick(node)

    def _down(self, node: WholeNode, state: str) -> None:
        node.state = state
        node.epoch += 1
        if node.transport is not None:
            node.transport.close()
            self._close_links(node)
        node.core = None
        node.transport = None
        node.inbox = []
        node.synced = None
        node.ready_pending = False
        # Every client connection to the node drops with it.
        dropped, node.http = node.http, {}
        for lost in dropped.values():
            lost()
        self.on_down(node)

    def _close_links(self, node: WholeNode) -> None:
        """The process of `node` is gone, so are its sockets (the kernel
        closes them, a paused process's too): each peer it can reach hears
        that its connections closed, a network delay later (not across a
        cut)."""
        for peer in list(self.nodes.values()):
            if peer is node or peer.state not in (UP, PAUSED) or (node.id, peer.id) in self.network.blocked:
                continue
            self.world.after(self.network.latency(), self._peer_closed, peer, peer.epoch, node.id)

    def report_closed(self, node: WholeNode, peer: str) -> None:
        """Tell `node` now that `peer` closed its connections (a fault: `peer` is up)."""
        self.trace(node, f"RECONNECT: {peer}'s connections seen closed")
        self._peer_closed(node, node.epoch, peer)

    def _peer_closed(self, node: WholeNode, epoch: int, peer: str) -> None:
        if node.epoch != epoch:
            return

        def report() -> None:
            if node.epoch == epoch and node.transport is not None and node.core is not None:
                followed = node.core.raw.lead == peer
                self.trace(node, f"{peer} closed its connections")
                node.transport.peer_closed(peer)
                if followed and node.core.raw.lead is None:
                    self.controller_closed += 1
                self.kick(node)

        self.when_up(node, report)

    def crash(self, node: WholeNode, why: str) -> None:
        if node.state in (CRASHED, REMOVED):
            return
        if why == "crash" and node.state == UP and self.world.rng.random() < self.opts.p_graceful:
            self.stop(node)
            return
        self.faults[why] += 1
        self.trace(node, f"CRASH ({why}), {node.storage.unsynced()} unsynced writes lost")
        self._down(node, CRASHED)
        node.storage = node.storage.crash_image()
        if self.faults_active:
            self.world.after(self.world.rng.randrange(10 * MS, 1500 * MS), self.restart, node, node.epoch)

    def stop(self, node: WholeNode) -> None:
        """SIGTERM: hand leadership over, wait about an election timeout for
        it, then go down (what was not synced is lost, as in a crash)."""
        assert node.core is not None
        self.faults["stop"] += 1
        # As the runtime stops: open live gestures settle first.
        if node.core.live.end_all():
            node.core.live.tick()
        target = node.core.handover()
        self.trace(node, f"STOP (handover to {target})")
        self.kick(node)
        wait = self.opts.tick_us * self.opts.election_tick if target is not None else 0
        self.world.after(wait, self._stopped, node, node.epoch)

    def _stopped(self, node: WholeNode, epoch: int) -> None:
        if node.epoch != epoch or node.state in (CRASHED, REMOVED):
            return
        assert node.core is not None
        node.core.shutdown()
        self.trace(node, "stopped")
        self._down(node, CRASHED)
        node.storage = node.storage.crash_image()
        # Started in the safety phase, it may end in the liveness phase: the
        # node comes back either way.
        later = self.world.rng.randrange(10 * MS, 1500 * MS) if self.faults_active else 10 * MS
        self.world.after(later, self.restart, node, node.epoch)

    def restart(self, node: WholeNode, epoch: int | None = None) -> None:
        if node.state != CRASHED or (epoch is not None and epoch != node.epoch):
            return
        self._start(node)

    def pause(self, node: WholeNode) -> None:
        if node.state != UP:
            return
        self.faults["pause"] += 1
        node.state = PAUSED
        self.trace(node, "PAUSE")
        self.world.after(self.world.rng.randrange(50 * MS, 1500 * MS), self.resume, node, node.epoch)

    def resume(self, node: WholeNode, epoch: int | None = None) -> None:
        if node.state != PAUSED or (epoch is not None and epoch != node.epoch):
            return
        node.state = UP
        inbox, node.inbox = node.inbox, []
        self.trace(node, f"RESUME with {len(inbox)} queued inputs")
        if node.synced is not None:
            rd, node.synced = node.synced, None
            self._finish(node, rd)
        for fn in inbox:
            if node.state != UP:
                break
            fn()
        self.kick(node)

    def isolate(self, node: WholeNode) -> None:
        others = [nid for nid in self.nodes if nid != node.id]
        links = {(node.id, o) for o in others} | {(o, node.id) for o in others}
        self.faults["partition"] += 1
        cut = self.network.cut("partition", links, f"isolate {node.id}")
        self.trace(node, f"PARTITION isolate {node.id} right after it appended")
        self.world.after(self.world.rng.randrange(50 * MS, 800 * MS), self.network.heal, cut)

    def retire(self, node: WholeNode, epoch: int) -> None:
        if node.state == REMOVED or epoch != node.epoch:
            return
        self.trace(node, "shut down (removed from the cluster)")
        if node.core is not None:
            node.core.shutdown()
        self._down(node, REMOVED)

    def spawn(self, nid: str) -> None:
        if nid in self.nodes:
            return
        self._start(self._new_node(nid))

    # -- inputs -------------------------------------------------------------------

    def when_up(self, node: WholeNode, fn: Callable[[], None]) -> bool:
        """Run `fn` now if `node` runs, later if it is paused; False if it
        is down (nothing runs)."""
        if node.state == UP:
            fn()
            return True
        if node.state == PAUSED:
            node.inbox.append(fn)
            return True
        return False

    def _tick(self, node: WholeNode, epoch: int) -> None:
        if node.epoch != epoch:
            return
        o = self.opts
        self.world.after(
            int(o.tick_us * (1.0 + node.skew)) + self.world.rng.randrange(o.tick_jitter_us + 1), self._tick, node, epoch
        )
        if node.state != UP:
            return
        assert node.core is not None
        node.core.tick()
        self.kick(node)

    def _deliver(self, m: PeerPayload) -> None:
        node = self.nodes.get(m.to)
        if node is None:
            return

        def arrive() -> None:
            core, transport = node.core, node.transport
            assert core is not None and transport is not None
            if type(m) is Message:
                self.world.trace.add(
                    self.world.now,
                    node.id,
                    core.raw.term,
                    core.raw.last_index,
                    f"recv {m.type} from {m.frm} term={m.term} index={m.index} log_term={m.log_term} "
                    f"n={len(m.entries)} commit={m.commit}{' reject' if m.reject else ''}",
                )
            elif type(m) is LiveFrame:
                self.trace(node, f"recv live {len(m.items)} values from {m.frm}")
            elif type(m) is LiveInterest:
                self.trace(node, f"recv live interest {m.prefixes} from {m.frm}")
            else:
                self.trace(node, f"recv {type(m).__name__} {m.id} from {m.frm}")
            transport.deliver(m)
            self.kick(node)

        self.when_up(node, arrive)

    def _snapshot_done(self, frm: str, to: str, ok: bool) -> None:
        node = self.nodes.get(frm)
        if node is None:
            return
        epoch = node.epoch

        def report() -> None:
            if node.epoch == epoch and node.transport is not None:
                node.transport.snapshot_done(to, ok)
                self.kick(node)

        self.when_up(node, report)

    # -- what the fault injector asks of a leader ------------------------------------

    def propose_conf_change(self, leader: WholeNode, cc: ConfChange) -> int:
        assert leader.core is not None
        try:
            ticket = leader.core.change_membership(cc)
        except Exception as exc:  # NotLeader, Conflict: refused before the log
            raise ProposalDropped(str(exc), None) from exc
        self.kick(leader)
        index = leader.core.raw.last_index
        ticket.on_done = lambda t: self.trace(leader, f"conf change {cc.type} {cc.node}: {t.error or 'applied'}")
        return index

    def transfer_leader(self, leader: WholeNode, to: str) -> None:
        """Half the time the SIGTERM path (the core picks the successor), else
        a transfer to `to`."""
        assert leader.core is not None
        if self.world.rng.random() < 0.5:
            target = leader.core.handover()
            self.trace(leader, f"handover to {target}")
        else:
            self.trace(leader, f"transfer leadership to {to}")
            leader.core.replica.transfer_leader(to)
        self.kick(leader)

    # -- the ready loop ---------------------------------------------------------------

    def kick(self, node: WholeNode) -> None:
        if node.state != UP or node.ready_pending:
            return
        core = node.core
        assert core is not None
        if core.has_ready():
            node.ready_pending = True
            self.world.after(self.world.rng.randrange(self.opts.loop_latency_us + 1), self._ready, node, node.epoch)

    def _ready(self, node: WholeNode, epoch: int) -> None:
        if node.epoch != epoch:
            return
        if node.state != UP:
            node.ready_pending = False  # resume kicks again
            return
        core = node.core
        assert core is not None
        rd = core.ready()
        if rd.entries:
            self.checkers.log.on_persist(node.id, core.replica, rd.entries)
        o = self.opts
        if self.faults_active and rd.must_sync and o.p_torn_write and self.world.rng.random() < o.p_torn_write:
            self.crash(node, "torn_write")
            return
        if (
            self.faults_active
            and rd.entries
            and o.p_isolate_on_append
            and core.role == Role.LEADER
            and self.world.rng.random() < o.p_isolate_on_append
        ):
            self.isolate(node)
        if rd.must_sync:
            # The fsync takes time; the node keeps stepping messages meanwhile.
            self.world.after(self.world.rng.randrange(o.disk_latency_max_us + 1), self._synced, node, epoch, rd)
        else:
            self._finish(node, rd)

    def _synced(self, node: WholeNode, epoch: int, rd: Ready) -> None:
        if node.epoch != epoch:
            return
        core = node.core
        assert core is not None
        core.sync()
        if node.state == PAUSED:
            node.synced = rd
            return
        self._finish(node, rd)

    def _finish(self, node: WholeNode, rd: Ready) -> None:
        core = node.core
        assert core is not None
        done = core.finish(rd)
        node.ready_pending = False
        self._after_ready(node, rd, done.outcome)
        if done.applied:
            self.on_applied(node)
        self.kick(node)

    def _after_ready(self, node: WholeNode, rd: Ready, out: ReadyOutcome) -> None:
        core = node.core
        assert core is not None
        replica = core.replica
        raft = replica.raft
        ck = self.checkers
        if rd.entries or out.applied or out.installed is not None:
            detail = []
            if rd.entries:
                detail.append(f"persist {rd.entries[0].index}..{rd.entries[-1].index}@{rd.entries[-1].term}")
            if out.installed is not None:
                detail.append(f"install snapshot {out.installed.meta.index}@{out.installed.meta.term}")
            if out.applied:
                detail.append(f"apply {out.applied[0].index}..{out.applied[-1].index}")
            if out.snapshot_taken is not None:
                detail.append(f"snapshot at {out.snapshot_taken.meta.index}")
            self.trace(node, ", ".join(detail) + f" commit={raft.log.committed} rev={core.kv.revision}")
        if ck.election.observe(node.id, replica):
            self.trace(node, f"LEADER of term {raft.term} (conf {raft.conf_state().to_dict()})")
            ck.completeness.observe_commit(node.id, replica)
            ck.completeness.on_new_leader(node.id, replica)
        else:
            ck.completeness.observe_commit(node.id, replica)
        ck.applied.on_ready(node.id, out)
        for e in out.applied:
            if e.type == EntryType.CONF_CHANGE:
                self._on_conf_change(ConfChange.decode(e.data))

    def _on_conf_change(self, cc: ConfChange) -> None:
        if cc.type in (ConfChangeType.ADD_LEARNER, ConfChangeType.ADD_VOTER):
            self.spawn(cc.node)
        elif cc.type == ConfChangeType.REMOVE_NODE:
            target = self.nodes.get(cc.node)
            if target is not None and target.state != REMOVED:
                self.world.after(self.world.rng.randrange(20 * MS, 300 * MS), self.retire, target, target.epoch)

    # -- queries ------------------------------------------------------------------------

    def trace(self, node: WholeNode, text: str) -> None:
        core = node.core
        if core is None:
            self.world.trace.add(self.world.now, node.id, 0, 0, text)
        else:
            self.world.trace.add(self.world.now, node.id, core.raw.term, core.raw.last_index, text)

    def up(self) -> list[WholeNode]:
        return [n for n in self.nodes.values() if n.state == UP]

    def leader(self) -> WholeNode | None:
        best: WholeNode | None = None
        for n in self.nodes.values():
            c = n.core
            if (
                n.state == UP
                and c is not None
                and c.role == Role.LEADER
                and (best is None or c.raw.term > best.core.raw.term)  # type: ignore[union-attr]
            ):
                best = n
        return best

    def describe(self) -> list[str]:
        out = []
        for n in self.nodes.values():
            c = n.core
            if c is None:
                out.append(f"{n.id}: {n.state}")
                continue
            raw = c.raw
            out.append(
                f"{n.id}: {n.state} {raw.role} term={raw.term} lead={raw.lead} last={raw.last_index} "
                f"commit={raw.committed} applied={c.applied} rev={c.kv.revision} pending={c.pending()} "
                f"conf={raw.conf_state().to_dict()}"
            )
        return out
