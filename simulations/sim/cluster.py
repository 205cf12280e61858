"""The simulated cluster: nodes (each a production `Replica` over a
`MemoryStorage`), their tick schedules, the network between them, crashes,
restarts, pauses, and the checkers fed after every step. A node that goes
down closes its connections: each peer it can reach hears of it a network
delay later (Raft's leader_connection_lost, as the node's transport reports
it); a partition or a pause closes nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.raft import ConfChange, ConfChangeType, Config, ConfState, EntryType, Message, MessageType, Role
from mesh.replica import ReadyOutcome, Replica, bootstrap
from mesh.storage.memory import MemoryStorage
from simulations.sim.checkers import (
    AckedWrites,
    ElectionSafety,
    LeaderCompleteness,
    LinearizableReads,
    LogMatching,
    StateMachineSafety,
)
from simulations.sim.network import Network
from simulations.sim.options import Options
from simulations.sim.statemachine import ChainStateMachine
from simulations.sim.world import MS, World

UP, PAUSED, CRASHED, REMOVED = "up", "paused", "crashed", "removed"


@dataclass(slots=True)
class Checkers:
    election: ElectionSafety = field(default_factory=ElectionSafety)
    log: LogMatching = field(default_factory=LogMatching)
    completeness: LeaderCompleteness = field(default_factory=LeaderCompleteness)
    sm: StateMachineSafety = field(default_factory=StateMachineSafety)
    acked: AckedWrites = field(default_factory=AckedWrites)
    reads: LinearizableReads = field(init=False)

    def __post_init__(self) -> None:
        self.reads = LinearizableReads(self.acked)


class SimNode:
    __slots__ = ("epoch", "id", "inbox", "ready_pending", "replica", "skew", "sm", "state", "storage")

    def __init__(self, nid: str, skew: float, storage: Any = None) -> None:
        self.id = nid
        self.state = CRASHED
        self.epoch = 0
        self.replica: Replica | None = None
        self.sm = ChainStateMachine()
        self.storage: Any = storage if storage is not None else MemoryStorage()
        self.inbox: list[Message] = []
        self.ready_pending = False
        self.skew = skew

    def live(self) -> Replica | None:
        return self.replica if self.state == UP else None


class Cluster:
    def __init__(self, world: World, opts: Options, checkers: Checkers, storage_dir: Path | None = None) -> None:
        # With a directory, nodes keep their log in the real on-disk store
        # (mesh.storage.disk, fsync skipped: a simulated crash is a process
        # crash, so what reached the OS survives and unsynced writes are
        # lost), and every restart runs the store's recovery.
        self.storage_dir = storage_dir
        self.world = world
        self.opts = opts
        self.checkers = checkers
        self.faults: Counter[str] = Counter()
        # Followers that saw their leader's connections close and so
        # elected a successor at once (Raft's leader_connection_lost).
        self.controller_closed = 0
        self.nodes: dict[str, SimNode] = {}
        self.network = Network(world, opts, self._deliver)
        self.faults_active = True
        # Set by the workload: told of every Ready's outcome and of crashes.
        self.on_outcome: Callable[[str, ReadyOutcome], None] = lambda node, out: None
        self.on_crash: Callable[[str], None] = lambda node: None
        initial = [f"n{i}" for i in range(1, opts.nodes + 1)]
        conf = ConfState.of(initial)
        self._next_id = opts.nodes + 1
        for nid in initial:
            node = self._new_node(nid)
            bootstrap(node.storage, conf)
            self._start(node)

    # -- lifecycle ----------------------------------------------------------

    def _new_node(self, nid: str) -> SimNode:
        skew = self.opts.skew[len(self.nodes) % len(self.opts.skew)]
        node = SimNode(nid, skew, self._open_storage(nid))
        self.nodes[nid] = node
        return node

    def _open_storage(self, nid: str) -> Any:
        if self.storage_dir is None:
            return MemoryStorage()
        from mesh.storage.disk import DiskStorage

        return DiskStorage(self.storage_dir / nid, durability="unsafe_no_fsync", segment_bytes=64 * 1024)

    def close(self) -> None:
        """Release on-disk stores (their directory locks and files)."""
        if self.storage_dir is None:
            return
        for node in self.nodes.values():
            node.storage.close()

    def new_node_id(self) -> str:
        nid = f"n{self._next_id}"
        self._next_id += 1
        return nid

    def _start(self, node: SimNode) -> None:
        o = self.opts
        cfg = Config(
            id=node.id,
            rng=self.world.fork_rng(),
            election_tick=o.election_tick,
            heartbeat_tick=o.heartbeat_tick,
            max_msg_bytes=o.max_msg_bytes,
            max_inflight=o.max_inflight,
        )
        node.sm = ChainStateMachine()
        node.replica = Replica(cfg, node.storage, node.sm, snapshot_every=o.snapshot_every, keep_entries=o.keep_entries)
        node.state = UP
        node.epoch += 1
        node.inbox = []
        node.ready_pending = False
        raft = node.replica.raft
        self.checkers.sm.on_start(node.id, node.replica.applied, node.sm)
        self.checkers.completeness.reset(node.id)
        self.trace(
            node, f"start: first={raft.log.first_index()} last={raft.log.last_index()} commit={raft.log.committed}"
        )
        self.world.after(self.world.rng.randrange(o.tick_us), self._tick, node, node.epoch)
        self.kick(node)

    def crash(self, node: SimNode, why: str) -> None:
        if node.state in (CRASHED, REMOVED):
            return
        self.faults[why] += 1
        lost = node.storage.unsynced()
        self.trace(node, f"CRASH ({why}), {lost} unsynced writes lost")
        node.state = CRASHED
        node.epoch += 1
        node.replica = None
        node.inbox = []
        self._close_links(node)
        if self.storage_dir is None:
            node.storage = node.storage.crash_image()
        else:
            node.storage.close()  # discards what was not synced, as a crash would
            node.storage = self._open_storage(node.id)
        self.on_crash(node.id)
        if self.faults_active:
            self.world.after(self.world.rng.randrange(10 * MS, 1500 * MS), self.restart, node, node.epoch)

    def _close_links(self, node: SimNode) -> None:
        for peer in list(self.nodes.values()):
            if peer is node or peer.state not in (UP, PAUSED) or (node.id, peer.id) in self.network.blocked:
                continue
            self.world.after(self.network.latency(), self._peer_closed, peer, peer.epoch, node.id)

    def report_closed(self, node: SimNode, peer: str) -> None:
        """Tell `node` now that `peer` closed its connections (a fault: `peer` is up)."""
        self.trace(node, f"RECONNECT: {peer}'s connections seen closed")
        self._peer_closed(node, node.epoch, peer)

    def _peer_closed(self, node: SimNode, epoch: int, peer: str) -> None:
        if node.epoch != epoch or node.state not in (UP, PAUSED) or node.replica is None:
            return
        if node.state == PAUSED:
            # Noticed when it runs again (the inbox holds messages only).
            self.world.after(self.opts.tick_us, self._peer_closed, node, epoch, peer)
            return
        if node.replica.node.leader_connection_lost(peer):
            self.controller_closed += 1
            self.trace(node, f"{peer} closed its connections: campaign")
        self.kick(node)

    def restart(self, node: SimNode, epoch: int | None = None) -> None:
        if node.state != CRASHED or (epoch is not None and epoch != node.epoch):
            return
        self._start(node)

    def pause(self, node: SimNode) -> None:
        if node.state != UP:
            return
        self.faults["pause"] += 1
        node.state = PAUSED
        self.trace(node, "PAUSE")
        self.world.after(self.world.rng.randrange(50 * MS, 1500 * MS), self.resume, node, node.epoch)

    def resume(self, node: SimNode, epoch: int | None = None) -> None:
        if node.state != PAUSED or (epoch is not None and epoch != node.epoch):
            return
        node.state = UP
        inbox, node.inbox = node.inbox, []
        self.trace(node, f"RESUME with {len(inbox)} queued messages")
        replica = node.replica
        assert replica is not None
        for m in inbox:
            replica.step(m)
        self.kick(node)

    def isolate(self, node: SimNode) -> None:
        """Cut `node` off from everyone (both ways) for a while."""
        others = [nid for nid in self.nodes if nid != node.id]
        links = {(node.id, o) for o in others} | {(o, node.id) for o in others}
        self.faults["partition"] += 1
        cut = self.network.cut("partition", links, f"isolate {node.id}")
        self.trace(node, f"PARTITION isolate {node.id} right after it appended")
        self.world.after(self.world.rng.randrange(50 * MS, 800 * MS), self.network.heal, cut)

    def retire(self, node: SimNode, epoch: int) -> None:
        """Shut down a node whose removal is committed."""
        if node.state == REMOVED or epoch != node.epoch:
            return
        self.trace(node, "shut down (removed from the cluster)")
        node.state = REMOVED
        node.epoch += 1
        node.replica = None
        node.inbox = []
        self._close_links(node)
        self.on_crash(node.id)

    def spawn(self, nid: str) -> None:
        """A node added by a committed conf change joins with an empty store."""
        if nid in self.nodes:
            return
        self._start(self._new_node(nid))

    # -- what the fault injector asks of a leader --------------------------------

    def propose_conf_change(self, leader: SimNode, cc: ConfChange) -> int:
        """Propose `cc` on `leader` (raises ProposalDropped)."""
        assert leader.replica is not None
        return leader.replica.propose_conf_change(cc)

    def transfer_leader(self, leader: SimNode, to: str) -> None:
        assert leader.replica is not None
        self.trace(leader, f"transfer leadership to {to}")
        leader.replica.transfer_leader(to)
        self.kick(leader)

    # -- events ---------------------------------------------------------------

    def _tick(self, node: SimNode, epoch: int) -> None:
        if node.epoch != epoch:
            return
        o = self.opts
        rng = self.world.rng
        self.world.after(
            int(o.tick_us * (1.0 + node.skew)) + rng.randrange(o.tick_jitter_us + 1), self._tick, node, epoch
        )
        if node.state != UP:
            return
        replica = node.replica
        assert replica is not None
        replica.tick()
        self.kick(node)

    def _deliver(self, m: Message) -> None:
        node = self.nodes.get(m.to)
        if node is None or node.state in (CRASHED, REMOVED):
            return
        if node.state == PAUSED:
            node.inbox.append(m)
            return
        replica = node.replica
        assert replica is not None
        raft = replica.raft
        self.world.trace.add(
            self.world.now,
            node.id,
            raft.term,
            raft.log.last_index(),
            f"recv {m.type} from {m.frm} term={m.term} index={m.index} log_term={m.log_term} "
            f"n={len(m.entries)} commit={m.commit}{' reject' if m.reject else ''}",
        )
        replica.step(m)
        if m.type == MessageType.SNAP:
            sender = self.nodes.get(m.frm)
            if sender is not None:
                self.world.after(self.opts.delay_min_us, self._report_snapshot, sender, sender.epoch, m.to, True)
        self.kick(node)

    def _report_snapshot(self, node: SimNode, epoch: int, to: str, ok: bool) -> None:
        if node.epoch == epoch and node.state == UP and node.replica is not None:
            node.replica.node.report_snapshot(to, ok)
            self.kick(node)

    def kick(self, node: SimNode) -> None:
        """Schedule a Ready (after a disk latency) if the node has one."""
        if node.state != UP or node.ready_pending:
            return
        replica = node.replica
        assert replica is not None
        if replica.has_ready():
            node.ready_pending = True
            self.world.after(self.world.rng.randrange(self.opts.disk_latency_max_us + 1), self._ready, node, node.epoch)

    def _ready(self, node: SimNode, epoch: int) -> None:
        if node.epoch != epoch:
            return
        node.ready_pending = False
        if node.state != UP:
            return
        replica = node.replica
        assert replica is not None
        rd = replica.ready()
        # As the real node does: a leader's appends and heartbeats leave
        # before its own write is durable (a crash right below then loses
        # the leader's copy of entries its followers may already hold).
        early = replica.persist(rd)
        for m in early:
            self._send(replica, m)
        if rd.entries:
            self.checkers.log.on_persist(node.id, replica, rd.entries)
        o = self.opts
        if self.faults_active and rd.must_sync and o.p_torn_write and self.world.rng.random() < o.p_torn_write:
            self.crash(node, "torn_write")
            return
        if (
            self.faults_active
            and rd.entries
            and o.p_isolate_on_append
            and replica.raft.role == Role.LEADER
            and self.world.rng.random() < o.p_isolate_on_append
        ):
            self.isolate(node)
        if rd.must_sync:
            replica.sync()
        out = replica.finish(rd)
        self._after_ready(node, replica, rd.entries, out)
        for m in out.messages:
            self._send(replica, m)
        self.on_outcome(node.id, out)
        self.kick(node)

    def _send(self, replica: Replica, m: Message) -> None:
        if not self.network.send(m) and self.world.rng.random() < 0.5:
            if m.type == MessageType.SNAP:
                replica.node.report_snapshot(m.to, False)
            else:
                replica.node.report_unreachable(m.to)

    def _after_ready(self, node: SimNode, replica: Replica, entries: list, out: ReadyOutcome) -> None:
        raft = replica.raft
        ck = self.checkers
        if entries or out.applied or out.installed is not None:
            detail = []
            if entries:
                detail.append(f"persist {entries[0].index}..{entries[-1].index}@{entries[-1].term}")
            if out.installed is not None:
                detail.append(f"install snapshot {out.installed.meta.index}@{out.installed.meta.term}")
            if out.applied:
                detail.append(f"apply {out.applied[0].index}..{out.applied[-1].index}")
            if out.snapshot_taken is not None:
                detail.append(f"snapshot at {out.snapshot_taken.meta.index}")
            self.trace(node, ", ".join(detail) + f" commit={raft.log.committed}")
        if ck.election.observe(node.id, replica):
            self.trace(node, f"LEADER of term {raft.term} (conf {raft.conf_state().to_dict()})")
            ck.completeness.observe_commit(node.id, replica)
            ck.completeness.on_new_leader(node.id, replica)
        else:
            ck.completeness.observe_commit(node.id, replica)
        ck.sm.on_ready(node.id, out, node.sm)
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

    # -- queries ----------------------------------------------------------------

    def trace(self, node: SimNode, text: str) -> None:
        r = node.replica
        if r is None:
            self.world.trace.add(self.world.now, node.id, 0, 0, text)
        else:
            self.world.trace.add(self.world.now, node.id, r.raft.term, r.raft.log.last_index(), text)

    def up(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.state == UP]

    def leader(self) -> SimNode | None:
        best: SimNode | None = None
        for n in self.nodes.values():
            r = n.replica
            if (
                n.state == UP
                and r is not None
                and r.raft.role == Role.LEADER
                and (best is None or r.raft.term > best.replica.raft.term)  # type: ignore[union-attr]
            ):
                best = n
        return best

    def describe(self) -> list[str]:
        out = []
        for n in self.nodes.values():
            r = n.replica
            if r is None:
                out.append(f"{n.id}: {n.state}")
                continue
            raft = r.raft
            out.append(
                f"{n.id}: {n.state} {raft.role} term={raft.term} lead={raft.lead} last={raft.log.last_index()} "
                f"commit={raft.log.committed} applied={r.applied} conf={raft.conf_state().to_dict()}"
            )
        return out
