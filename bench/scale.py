"""hana mesh at 3, 5, 25, 50 and 100 nodes on this machine, formed by mDNS.

    python bench/scale.py [--sizes 3,5,25,50,100] [--writes 300] [--catchup-mb 100]
                          [--catchup-budget-mb 1000] [--wave 10] [--idle-seconds 10]

Real `hana-node serve` processes (mesh/launcher.py), mDNS bound to 127.0.0.1
(HANA_MDNS_INTERFACES, never the machine's network cards), no peer lists, a
fresh cluster name per size, --voters 5 (the rest are learners), fsync on.
The voters' data is on the disk; the learners' is in /dev/shm unless
--learners-on-disk: on a real mesh every display has its own disk, while
here 95 learners fsyncing (and snapshotting) on the one disk of this
machine stall the voters' fsyncs past the controller's slow-disk limit
(it steps down) -- a cost of the test bed, not of the mesh; the voters
still pay their real fsyncs.
Nodes start in waves of --wave processes (the next wave once the previous
one's processes answer on their API), every node with --expect min(N, 5): the
first five bootstrap the voters, the others join and the autopilot adds them
as learners. Prints, per size:

- formation: from the first process start until the controller's members
  are all N nodes with min(N, 5) voters (and, second figure, until every
  node names that controller);
- idle: % of one core per node from /proc over --idle-seconds (median, max,
  the controller's), RSS per node (median, max);
- `hana-node status` (the CLI, a fresh process, asked at a learner; and
  the same fetch in this process, without the interpreter's start) and
  `GET /v1/members` at the controller: wall time to answer;
- the controller's peer messages per write (its /metrics);
- commit latency p50/p99 of --writes sequential writes (100-byte values) to
  the controller, and the controller's CPU (utime+stime from /proc) per write;
- catch-up: ~--catchup-mb of state written first (100 KB values, 10 per
  transaction), then --snapshot-every + 50 small writes (so that a snapshot
  holds the state and the log before it is compacted: the new node needs
  the snapshot; their p99 is the baseline), then one more node started; the
  time until its applied index reaches the controller's commit index of that
  moment, and the commit p99 of writes meanwhile (--catchup-rate a second,
  a steady load that takes no new snapshot) beside the same load's p99 just
  before; also the longest write while every node snapshots the state.
  Every node holds the whole state in memory, so with many nodes the state
  is cut to --catchup-budget-mb / N (printed): 100 MB on 100 processes
  would need 10+ GB.

Then the goals (met/missed): commit p50 with 95 learners within 1.5x of the
p50 with none (the 5-node mesh: the same five voters; the 3-node one if 5
is not among --sizes), leader CPU per write within 2x, status and members within 1 s,
a lagging learner catching up (by snapshot) without stalling the voters
(commit p99 during the catch-up within 2x of the p99 just before it).

Every process started is killed by PID at the end, even on error. Nothing is
asserted; timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.client import ApiError, MeshClient, Unreachable
from mesh.launcher import ProcessCluster, ServeProcess

SECRET = "bench-scale-secret-0123456789abcdef"
# Where the learners' data lives unless --learners-on-disk (see main).
SHM = "/dev/shm"
MAX_VOTERS = 5
# The commit p50 at 100 nodes may be at most this multiple of the p50 with no
# learners (5 nodes, else 3),
# the leader's CPU per write at most CPU_GOAL times, status/members within
# ANSWER_GOAL_S; a learner catching up may raise the commit p99 at most
# CATCHUP_P99_GOAL times over the idle p99 of the same mesh.
P50_GOAL = 1.5
CPU_GOAL = 2.0
ANSWER_GOAL_S = 1.0
CATCHUP_P99_GOAL = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
VALUE_BYTES = 100
BIG_VALUE_BYTES = 100_000
BIG_PER_TXN = 10


# -- pure parts (tests/bench/test_scale_bench.py) ---------------------------------


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; ValueError on no samples."""
    if not xs:
        raise ValueError("no samples")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def parse_proc_cpu(stat: str) -> float:
    """utime+stime in seconds from the text of /proc/PID/stat (the command
    name in parentheses may hold spaces and parentheses)."""
    rest = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 (1-based) of the whole line: 12 and 13 after ") ".
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def parse_proc_rss(status: str) -> int:
    """VmRSS in bytes from the text of /proc/PID/status."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1]) * 1024
    raise ValueError("no VmRSS line (a zombie?)")


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        return parse_proc_cpu(f.read())


def proc_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return parse_proc_rss(f.read())


def waves(ids: Sequence[str], size: int) -> list[list[str]]:
    """The start order in waves of `size` (the last may be smaller)."""
    if size < 1:
        raise ValueError("wave size must be at least 1")
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def expected_voters(n: int) -> int:
    return min(n, MAX_VOTERS)


def formed(doc: dict[str, Any] | None, ids: Iterable[str]) -> bool:
    """The controller's status document shows every id as a member and the
    expected number of voters, and names itself controller."""
    if not doc or doc.get("leader") is None or doc.get("leader") != doc.get("id"):
        return False
    want = set(ids)
    members = {m.get("id") for m in doc.get("members") or []}
    voters = {m.get("id") for m in doc.get("members") or [] if m.get("voter")}
    return want <= members and len(voters) == expected_voters(len(want))


def catchup_mb(n: int, wanted_mb: float, budget_mb: float) -> float:
    """The state written before the catch-up: `wanted_mb`, cut so that the
    N + 1 copies stay within `budget_mb`."""
    return max(1.0, min(wanted_mb, budget_mb / (n + 1)))


def snapshots_received(metrics: str) -> float:
    """`hana_peer_snapshots{outcome="received"}` from a /metrics text (0 if absent)."""
    for line in metrics.splitlines():
        if line.startswith("hana_peer_snapshots{") and 'outcome="received"' in line:
            return float(line.split()[-1])
    return 0.0


def metric_value(metrics: str, name: str) -> float:
    """The value of an unlabelled sample `name` in a /metrics text (0 if absent)."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


