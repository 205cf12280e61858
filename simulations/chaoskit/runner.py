"""One chaos run: real nodes behind the fault proxy, the workload, the fault
schedule, then healing, convergence, the checks and the report.

Output folder (`--out`): history.jsonl (every record, see history.py),
summary.json (the report's figures and the anomalies), timeline.png,
schedule.json (the faults injected, which `--schedule` replays), the nodes'
tokens file (tokens.json), and each node's log (n1.log, …) and data
directory.

With `hostile` set (`--hostile`), hostile neighbours (hostile.py) attack
every node's peer port and API while the workload runs, and each node's
whole state, history, audit trail and member list are scanned at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from simulations.chaoskit import checks, offline, report
from simulations.chaoskit.cluster import ChaosCluster, ChaosTokens
from simulations.chaoskit.faults import FAULT_KINDS, FaultInjector, FaultTiming
from simulations.chaoskit.history import HistoryWriter, read_history
from simulations.chaoskit.hostile import Hostile, HostileConfig, collect_scans
from simulations.chaoskit.offline import OfflineWriters
from simulations.chaoskit.proxy import FaultProxy
from simulations.chaoskit.schedule import ScheduledFault
from simulations.chaoskit.workload import KEY_PREFIX, Workload

log = logging.getLogger(__name__)

# Nodes' --offline-wait in a run with offline writers (seconds).
OFFLINE_WAIT = 0.3


@dataclass
class ChaosConfig:
    nodes: int = 3
    duration: float = 60.0
    seed: int = 1
    out: Path = Path("chaos-out")
    # Concurrent clients; None: two per node.
    clients: int | None = None
    watchers: int = 2
    keys: int = 6
    # A client's pause between operations: uniform in [0, think] seconds.
    think: float = 0.02
    # Entries between node snapshots. Small, so that snapshots, restarts
    # from them and InstallSnapshot happen in short runs; a long run raises
    # it, as every snapshot carries the (unbounded, here) change history.
    snapshot_every: int = 400
    faults: tuple[str, ...] = FAULT_KINDS
    timing: FaultTiming = field(default_factory=FaultTiming)
    # Seconds the workload keeps running after every fault is healed.
    recovery: float = 3.0
    converge_timeout: float = 60.0
    inject_bug: str | None = None
    progress: bool = True
    # A fixed fault schedule (schedule.py) instead of faults drawn from the seed.
    schedule: list[ScheduledFault] | None = None
    # Hostile neighbours alongside the workload (hostile.py); None: none.
    hostile: HostileConfig | None = None
    # Clients writing with ?offline=queue, mostly to one home node each (offline.py).
    offline_clients: int = 0
    # Certificates (cluster.py): mutual TLS peers through the proxy, HTTPS API.
    tls: bool = False


@dataclass
class ChaosResult:
    anomalies: list[dict[str, str]]
    summary: dict[str, Any]
    out: Path

    @property
    def ok(self) -> bool:
        return not self.anomalies


class RoleSampler:
    """Polls every node's /v1/status; records a role record whenever a
    node's (role, term, leader) changes. Knows the current controller."""

    def __init__(self, cluster: ChaosCluster, writer: HistoryWriter, clock: Callable[[], float]) -> None:
        self.cluster = cluster
        self.writer = writer
        self.clock = clock
        self.last: dict[str, tuple[str, int | None, str | None]] = {}
        self.leaders: dict[str, int] = {}
        self.crashes: list[str] = []

    def leader(self) -> str | None:
        """The node claiming leadership at the highest term, if any."""
        claims = [(term, nid) for nid, (role, term, _) in self.last.items() if role == "leader" and term is not None]
        return max(claims)[1] if claims else None

    async def run(self, stop: asyncio.Event, interval: float = 0.2) -> None:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=0.5),
            headers=self.cluster.header("reader"),
            connector=self.cluster.connector(),
        ) as session:
            while not stop.is_set():
                await asyncio.gather(*(self._sample(session, nid) for nid in self.cluster.ids))
                # --tls: the clients trust a new CA as soon as a node publishes it (a roll).
                self.cluster.refresh_trust()
                self.crashes += self.cluster.unexpected_exits()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)

    async def _sample(self, session: aiohttp.ClientSession, nid: str) -> None:
        node = self.cluster.nodes[nid]
        role, term, leader = "down", None, None
        if node.running() and node.paused:
            role = "unreachable"
        elif node.running():
            try:
                async with session.get(f"{self.cluster.url(nid)}/v1/status") as resp:
                    doc = orjson.loads(await resp.read())
                role, term, leader = doc.get("role", "unknown"), doc.get("term"), doc.get("leader")
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                role = "unreachable"
        state = (role, term, leader)
        if self.last.get(nid) != state:
            self.last[nid] = state
            self.writer.write(
                {"type": "role", "t": self.clock(), "node": nid, "role": role, "term": term, "leader": leader}
            )


