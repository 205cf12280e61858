"""The deterministic simulator runs unchanged on the real on-disk store: each
simulated crash closes the store without syncing and reopens the directory,
so recovery runs on every restart."""

from __future__ import annotations

import pytest

from mesh.storage.disk import DiskStorage
from simulations.sim import RunConfig, run_many
from simulations.sim.runner import Simulation


@pytest.mark.slow
def test_seeds_on_disk_storage_have_no_violations() -> None:
    results = list(run_many(range(40), RunConfig(disk=True), jobs=2))
    failed = [r.report() for r in results if not r.ok]
    assert not failed, failed[0]
    crashes = sum(r.faults.get("crash", 0) + r.faults.get("torn_write", 0) for r in results)
    assert crashes > 0, "no crash was injected: recovery was not exercised"
    assert sum(r.committed for r in results) > 0


def test_disk_mode_really_uses_the_disk_store() -> None:
    sim = Simulation(7, RunConfig(disk=True))
    try:
        assert all(isinstance(n.storage, DiskStorage) for n in sim.cluster.nodes.values())
        sim.run()
        assert sim.converged, sim.why_not
    finally:
        sim.close()
