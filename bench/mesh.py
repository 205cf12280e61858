"""hana mesh vs etcd, side by side, same machine, same client, same run.

    python bench/mesh.py [--seconds 5] [--failovers 5] [--skip-etcd] [--tls [--rounds 2]]

Starts a 3-node hana mesh (`hana-node serve`, fsync on) and a 3-member etcd
cluster (Debian's etcd-server: `apt-get install etcd-server`) on loopback,
drives both through HTTP from one asyncio client process (etcd through its
JSON gateway, /v3/kv/*), and prints:
- write throughput with 1, 16 and 64 concurrent clients, p50/p99 latency;
- linearizable read throughput with 16 clients;
- failover: SIGKILL of the leader until the next acknowledged write, from a
  client that keeps writing to a surviving member (median of N).
Every process started is stopped by PID at the end. Nothing is asserted.

With --tls, hana runs twice per round, without and with TLS (mutual TLS 1.3
on the peer links, HTTPS on the API with the client verifying the cluster
CA), in alternating order (plain first in odd rounds, TLS first in even
ones: a loaded machine drifts), and the table adds the TLS/plain ratio.
Throughputs are averaged over the rounds, failover trials pooled.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

# The repository's own package first (this directory holds a mesh.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.launcher import ProcessCluster, ServeProcess, free_ports

SECRET = "bench-secret-0123456789abcdef"


@dataclass
class Member:
    name: str
    client_url: str
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    # A hana node starts through the launcher (its ports handed over, no race).
    serve: ServeProcess | None = None


@dataclass
class System:
    label: str
    members: list[Member] = field(default_factory=list)
    # The CA bundle the client verifies an HTTPS API against.
    ca: Path | None = None

    def start(self, m: Member) -> None:
        if m.serve is not None:
            m.proc = m.serve.start(m.env)
        else:
            m.proc = subprocess.Popen(m.cmd, env=m.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_all(self) -> None:
        for m in self.members:
            self.start(m)

    def stop_all(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.terminate()
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait()


HANA = "hana mesh"
HANA_TLS = "hana+TLS"


def hana_system(root: Path, tls: bool = False) -> System:
    mesh = ProcessCluster(root, tls=tls)
    for nid in ("h1", "h2", "h3"):
        mesh.add(nid, args=["--log-level", "WARNING"])
    peers = mesh.static_peers()
    sysm = System(HANA_TLS if tls else HANA)
    env = dict(os.environ, HANA_SECRET=SECRET, HANA_MDNS_INTERFACES="127.0.0.1")
    for nid, node in mesh.nodes.items():
        node.peers = peers
        sysm.members.append(Member(nid, node.url, node.command(), env, serve=node))
        sysm.ca = node.ca
    return sysm


def etcd_system(root: Path) -> System:
    # etcd binds its own ports: chosen free now (a small race, bench only).
    ports = free_ports(6)
    names = ["e1", "e2", "e3"]
    initial = ",".join(f"{n}=http://127.0.0.1:{ports[3 + i]}" for i, n in enumerate(names))
    sysm = System("etcd")
    for i, n in enumerate(names):
        client, peer = f"http://127.0.0.1:{ports[i]}", f"http://127.0.0.1:{ports[3 + i]}"
        cmd = [
            "etcd", "--name", n, "--data-dir", str(root / n),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", "bench", "--log-level", "error",
        ]  # fmt: skip
        sysm.members.append(Member(n, client, cmd, dict(os.environ)))
    return sysm


class Driver:
    """The operations of one system, over HTTP."""

    def __init__(self, sysm: System, session: aiohttp.ClientSession) -> None:
        self.sys = sysm
        self.s = session
        self.etcd = sysm.label == "etcd"

    async def put(self, url: str, key: str, value: bytes) -> None:
        if self.etcd:
            body = {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value).decode()}
            async with self.s.post(f"{url}/v3/kv/put", data=orjson.dumps(body)) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"etcd put {r.status}")
        else:
            async with self.s.put(
                f"{url}/v1/kv/parameters/bench-{key}",
                data=orjson.dumps({"value": value.decode()}),
                headers={"Content-Type": "application/json"},
            ) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"hana put {r.status}")

    async def get(self, url: str, key: str) -> None:
        if self.etcd:
            body = {"key": base64.b64encode(key.encode()).decode()}
            async with self.s.post(f"{url}/v3/kv/range", data=orjson.dumps(body)) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"etcd range {r.status}")
        else:
            async with self.s.get(f"{url}/v1/kv/parameters/bench-{key}") as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"hana get {r.status}")

    async def _status(self, m: Member) -> tuple[bool, int] | None:
        """(is leader, term) as member `m` reports them; None if it cannot say."""
        if m.proc is None or m.proc.poll() is not None:
            return None
        try:
            if self.etcd:
                async with self.s.post(f"{m.client_url}/v3/maintenance/status", data=b"{}") as r:
                    doc = await r.json(content_type=None)
                is_leader = bool(doc.get("leader")) and doc["leader"] == doc["header"]["member_id"]
                return is_leader, int(doc.get("raftTerm", doc.get("raft_term", 0)))
            async with self.s.get(f"{m.client_url}/v1/status") as r:
                doc = await r.json()
            return doc.get("role") == "leader", int(doc["term"])
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
            return None

    async def leader(self) -> Member | None:
        for m in self.sys.members:
            status = await self._status(m)
            if status is not None and status[0]:
                return m
        return None

    async def term(self) -> int:
        """The highest Raft term any live member reports."""
        terms = [status[1] for m in self.sys.members if (status := await self._status(m)) is not None]
        return max(terms, default=0)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = await self.leader()
            if lead is not None:
                try:
                    await self.put(lead.client_url, "ready", b"1")
                    return
                except (aiohttp.ClientError, RuntimeError, TimeoutError):
                    pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.sys.label} did not become ready")


async def write_load(d: Driver, clients: int, seconds: float) -> tuple[float, float, float]:
    lead = await d.leader()
    assert lead is not None
    url = lead.client_url
    lat: list[float] = []
    stop = time.monotonic() + seconds
    value = b"v" * 64

    async def worker(w: int) -> None:
        i = 0
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            await d.put(url, f"w{w}-{i % 100}", value)
            lat.append(time.perf_counter() - t0)
            i += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    elapsed = time.monotonic() - t0
    lat.sort()
    return len(lat) / elapsed, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


async def read_load(d: Driver, clients: int, seconds: float) -> float:
    lead = await d.leader()
    assert lead is not None
    await d.put(lead.client_url, "r", b"x")
    # Spread linearizable reads over every member, followers included.
    urls = [m.client_url for m in d.sys.members]
    count = 0
    stop = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal count
        while time.monotonic() < stop:
            try:
                await d.get(urls[w % len(urls)], "r")
            except RuntimeError:
                # A 503 (no controller known for a moment): not counted.
                await asyncio.sleep(0.01)
                continue
            count += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    return count / (time.monotonic() - t0)


async def failover(d: Driver, trials: int) -> list[float]:
    out = []
    for _ in range(trials):
        await d.wait_ready()
        lead = await d.leader()
        assert lead is not None and lead.proc is not None
        others = [m for m in d.sys.members if m is not lead]
        t0 = time.monotonic()
        lead.proc.send_signal(signal.SIGKILL)
        lead.proc.wait()
        i = 0
        while True:
            target = others[i % len(others)]
            i += 1
            try:
                await asyncio.wait_for(d.put(target.client_url, "failover", b"x"), 0.5)
                break
            except (aiohttp.ClientError, RuntimeError, TimeoutError):
                await asyncio.sleep(0.01)
        out.append(time.monotonic() - t0)
        d.sys.start(lead)
        await asyncio.sleep(1.0)  # let the restarted member rejoin before the next trial
    return out


async def measure(sysm: System, seconds: float, trials: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=10)
    tls = ssl.create_default_context(cafile=str(sysm.ca)) if sysm.ca is not None else True
    conn = aiohttp.TCPConnector(limit=0, ssl=tls)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
        d = Driver(sysm, session)
        await d.wait_ready()
        term_before = await d.term()
        for clients in (1, 16, 64):
            results[f"w{clients}"] = await write_load(d, clients, seconds)
        # Elections during the write phases: any would be spurious (no faults).
        results["elections_under_load"] = await d.term() - term_before
        results["r16"] = await read_load(d, 16, seconds)
        results["failover"] = await failover(d, trials)
    return results


def print_table(machine: str, res: dict[str, dict[str, Any]]) -> None:
    systems = list(res)
    print(f"\n{machine}")
    header = f"{'measure':<34}" + "".join(f"{s:>16}" for s in systems)
    ratios: list[tuple[int, int]] = []
    if HANA_TLS in systems:
        ratios.append((systems.index(HANA_TLS), systems.index(HANA)))
        header += f"{'TLS/plain':>12}"
    if "etcd" in systems:
        ratios.append((systems.index(HANA), systems.index("etcd")))
        header += f"{'hana/etcd':>12}"
    print(header)

    def row(label: str, values: list[float], fmt: str, higher_better: bool = True) -> None:
        line = f"{label:<34}" + "".join(f"{v:>16{fmt}}" for v in values)
        for a, b in ratios:
            line += f"{values[a] / values[b]:>11.2f}x" if values[b] else f"{'-':>12}"
        print(line)

    for clients in (1, 16, 64):
        row(f"writes/s, {clients} client(s)", [res[s][f"w{clients}"][0] for s in systems], ",.0f")
        row(f"  p50 latency ms, {clients}", [res[s][f"w{clients}"][1] for s in systems], ".2f")
        row(f"  p99 latency ms, {clients}", [res[s][f"w{clients}"][2] for s in systems], ".2f")
    row("linearizable reads/s, 16 clients", [res[s]["r16"] for s in systems], ",.0f")
    row("elections during write load", [float(res[s]["elections_under_load"]) for s in systems], ".0f")
    row("failover s (median)", [statistics.median(res[s]["failover"]) for s in systems], ".3f")
    for s in systems:
        print(f"  {s} failover trials: " + ", ".join(f"{t:.3f}" for t in res[s]["failover"]))


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one system: mean throughputs, median latencies, failover
    trials pooled, elections summed."""
    out: dict[str, Any] = {}
    for key in ("w1", "w16", "w64"):
        out[key] = (
            statistics.fmean(r[key][0] for r in runs),
            statistics.median(r[key][1] for r in runs),
            statistics.median(r[key][2] for r in runs),
        )
    out["r16"] = statistics.fmean(r["r16"] for r in runs)
    out["elections_under_load"] = sum(r["elections_under_load"] for r in runs)
    out["failover"] = [t for r in runs for t in r["failover"]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load phase")
    parser.add_argument("--failovers", type=int, default=5, help="failover trials per system")
    parser.add_argument("--skip-etcd", action="store_true")
    parser.add_argument("--tls", action="store_true", help="hana also with TLS on peers and API (TLS/plain ratio)")
    parser.add_argument("--rounds", type=int, default=2, help="with --tls: rounds of plain+TLS, order alternating")
    parser.add_argument(
        "--client-uvloop",
        action="store_true",
        help="run the load client on uvloop (its TLS is in C; asyncio's is partly Python, and the one client "
        "process drives all 64 connections on the same cores as the nodes)",
    )
    args = parser.parse_args(argv)
    machine = (
        f"machine: {platform.machine()} {platform.system()} {platform.release()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}"
    )
    systems: list[System] = []
    root = Path(tempfile.mkdtemp(prefix="hana-bench-"))
    try:
        systems.append(hana_system(root / "hana"))
        order = list(systems)
        if args.tls:
            systems.append(hana_system(root / "hana-tls", tls=True))
            order = []
            for r in range(max(1, args.rounds)):
                order += systems if r % 2 == 0 else systems[::-1]
        if not args.skip_etcd:
            if shutil.which("etcd") is None:
                print("etcd not found: apt-get install etcd-server (or pass --skip-etcd)", file=sys.stderr)
                return 2
            systems.append(etcd_system(root / "etcd"))
            order.append(systems[-1])
        runs: dict[str, list[dict[str, Any]]] = {}
        for sysm in order:
            sysm.start_all()
            try:
                print(f"measuring {sysm.label} …", flush=True)
                runner = asyncio.run
                if args.client_uvloop:
                    import uvloop

                    runner = uvloop.run
                runs.setdefault(sysm.label, []).append(runner(measure(sysm, args.seconds, args.failovers)))
            finally:
                sysm.stop_all()
        results = {label: combine(rs) for label, rs in runs.items()}
        if args.tls:
            for label in (HANA, HANA_TLS):
                print(f"  {label} writes/s by round (1, 16, 64 clients): " + "; ".join(
                    ", ".join(f"{r[f'w{c}'][0]:.0f}" for c in (1, 16, 64)) for r in runs[label]))  # fmt: skip
        print_table(machine, results)
    finally:
        for sysm in systems:
            sysm.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