async def run_chaos(cfg: ChaosConfig, console: Console | None = None) -> ChaosResult:
    console = console or Console()
    if cfg.out.exists():
        shutil.rmtree(cfg.out)
    cfg.out.mkdir(parents=True)
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def clock() -> float:
        return round(loop.time() - t0, 6)

    writer = HistoryWriter(cfg.out / "history.jsonl")
    proxy = FaultProxy(cfg.seed)
    # The replaying neighbour needs hellos seen on the wire.
    proxy.capture_hellos = cfg.hostile is not None
    extra = ["--inject-bug", cfg.inject_bug] if cfg.inject_bug else []
    if cfg.offline_clients:
        # Queue sooner than the default 1 s: more queued writes per cut-off.
        extra += ["--offline-wait", str(OFFLINE_WAIT)]
    cluster = ChaosCluster(cfg.out, cfg.nodes, proxy, extra, cfg.snapshot_every, ChaosTokens.generate(), cfg.tls)
    writer.write(
        {
            "type": "meta",
            "seed": cfg.seed,
            "nodes": cluster.ids,
            "duration": cfg.duration,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "args": {
                "clients": cfg.clients or 2 * cfg.nodes,
                "watchers": cfg.watchers,
                "keys": cfg.keys,
                "think": cfg.think,
                "snapshot_every": cfg.snapshot_every,
                "faults": list(cfg.faults),
                "inject_bug": cfg.inject_bug,
                "schedule": None if cfg.schedule is None else [f.to_json() for f in cfg.schedule],
                "hostile": None if cfg.hostile is None else cfg.hostile.to_json(),
                "offline_clients": cfg.offline_clients,
                "tls": cfg.tls,
            },
        }
    )
    anomalies: list[dict[str, str]] = []
    try:
        await cluster.wire()
        cluster.start_all()
        sampler = RoleSampler(cluster, writer, clock)
        stop_sampler = asyncio.Event()
        sampler_task = asyncio.create_task(sampler.run(stop_sampler))
        try:
            await _until(lambda: sampler.leader() is not None, 30.0, "a controller to be elected")
            anomalies += await _run_phases(cfg, cluster, proxy, writer, clock, sampler, console)
        except LivenessFailure as exc:
            anomalies.append({"check": "liveness", "detail": str(exc)})
        stop_sampler.set()
        await sampler_task
        anomalies += [{"check": "node_crashed", "detail": c} for c in sampler.crashes]
    finally:
        cluster.stop_everything()
        await proxy.close()
        writer.close()
    # Not the mesh's fault, but a run whose proxy failed cannot vouch for
    # the faults it was meant to inject.
    anomalies += [{"check": "harness", "detail": f"fault proxy: {e}"} for e in proxy.errors[:10]]
    title = f"chaos: {cfg.nodes} nodes, {cfg.duration:.0f} s, seed {cfg.seed}"
    if cfg.hostile is not None:
        title += ", hostile neighbours"
    if cfg.offline_clients:
        title += f", {cfg.offline_clients} offline writer(s)"
    if cfg.tls:
        title += ", TLS"
    if cfg.inject_bug:
        title += f", injected bug {cfg.inject_bug}"
    return check_and_report(cfg.out, title, console, anomalies)


def check_and_report(out: Path, title: str, console: Console, found: list[dict[str, str]] | None = None) -> ChaosResult:
    """Check the history in `out` (anomaly records of an earlier check are
    dropped and found again), append the anomalies to it, and write
    summary.json and timeline.png; print the report."""
    path = out / "history.jsonl"
    records = [r for r in read_history(path) if r["type"] != "anomaly"]
    anomalies = list(found or []) + checks.run_checks(records)
    with open(path, "wb") as f:
        for r in records:
            f.write(orjson.dumps(r) + b"\n")
        for a in anomalies:
            f.write(orjson.dumps({"type": "anomaly", **a}) + b"\n")
    records += [{"type": "anomaly", **a} for a in anomalies]
    summary = report.summarize(records)
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2, default=str))
    report.timeline_png(records, out / "timeline.png", title)
    report.print_report(summary, console, title)
    console.print(f"history, summary, timeline and node logs: {out}")
    return ChaosResult(anomalies, summary, out)


