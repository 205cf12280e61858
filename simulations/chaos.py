"""Chaos against real nodes: `python simulations/chaos.py --nodes 3 --duration 60 --seed 1 --out chaos-out`.

Starts N `hana-node serve` processes on loopback with a fault-injecting
proxy between every pair, runs a concurrent client workload through the
HTTP API, injects faults from the seed (SIGKILL, torn WAL tails, pauses,
partitions of every shape, latency, loss, membership changes), then heals
everything, waits for the replicas to converge and checks the recorded
history: linearizability per key, every acknowledged write in every
node's log, watch streams without gaps or duplicates, identical replicas.
Prints a summary table, writes history.jsonl, summary.json and
timeline.png to --out, and exits 1 on any anomaly (2 on a usage error or
when matplotlib, which draws the timeline, is missing: checked before
anything starts; 143 if stopped by SIGTERM).

`--offline-clients N` adds clients that write with `?offline=queue`, mostly
to one home node each: while the faults cut that node off, their writes
are queued in its outbox and replayed later; the checker follows each
queued write to its one fate (simulations/chaoskit/offline.py).

`--hostile` adds hostile neighbours (simulations/chaoskit/hostile.py):
processes without the secret, with a wrong one, with a replayed hello, with
the secret but no membership, and API clients without tokens, with foreign
origins, rebinding hosts, text/plain posts, gzip bombs, oversized and deeply
nested bodies and slow headers, all at bounded rates; nothing they send may
change state. `--compare-hostile` runs the same seed and faults twice,
without and with them (into --out/without-hostile and --out/with-hostile),
and prints how often the controller changed in each.

`--tls` runs the nodes with certificates (the first one as `hana-node init`
leaves it, holding the CA key): mutual TLS peer links, relayed by the fault
proxy, and an HTTPS API that every client verifies against the cluster CA.
Only with it, the fault kind `rotate_ca` (in --faults or a schedule) rolls
the CA on that node while the workload runs and waits for the roll to end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import signal
import sys
from pathlib import Path

import orjson

if __package__ in (None, ""):
    # Run as a script: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from mesh.node.flags import INJECTABLE_BUGS
from simulations.chaoskit.cluster import node_ids
from simulations.chaoskit.faults import ALL_FAULT_KINDS, FAULT_KINDS, TLS_FAULT_KINDS, FaultTiming
from simulations.chaoskit.history import read_history
from simulations.chaoskit.hostile import KINDS as HOSTILE_KINDS
from simulations.chaoskit.hostile import HostileConfig
from simulations.chaoskit.report import timeline_missing
from simulations.chaoskit.runner import ChaosConfig, ChaosResult, check_and_report, run_chaos
from simulations.chaoskit.schedule import ScheduleError, load_schedule

DEFAULT_TIMING = FaultTiming()


def _range(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition(":")
    try:
        a, b = float(lo), float(hi if sep else lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or MIN:MAX, got {text!r}") from None
    if a < 0 or b < a:
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, got {text!r}")
    return a, b


def _span(span: tuple[float, float]) -> str:
    return f"{span[0]:g}:{span[1]:g}"


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in ALL_FAULT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"fault kinds are {', '.join(ALL_FAULT_KINDS)}; got {text!r}")
    return kinds


def _hostile_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in HOSTILE_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"hostile kinds are {', '.join(HOSTILE_KINDS)}; got {text!r}")
    return kinds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chaos", description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (3 to 7)")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of faults and workload (default 60; with --schedule, 5 s after its last fault)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and the workload's choices")
    p.add_argument("--out", type=Path, default=Path("chaos-out"), help="output folder (replaced)")
    p.add_argument("--clients", type=int, default=None, help="concurrent clients (default: two per node)")
    p.add_argument("--watchers", type=int, default=2, help="concurrent watchers")
    p.add_argument("--keys", type=int, default=6, help="number of keys the clients share")
    p.add_argument(
        "--offline-clients",
        type=int,
        default=0,
        help="clients writing with ?offline=queue (queued while their node is cut off; fates checked)",
    )
    p.add_argument("--think", type=float, default=0.02, help="a client's pause between operations, at most")
    p.add_argument("--snapshot-every", type=int, default=400, help="entries between node snapshots")
    p.add_argument(
        "--faults",
        type=_kinds,
        default=None,
        help=f"comma-separated fault kinds (default: all but {', '.join(TLS_FAULT_KINDS)}, which needs --tls)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="nodes with certificates: mutual TLS peer links (through the proxy) and an HTTPS API",
    )
    p.add_argument(
        "--gap",
        type=_range,
        default=None,
        help=f"quiet seconds between faults, MIN:MAX (default {_span(DEFAULT_TIMING.gap)})",
    )
    p.add_argument(
        "--hold",
        type=_range,
        default=None,
        help=f"seconds a fault lasts, MIN:MAX (default {_span(DEFAULT_TIMING.hold)})",
    )
    p.add_argument(
        "--schedule",
        type=Path,
        default=None,
        metavar="FILE",
        help="inject the faults FILE lists (JSON, see simulations/chaoskit/schedule.py; every run writes"
        " its own as schedule.json) instead of drawing them; not with --faults, --gap or --hold",
    )
    p.add_argument(
        "--converge-timeout",
        type=float,
        default=60.0,
        help="seconds the healed nodes get to reach identical state before that is an anomaly",
    )
    p.add_argument(
        "--hostile",
        action="store_true",
        help="hostile neighbours keep trying to get in (peer port and API of every node) at bounded rates;"
        " nothing they send may change state",
    )
    p.add_argument(
        "--hostile-rate",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="scale every hostile kind's rate (default 1: about 11 attempts per second in all)",
    )
    p.add_argument(
        "--hostile-kinds",
        type=_hostile_kinds,
        default=None,
        help=f"comma-separated hostile kinds (default: all of {', '.join(HOSTILE_KINDS)})",
    )
    p.add_argument(
        "--hostile-source",
        default=None,
        metavar="ADDR",
        help="the loopback address every hostile kind connects from (default: one of its own per kind,"
        " 127.0.0.2 and up; 127.0.0.1 shares the harness's address, as behind a NAT)",
    )
    p.add_argument(
        "--compare-hostile",
        action="store_true",
        help="run twice with the same seed and faults, without and with hostile neighbours (into OUT/without-hostile"
        " and OUT/with-hostile), and print how often the controller changed in each",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    p.add_argument(
        "--check-only",
        type=Path,
        default=None,
        metavar="DIR",
        help="check the history of an earlier run in DIR again and redraw its report; starts nothing",
    )
    # Hidden: run a deliberately broken build (the checker must catch it).
    p.add_argument("--inject-bug", choices=INJECTABLE_BUGS, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Every run (and --check-only) ends by drawing timeline.png: without
    # matplotlib that would fail after the whole workload, with the exit
    # status of an anomaly. Refuse up front instead, as a usage error.
    missing = timeline_missing()
    if missing is not None:
        print(f"chaos: {missing}", file=sys.stderr)
        return 2
    if args.check_only is not None:
        if not (args.check_only / "history.jsonl").is_file():
            print(f"chaos: {args.check_only}/history.jsonl does not exist", file=sys.stderr)
            return 2
        try:
            meta = next(r for r in read_history(args.check_only / "history.jsonl") if r["type"] == "meta")
        except (ValueError, StopIteration) as exc:
            print(f"chaos: {args.check_only}/history.jsonl is not a chaos history: {exc}", file=sys.stderr)
            return 2
        title = f"chaos (checked again): {len(meta['nodes'])} nodes, {meta['duration']:.0f} s, seed {meta['seed']}"
        return 0 if check_and_report(args.check_only, title, Console()).ok else 1
    if not 3 <= args.nodes <= 7:
        print("chaos: --nodes must be between 3 and 7", file=sys.stderr)
        return 2
    schedule = None
    if args.schedule is not None:
        if args.faults is not None or args.gap is not None or args.hold is not None:
            print("chaos: --schedule says which faults come when; drop --faults, --gap and --hold", file=sys.stderr)
            return 2
        try:
            # Without --duration, the run lasts as long as the schedule needs.
            bound = math.inf if args.duration is None else args.duration
            schedule = load_schedule(args.schedule, node_ids(args.nodes), bound)
        except ScheduleError as exc:
            print(f"chaos: {exc}", file=sys.stderr)
            return 2
        if args.duration is None:
            args.duration = schedule[-1].at + schedule[-1].hold + 5.0
    if args.duration is None:
        args.duration = 60.0
    if args.duration <= 0 or (args.clients is not None and args.clients < 1) or args.watchers < 0 or args.keys < 2:
        print("chaos: --duration and --clients must be positive, --keys at least 2", file=sys.stderr)
        return 2
    if args.offline_clients < 0:
        print("chaos: --offline-clients must not be negative", file=sys.stderr)
        return 2
    asked = set(args.faults or ()) | {f.kind for f in schedule or ()}
    if not args.tls and asked & set(TLS_FAULT_KINDS):
        print(f"chaos: fault kind(s) {', '.join(sorted(asked & set(TLS_FAULT_KINDS)))} need --tls", file=sys.stderr)
        return 2
    if args.tls and (args.hostile or args.compare_hostile or args.offline_clients):
        print("chaos: --tls does not go with --hostile, --compare-hostile or --offline-clients yet", file=sys.stderr)
        return 2
    if not args.hostile_rate > 0 or not math.isfinite(args.hostile_rate):
        print("chaos: --hostile-rate must be a positive number", file=sys.stderr)
        return 2
    if args.think < 0 or args.snapshot_every < 1 or args.converge_timeout <= 0:
        print(
            "chaos: --think must not be negative, --snapshot-every and --converge-timeout must be positive",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    hostile = None
    if args.hostile or args.compare_hostile:
        try:
            hostile = HostileConfig(
                rate=args.hostile_rate, kinds=args.hostile_kinds or HOSTILE_KINDS, source=args.hostile_source
            )
        except ValueError as exc:
            print(f"chaos: {exc}", file=sys.stderr)
            return 2
    cfg = ChaosConfig(
        nodes=args.nodes,
        duration=args.duration,
        seed=args.seed,
        out=args.out,
        clients=args.clients,
        watchers=args.watchers,
        keys=args.keys,
        think=args.think,
        snapshot_every=args.snapshot_every,
        faults=args.faults or FAULT_KINDS,
        timing=FaultTiming(gap=args.gap or DEFAULT_TIMING.gap, hold=args.hold or DEFAULT_TIMING.hold),
        schedule=schedule,
        inject_bug=args.inject_bug,
        progress=not args.no_progress,
        converge_timeout=args.converge_timeout,
        hostile=hostile,
        offline_clients=args.offline_clients,
        tls=args.tls,
    )
    try:
        if args.compare_hostile:
            return asyncio.run(_compare(cfg))
        result = asyncio.run(_run(cfg))
    except asyncio.CancelledError:
        print("chaos: stopped by SIGTERM (every node stopped)", file=sys.stderr)
        return 143
    return 0 if result.ok else 1


def _on_sigterm() -> None:
    # SIGTERM cancels the run, so that its cleanup stops every node.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


async def _run(cfg: ChaosConfig) -> ChaosResult:
    _on_sigterm()
    return await run_chaos(cfg)


# Leader changes a run with hostile neighbours may have beyond the same run
# without them before the comparison says "more often": two runs with the
# same seed and faults still differ in timing (which node wins an election,
# whether a pause lands on a heartbeat), by about one change either way.
COMPARE_SLACK = 2


async def _compare(cfg: ChaosConfig) -> int:
    """The same run without and with hostile neighbours; prints how often
    the controller changed in each and writes OUT/compare.json. Exit 1 if
    either run found an anomaly (the counts are printed, not judged)."""
    _on_sigterm()
    console = Console()
    root = cfg.out
    if root.exists() and not root.is_dir():
        raise SystemExit(f"chaos: {root} is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    runs = {
        "without": dataclasses.replace(cfg, hostile=None, out=root / "without-hostile"),
        "with": dataclasses.replace(cfg, out=root / "with-hostile"),
    }
    results = {name: await run_chaos(run, console) for name, run in runs.items()}
    figures = {
        name: {
            "leader_changes": r.summary["elections"]["count"],
            "max_term": r.summary["elections"]["terms"],
            "anomalies": r.summary["anomaly_count"],
            "unavailable_s": round(r.summary["unavailability"]["total"], 2),
            "hostile_attempts": (r.summary.get("hostile") or {}).get("attempts", 0),
            "out": str(r.out),
        }
        for name, r in results.items()
    }
    more = figures["with"]["leader_changes"] - figures["without"]["leader_changes"]
    doc = {"seed": cfg.seed, "slack": COMPARE_SLACK, "runs": figures, "more_leader_changes": more}
    (root / "compare.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    table = Table(title=f"seed {cfg.seed}, the same faults without and with hostile neighbours")
    for column in ("hostile", "leader changes", "max term", "unavailable", "attempts", "anomalies"):
        table.add_column(column, no_wrap=True)
    for name, f in figures.items():
        table.add_row(
            name,
            str(f["leader_changes"]),
            str(f["max_term"]),
            f"{f['unavailable_s']:.2f} s",
            str(f["hostile_attempts"]),
            str(f["anomalies"]),
        )
    console.print(table)
    verdict = "no more often" if more <= 0 else f"{more} more (slack {COMPARE_SLACK})"
    console.print(
        f"leader changes: {figures['without']['leader_changes']} without, {figures['with']['leader_changes']} with"
        f" hostile neighbours: {verdict}"
    )
    return 0 if all(r.ok for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
