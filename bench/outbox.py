"""The offline outbox's replay rate (issue 14): queued writes applied per
second after a node cut off from its controller hears one again.

    python bench/outbox.py [--writes 10000] [--keys 100]

Three nodes in this process (the node runtime over the on-disk store in a
temporary directory, real fsyncs, TCP on loopback). One follower is cut off
(every peer address between it and the others points at a port that
refuses connections) until it says it is not connected; then `--writes`
writes are queued on it with `?offline=queue`'s path
(`MeshNode.propose_offline`, each one fsynced to the outbox file before it
returns), over `--keys` keys of an lww component. Then the cut is healed
and the clock runs until its outbox is empty: every queued write has a
final fate (applied, here), replayed through the controller, committed on
a majority and applied on the node. Prints the queueing rate, the replay
rate (writes/s from the heal to the last fate) and the machine. Nothing is
asserted; timings belong here, not in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.launcher import listening_socket
from mesh.node.runtime import MeshNode, NodeConfig
from mesh.raft import Role
from mesh.storage.disk import DiskStorage

SECRET = b"bench-outbox-secret-0123456789"


async def until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def run(root: Path, writes: int, keys: int) -> dict[str, float]:
    ids = ["n1", "n2", "n3"]
    socks = {nid: listening_socket() for nid in ids}
    addrs = {nid: ("127.0.0.1", int(s.getsockname()[1])) for nid, s in socks.items()}
    nodes = {}
    for n, nid in enumerate(ids):
        cfg = NodeConfig(nid, "bench", SECRET, raft_port=addrs[nid][1], peers=addrs, seed=n, offline_wait=0.0)
        nodes[nid] = MeshNode(cfg, DiskStorage(root / nid))
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_addr = ("127.0.0.1", int(dead.getsockname()[1]))
    try:
        for nid, node in nodes.items():
            await node.start(socks[nid])
        await until(lambda: any(n.core.role == Role.LEADER for n in nodes.values()), 20, "a leader")
        lead = next(nid for nid, n in nodes.items() if n.core.role == Role.LEADER)
        off = next(nid for nid in ids if nid != lead)
        node = nodes[off]
        await until(node.connected, 20, "the follower to hear the controller")
        for other in ids:
            if other != off:
                node.transport.set_peer(other, dead_addr)
                nodes[other].transport.set_peer(off, dead_addr)
        await until(lambda: not node.connected(), 20, "the follower to be cut off")
        started = time.perf_counter()
        for i in range(writes):
            command = {"op": "put", "key": f"parameters/bench/k{i % keys}", "value": i, "author": "bench"}
            answer = await node.propose_offline(node.kv.prepare(command))
            assert "queued" in answer, answer
        queued_s = time.perf_counter() - started
        started = time.perf_counter()
        for other in ids:
            if other != off:
                node.transport.set_peer(other, addrs[other])
                nodes[other].transport.set_peer(off, addrs[off])
        await until(lambda: node.core.outbox.count() == 0, 3600, "the outbox to replay")
        replay_s = time.perf_counter() - started
        states: dict[str, int] = {}
        for item in node.core.outbox.items.values():
            states[item.state] = states.get(item.state, 0) + 1
        print(f"fates of the last {sum(states.values())} held: {states}")
        return {"queue_per_s": writes / queued_s, "replay_per_s": writes / replay_s, "replay_s": replay_s}
    finally:
        for n in nodes.values():
            await n.stop(transfer=False)
        dead.close()
        for s in socks.values():
            s.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100)
    args = parser.parse_args(argv)
    print(
        f"machine: {platform.machine()} {platform.system()} {platform.release()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )
    root = Path(tempfile.mkdtemp(prefix="hana-bench-outbox-"))
    try:
        res = asyncio.run(run(root, args.writes, args.keys))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"queued {args.writes} offline writes: {res['queue_per_s']:.0f} writes/s (each fsynced to the outbox)")
    print(
        f"outbox replay: {args.writes} queued writes applied in {res['replay_s']:.2f} s = "
        f"{res['replay_per_s']:.0f} writes/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
