"""One seed end to end: draw the options, run the safety phase with faults,
then the liveness phase (heal, restart, resume) that must converge; and many
seeds across processes."""

from __future__ import annotations

import multiprocessing
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from simulations.sim.checkers import Violation
from simulations.sim.cluster import CRASHED, PAUSED, UP, Checkers, Cluster
from simulations.sim.faults import FaultInjector
from simulations.sim.options import FAULT_KINDS, Options, draw_options
from simulations.sim.wholenode import NodeSimulation
from simulations.sim.workload import Workload
from simulations.sim.world import MS, BudgetExhausted, Trace, World

TRACE_TAIL = 40


@dataclass(slots=True)
class RunConfig:
    nodes: int | None = None
    faults: tuple[str, ...] = FAULT_KINDS
    safety_us: int | None = None
    mutation: str | None = None
    verbose: bool = False
    # Run every node on the real on-disk store in a temporary directory.
    disk: bool = False
    # Run whole nodes (the node core, HanaState, clients, watchers) instead
    # of bare replicas (simulations/sim/wholenode.py).
    whole_node: bool = False
    # Whole nodes with offline writers (issue 14): writes queued on nodes cut
    # off from the controller, replayed, their fates and conflicts checked.
    offline: bool = False


@dataclass(slots=True)
class SeedResult:
    seed: int
    ok: bool
    invariant: str = ""
    detail: str = ""
    options: str = ""
    nodes: int = 0
    wall_s: float = 0.0
    sim_us: int = 0
    events: int = 0
    committed: int = 0
    elections: int = 0
    # Followers that saw their leader's connections close (a crash) and
    # campaigned at once or took their turn.
    controller_closed: int = 0
    acked: int = 0
    reads: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)
    # Whole-node runs: client outcomes (ok, fail, unknown) and watch events.
    outcomes: dict[str, int] = field(default_factory=dict)
    watch_events: int = 0
    # Whole-node runs: the fader's live path (simulations/sim/live.py).
    live: dict[str, int] = field(default_factory=dict)
    # Offline writers (issue 14): writes queued and their fates, resolves.
    offline: dict[str, int] = field(default_factory=dict)

    def report(self) -> str:
        lines = [f"seed {self.seed}: {self.invariant}: {self.detail}", f"options: {self.options}"]
        lines.append(f"last {len(self.trace)} trace lines:" if not self.ok else "trace:")
        lines += ["  " + t for t in self.trace]
        return "\n".join(lines)


