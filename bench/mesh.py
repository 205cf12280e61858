"""hana mesh vs etcd, side by side, same machine, same client, same run.

    python bench/mesh.py [--runs 3] [--seconds 3] [--failovers 9] [--idle-seconds 30] [--idle-mdns]
                         [--restarts 3] [--big-entries 1000000] [--big-tail 5000] [--big-dir DIR]
                         [--only load,failover,restart,idle] [--skip-etcd] [--tls]

A default run takes about 6 minutes on 2 cores (the 1,000,000-entry
directory alone takes 45-95 s to build; `--big-dir` reuses one built before
with `python bench/bigdata.py DIR`).

Starts 3-node hana meshes (`hana-node serve` through mesh/launcher.py, fsync
on, static --peers, no mDNS) and 3-member etcd clusters (Debian's
etcd-server: `apt-get install etcd-server`) on loopback, drives both over
HTTP from this one asyncio process (etcd through its JSON gateway, /v3/*),
and prints, with the machine it ran on:

1. load (the issue's table): sequential writes/s and latency (1 client),
   writes/s at 16 and 64 clients, linearizable reads/s at 16 clients spread
   over every member, and the cluster's CPU seconds per 1,000 writes at 1 and
   64 clients (utime + stime from /proc/<pid>/stat of every member process,
   summed, over the load phase only). `--runs` runs (default 3), each on
   fresh clusters, in alternating order (hana first in odd runs, etcd first
   in even ones: a loaded machine drifts); each figure's median and range
   (min-max), the hana/etcd ratio of the medians, and each goal of issue 17
   marked met or missed. Term changes during the 64-client phases count
   spurious elections (goal 0).
2. failover, on a fresh cluster per system: the controller (leader) killed
   with SIGKILL (its sockets close, as in a crash), or stopped with SIGSTOP
   (its sockets stay open, like a pulled cable); the time from the signal to
   the first write acknowledged by a surviving member, which a client sends
   a new write to every 10 ms. The crashed member is restarted, the stopped
   one continued, and the cluster is healthy again (one leader all members
   agree on, every hana member caught up) before the next trial.
3. restart of a member whose log holds 1,000,000 entries (snapshot plus a
   tail of 5,000): the directory is built by bench/bigdata.py with the
   node's own storage layer and state machine (its docstring says how);
   each of three copies is a voter's directory. Two members start; then the
   third, and the time from its process start until it answers a
   linearizable GET /v1/kv/<key> with the tail's last value is printed
   (then again after SIGKILL and restart), and when its API first answers
   GET /v1/status. etcd: not measured (its log would need 1,000,000 writes
   through its API).
4. idle CPU: % of one core of each member of an idle cluster over
   `--idle-seconds` (default 30; the failover cluster, 2 s after it is
   healthy, before its trials), from /proc/<pid>/stat, the leader's and the
   followers' apart (a leader sends the heartbeats, a follower answers
   them): one clock tick (10 ms) is 0.033% over 30 s. With --idle-mdns, a
   third hana cluster with mDNS discovery on (loopback only,
   HANA_MDNS_INTERFACES=127.0.0.1, besides its static --peers) is measured
   idle too: the other hana clusters run with --no-mdns.

Every process started is stopped by PID at the end (SIGCONT first), on
Ctrl-C and on error too. Nothing is asserted: the bench prints.

With --tls, a hana mesh with TLS (mutual TLS 1.3 on the peer links, HTTPS
on the API with the client verifying the cluster CA) runs too, in the same
alternating order, and the tables add its figures and a TLS/plain ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table

# The repository's own package first (this directory holds a mesh.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bigdata
from mesh.launcher import ProcessCluster, ServeProcess, free_ports

SECRET = "bench-secret-0123456789abcdef"
HANA = "hana"
HANA_TLS = "hana+TLS"
HANA_MDNS = "hana+mDNS"
ETCD = "etcd"
PARTS = ("load", "failover", "restart", "idle")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes ------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (every thread of it), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name is in parentheses and may hold spaces: fields after it.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Member:
    name: str
    client_url: str
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    # A hana node starts through the launcher (its ports handed over, no race).
    serve: ServeProcess | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class System:
    label: str
    members: list[Member] = field(default_factory=list)
    # The CA bundle the client verifies an HTTPS API against.
    ca: Path | None = None
    # Every process ever started, stopped by PID in stop_all.
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def etcd(self) -> bool:
        return self.label == ETCD

    def start(self, m: Member) -> None:
        if m.serve is not None:
            m.proc = m.serve.start(m.env)
        else:
            m.proc = subprocess.Popen(m.cmd, env=m.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.started.append(m.proc)

    def start_all(self) -> None:
        for m in self.members:
            self.start(m)

    def cpu_seconds(self) -> float:
        """The CPU time of every live member, summed."""
        total = 0.0
        for m in self.members:
            if m.alive():
                assert m.proc is not None
                with contextlib.suppress(OSError):
                    total += proc_cpu_seconds(m.proc.pid)
        return total

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                    proc.terminate()
        for proc in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for m in self.members:
            if m.serve is not None:
                m.serve.close()


def hana_system(
    root: Path, tls: bool = False, prepare: Callable[[ServeProcess], None] | None = None, mdns: bool = False
) -> System:
    """A 3-node mesh (not started); `prepare(node)` runs for each node
    before anything starts (bench/bigdata.py's directories). With `mdns`,
    discovery runs too (on loopback, under a cluster name of this run)."""
    mesh = ProcessCluster(root, tls=tls)
    for nid in ("h1", "h2", "h3"):
        if mdns:
            mesh.add(nid, args=["--log-level", "WARNING"], mdns=True, cluster=f"bench-{os.getpid()}")
        else:
            mesh.add(nid, args=["--log-level", "WARNING"])
    peers = mesh.static_peers()
    sysm = System(HANA_MDNS if mdns else HANA_TLS if tls else HANA)
    env = dict(os.environ, HANA_SECRET=SECRET, HANA_MDNS_INTERFACES="127.0.0.1")
    for nid, node in mesh.nodes.items():
        node.peers = peers
        if prepare is not None:
            prepare(node)
        sysm.members.append(Member(nid, node.url, node.command(), env, serve=node))
        sysm.ca = node.ca
    return sysm


def etcd_system(root: Path) -> System:
    # etcd binds its own ports: chosen free now (a small race, bench only).
    ports = free_ports(6)
    names = ["e1", "e2", "e3"]
    initial = ",".join(f"{n}=http://127.0.0.1:{ports[3 + i]}" for i, n in enumerate(names))
    sysm = System(ETCD)
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


# -- the client ----------------------------------------------------------------------


@dataclass(frozen=True)
class MemberStatus:
    leader: str  # the leader this member knows ("" for none)
    is_leader: bool
    term: int
    # hana: applied and commit index; etcd: raft index (twice).
    applied: int
    commit: int


class Driver:
    """The operations of one system, over HTTP."""

    def __init__(self, sysm: System, session: aiohttp.ClientSession) -> None:
        self.sys = sysm
        self.s = session
        self.etcd = sysm.etcd

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

    async def status(self, m: Member) -> MemberStatus | None:
        """What member `m` says of the cluster; None if it cannot say."""
        if not m.alive():
            return None
        try:
            if self.etcd:
                async with self.s.post(
                    f"{m.client_url}/v3/maintenance/status", data=b"{}", timeout=aiohttp.ClientTimeout(total=1)
                ) as r:
                    doc = await r.json(content_type=None)
                leader = str(doc.get("leader") or "")
                term = int(doc.get("raftTerm", doc.get("raft_term", 0)))
                index = int(doc.get("raftIndex", doc.get("raft_index", 0)))
                me = str(doc["header"]["member_id"])
                return MemberStatus(leader, leader != "" and leader == me, term, index, index)
            async with self.s.get(f"{m.client_url}/v1/status", timeout=aiohttp.ClientTimeout(total=1)) as r:
                doc = await r.json()
            return MemberStatus(
                str(doc.get("leader") or ""),
                doc.get("role") == "leader",
                int(doc["term"]),
                int(doc.get("applied_index", 0)),
                int(doc.get("commit_index", 0)),
            )
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError, TypeError):
            return None

    async def leader(self) -> Member | None:
        for m in self.sys.members:
            st = await self.status(m)
            if st is not None and st.is_leader:
                return m
        return None

    async def term(self) -> int:
        """The highest Raft term any live member reports."""
        terms = [st.term for m in self.sys.members if (st := await self.status(m)) is not None]
        return max(terms, default=0)

    async def healthy(self, timeout: float = 60.0) -> Member:
        """Wait until every member runs and answers, all name the same leader,
        that one says it leads, every hana member has applied what it
        committed, and a write through the leader succeeds. Returns the leader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = [await self.status(m) for m in self.sys.members]
            if all(st is not None for st in statuses):
                sts = [st for st in statuses if st is not None]
                leaders = {st.leader for st in sts}
                lead = [m for m, st in zip(self.sys.members, sts, strict=True) if st.is_leader]
                caught_up = self.etcd or len({st.applied for st in sts}) == 1
                if len(leaders) == 1 and "" not in leaders and len(lead) == 1 and caught_up:
                    try:
                        await asyncio.wait_for(self.put(lead[0].client_url, "ready", b"1"), 5)
                        return lead[0]
                    except (aiohttp.ClientError, RuntimeError, TimeoutError):
                        pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.sys.label} did not become healthy within {timeout:.0f} s")