async def _run_phases(
    cfg: ChaosConfig,
    cluster: ChaosCluster,
    proxy: FaultProxy,
    writer: HistoryWriter,
    clock: Callable[[], float],
    sampler: RoleSampler,
    console: Console,
) -> list[dict[str, str]]:
    apis = {nid: n.api for nid, n in cluster.nodes.items()}
    clients = cfg.clients or 2 * cfg.nodes
    workload = Workload(
        cfg.seed,
        apis,
        writer,
        clock,
        clients,
        cfg.watchers,
        keys=cfg.keys,
        think=cfg.think,
        headers=cluster.header("operator"),
        scheme=cluster.scheme,
        ssl=cluster.ssl_context,
    )
    injector = FaultInjector(cfg.seed, cluster, proxy, writer, clock, sampler.leader, cfg.faults, cfg.timing)
    stop_workload, stop_faults = asyncio.Event(), asyncio.Event()
    workload_task = asyncio.create_task(workload.run(stop_workload))
    offline_writers = OfflineWriters(
        cfg.seed,
        apis,
        writer,
        clock,
        workload.op_ids,
        workload.keys,
        cfg.offline_clients,
        headers=cluster.header("operator"),
    )
    offline_task = asyncio.create_task(offline_writers.run(stop_workload)) if cfg.offline_clients else None
    hostile = None if cfg.hostile is None else Hostile(cfg.seed, cluster, proxy, writer, clock, cfg.hostile)
    # The neighbours keep trying as long as the workload runs.
    hostile_task = None if hostile is None else asyncio.create_task(hostile.run(stop_workload))
    faults_task = asyncio.create_task(injector.run(stop_faults, cfg.schedule))
    start = time.monotonic()
    progress = Progress(
        TextColumn("[bold]chaos[/bold]"),
        BarColumn(bar_width=24),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not cfg.progress,
        transient=True,
    )
    with progress:
        task = progress.add_task("run", total=cfg.duration, info="")
        # A short run goes on (up to twice its length) until every fault
        # kind was injected once, so that a CI-sized run covers them all;
        # a scheduled run does what its schedule says.
        while (elapsed := time.monotonic() - start) < cfg.duration or (
            cfg.schedule is None and not injector.every_kind_done and elapsed < 2 * cfg.duration
        ):
            if (
                workload_task.done()
                or faults_task.done()
                or any(t is not None and t.done() for t in (hostile_task, offline_task))
            ):
                break  # an exception: surfaced below
            o = workload.stats.outcomes
            info = (
                f"ok {o['ok']} fail {o['fail']} ? {o['unknown']} · faults {injector.count}"
                f" ({injector.current or '-'}) · ctl {sampler.leader() or '-'}"
            )
            if hostile is not None:
                info += f" · hostile {sum(hostile.stats.attempts.values())}"
            if offline_task is not None:
                info += f" · queued {offline_writers.outcomes['queued']}"
            progress.update(task, completed=min(elapsed, cfg.duration), info=info)
            await asyncio.sleep(0.5)  # the progress display's refresh, not synchronisation
    stop_faults.set()
    await faults_task  # heals the fault in progress
    (cfg.out / "schedule.json").write_bytes(orjson.dumps(injector.injected_schedule(), option=orjson.OPT_INDENT_2))
    # Heal everything, whatever a fault left behind.
    proxy.heal_all()
    for nid, node in cluster.nodes.items():
        cluster.resume(nid)
        if not node.running():
            cluster.start(nid)
    anomalies: list[dict[str, str]] = []
    await _until(lambda: sampler.leader() is not None, 30.0, "a controller after every fault was healed")
    if not await injector.restore_members():
        anomalies.append({"check": "membership", "detail": "; ".join(injector.errors)})
    deadline = time.monotonic() + cfg.recovery
    while time.monotonic() < deadline and not workload_task.done():
        await asyncio.sleep(0.1)  # the recovery window: clients keep going on the healed mesh
    stop_workload.set()
    await workload_task
    if hostile_task is not None:
        await hostile_task
    if offline_task is not None:
        await offline_task
        # Every queued write replays before the final states are taken.
        left = await offline.drain(apis, cluster.header("operator"), cfg.converge_timeout)
        if left:
            anomalies.append(
                {
                    "check": "offline_fate",
                    "detail": f"outboxes not drained within {cfg.converge_timeout:.0f} s: " + "; ".join(left),
                }
            )
    finals = await _converge(cluster, cfg.converge_timeout)
    converged = finals is not None
    if finals is None:
        anomalies.append(
            {"check": "convergence", "detail": f"replicas did not converge within {cfg.converge_timeout:.0f} s"}
        )
        finals = await _collect(cluster)
    for final in finals:
        writer.write(final)
    if finals:
        last = max((r["revision"] for r in finals[0]["records"]), default=0)
        # Side by side: a node that never reaches the last revision (the
        # replicas did not converge) costs one timeout, not one each.
        watches = await asyncio.gather(
            *(
                _final_watch(
                    node.api,
                    nid,
                    last,
                    clock,
                    30.0 if converged else 5.0,
                    cluster.header("operator"),
                    cluster.scheme,
                    cluster.connector(),
                )
                for nid, node in cluster.nodes.items()
            )
        )
        for watch in watches:
            writer.write(watch)
    if hostile is not None:
        for scan in await collect_scans(cluster):
            writer.write(scan)
    if offline_task is not None:
        for rec in await offline.collect(apis, cluster.header("operator")):
            writer.write(rec)
    return anomalies