@dataclass
class SizeResult:
    n: int
    formation_s: float | None = None
    agreed_s: float | None = None
    voters: int = 0
    learners: int = 0
    idle_cpu_pct: list[float] = field(default_factory=list)
    leader_idle_cpu_pct: float | None = None
    rss_mb: list[float] = field(default_factory=list)
    status_s: float | None = None
    status_exit: int | None = None
    status_fetch_s: float | None = None
    cli_start_s: float | None = None
    status_unanswered: int | None = None
    members_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_ms_per_write: float | None = None
    msgs_per_write: float | None = None
    catchup_mb: float | None = None
    catchup_s: float | None = None
    catchup_p99_ms: float | None = None
    loaded_p99_ms: float | None = None
    snapshot_stall_ms: float | None = None
    catchup_snapshot: bool | None = None
    step_downs: int = 0
    slow_fsyncs: int = 0
    error: str = ""


def goals(results: dict[int, SizeResult]) -> list[tuple[str, bool | None, str]]:
    """(goal, met or None if not measured, the figures) for the largest
    size against the mesh with no learners: the 5-node one (the same five
    voters) if measured, else the 3-node one."""
    base_n = MAX_VOTERS if MAX_VOTERS in results else 3
    base = results.get(base_n)
    big = results[max(results)] if results else None
    out: list[tuple[str, bool | None, str]] = []
    if big is None:
        return out
    n = big.n

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    r = ratio(big.p50_ms, base.p50_ms if base else None)
    out.append(
        (
            f"commit p50 at {n} nodes within {P50_GOAL}x of {base_n} nodes",
            None if r is None else r <= P50_GOAL,
            "-" if r is None else f"{big.p50_ms:.2f} vs {base.p50_ms:.2f} ms = {r:.2f}x",  # type: ignore[union-attr]
        )
    )
    r = ratio(big.cpu_ms_per_write, base.cpu_ms_per_write if base else None)
    out.append(
        (
            f"leader CPU per write at {n} nodes within {CPU_GOAL}x of {base_n} nodes",
            None if r is None else r <= CPU_GOAL,
            "-" if r is None else f"{big.cpu_ms_per_write:.2f} vs {base.cpu_ms_per_write:.2f} ms = {r:.2f}x",  # type: ignore[union-attr]
        )
    )
    for what, v in (("hana-node status", big.status_s), ("GET /v1/members", big.members_s)):
        out.append(
            (
                f"{what} at {n} nodes within {ANSWER_GOAL_S:g} s",
                None if v is None else v <= ANSWER_GOAL_S,
                "-" if v is None else f"{v:.2f} s",
            )
        )
    r = ratio(big.catchup_p99_ms, big.loaded_p99_ms)
    out.append(
        (
            f"a lagging learner catches up at {n} nodes without stalling the voters "
            f"(commit p99 meanwhile within {CATCHUP_P99_GOAL}x of just before)",
            None if r is None or big.catchup_s is None else r <= CATCHUP_P99_GOAL,
            "-" if r is None else f"{big.catchup_p99_ms:.1f} vs {big.loaded_p99_ms:.1f} ms = {r:.2f}x",
        )
    )
    return out