class Simulation:
    def __init__(self, seed: int, cfg: RunConfig) -> None:
        self.seed = seed
        self.world = World(seed, Trace(keep=TRACE_TAIL, full=cfg.verbose))
        self.opts: Options = draw_options(seed, self.world.rng, cfg.nodes, cfg.faults, cfg.safety_us)
        self.checkers = Checkers()
        self._tmp = tempfile.TemporaryDirectory(prefix="hana-sim-") if cfg.disk else None
        self.cluster = Cluster(self.world, self.opts, self.checkers, Path(self._tmp.name) if self._tmp else None)
        self.workload = Workload(self.world, self.cluster, self.checkers, self.opts)
        self.faults = FaultInjector(self.world, self.cluster, self.opts)
        self.converged = False
        self.why_not = ""

    def close(self) -> None:
        self.cluster.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def run(self) -> None:
        self.workload.start()
        self.faults.start()
        self.world.run_until(self.opts.safety_us)
        self._heal()
        deadline = self.world.now + self.opts.liveness_us
        self.world.after(20 * MS, self._probe)
        self.world.run_until(deadline, stop=lambda: self.converged)
        if not self.converged:
            raise Violation("liveness", f"no convergence within {self.opts.liveness_us // MS} ms: {self._explain()}")
        states = []
        leader = self.cluster.leader()
        assert leader is not None and leader.replica is not None
        for nid in leader.replica.raft.conf_state().members():
            n = self.cluster.nodes[nid]
            assert n.replica is not None
            states.append((nid, n.sm, n.replica.applied))
        self.checkers.acked.check_final(states)

    def _heal(self) -> None:
        w = self.world
        w.trace.add(w.now, "sim", 0, 0, "LIVENESS PHASE: heal partitions, restart crashed, resume paused")
        self.faults.active = False
        self.cluster.faults_active = False
        self.workload.active = False
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
        if leader is None or leader.replica is None:
            return
        wl = self.workload
        if wl.final_op is None or (wl.final_acked == 0 and wl.final_op not in wl.pending.get(leader.id, {}).values()):
            wl.final_op = f"final-{leader.replica.raft.term}-{self.world.now}"
            wl.propose(leader, wl.final_op)
            return
        if not wl.final_acked:
            return
        raft = leader.replica.raft
        commit = raft.log.committed
        digest = leader.sm.digest
        for nid in raft.conf_state().members():
            n = self.cluster.nodes.get(nid)
            if n is None or n.state != UP or n.replica is None:
                return
            if n.replica.applied != commit or n.sm.digest != digest:
                return
        self.converged = True
        self.world.trace.add(self.world.now, leader.id, raft.term, commit, "CONVERGED")

    def _explain(self) -> str:
        leader = self.cluster.leader()
        parts = []
        if leader is None or leader.replica is None:
            parts.append("no leader")
        else:
            raft = leader.replica.raft
            if not self.workload.final_acked:
                parts.append(f"leader {leader.id} (term {raft.term}) never committed the final proposal")
            else:
                lag = []
                for nid in raft.conf_state().members():
                    n = self.cluster.nodes.get(nid)
                    if n is None or n.replica is None:
                        lag.append(f"{nid} is {n.state if n else 'missing'}")
                    elif n.replica.applied != raft.log.committed:
                        lag.append(f"{nid} applied {n.replica.applied}")
                parts.append(f"leader {leader.id} (term {raft.term}) commit {raft.log.committed}; lagging: {lag}")
            parts.append(f"progress {raft.status()['progress']}")
        parts += self.cluster.describe()
        return "; ".join(parts)

    def result(self, ok: bool, wall: float) -> SeedResult:
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
            committed=len(self.checkers.sm.history) - 1,
            elections=len(self.checkers.election.leaders),
            controller_closed=self.cluster.controller_closed,
            acked=self.workload.stats.acked,
            reads=self.checkers.reads.completed,
            faults=faults,
        )


def run_seed(seed: int, cfg: RunConfig | None = None) -> SeedResult:
    cfg = cfg or RunConfig()
    undo: Callable[[], None] | None = None
    if cfg.mutation:
        from simulations.mutations import apply_mutation

        undo = apply_mutation(cfg.mutation)
    start = time.perf_counter()
    sim: Simulation | NodeSimulation | None = None
    try:
        sim = NodeSimulation(seed, cfg) if cfg.whole_node else Simulation(seed, cfg)
        sim.run()
        res = sim.result(True, time.perf_counter() - start)
        if cfg.verbose:
            res.trace = sim.world.trace.render()
        return res
    except Violation as v:
        return _failed(sim, seed, v.invariant, v.detail, start, cfg)
    except BudgetExhausted as exc:
        detail = f"{exc}; " + (sim._explain() if sim is not None else "")
        return _failed(sim, seed, "liveness", detail, start, cfg)
    except Exception as exc:  # an exception from the core (or the simulator) is a finding too
        detail = f"{type(exc).__name__}: {exc}\n" + traceback.format_exc()
        return _failed(sim, seed, "exception", detail, start, cfg)
    finally:
        if sim is not None:
            sim.close()
        if undo is not None:
            undo()


def _failed(
    sim: Simulation | NodeSimulation | None, seed: int, invariant: str, detail: str, start: float, cfg: RunConfig
) -> SeedResult:
    wall = time.perf_counter() - start
    if sim is None:
        return SeedResult(seed=seed, ok=False, invariant=invariant, detail=detail, wall_s=wall)
    res = sim.result(False, wall)
    res.invariant = invariant
    res.detail = detail
    res.trace = sim.world.trace.render(None if cfg.verbose else TRACE_TAIL)
    return res


def _run_one(args: tuple[int, RunConfig]) -> SeedResult:
    return run_seed(*args)


def run_many(seeds: Iterable[int], cfg: RunConfig, jobs: int = 1) -> Iterator[SeedResult]:
    """Run seeds (across `jobs` processes); yields results as they finish."""
    work = [(s, cfg) for s in seeds]
    if jobs <= 1 or len(work) <= 1:
        for w in work:
            yield _run_one(w)
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs) as pool:
        yield from pool.imap_unordered(_run_one, work, chunksize=4)
