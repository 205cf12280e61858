"""The deterministic simulator: production code over in-memory stores in a
seeded world with a faulty network, crashes, pauses and membership churn,
checked after every step. Two modes share the world, network, options,
faults and Raft-level checkers: bare `Replica`s with a hash-chain state
machine (the default: cluster.py, workload.py, runner.py), and whole nodes,
the node core with HanaState driven as the asyncio runtime drives it, with
clients and watchers whose histories the chaos checker judges
(`RunConfig(whole_node=True)`: nodes.py, clients.py, wholenode.py)."""

from simulations.sim.checkers import Violation
from simulations.sim.options import FAULT_KINDS, Options
from simulations.sim.runner import RunConfig, SeedResult, Simulation, run_many, run_seed

__all__ = ["FAULT_KINDS", "Options", "RunConfig", "SeedResult", "Simulation", "Violation", "run_many", "run_seed"]