def session_for(sysm: System) -> aiohttp.ClientSession:
    tls: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(sysm.ca)) if sysm.ca is not None else True
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=10), connector=aiohttp.TCPConnector(limit=0, ssl=tls)
    )


# -- load ------------------------------------------------------------------------------


async def write_load(d: Driver, clients: int, seconds: float) -> dict[str, float]:
    """`clients` writers on the leader for `seconds`: writes/s, p50/p99 ms,
    the cluster's CPU s per 1,000 writes, and the term changes meanwhile."""
    lead = await d.leader()
    if lead is None:
        raise RuntimeError(f"{d.sys.label}: no leader before a load phase")
    url = lead.client_url
    term0 = await d.term()
    lat: list[float] = []
    value = b"v" * 64
    cpu0 = d.sys.cpu_seconds()
    t0 = time.monotonic()
    stop = t0 + seconds

    errors = 0

    async def worker(w: int) -> None:
        nonlocal errors
        i = 0
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                await d.put(url, f"w{w}-{i % 100}", value)
            except (aiohttp.ClientError, RuntimeError, TimeoutError):
                # Not acknowledged (a 503 or 504 during an election): counted
                # apart, not in the rate or the latencies.
                errors += 1
                await asyncio.sleep(0.01)
                continue
            lat.append(time.perf_counter() - t)
            i += 1

    await asyncio.gather(*(worker(w) for w in range(clients)))
    elapsed = time.monotonic() - t0
    cpu = d.sys.cpu_seconds() - cpu0
    terms = await d.term() - term0
    if not lat:
        raise RuntimeError(f"{d.sys.label}: no write acknowledged in {seconds:g} s ({errors} failed)")
    lat.sort()
    return {
        "errors": float(errors),
        "rate": len(lat) / elapsed,
        "p50": lat[len(lat) // 2] * 1000,
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "cpu": cpu / len(lat) * 1000,
        "terms": float(terms),
    }


async def read_load(d: Driver, clients: int, seconds: float) -> dict[str, float]:
    lead = await d.leader()
    if lead is None:
        raise RuntimeError(f"{d.sys.label}: no leader before the read phase")
    await d.put(lead.client_url, "r", b"x")
    # Spread linearizable reads over every member, followers included.
    urls = [m.client_url for m in d.sys.members]
    count = errors = 0
    cpu0 = d.sys.cpu_seconds()
    t0 = time.monotonic()
    stop = t0 + seconds

    async def worker(w: int) -> None:
        nonlocal count, errors
        while time.monotonic() < stop:
            try:
                await d.get(urls[w % len(urls)], "r")
            except (aiohttp.ClientError, RuntimeError, TimeoutError):
                # A 503 (no controller known for a moment): not counted.
                errors += 1
                await asyncio.sleep(0.01)
                continue
            count += 1

    await asyncio.gather(*(worker(w) for w in range(clients)))
    elapsed = time.monotonic() - t0
    cpu = d.sys.cpu_seconds() - cpu0
    return {"rate": count / elapsed, "cpu": cpu / max(count, 1) * 1000, "errors": float(errors)}


async def measure_load(sysm: System, seconds: float) -> dict[str, float]:
    """One run's load figures of one (started) system, flat: w1_rate,
    w1_p50, …, w64_terms, r16_rate, r16_cpu."""
    out: dict[str, float] = {}
    async with session_for(sysm) as session:
        d = Driver(sysm, session)
        await d.healthy()
        # Warm-up (connections, caches), not measured.
        await write_load(d, 16, min(1.0, seconds))
        for clients in (1, 16, 64):
            for k, v in (await write_load(d, clients, seconds)).items():
                out[f"w{clients}_{k}"] = v
        for k, v in (await read_load(d, 16, seconds)).items():
            out[f"r16_{k}"] = v
    return out


def failures(res: dict[str, float]) -> float:
    """Requests of one run that failed (any phase, warm-up excluded)."""
    return sum(v for k, v in res.items() if k.endswith("_errors"))


def run_order(systems: Sequence[str], run: int) -> list[str]:
    """Run 1, 3, …: as listed (hana first); run 2, 4, …: reversed."""
    return list(systems) if run % 2 == 1 else list(reversed(systems))


# -- failover, idle, restart -----------------------------------------------------------


async def first_ack(d: Driver, url: str, give_up: float = 20.0) -> float:
    """A new write to `url` every 10 ms (each may take up to 5 s); the time
    at which the first one is acknowledged (monotonic)."""
    done = asyncio.get_running_loop().create_future()
    tasks: list[asyncio.Task[None]] = []

    async def attempt(n: int) -> None:
        with contextlib.suppress(aiohttp.ClientError, RuntimeError, TimeoutError):
            await asyncio.wait_for(d.put(url, f"failover-{n % 50}", b"x"), 5.0)
            if not done.done():
                done.set_result(time.monotonic())

    end = time.monotonic() + give_up
    n = 0
    try:
        while not done.done() and time.monotonic() < end:
            tasks.append(asyncio.create_task(attempt(n)))
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), 0.01)
        if not done.done():
            raise RuntimeError(f"{d.sys.label}: no write acknowledged within {give_up:.0f} s")
        return float(done.result())
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def failover_trial(d: Driver, mode: str) -> float:
    """One trial: `crash` (SIGKILL) or `isolate` (SIGSTOP) the leader; the
    seconds until a surviving member acknowledges a write."""
    lead = await d.healthy()
    target = next(m for m in d.sys.members if m is not lead)
    await d.put(target.client_url, "failover-warm", b"x")  # a live connection to it
    assert lead.proc is not None
    t0 = time.monotonic()
    os.kill(lead.proc.pid, signal.SIGKILL if mode == "crash" else signal.SIGSTOP)
    try:
        acked = await first_ack(d, target.client_url)
    finally:
        if mode == "crash":
            lead.proc.wait()
            d.sys.start(lead)
        else:
            os.kill(lead.proc.pid, signal.SIGCONT)
    return acked - t0


