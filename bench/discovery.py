"""Zero-configuration formation and voter replacement, measured.

    python bench/discovery.py [--sizes 3,5,7] [--runs 3] [--replace-after 3] [--stabilize 1]

Real `hana-node serve` processes on loopback with mDNS bound to 127.0.0.1
(never the machine's network cards), no peer lists, a fresh cluster name per
run. Prints:
- formation: for N nodes started together with --expect N, the time from
  the first process start to the first committed write (a client tries
  every node until one answers 200), and to every node agreeing on a
  controller; median, min and max of --runs;
- replacement: 5 voters and 2 learners (--voters 5); SIGKILL a voter that is
  not the controller; the time until the controller reports 5 voters again
  without it, with the autopilot's replace_after / stabilization given.
Every process started is killed by PID at the end. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.client import ApiError, MeshClient, Unreachable
from mesh.launcher import ProcessCluster

SECRET = "bench-secret-0123456789abcdef"


class Mesh:
    def __init__(self, root: Path, extra: list[str]) -> None:
        self.root = root
        self.cluster = f"bench-{secrets.token_hex(4)}"
        self.extra = extra
        self.procs = ProcessCluster(root)
        self.apis: dict[str, str] = {}

    def start(self, ids: list[str], args: list[str]) -> None:
        env = dict(os.environ, HANA_SECRET=SECRET, HANA_MDNS_INTERFACES="127.0.0.1")
        for nid in ids:
            node = self.procs.add(
                nid, cluster=self.cluster, mdns=True, args=["--log-level", "WARNING", *self.extra, *args]
            )
            self.apis[nid] = node.api
        for nid in ids:
            self.procs.start(nid, env)

    def kill(self, nid: str) -> None:
        self.procs.nodes[nid].kill()

    def stop(self) -> None:
        self.procs.stop_everything()

    async def status(self, nid: str) -> dict[str, Any] | None:
        try:
            async with MeshClient(self.apis[nid], timeout=1.0) as c:
                return await c.status()
        except (Unreachable, ApiError):
            return None

    async def agreed(self, ids: list[str]) -> dict[str, Any] | None:
        docs = await asyncio.gather(*(self.status(n) for n in ids))
        if any(d is None for d in docs):
            return None
        leaders = {d["leader"] for d in docs if d is not None}
        if len(leaders) != 1 or None in leaders:
            return None
        return next(d for d in docs if d is not None and d["id"] == next(iter(leaders)))

    async def first_write(self, ids: list[str], deadline: float) -> float:
        while time.monotonic() < deadline:
            for nid in ids:
                try:
                    async with MeshClient(self.apis[nid], timeout=2.0) as c:
                        await c.put("parameters/bench-first", {"t": time.time()})
                    return time.monotonic()
                except (Unreachable, ApiError):
                    continue
            await asyncio.sleep(0.05)
        raise TimeoutError("no write committed")


def voters_of(doc: dict[str, Any]) -> set[str]:
    return {m["id"] for m in doc["members"] if m["voter"]}


async def formation(n: int, extra: list[str]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="hana-bench-disc-") as tmp:
        mesh = Mesh(Path(tmp), extra)
        ids = [f"n{i}" for i in range(1, n + 1)]
        try:
            t0 = time.monotonic()
            mesh.start(ids, ["--expect", str(n), "--voters", str(max(n, 5))])
            deadline = t0 + 60
            wrote = await mesh.first_write(ids, deadline)
            while time.monotonic() < deadline:
                doc = await mesh.agreed(ids)
                if doc is not None and len(voters_of(doc)) == n:
                    return wrote - t0, time.monotonic() - t0
                await asyncio.sleep(0.05)
            raise TimeoutError("nodes never agreed")
        finally:
            mesh.stop()


async def replacement(extra: list[str]) -> float:
    """Seconds from SIGKILL of a voter to 5 voters again without it."""
    with tempfile.TemporaryDirectory(prefix="hana-bench-disc-") as tmp:
        mesh = Mesh(Path(tmp), extra)
        ids = [f"n{i}" for i in range(1, 6)]
        try:
            mesh.start(ids, ["--expect", "5", "--voters", "5"])
            everyone = [*ids, "n6", "n7"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                doc = await mesh.agreed(ids)
                if doc is not None and len(voters_of(doc)) == 5:
                    break
                await asyncio.sleep(0.05)
            mesh.start(["n6", "n7"], ["--expect", "5", "--voters", "5"])
            while time.monotonic() < deadline:
                doc = await mesh.agreed(everyone)
                if doc is not None and len(doc["members"]) == 7:
                    break
                await asyncio.sleep(0.05)
            else:
                raise TimeoutError("learners never joined")
            leader = doc["id"]
            victim = next(v for v in sorted(voters_of(doc)) if v != leader)
            mesh.kill(victim)
            t0 = time.monotonic()
            deadline = t0 + 60
            while time.monotonic() < deadline:
                d = await mesh.status(leader)
                if d is not None and victim not in voters_of(d) and len(voters_of(d)) == 5:
                    return time.monotonic() - t0
                await asyncio.sleep(0.05)
            raise TimeoutError("voter count never restored")
        finally:
            mesh.stop()


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs):5.2f}s  min {min(xs):5.2f}s  max {max(xs):5.2f}s"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="3,5,7")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--replace-after", type=float, default=3.0)
    ap.add_argument("--stabilize", type=float, default=1.0)
    ap.add_argument("--browse-window", type=float, default=2.0)
    args = ap.parse_args()
    extra = [
        "--autopilot-stabilize", str(args.stabilize),
        "--autopilot-replace-after", str(args.replace_after),
        "--browse-window", str(args.browse_window),
    ]  # fmt: skip
    print(f"# {platform.node()} {platform.python_version()} cpus={os.cpu_count()} mDNS on 127.0.0.1")
    print(
        f"# browse window {args.browse_window}s, stabilization {args.stabilize}s, replace_after {args.replace_after}s"
    )
    for n in (int(x) for x in args.sizes.split(",")):
        writes, agreed = [], []
        for _ in range(args.runs):
            w, a = await formation(n, extra)
            writes.append(w)
            agreed.append(a)
        print(f"formation N={n}: first committed write {summary(writes)} | all agree on a controller {summary(agreed)}")
    restored = []
    for _ in range(args.runs):
        restored.append(await replacement(extra))
    print(f"replacement (5 voters + 2 learners, SIGKILL a voter): voter count restored {summary(restored)}")


if __name__ == "__main__":
    asyncio.run(main())
