"""Clients: proposals and linearizable reads throughout the run, each
carrying a unique op id, and the final proposal of the liveness phase."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.raft import ProposalDropped, Role
from mesh.replica import ReadyOutcome
from simulations.sim.cluster import Checkers, Cluster, SimNode
from simulations.sim.options import Options
from simulations.sim.world import SECOND, World


@dataclass(slots=True)
class WorkloadStats:
    proposed: int = 0
    refused: int = 0
    acked: int = 0
    failed: int = 0
    reads: int = 0
    reads_refused: int = 0
    reads_done: int = 0


class Workload:
    def __init__(self, world: World, cluster: Cluster, checkers: Checkers, opts: Options) -> None:
        self.world = world
        self.cluster = cluster
        self.checkers = checkers
        self.opts = opts
        self.stats = WorkloadStats()
        self.active = True
        self._ops = 0
        self._reads = 0
        # node -> {(index, term): op} of proposals awaiting their outcome.
        self.pending: dict[str, dict[tuple[int, int], str]] = {}
        self.final_op: str | None = None
        self.final_acked = 0
        cluster.on_outcome = self.on_outcome
        cluster.on_crash = self.on_crash

    def start(self) -> None:
        self.world.after(self._gap(self.opts.write_rate), self._write)
        self.world.after(self._gap(self.opts.read_rate), self._read)

    def _gap(self, rate: float) -> int:
        return int(self.world.rng.expovariate(rate) * SECOND)

    def _pick(self) -> SimNode | None:
        rng = self.world.rng
        up = self.cluster.up()
        # Clients cannot tell a deposed leader that has not noticed yet from
        # the real one: any node that believes it leads will do.
        leaders = [n for n in up if n.replica is not None and n.replica.raft.role == Role.LEADER]
        if leaders and rng.random() < 0.85:
            return rng.choice(leaders)
        return rng.choice(up) if up else None

    def propose(self, node: SimNode, op: str) -> int | None:
        replica = node.replica
        assert replica is not None
        try:
            index = replica.propose(op.encode())
        except ProposalDropped:
            self.stats.refused += 1
            return None
        self.stats.proposed += 1
        self.pending.setdefault(node.id, {})[(index, replica.raft.term)] = op
        self.cluster.trace(node, f"propose {op} at {index}")
        self.cluster.kick(node)
        return index

    def _write(self) -> None:
        if not self.active:
            return
        self.world.after(self._gap(self.opts.write_rate), self._write)
        node = self._pick()
        if node is not None:
            self._ops += 1
            self.propose(node, f"w{self._ops}")

    def _read(self) -> None:
        if not self.active:
            return
        self.world.after(self._gap(self.opts.read_rate), self._read)
        node = self._pick()
        if node is None:
            return
        replica = node.replica
        assert replica is not None
        self._reads += 1
        ctx = f"r{self._reads}".encode()
        self.checkers.reads.on_invoke(ctx, self.world.now)
        try:
            replica.read_index(ctx)
        except ProposalDropped:
            self.checkers.reads.pending.pop(ctx, None)
            self.stats.reads_refused += 1
            return
        self.stats.reads += 1
        self.cluster.trace(node, f"read {ctx.decode()} invoked")
        self.cluster.kick(node)

    def on_outcome(self, nid: str, out: ReadyOutcome) -> None:
        if out.proposals:
            mine = self.pending.get(nid, {})
            for p in out.proposals:
                op = mine.pop((p.index, p.term), None)
                if op is None:
                    continue
                if p.ok:
                    self.stats.acked += 1
                    self.checkers.acked.on_ack(nid, p.index, op, self.checkers.sm)
                    if op == self.final_op:
                        self.final_acked = p.index
                    self.world.trace.add(self.world.now, nid, p.term, p.index, f"ack {op}")
                else:
                    self.stats.failed += 1
                    self.world.trace.add(self.world.now, nid, p.term, p.index, f"failed {op}: {p.reason}")
        for r in out.reads:
            if self.checkers.reads.on_complete(nid, r.context, r.index, r.applied):
                self.stats.reads_done += 1
                self.world.trace.add(
                    self.world.now, nid, 0, r.applied, f"read {r.context.decode()} done: index {r.index}"
                )

    def on_crash(self, nid: str) -> None:
        self.pending.pop(nid, None)
