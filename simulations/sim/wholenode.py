"""One whole-node seed end to end: draw the options, run the safety phase
(clients, watchers and every fault), then the liveness phase (heal, restart,
resume; clients stop starting requests) which must converge, then check the
clients' history with the chaos run's checker.

Why a mode of its own (`RunConfig(whole_node=True)`, `--whole-node`) beside
the Raft-level simulator rather than instead of it: the Raft-level mode runs
bare `Replica`s with a hash-chain state machine, about ten times faster per
seed, and its CI tests and mutations (Figure 8 and friends) need thousands
of seeds; this one runs the node core, HanaState and clients, where the
bugs users hit lived. Both share the world, the network, the options, the
fault injector and the Raft-level checkers, so one seed replays either.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from mesh.errors import MeshError
from mesh.node.flags import INJECTABLE_BUGS
from simulations.chaoskit.checks import run_checks
from simulations.sim.checkers import Violation
from simulations.sim.clients import Clients
from simulations.sim.faults import FaultInjector
from simulations.sim.live import Fader, LiveCheck, Subscribers
from simulations.sim.nodes import CRASHED, PAUSED, UP, NodeCheckers, NodeCluster
from simulations.sim.offline import OfflineWriters
from simulations.sim.offline import check as check_offline
from simulations.sim.options import NodeOptions, draw_node_options
from simulations.sim.world import MS, SECOND, Trace, World

TRACE_TAIL = 60
# Every event of a run counts against this (a message storm ends the run).
MAX_EVENTS = 4_000_000
# Search steps per key for the linearizability checker (the chaos run's is
# 2,000,000): a seed with many deletes of unknown outcome on two keys took
# about 5 million (seed 2510); past the budget the seed fails as undecided.
LINEARIZABILITY_BUDGET = 30_000_000


@contextlib.contextmanager
def _quiet_nodes() -> Iterator[None]:
    """The node core logs what an operator must see (slow fsyncs, refused
    forwards, lost logs); thousands of simulated faults would drown a
    terminal. Silenced for a run only, never for the whole process (a test
    in the same process may need those lines)."""
    logger = logging.getLogger("mesh")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


class NodeSimulation:
    def __init__(self, seed: int, cfg: Any) -> None:
        self.seed = seed
        self.world = World(seed, Trace(keep=TRACE_TAIL, full=cfg.verbose), max_events=MAX_EVENTS)
        self.opts: NodeOptions = draw_node_options(
            seed, self.world.rng, cfg.nodes, cfg.faults, cfg.safety_us, offline=getattr(cfg, "offline", False)
        )
        inject = cfg.mutation if cfg.mutation in INJECTABLE_BUGS else None
        self.checkers = NodeCheckers()
        self.cluster = NodeCluster(self.world, self.opts, self.checkers, inject)
        self.clients = Clients(self.world, self.cluster, self.opts)
        self.faults = FaultInjector(self.world, self.cluster, self.opts)  # type: ignore[arg-type]
        self.fader = Fader(self.world, self.cluster)
        self.subscribers = Subscribers(self.world, self.cluster)
        self.live = LiveCheck(self.world, self.cluster, self.fader, self.subscribers)
        # Issue 14: writers that queue writes on nodes cut off from the controller.
        self.offline = OfflineWriters(self.world, self.cluster, self.opts) if self.opts.offline_writers else None
        self.converged = False
        self.final_acked = False
        self.final_pending = False
        self.anomalies: list[dict[str, str]] = []
        self.finals: list[dict[str, Any]] = []

    def close(self) -> None:
        return None

    def run(self) -> None:
        with _quiet_nodes():
            self._run()

    def _run(self) -> None:
        self.clients.start()
        if self.offline is not None:
            self.offline.start()
        self.faults.start()
        self.fader.start()
        self.subscribers.start()
        self.world.run_until(self.opts.safety_us)
        self._heal()
        deadline = self.world.now + self.opts.liveness_us
        self.world.after(20 * MS, self._probe)
        self.world.run_until(deadline, stop=lambda: self.converged)
        if not self.converged:
            raise Violation("liveness", f"no convergence within {self.opts.liveness_us // MS} ms: {self._explain()}")
        self.clients.abandon()
        self.clients.close_sessions()
        leader = self.cluster.leader()
        assert leader is not None and leader.core is not None
        members = list(leader.core.raw.conf_state().members())
        self.finals = self.clients.finals(members)
        self.anomalies = run_checks(self.clients.records + self.finals, budget=LINEARIZABILITY_BUDGET)
        if self.anomalies:
            first = self.anomalies[0]
            more = f" (and {len(self.anomalies) - 1} more)" if len(self.anomalies) > 1 else ""
            raise Violation(f"history: {first['check']}", first["detail"] + more)
        self.live.run()
        if self.offline is not None:
            problems = check_offline(self.offline, self.cluster, members)
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise Violation("offline", problems[0] + more)

    def _heal(self) -> None:
        w = self.world
        w.trace.add(w.now, "sim", 0, 0, "LIVENESS PHASE: heal partitions, restart crashed, resume paused")
        self.faults.active = False
        self.cluster.faults_active = False
        self.clients.active = False
        self.fader.active = False
        self.subscribers.active = False
        if self.offline is not None:
            self.offline.stop(2 * SECOND)
        net = self.cluster.network
        net.faulty = False
        net.heal_all()
        for n in list(self.cluster.nodes.values()):
            if n.state == CRASHED:
                self.cluster.restart(n)
            elif n.state == PAUSED:
                self.cluster.resume(n)

    def _probe(self) -> None:
        self.world.after(20 * MS, self._probe)
        leader = self.cluster.leader()
        if leader is None or leader.core is None:
            return
        core = leader.core
        if not self.final_acked:
            if not self.final_pending:
                # A write through the leader's core: the mesh makes progress.
                self.final_pending = True
                try:
                    ticket = core.propose({"op": "put", "key": "parameters/final", "value": self.world.now})
                except MeshError:
                    self.final_pending = False
                    return
                self.cluster.kick(leader)

                def done(t: Any) -> None:
                    self.final_pending = False
                    self.final_acked = self.final_acked or t.error is None

                ticket.on_done = done
            return
        if self.clients.pending():
            return  # answers still on their way (or client timeouts to come)
        raw = core.raw
        if self.offline is not None and not self.offline.all_replayed(list(raw.conf_state().members())):
            return  # queued offline writes still to replay
        commit = raw.committed
        revision = core.kv.revision
        kv_applied = set()
        for nid in raw.conf_state().members():
            n = self.cluster.nodes.get(nid)
            if n is None or n.state != UP or n.core is None:
                return
            if n.core.applied != commit or n.core.kv.revision != revision:
                return
            kv_applied.add(n.core.kv.applied_index)
        if len(kv_applied) > 1:
            # The state machine counts the index of the last command it
            # applied, or of the snapshot it was restored from: replicas at
            # one Raft index (a no-op or a membership change last) can differ
            # there, and so in their digests, until the next write.
            self.final_acked = False
            return
        self.converged = True
        self.world.trace.add(self.world.now, leader.id, raw.term, commit, "CONVERGED")

    def _explain(self) -> str:
        parts = []
        leader = self.cluster.leader()
        if leader is None or leader.core is None:
            parts.append("no leader")
        else:
            raw = leader.core.raw
            if not self.final_acked:
                parts.append(f"leader {leader.id} (term {raw.term}) never committed the final write")
            parts.append(f"progress {raw.status()['progress']}")
        if self.clients.pending():
            parts.append(f"{self.clients.pending()} client requests unanswered")
        parts += self.cluster.describe()
        return "; ".join(parts)

    def result(self, ok: bool, wall: float) -> Any:
        from simulations.sim.runner import SeedResult

        ops = [r for r in self.clients.records if r["type"] == "op"]
        net = self.cluster.network.stats
        faults = dict(self.cluster.faults)
        for kind, n in (("drop", net.dropped), ("duplicate", net.duplicated), ("delay", net.delayed)):
            if n:
                faults[kind] = n
        return SeedResult(
            seed=self.seed,
            ok=ok,
            options=self.opts.describe(),
            nodes=self.opts.nodes,
            wall_s=wall,
            sim_us=self.world.now,
            events=self.world.events,
            committed=len(self.checkers.applied.history),
            elections=len(self.checkers.election.leaders),
            controller_closed=self.cluster.controller_closed,
            acked=sum(1 for r in ops if r["outcome"] == "ok" and r["kind"] in ("put", "delete", "txn")),
            reads=sum(1 for r in ops if r["outcome"] == "ok" and r["kind"] in ("read", "list")),
            faults=faults,
            outcomes=dict(self.clients.stats.outcomes),
            watch_events=self.clients.stats.watch_events,
            live=self.live.counts(),
            offline=self._offline_figures(),
        )

    def _offline_figures(self) -> dict[str, int]:
        if self.offline is None:
            return {}
        st = self.offline.stats
        out = {"queued": st.queued, "resolves": st.resolves, "on_removed": st.on_removed, "evicted": st.evicted}
        for state, n in (st.fates or {}).items():
            out[f"fate {state}"] = n
        return out
