"""Pure cost of the Raft core: no disk, no sockets, no event loop.

    python bench/raft_core.py [--seconds S] [--seeds N]

1. Proposals committed per second by a 3-node cluster over a perfect,
   in-process network (every message delivered at once, in order), with
   proposals arriving one per Ready (sequential client) and in batches of 16
   and 256 (pipelined clients), plus the message-codec cost when every
   message is encoded to a dict and decoded again as the transport does.
2. Simulated seeds per wall second of the deterministic simulator (if the
   simulator is importable), for 3, 5 and 7 nodes.

Figures are printed with the machine noted; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mesh.raft import Config, ConfState, Message, RawNode, Role, bootstrap_entries
from mesh.storage.memory import MemoryStorage


class PerfectCluster:
    def __init__(self, n: int, codec: bool) -> None:
        ids = [f"n{i}" for i in range(1, n + 1)]
        conf = ConfState.of(ids)
        self.codec = codec
        self.stores: dict[str, MemoryStorage] = {}
        self.nodes: dict[str, RawNode] = {}
        for nid in ids:
            store = MemoryStorage()
            ents, hs = bootstrap_entries(conf)
            store.append(ents)
            store.set_hard_state(hs)
            store.sync()
            self.stores[nid] = store
            self.nodes[nid] = RawNode(Config(id=nid, rng=random.Random(nid)), store)
        self.queue: deque[Message] = deque()
        self.applied = 0

    def pump(self) -> None:
        while True:
            progressed = False
            for nid, node in self.nodes.items():
                if not node.has_ready():
                    continue
                progressed = True
                rd = node.ready()
                store = self.stores[nid]
                if rd.snapshot is not None:
                    store.apply_snapshot(rd.snapshot)
                store.append(rd.entries)
                if rd.hard_state is not None:
                    store.set_hard_state(rd.hard_state)
                store.sync()
                self.queue.extend(rd.messages)
                if nid == self.leader():
                    self.applied += len(rd.committed_entries)
                node.advance(rd)
            while self.queue:
                progressed = True
                m = self.queue.popleft()
                if self.codec:
                    m = Message.from_dict(m.to_dict())
                self.nodes[m.to].step(m)
            if not progressed:
                return

    def leader(self) -> str | None:
        for nid, node in self.nodes.items():
            if node.raft.role == Role.LEADER:
                return nid
        return None

    def elect(self) -> str:
        first = next(iter(self.nodes))
        self.nodes[first].campaign()
        self.pump()
        lead = self.leader()
        if lead is None:
            raise RuntimeError("no leader elected on a perfect network")
        return lead


def bench_commits(batch: int, seconds: float, codec: bool) -> float:
    cluster = PerfectCluster(3, codec)
    lead = cluster.elect()
    node = cluster.nodes[lead]
    payload = b"x" * 64
    start_applied = cluster.applied
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            node.propose_batch([payload] * batch)
            cluster.pump()
    elapsed = time.perf_counter() - start
    return (cluster.applied - start_applied) / elapsed


def bench_seeds(nodes: int, seeds: int) -> tuple[float, float]:
    """Seeds per wall second on one core, and simulated seconds per wall second."""
    from simulations.sim.runner import RunConfig, run_seed

    cfg = RunConfig(nodes=nodes)
    start = time.perf_counter()
    simulated_us = 0
    for seed in range(seeds):
        result = run_seed(seed, cfg)
        if not result.ok:
            raise RuntimeError(result.report())
        simulated_us += result.sim_us
    elapsed = time.perf_counter() - start
    return seeds / elapsed, simulated_us / 1e6 / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each throughput run")
    parser.add_argument("--seeds", type=int, default=100, help="simulator seeds per cluster size")
    args = parser.parse_args(argv)
    print(
        f"machine: {platform.machine()} {platform.system()} {platform.release()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}"
    )
    print("\n3-node cluster, perfect in-process network, in-memory storage (pure core cost)")
    print(f"{'proposals per Ready':>20} {'codec':>6} {'commits/s':>12}")
    for batch in (1, 16, 256):
        for codec in (False, True):
            rate = bench_commits(batch, args.seconds, codec)
            print(f"{batch:>20} {'yes' if codec else 'no':>6} {rate:>12,.0f}")
    print("\ndeterministic simulator, all faults, one core")
    print(f"{'nodes':>6} {'seeds/s':>10} {'simulated s per wall s':>24}")
    for n in (3, 5, 7):
        rate, sim_rate = bench_seeds(n, args.seeds)
        print(f"{n:>6} {rate:>10.1f} {sim_rate:>24.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