async def _final_watch(
    api: str,
    nid: str,
    last: int,
    clock: Callable[[], float],
    timeout: float,
    headers: dict[str, str],
    scheme: str = "http",
    connector: aiohttp.BaseConnector | None = None,
) -> dict[str, Any]:
    """A watch from revision 1 on one node, read up to the log's last
    revision: the whole stream, which the checker compares with the log."""
    record: dict[str, Any] = {
        "type": "watch",
        "id": f"final-{nid}",
        "watcher": None,
        "final": True,
        "node": nid,
        "prefix": KEY_PREFIX,
        "since": 1,
        "start": clock(),
        "events": [],
        "error": None,
    }
    events: list[dict[str, Any]] = record["events"]
    try:
        async with (
            asyncio.timeout(timeout),
            aiohttp.ClientSession(headers=headers, connector=connector) as session,
            session.ws_connect(f"{scheme}://{api}/v1/watch", params={"prefix": KEY_PREFIX, "since": "1"}) as ws,
        ):
            while not events or events[-1]["revision"] < last:
                msg = await ws.receive()
                if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    record["error"] = f"closed by the node ({msg.type.name})"
                    break
                doc = orjson.loads(msg.data)
                if "error" in doc:
                    record["error"] = f"{doc['error'].get('code')}: {doc['error'].get('message')}"
                    break
                if doc.get("type", "change") == "change":  # not status, outbox, conflict notices
                    events.append({k: doc.get(k) for k in ("revision", "key", "op", "value")})
    except TimeoutError:
        record["error"] = "timeout before the last revision"
    except aiohttp.ClientError as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["end"] = clock()
    return record


class LivenessFailure(Exception):
    """The mesh did not do something it must do in time (elect a controller
    once healed): an anomaly, reported with the rest."""


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise LivenessFailure(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)  # polling a condition with a deadline


async def _get(session: aiohttp.ClientSession, url: str, params: dict[str, str] | None = None) -> Any:
    async with session.get(url, params=params) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status} {raw[:200]!r}")
        return orjson.loads(raw)


async def _collect(cluster: ChaosCluster) -> list[dict[str, Any]]:
    """Every node's final state, log (under the workload's prefix) and digest."""
    out = []
    # Admin: GET /v1/debug/state is an admin's (issue 12, finding 13).
    headers = cluster.header("admin")
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30), headers=headers, connector=cluster.connector()
    ) as session:
        for nid in cluster.nodes:
            base = cluster.url(nid)
            try:
                digest = await _get(session, f"{base}/v1/debug/state")
                items = await _get(session, f"{base}/v1/kv", {"prefix": KEY_PREFIX, "consistency": "local"})
                hist = await _get(session, f"{base}/v1/history", {"prefix": KEY_PREFIX, "consistency": "local"})
            except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                log.warning("event=final_state_unavailable node=%s error=%r", nid, str(exc))
                continue
            out.append(
                {
                    "type": "final",
                    "node": nid,
                    "revision": digest["revision"],
                    "applied_index": digest["applied_index"],
                    "digest": digest["sha256"],
                    "items": {
                        i["key"]: {"value": i["value"], "version": i["version"], "mod_revision": i["mod_revision"]}
                        for i in items["items"]
                    },
                    "records": [{k: r.get(k) for k in ("revision", "key", "op", "value")} for r in hist["records"]],
                }
            )
    return out


async def _converge(cluster: ChaosCluster, timeout: float) -> list[dict[str, Any]] | None:
    """Wait until every node reports the same applied index and digest, then
    collect; None if they never agree within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finals = await _collect(cluster)
        if len(finals) == len(cluster.nodes) and len({(f["applied_index"], f["digest"]) for f in finals}) == 1:
            # Collecting is one request after another: only a state that
            # did not move meanwhile is a consistent picture.
            again = await _collect(cluster)
            if [(f["applied_index"], f["digest"]) for f in again] == [
                (f["applied_index"], f["digest"]) for f in finals
            ]:
                return finals
        await asyncio.sleep(0.3)  # polling until the replicas agree, with a deadline
    return None