def fmt(v: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def table(results: dict[int, SizeResult]) -> str:
    rows = [
        ("nodes (voters+learners)", lambda r: f"{r.n} ({r.voters}+{r.learners})"),
        ("formation s", lambda r: fmt(r.formation_s)),
        ("all name the controller s", lambda r: fmt(r.agreed_s)),
        ("commit p50 ms", lambda r: fmt(r.p50_ms)),
        ("commit p99 ms", lambda r: fmt(r.p99_ms)),
        ("leader CPU ms/write", lambda r: fmt(r.cpu_ms_per_write, ".3f")),
        ("leader peer msgs/write", lambda r: fmt(r.msgs_per_write, ".1f")),
        ("idle CPU %core/node med", lambda r: fmt(statistics.median(r.idle_cpu_pct) if r.idle_cpu_pct else None)),
        ("idle CPU %core/node max", lambda r: fmt(max(r.idle_cpu_pct) if r.idle_cpu_pct else None)),
        ("idle CPU %core leader", lambda r: fmt(r.leader_idle_cpu_pct)),
        ("RSS MB/node med", lambda r: fmt(statistics.median(r.rss_mb) if r.rss_mb else None, ".1f")),
        ("RSS MB/node max", lambda r: fmt(max(r.rss_mb) if r.rss_mb else None, ".1f")),
        ("hana-node status s (exit)", lambda r: f"{fmt(r.status_s)} ({fmt(r.status_exit, 'd')})"),
        ("  of which CLI start (status --help) s", lambda r: fmt(r.cli_start_s)),
        ("status fetch s (unanswered)", lambda r: f"{fmt(r.status_fetch_s)} ({fmt(r.status_unanswered, 'd')})"),
        ("GET /v1/members s", lambda r: fmt(r.members_s, ".3f")),
        ("catch-up state MB", lambda r: fmt(r.catchup_mb, ".0f")),
        ("catch-up s (snapshot)", lambda r: f"{fmt(r.catchup_s)} ({'yes' if r.catchup_snapshot else 'no'})"),
        ("longest write while snapshotting ms", lambda r: fmt(r.snapshot_stall_ms, ".0f")),
        ("commit p99 ms before catch-up", lambda r: fmt(r.loaded_p99_ms)),
        ("commit p99 ms during catch-up", lambda r: fmt(r.catchup_p99_ms)),
        ("step-downs / slow fsyncs (logs)", lambda r: f"{r.step_downs} / {r.slow_fsyncs}"),
    ]
    sizes = sorted(results)
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':{width}}  " + "  ".join(f"{f'N={n}':>12}" for n in sizes)]
    for name, get in rows:
        lines.append(f"{name:{width}}  " + "  ".join(f"{get(results[n]):>12}" for n in sizes))
    for n in sizes:
        if results[n].error:
            lines.append(f"N={n}: {results[n].error}")
    return "\n".join(lines)


# -- the run ---------------------------------------------------------------------


class Scale:
    def __init__(self, root: Path, n: int, args: argparse.Namespace, learner_root: Path | None = None) -> None:
        self.root = root
        self.n = n
        self.args = args
        self.cluster = f"scale-{secrets.token_hex(3)}"
        # The first min(N, 5) ids bootstrap the voters; the learners' data
        # lives under learner_root when given (see main's --learners-on-disk).
        self.procs = ProcessCluster(root)
        self.learner_procs = ProcessCluster(learner_root) if learner_root is not None else self.procs
        self.nodes: dict[str, ServeProcess] = {}
        self.env = dict(os.environ, HANA_SECRET=SECRET, HANA_MDNS_INTERFACES="127.0.0.1")
        self.ids = [f"n{i:03d}" for i in range(1, n + 1)]
        self.apis: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.leader: str | None = None
        self.failed_writes = 0
        self.slow_state_writes = 0

    def add_start(self, nid: str) -> None:
        voter = nid in self.ids[: expected_voters(self.n)]
        procs = self.procs if voter else self.learner_procs
        node = procs.add(
            nid,
            cluster=self.cluster,
            mdns=True,
            expect=expected_voters(self.n),
            args=[
                "--voters", str(MAX_VOTERS),
                "--log-level", "WARNING",
                "--snapshot-every", str(self.args.snapshot_every),
                "--keep-entries", str(self.args.keep_entries),
                "--max-body", str(8 << 20),
                "--timing-multiplier", str(self.args.timing_multiplier),
            ],
        )  # fmt: skip
        self.nodes[nid] = node
        self.apis[nid] = node.api
        proc = procs.start(nid, self.env)
        self.pids[nid] = proc.pid

    def stop(self) -> None:
        try:
            self.procs.stop_everything()
        finally:
            if self.learner_procs is not self.procs:
                self.learner_procs.stop_everything()

    def log_events(self) -> tuple[int, int]:
        """Controllers that stepped down, and fsyncs that stalled (the nodes'
        logs): the shared disk's and CPU's toll."""
        text = "".join(n.log_tail(10_000_000) for n in self.nodes.values())
        return text.count("event=step_down"), text.count("event=slow_fsync")

    async def status(self, nid: str, timeout: float = 2.0) -> dict[str, Any] | None:
        try:
            async with MeshClient(self.apis[nid], timeout=timeout) as c:
                doc = await c.status()
            return doc if isinstance(doc, dict) else None
        except (Unreachable, ApiError):
            return None

    async def answering(self, ids: list[str], deadline: float) -> None:
        pending = set(ids)
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not answering: {sorted(pending)[:5]}")
            for nid in list(pending):
                proc = self.nodes[nid].proc
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{nid} exited: {self.nodes[nid].log_tail(1500)}")
            docs = await asyncio.gather(*(self.status(nid, 1.0) for nid in pending))
            pending -= {nid for nid, d in zip(list(pending), docs, strict=True) if d is not None}
            if pending:
                await asyncio.sleep(0.2)

    async def controller_doc(self) -> dict[str, Any] | None:
        """The controller's status, found through any node that knows it."""
        if self.leader is not None:
            doc = await self.status(self.leader)
            if doc is not None and doc.get("leader") == self.leader:
                return doc
        for nid in self.ids[:MAX_VOTERS]:
            doc = await self.status(nid)
            if doc is None or not doc.get("leader"):
                continue
            leader = str(doc["leader"])
            if leader == nid:
                self.leader = leader
                return doc
            if leader in self.apis:
                d = await self.status(leader)
                if d is not None and d.get("leader") == leader:
                    self.leader = leader
                    return d
        return None

    async def wait_controller(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """The controller's status once one is known again (an election after
        a failed write), or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            doc = await self.controller_doc()
            if doc is not None or time.monotonic() > deadline:
                return doc
            await asyncio.sleep(0.2)

    async def form(self) -> SizeResult:
        res = SizeResult(self.n)
        t0 = time.monotonic()
        deadline = t0 + self.args.form_timeout
        for k, wave in enumerate(waves(self.ids, self.args.wave)):
            for nid in wave:
                self.add_start(nid)
            await self.answering(wave, deadline)
            if self.n > self.args.wave:
                print(f"#   wave {k + 1}: {len(wave)} nodes answering at {time.monotonic() - t0:.1f} s", flush=True)
        doc = None
        while time.monotonic() < deadline:
            doc = await self.controller_doc()
            if formed(doc, self.ids):
                res.formation_s = time.monotonic() - t0
                break
            await asyncio.sleep(0.2)
        else:
            have = len(doc.get("members") or []) if doc else 0
            raise TimeoutError(f"not formed after {self.args.form_timeout:g} s: the controller lists {have} members")
        assert doc is not None
        res.voters = sum(1 for m in doc["members"] if m.get("voter"))
        res.learners = len(doc["members"]) - res.voters
        while time.monotonic() < deadline:
            docs = await self._all_status()
            if all(d is not None and d.get("leader") == self.leader for d in docs):
                res.agreed_s = time.monotonic() - t0
                break
            await asyncio.sleep(0.5)
        return res

    async def _all_status(self) -> list[dict[str, Any] | None]:
        sem = asyncio.Semaphore(16)

        async def one(nid: str) -> dict[str, Any] | None:
            async with sem:
                return await self.status(nid)

        return await asyncio.gather(*(one(nid) for nid in self.ids))

    async def idle(self, res: SizeResult) -> None:
        await asyncio.sleep(self.args.settle)
        pids = {nid: self.pids[nid] for nid in self.ids}
        before = {nid: proc_cpu(pid) for nid, pid in pids.items()}
        t0 = time.monotonic()
        await asyncio.sleep(self.args.idle_seconds)
        after = {nid: proc_cpu(pid) for nid, pid in pids.items()}
        elapsed = time.monotonic() - t0
        pct = {nid: 100.0 * (after[nid] - before[nid]) / elapsed for nid in pids}
        res.idle_cpu_pct = list(pct.values())
        res.leader_idle_cpu_pct = pct.get(self.leader or "")
        res.rss_mb = [proc_rss(pid) / 1e6 for pid in pids.values()]

    async def answers(self, res: SizeResult) -> None:
        # `hana-node status` at a learner (the last node), as a person runs it.
        asked = self.ids[-1]
        t0 = time.monotonic()
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "mesh.cli", "status", "--api", self.apis[asked]],
            capture_output=True,
            env=self.env,
            timeout=60,
        )
        res.status_s = time.monotonic() - t0
        res.status_exit = done.returncode
        # The interpreter's start and the CLI's imports alone, for comparison.
        t0 = time.monotonic()
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "mesh.cli", "status", "--help"],
            capture_output=True,
            env=self.env,
            timeout=60,
        )
        res.cli_start_s = time.monotonic() - t0
        # The same fetch in this process: what the mesh takes to answer,
        # without the CLI's interpreter start and imports.
        from mesh import cli_status

        def make(api: str, timeout: float) -> MeshClient:
            return MeshClient(api, timeout=timeout)

        t0 = time.monotonic()
        doc = await cli_status.asked_status(make, self.apis[asked])
        report = await cli_status.gather(make, doc)
        res.status_fetch_s = time.monotonic() - t0
        res.status_unanswered = sum(1 for r in report.rows if r.why)
        assert self.leader is not None
        async with MeshClient(self.apis[self.leader], timeout=10) as c:
            t0 = time.monotonic()
            await c.members()
            res.members_s = time.monotonic() - t0

    async def writes(self, c: MeshClient, count: int, tag: str) -> list[float]:
        lat = []
        value = "x" * VALUE_BYTES
        for i in range(count):
            t0 = time.perf_counter()
            await c.put(f"parameters/scale/{tag}{i % 50}", value)
            lat.append((time.perf_counter() - t0) * 1000)
        return lat

    async def commit(self, res: SizeResult) -> None:
        """The write phase; again from the start (at most 3 times) if the
        controller changes meanwhile (noted in the result)."""
        for attempt in range(3):
            try:
                await self._commit(res)
                return
            except (ApiError, Unreachable) as exc:
                res.error += f"writes failed ({exc}), controller changed? measured again; "
                self.leader = None
                if await self.wait_controller() is None or attempt == 2:
                    raise

    async def _commit(self, res: SizeResult) -> None:
        assert self.leader is not None
        pid = self.pids[self.leader]
        async with MeshClient(self.apis[self.leader], timeout=10) as c:
            await self.writes(c, 20, "warm")
            sent0 = metric_value((await c.raw("GET", "/metrics")).decode(), "hana_peer_messages_sent_total")
            cpu0 = proc_cpu(pid)
            lat = await self.writes(c, self.args.writes, "w")
            cpu1 = proc_cpu(pid)
            sent1 = metric_value((await c.raw("GET", "/metrics")).decode(), "hana_peer_messages_sent_total")
        res.p50_ms = percentile(lat, 0.5)
        res.p99_ms = percentile(lat, 0.99)
        res.cpu_ms_per_write = (cpu1 - cpu0) * 1000 / len(lat)
        res.msgs_per_write = (sent1 - sent0) / len(lat)

    async def catchup(self, res: SizeResult) -> None:
        """Write the state, then enough small writes that a snapshot holds it
        and the log before it is compacted (their p99: the baseline), then
        start one more node and write on while it catches up."""
        assert self.leader is not None
        mb = catchup_mb(self.n, self.args.catchup_mb, self.args.catchup_budget_mb)
        res.catchup_mb = mb
        values = int(mb * 1e6 / BIG_VALUE_BYTES)
        blob = "v" * (BIG_VALUE_BYTES - 2)
        for start in range(0, values, BIG_PER_TXN):
            ops = [
                {"op": "put", "key": f"parameters/big/{i}", "value": blob}
                for i in range(start, min(values, start + BIG_PER_TXN))
            ]
            for attempt in range(3):  # the same puts again are harmless
                assert self.leader is not None
                try:
                    async with MeshClient(self.apis[self.leader], timeout=60) as c:
                        await c.txn(ops)
                    break
                except ApiError as exc:
                    if exc.status == 504:
                        # Not applied within the node's 5 s: it was proposed and
                        # will most likely commit; go on (counted).
                        self.slow_state_writes += 1
                        break
                    res.error += f"a state write failed ({exc}); "
                except Unreachable as exc:
                    res.error += f"a state write failed ({exc}); "
                self.leader = None
                if await self.wait_controller() is None or attempt == 2:
                    raise RuntimeError("no controller to write the state to")
        # A snapshot of the state, and the log before it compacted. Taking it
        # stalls writes (every node takes its own at the same index): the
        # longest write here shows how long.
        prep = await self.timed_writes(self.args.snapshot_every + 50, "s", None)
        res.snapshot_stall_ms = max(prep)
        # Baseline and catch-up: a steady show-like load (--catchup-rate
        # writes/s), so that no new snapshot is taken meanwhile.
        count = max(10, int(self.args.catchup_rate * self.args.baseline_seconds))
        base = await self.timed_writes(count, "b", None, self.args.catchup_rate)
        res.loaded_p99_ms = percentile(base, 0.99)
        self.leader = None
        doc = await self.wait_controller()
        if doc is None:
            raise RuntimeError("no controller after the state was written")
        target = int(doc["commit_index"])
        nid = f"n{self.n + 1:03d}"
        t0 = time.monotonic()
        self.add_start(nid)
        deadline = t0 + self.args.catchup_timeout

        async def caught_up() -> bool:
            doc = await self.status(nid, 1.0)
            if doc is not None and int(doc.get("applied_index") or 0) >= target:
                res.catchup_s = time.monotonic() - t0
                return True
            return time.monotonic() > deadline

        lat = await self.timed_writes(None, "c", caught_up, self.args.catchup_rate)
        if res.catchup_s is None:
            res.error += f"the new learner did not catch up within {self.args.catchup_timeout:g} s; "
        res.catchup_p99_ms = percentile(lat, 0.99) if lat else None
        try:
            res.catchup_snapshot = await self._snapshots_received(nid) > 0
        except (ApiError, Unreachable) as exc:
            res.error += f"the new node's /metrics did not answer ({exc}); "

    async def timed_writes(self, count: int | None, tag: str, stop: Any, rate: float | None = None) -> list[float]:
        """Sequential small writes to the controller (back to back, or `rate`
        a second), `count` of them or until `stop()` (polled every 0.1 s)
        says so; a failed write counts with the time it took (a stall is a
        stall), and the controller is found again."""
        lat: list[float] = []
        began = time.monotonic()
        value = "y" * VALUE_BYTES
        last_poll = 0.0
        i = 0
        while count is None or i < count:
            assert self.leader is not None
            async with MeshClient(self.apis[self.leader], timeout=10) as c:
                while count is None or i < count:
                    t1 = time.perf_counter()
                    try:
                        await c.put(f"parameters/scale/{tag}{i % 50}", value)
                    except (ApiError, Unreachable):
                        lat.append((time.perf_counter() - t1) * 1000)
                        i += 1
                        self.failed_writes += 1
                        self.leader = None
                        if await self.wait_controller() is None:
                            raise
                        break
                    lat.append((time.perf_counter() - t1) * 1000)
                    i += 1
                    if rate:
                        await asyncio.sleep(max(0.0, began + i / rate - time.monotonic()))
                    if stop is not None and time.monotonic() - last_poll >= 0.1:
                        last_poll = time.monotonic()
                        if await stop():
                            return lat
        return lat

    async def _snapshots_received(self, nid: str) -> float:
        """The node's count of snapshots received (its /metrics)."""
        async with MeshClient(self.apis[nid], timeout=5) as c:
            text = (await c.raw("GET", "/metrics")).decode()
        return snapshots_received(text)


async def run_size(n: int, args: argparse.Namespace) -> SizeResult:
    shm = None if args.learners_on_disk or not os.path.isdir(SHM) else SHM
    with (
        tempfile.TemporaryDirectory(prefix=f"hana-scale-{n}-") as tmp,
        tempfile.TemporaryDirectory(prefix=f"hana-scale-{n}-learners-", dir=shm) as ltmp,
    ):
        s = Scale(Path(tmp), n, args, Path(ltmp) if shm else None)
        res = SizeResult(n)
        try:
            res = await s.form()
            print(f"# N={n}: formed in {res.formation_s:.1f} s, controller {s.leader}", flush=True)
            await s.idle(res)
            await s.answers(res)
            await s.commit(res)
            if not args.skip_catchup:
                await s.catchup(res)
            if s.slow_state_writes:
                res.error += f"{s.slow_state_writes} state writes answered 504 (not applied within 5 s); "
            if s.failed_writes:
                res.error += f"{s.failed_writes} writes failed during catch-up (timed as they took); "
        except Exception as exc:  # report and go on with the next size
            res.error += f"{type(exc).__name__}: {exc}"
            print(f"# N={n}: {res.error}", flush=True)
        finally:
            s.stop()
            res.step_downs, res.slow_fsyncs = s.log_events()
        return res


async def amain(args: argparse.Namespace) -> dict[int, SizeResult]:
    print(
        f"# {platform.node()} Python {platform.python_version()} cpus={os.cpu_count()} "
        f"mDNS on 127.0.0.1, --voters {MAX_VOTERS}, waves of {args.wave}, {args.writes} sequential writes"
    )
    where = "on the disk" if args.learners_on_disk or not os.path.isdir(SHM) else f"in {SHM} (tmpfs)"
    print(f"# voters' data on the disk ({tempfile.gettempdir()}), learners' data {where}")
    print(f"# --timing-multiplier {args.timing_multiplier:g} on every node")
    results: dict[int, SizeResult] = {}
    for n in (int(x) for x in args.sizes.split(",")):
        results[n] = await run_size(n, args)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="3,5,25,50,100")
    ap.add_argument("--writes", type=int, default=300)
    ap.add_argument("--wave", type=int, default=10)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after formation before the idle window")
    ap.add_argument("--catchup-mb", type=float, default=100.0)
    ap.add_argument("--catchup-budget-mb", type=float, default=1000.0)
    ap.add_argument("--snapshot-every", type=int, default=1000)
    ap.add_argument("--catchup-rate", type=float, default=20.0, help="writes/s before and during the catch-up")
    ap.add_argument("--baseline-seconds", type=float, default=5.0, help="of that load before the catch-up")
    ap.add_argument("--keep-entries", type=int, default=100)
    ap.add_argument("--skip-catchup", action="store_true")
    ap.add_argument(
        "--timing-multiplier",
        type=float,
        default=1.0,
        help="every node's --timing-multiplier (e.g. 3 where 100 processes starve for CPU past the 300 ms limits)",
    )
    ap.add_argument(
        "--learners-on-disk",
        action="store_true",
        help="learners' data on the disk too (default: in /dev/shm, as if each had its own disk)",
    )
    ap.add_argument("--form-timeout", type=float, default=600.0)
    ap.add_argument("--catchup-timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    results = asyncio.run(amain(args))
    print()
    print(table(results))
    print()
    for goal, ok, figures in goals(results):
        print(f"{verdict(ok):7} {goal}: {figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
