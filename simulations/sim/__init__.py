"""The deterministic simulator: production `Replica`s over in-memory stores in
a seeded world with a faulty network, crashes, pauses and membership churn,
checked after every step."""

from simulations.sim.checkers import Violation
from simulations.sim.options import FAULT_KINDS, Options
from simulations.sim.runner import RunConfig, SeedResult, Simulation, run_many, run_seed

__all__ = ["FAULT_KINDS", "Options", "RunConfig", "SeedResult", "Simulation", "Violation", "run_many", "run_seed"]
