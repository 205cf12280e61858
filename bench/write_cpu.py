"""CPU per write of the node's own path, and peer messages per write.

    python bench/write_cpu.py [--seconds S] [--clients 1,16,64]
    python bench/write_cpu.py --compare /path/to/other/checkout [--rounds N]

Runs a 3-node mesh inside one process (MeshNodes over real TCP on
loopback, memory storage: no disk, no HTTP), proposes 64-byte puts straight
to the leader's `propose` from 1, 16 and 64 concurrent writers, and prints
for each: writes per second, the process CPU per write in ms (all three
nodes together, the idle CPU measured before the load subtracted) and the
peer messages sent per write (all nodes). One process and no HTTP make the
figure less noisy than bench/mesh.py's, and the message count does not
depend on the machine at all (for one writer: 8 on main before issue 17,
6 after).

With --compare, this checkout and the other one run in alternating order
(each in a fresh subprocess, `rounds` times) and the medians are printed
side by side with their ratio: an A/B on a loaded machine. Every process
started is waited for; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


async def measure(clients: list[int], seconds: float) -> dict[str, Any]:
    from mesh.launcher import listening_socket
    from mesh.node.runtime import MeshNode, NodeConfig
    from mesh.raft import Role
    from mesh.storage.memory import MemoryStorage

    ids = ["a", "b", "c"]
    socks = {nid: listening_socket() for nid in ids}
    peers = {nid: ("127.0.0.1", int(s.getsockname()[1])) for nid, s in socks.items()}
    nodes = {
        nid: MeshNode(
            NodeConfig(nid, "hana", b"bench-secret-0123456789", raft_port=peers[nid][1], peers=peers, seed=n),
            MemoryStorage(),
        )
        for n, nid in enumerate(ids)
    }
    started: list[MeshNode] = []
    out: dict[str, Any] = {}
    try:
        for nid, node in nodes.items():
            await node.start(socks.pop(nid))
            started.append(node)
        async with asyncio.timeout(30):
            while True:
                lead = next((nid for nid, n in nodes.items() if n.replica.raft.role == Role.LEADER), None)
                if lead is not None and all(n.replica.raft.lead == lead for n in nodes.values()):
                    break
                await asyncio.sleep(0.02)
        leader = nodes[lead]
        for i in range(200):  # warm up: connections, caches
            await leader.propose({"op": "put", "key": f"parameters/warm{i}", "value": "v", "author": "bench"})
        await asyncio.sleep(0.5)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(1.0)
        idle = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        out["idle_cpu_percent"] = idle * 100
        value = "v" * 64
        for count in clients:
            done = 0
            stop = time.perf_counter() + seconds

            async def writer(w: int, stop: float = stop) -> None:
                nonlocal done
                i = 0
                while time.perf_counter() < stop:
                    key = f"parameters/bench-w{w}-{i % 100}"
                    await leader.propose({"op": "put", "key": key, "value": value, "author": "bench"})
                    done += 1
                    i += 1

            sent0 = sum(n.transport.stats.sent for n in nodes.values())
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(writer(w) for w in range(count)))
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            sent = sum(n.transport.stats.sent for n in nodes.values()) - sent0
            out[str(count)] = {
                "writes_per_s": done / wall,
                "cpu_ms_per_write": (cpu - idle * wall) / done * 1000,
                "messages_per_write": sent / done,
            }
    finally:
        for node in started:
            await node.stop(transfer=False)
        for sock in socks.values():
            sock.close()
    return out


def run_here(clients: list[int], seconds: float) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(measure(clients, seconds))
    except ImportError:
        return asyncio.run(measure(clients, seconds))


def run_checkout(root: Path, clients: list[int], seconds: float) -> dict[str, Any]:
    """One measurement of the checkout at `root`, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--json", "--seconds", str(seconds),
         "--clients", ",".join(map(str, clients))],
        env=env, cwd=str(root), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {root} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each load phase")
    parser.add_argument("--clients", default="1,16,64", help="concurrent writers, comma-separated")
    parser.add_argument("--compare", type=Path, help="another checkout to run against, alternating")
    parser.add_argument("--rounds", type=int, default=4, help="with --compare: runs of each checkout")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    if args.json:
        sys.path.insert(0, str(Path.cwd()))
        print(json.dumps(run_here(clients, args.seconds)))
        return 0
    builds = {"this": ROOT}
    if args.compare is not None:
        builds = {"other": args.compare.resolve(), "this": ROOT}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in builds}
    for r in range(args.rounds if args.compare is not None else 1):
        order = list(builds) if r % 2 == 0 else list(builds)[::-1]
        for name in order:
            runs[name].append(run_checkout(builds[name], clients, args.seconds))
            print(f"round {r + 1}: {name} measured", file=sys.stderr, flush=True)
    print(f"{'writers':>8}  {'checkout':<8} {'writes/s':>10} {'CPU ms/write':>13} {'msgs/write':>11}")
    for c in clients:
        med = {
            name: {k: statistics.median(run[str(c)][k] for run in rs) for k in rs[0][str(c)]}
            for name, rs in runs.items()
        }
        for name, m in med.items():
            print(
                f"{c:>8}  {name:<8} {m['writes_per_s']:>10,.0f} {m['cpu_ms_per_write']:>13.3f} "
                f"{m['messages_per_write']:>11.2f}"
            )
        if len(med) == 2:
            a, b = med["other"], med["this"]
            print(
                f"{'':>8}  {'this/other':<8} {b['writes_per_s'] / a['writes_per_s']:>9.2f}x "
                f"{b['cpu_ms_per_write'] / a['cpu_ms_per_write']:>12.2f}x "
                f"{b['messages_per_write'] / a['messages_per_write']:>10.2f}x"
            )
    idle = {name: statistics.median(run["idle_cpu_percent"] for run in rs) for name, rs in runs.items()}
    print("idle CPU (% of a core, whole process): " + ", ".join(f"{n} {v:.2f}" for n, v in idle.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