async def measure_failover(
    sysm: System, trials: int, idle_seconds: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """On a fresh started cluster: idle CPU first, then failover trials."""
    out: dict[str, Any] = {}
    async with session_for(sysm) as session:
        d = Driver(sysm, session)
        await d.healthy()
        if idle_seconds > 0:
            await asyncio.sleep(2.0)  # let start-up work finish
            lead = await d.leader()
            out["idle"] = await idle_cpu(sysm, idle_seconds)
            # Which member led throughout (None: the leader changed meanwhile).
            after = await d.leader()
            out["idle_leader"] = sysm.members.index(lead) if lead is not None and after is lead else None
        for mode in ("crash", "isolate"):
            times = []
            for i in range(trials):
                times.append(await failover_trial(d, mode))
                log(f"  {sysm.label} {mode} trial {i + 1}: {times[-1]:.3f} s")
                await d.healthy()
                await asyncio.sleep(0.5)  # peer links settle before the next trial
            out[mode] = times
    return out


async def idle_cpu(sysm: System, seconds: float) -> list[float]:
    """% of one core of each member over `seconds` of no client traffic."""
    pids = [m.proc.pid for m in sysm.members if m.proc is not None]
    before = [proc_cpu_seconds(p) for p in pids]
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - t0
    return [(proc_cpu_seconds(p) - b) / wall * 100 for p, b in zip(pids, before, strict=True)]


async def linearizable_value(session: aiohttp.ClientSession, url: str, key: str, want: Any, give_up: float) -> float:
    """Ask `url` for `key` (linearizable) until it answers `want`; when (monotonic)."""
    end = time.monotonic() + give_up
    while time.monotonic() < end:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(
                f"{url}/v1/kv/{key}", params={"consistency": "linearizable"}, timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
                if r.status == 200 and (await r.json()).get("value") == want:
                    return time.monotonic()
        await asyncio.sleep(0.005)
    raise RuntimeError(f"{url} did not serve {key} within {give_up:.0f} s")


async def api_answers(session: aiohttp.ClientSession, url: str, give_up: float) -> float:
    """When (monotonic) `url` first answers GET /v1/status with 200."""
    end = time.monotonic() + give_up
    while time.monotonic() < end:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{url}/v1/status", timeout=aiohttp.ClientTimeout(total=5)) as r:
                await r.read()
                if r.status == 200:
                    return time.monotonic()
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{url} did not answer /v1/status within {give_up:.0f} s")


async def timed_start(
    sysm: System, m: Member, session: aiohttp.ClientSession, key: str, want: Any
) -> tuple[float, float]:
    """Start member `m`: seconds until its API answers and until it serves
    `key` = `want` to a linearizable read (polled side by side)."""
    t0 = time.monotonic()
    sysm.start(m)
    up, served = await asyncio.gather(
        api_answers(session, m.client_url, 120), linearizable_value(session, m.client_url, key, want, 120)
    )
    return up - t0, served - t0


async def measure_restart(
    root: Path,
    entries: int,
    tail: int,
    trials: int,
    log: Callable[[str], None],
    created: list[System],
    given: Path | None = None,
) -> dict[str, Any]:
    """hana: members restarting on a log of `entries` entries (bigdata.py),
    or on copies of `given`, a directory it built before."""
    if given is not None:
        big = bigdata.existing(given)
        src = given
        built = f"{given}, built before by bench/bigdata.py: " + big.describe().rsplit("; built in", 1)[0]
    else:
        src = root / "bigdata-src"
        log(f"  building a {entries:,}-entry data directory with bench/bigdata.py …")
        big = bigdata.build(
            src, ("h1", "h2", "h3"), entries=entries, tail=tail, progress=lambda i: log(f"    {i:,} entries applied")
        )
        built = big.describe()
    log(f"  {built}")

    def prepare(node: ServeProcess) -> None:
        shutil.copytree(src, node.data_dir)

    sysm = hana_system(root / "restart", prepare=prepare)
    created.append(sysm)
    out: dict[str, Any] = {"built": built, "entries": big.entries, "times": [], "api": []}
    try:
        async with session_for(sysm) as session:
            first, second, third = sysm.members
            t0 = time.monotonic()
            sysm.start(first)
            sysm.start(second)
            done = await linearizable_value(session, first.client_url, big.key, big.value, 120)
            out["pair"] = done - t0
            log(f"  two members from the built directories serve a linearizable read after {out['pair']:.2f} s")
            for i in range(trials):
                if i > 0:
                    assert third.proc is not None
                    third.proc.kill()
                    third.proc.wait()
                up, served = await timed_start(sysm, third, session, big.key, big.value)
                out["times"].append(served)
                out["api"].append(up)
                how = "first start on the built directory" if i == 0 else "restart after SIGKILL"
                log(f"  {third.name} {how}: API answers after {up:.3f} s, linearizable read after {served:.3f} s")
    finally:
        sysm.stop_all()
    return out


# -- figures, goals, tables (pure) -----------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """`kind`: "le_etcd" (hana <= etcd), "ratio_ge" (hana/etcd >= bound),
    "le" (hana <= bound), "lt" (hana < bound)."""

    kind: str
    bound: float = 0.0
    text: str = ""

    def judge(self, hana: float | None, etcd: float | None) -> str:
        if hana is None:
            return "n/a"
        if self.kind in ("le_etcd", "ratio_ge"):
            if etcd is None:
                return "n/a (no etcd)"
            if self.kind == "le_etcd":
                return "met" if hana <= etcd else "missed"
            return "met" if etcd > 0 and hana / etcd >= self.bound else "missed"
        if self.kind == "le":
            return "met" if hana <= self.bound else "missed"
        if self.kind == "lt":
            return "met" if hana < self.bound else "missed"
        raise ValueError(f"unknown goal kind {self.kind!r}")


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    fmt: str
    goal: Goal | None = None


FIGURES: tuple[Figure, ...] = (
    Figure("w1_rate", "sequential writes/s (1 client)", ",.0f"),
    Figure("w1_p50", "sequential write p50 (ms)", ".2f", Goal("le_etcd", text="<= etcd")),
    Figure("w1_p99", "sequential write p99 (ms)", ".2f"),
    Figure("w1_cpu", "cluster CPU s / 1,000 writes, 1 client", ".3f", Goal("le_etcd", text="<= etcd")),
    Figure("w16_rate", "writes/s, 16 clients", ",.0f"),
    Figure("w64_rate", "writes/s, 64 clients", ",.0f", Goal("ratio_ge", 1.0, ">= 1.0x etcd (aim 1.2x)")),
    Figure("w64_p50", "write p50 (ms), 64 clients", ".2f"),
    Figure("w64_cpu", "cluster CPU s / 1,000 writes, 64 clients", ".3f", Goal("le_etcd", text="<= etcd")),
    Figure("r16_rate", "linearizable reads/s, 16 clients", ",.0f", Goal("ratio_ge", 1.5, ">= 1.5x etcd")),
    Figure("r16_cpu", "cluster CPU s / 1,000 reads, 16 clients", ".3f"),
    Figure("w64_terms", "term changes during 64-client load", ".0f", Goal("le", 0, "0")),
)

CRASH_GOALS = (Goal("lt", 0.1, "median < 0.1 s"), Goal("lt", 0.3, "max < 0.3 s"))
ISOLATE_GOAL = Goal("lt", 0.6, "median < 0.6 s")
RESTART_GOAL = Goal("lt", 2.0, "< 2 s")
IDLE_GOAL = Goal("lt", 0.3, "< 0.3% per node")


def summarize(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    if not values:
        raise ValueError("no values")
    return statistics.median(values), min(values), max(values)


def fmt_range(values: Sequence[float], fmt: str) -> str:
    _, lo, hi = summarize(values)
    return f"{lo:{fmt}}-{hi:{fmt}}"


def ratio_text(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def load_rows(runs: dict[str, list[dict[str, float]]], systems: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """The load table: header and rows (figure, per system median and
    range, ratios, goal, hana's mark)."""
    header = ["figure"]
    for s in systems:
        header += [f"{s} median", f"{s} range"]
    ratios = []
    if HANA_TLS in systems and HANA in systems:
        ratios.append((HANA_TLS, HANA, "TLS/plain"))
    if ETCD in systems and HANA in systems:
        ratios.append((HANA, ETCD, "hana/etcd"))
    header += [r[2] for r in ratios] + ["goal (hana)", "met?"]
    rows = []
    for fig in FIGURES:
        row = [fig.label]
        med: dict[str, float] = {}
        for s in systems:
            vals = [r[fig.key] for r in runs.get(s, []) if fig.key in r]
            if vals:
                med[s] = summarize(vals)[0]
                row += [f"{med[s]:{fig.fmt}}", fmt_range(vals, fig.fmt)]
            else:
                row += ["-", "-"]
        for a, b, _ in ratios:
            row.append(ratio_text(med[a], med[b]) if a in med and b in med else "-")
        if fig.goal is None:
            row += ["", ""]
        else:
            value = med.get(HANA)
            if fig.key == "w64_terms" and runs.get(HANA):
                value = max(r[fig.key] for r in runs[HANA])  # any run with a change misses it
            row += [fig.goal.text, fig.goal.judge(value, med.get(ETCD))]
        rows.append(row)
    return header, rows


def failover_rows(results: dict[str, dict[str, Any]], systems: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    header = ["controller", *(f"{s} median / max (n)" for s in systems), "goal (hana)", "met?"]
    rows = []
    for mode, label in (("crash", "crashed (SIGKILL)"), ("isolate", "isolated (SIGSTOP)")):
        row = [label]
        for s in systems:
            ts = results.get(s, {}).get(mode)
            if ts:
                med, _, hi = summarize(ts)
                row.append(f"{med:.3f} / {hi:.3f} s ({len(ts)})")
            else:
                row.append("-")
        ts = results.get(HANA, {}).get(mode)
        if mode == "crash":
            med_goal, max_goal = CRASH_GOALS
            marks = (
                [med_goal.judge(summarize(ts)[0], None), max_goal.judge(summarize(ts)[2], None)] if ts else ["n/a"] * 2
            )
            row += [f"{med_goal.text}; {max_goal.text}", "; ".join(marks)]
        else:
            row += [ISOLATE_GOAL.text, ISOLATE_GOAL.judge(summarize(ts)[0], None) if ts else "n/a"]
        rows.append(row)
    return header, rows


def idle_rows(results: dict[str, dict[str, Any]], systems: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    header = ["system", "leader", "followers", "max node", "goal", "met?"]
    rows = []
    for s in systems:
        res = results.get(s, {})
        per = res.get("idle")
        if not per:
            continue
        lead = res.get("idle_leader")
        if lead is None:
            # Unknown, or the leader changed during the window.
            leader = "changed" if "idle_leader" in res else "?"
            followers = ", ".join(f"{p:.2f}%" for p in per)
        else:
            leader = f"{per[lead]:.2f}%"
            followers = ", ".join(f"{p:.2f}%" for i, p in enumerate(per) if i != lead)
        mark = IDLE_GOAL.judge(max(per), None)
        rows.append([s, leader, followers, f"{max(per):.2f}%", IDLE_GOAL.text, mark])
    return header, rows


def restart_rows(restart: dict[str, Any] | None, etcd_note: str) -> tuple[list[str], list[list[str]]]:
    header = ["system", "start to linearizable read", "median / max", "goal", "met?", "start to API answering"]
    rows = []
    if restart and restart.get("times"):
        ts = restart["times"]
        med, _, hi = summarize(ts)
        api = ", ".join(f"{t:.2f}" for t in restart.get("api", [])) + " s" if restart.get("api") else "-"
        rows.append(
            [HANA, ", ".join(f"{t:.2f}" for t in ts) + " s", f"{med:.2f} / {hi:.2f} s", RESTART_GOAL.text,
             RESTART_GOAL.judge(hi, None), api]
        )  # fmt: skip
    rows.append([ETCD, etcd_note, "-", RESTART_GOAL.text, "-", "-"])
    return header, rows


def print_table(console: Console, title: str, header: list[str], rows: Iterable[list[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in rows:
        table.add_row(*r)
    console.print(table)


def machine_line() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    etcd = "not installed"
    if shutil.which("etcd"):
        try:
            out = subprocess.run(["etcd", "--version"], capture_output=True, text=True, timeout=10).stdout
            etcd = out.splitlines()[0].replace("etcd Version:", "").strip() if out else "unknown"
        except (OSError, subprocess.SubprocessError) as exc:
            etcd = f"unknown ({exc})"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} cores, {model}, {platform.system()} {platform.release()} {platform.machine()}, "
        f"Python {platform.python_version()}, etcd {etcd}; load average {load}"
    )


# -- main ------------------------------------------------------------------------------


def parse_only(text: str) -> set[str]:
    parts = {p.strip() for p in text.split(",") if p.strip()}
    bad = parts - set(PARTS)
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"--only takes some of {', '.join(PARTS)} (comma-separated)")
    return parts


async def bench(args: argparse.Namespace, root: Path, created: list[System], console: Console) -> None:
    def log(text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    labels = [HANA] + ([HANA_TLS] if args.tls else []) + ([] if args.skip_etcd else [ETCD])

    def make(label: str, where: Path) -> System:
        if label == ETCD:
            sysm = etcd_system(where)
        else:
            sysm = hana_system(where, tls=label == HANA_TLS, mdns=label == HANA_MDNS)
        created.append(sysm)
        return sysm

    log(machine_line())
    started = time.monotonic()
    runs: dict[str, list[dict[str, float]]] = {}
    if "load" in args.only:
        for run in range(1, args.runs + 1):
            for label in run_order(labels, run):
                sysm = make(label, root / f"run{run}-{label}")
                sysm.start_all()
                try:
                    res = await measure_load(sysm, args.seconds)
                finally:
                    sysm.stop_all()
                runs.setdefault(label, []).append(res)
                log(
                    f"run {run} {label:>8}: writes/s {res['w1_rate']:,.0f} / {res['w16_rate']:,.0f} / "
                    f"{res['w64_rate']:,.0f} (1/16/64), p50 {res['w1_p50']:.2f} ms, CPU/1000 {res['w1_cpu']:.3f} / "
                    f"{res['w64_cpu']:.3f} s, reads/s {res['r16_rate']:,.0f}, terms +{res['w64_terms']:.0f}"
                    + (f", {failed:.0f} requests not acknowledged" if (failed := failures(res)) else "")
                )
    fo: dict[str, dict[str, Any]] = {}
    if "failover" in args.only or "idle" in args.only:
        trials = args.failovers if "failover" in args.only else 0
        idle = args.idle_seconds if "idle" in args.only else 0.0
        for label in labels:
            sysm = make(label, root / f"failover-{label}")
            sysm.start_all()
            try:
                fo[label] = await measure_failover(sysm, trials, idle, log)
            finally:
                sysm.stop_all()
        if "idle" in args.only and args.idle_mdns:
            sysm = make(HANA_MDNS, root / "idle-mdns")
            sysm.start_all()
            try:
                fo[HANA_MDNS] = await measure_failover(sysm, 0, idle, log)
            finally:
                sysm.stop_all()
    restart: dict[str, Any] | None = None
    if "restart" in args.only:
        restart = await measure_restart(
            root / "restart", args.big_entries, args.big_tail, args.restarts, log, created, args.big_dir
        )

    console.print()
    log(machine_line())
    log(
        f"{args.runs} run(s) of {args.seconds:g} s per load phase, order alternating (hana first in odd runs); "
        f"fresh clusters each run; hana: 3 nodes, fsync, static --peers, no mDNS; etcd: 3 members, defaults; "
        f"one aiohttp client process; bench took {time.monotonic() - started:.0f} s"
        if runs
        else f"bench took {time.monotonic() - started:.0f} s"
    )
    if runs:
        print_table(console, "load (median and range over runs)", *load_rows(runs, labels))
    if "failover" in args.only:
        title = "failover: signal to the first write a surviving member acknowledges"
        print_table(console, title, *failover_rows(fo, labels))
        for label in labels:
            for mode in ("crash", "isolate"):
                log(f"  {label} {mode}: " + ", ".join(f"{t:.3f}" for t in fo[label][mode]))
    if "idle" in args.only:
        tick = 100 / CLK_TCK / args.idle_seconds
        title = f"idle CPU over {args.idle_seconds:g} s (3-node cluster, no clients; one clock tick = {tick:.3f}%)"
        print_table(console, title, *idle_rows(fo, labels + ([HANA_MDNS] if args.idle_mdns else [])))
    if restart is not None:
        note = "not measured"
        title = f"restart of a member with a {restart['entries']:,}-entry log"
        print_table(console, title, *restart_rows(restart, note))
        log(f"  data: {restart['built']}")
        log(
            "  times: the first from the built directory as is, the others after SIGKILL and restart; "
            f"two members from the built directories served a read after {restart['pair']:.2f} s. etcd not "
            "measured: a 1,000,000-entry etcd log needs 1,000,000 writes through its API (minutes)"
        )


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", "--rounds", type=int, default=3, help="load runs, order alternating (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each load phase (default 3)")
    parser.add_argument("--failovers", type=int, default=9, help="trials per kind of failover and system (default 9)")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="idle CPU window (default 30)")
    parser.add_argument(
        "--idle-mdns", action="store_true", help="also idle CPU of a hana cluster with mDNS on (loopback only)"
    )
    parser.add_argument("--big-entries", type=int, default=1_000_000, help="log entries for the restart figure")
    parser.add_argument("--big-tail", type=int, default=5_000, help="of which after the snapshot (default 5000)")
    parser.add_argument(
        "--big-dir",
        type=Path,
        default=None,
        help="a directory bench/bigdata.py built before (voters h1,h2,h3), copied instead of building one",
    )
    parser.add_argument("--restarts", type=int, default=3, help="restart trials (default 3)")
    parser.add_argument("--skip-etcd", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and node logs (path printed)")
    parser.add_argument("--only", type=parse_only, default=set(PARTS), help=f"some of {','.join(PARTS)}")
    parser.add_argument("--tls", action="store_true", help="hana also with TLS on peers and API (TLS/plain ratio)")
    parser.add_argument(
        "--client-uvloop",
        action="store_true",
        help="run the load client on uvloop (its TLS is in C; asyncio's is partly Python, and the one client "
        "process drives all 64 connections on the same cores as the nodes)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0 or args.failovers < 1 or args.restarts < 1:
        parser.error("--runs, --seconds, --failovers and --restarts must be positive")
    if not args.skip_etcd and shutil.which("etcd") is None:
        print("etcd not found: apt-get install etcd-server (or pass --skip-etcd)", file=sys.stderr)
        return 2
    console = Console(width=max(shutil.get_terminal_size().columns, 160))
    created: list[System] = []
    root = Path(tempfile.mkdtemp(prefix="hana-bench-"))
    # Ctrl-C and SIGTERM stop the bench at once, through the finally below
    # (which stops every process by PID). Our own SIGINT handler, not
    # asyncio.run's: that one only cancels the main task, and a cancellation
    # can be lost in a task that finishes at the same moment.
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, _interrupted),
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)),
    }
    try:
        runner: Callable[[Any], Any] = asyncio.run
        if args.client_uvloop:
            import uvloop

            runner = uvloop.run
        runner(bench(args, root, created, console))
    except KeyboardInterrupt:
        print("interrupted: stopping every process started", file=sys.stderr)
        return 130
    finally:
        for sysm in created:
            sysm.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if args.keep:
            print(f"data directories and node logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
