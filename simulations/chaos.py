"""Chaos against real nodes: `python simulations/chaos.py --nodes 3 --duration 60 --seed 1 --out chaos-out`.

Starts N `hana-node serve` processes on loopback with a fault-injecting
proxy between every pair, runs a concurrent client workload through the
HTTP API, injects faults from the seed (SIGKILL, torn WAL tails, pauses,
partitions of every shape, latency, loss, membership changes), then heals
everything, waits for the replicas to converge and checks the recorded
history: linearizability per key, every acknowledged write in every
node's log, watch streams without gaps or duplicates, identical replicas.
Prints a summary table, writes history.jsonl, summary.json and
timeline.png to --out, and exits 1 on any anomaly (2 on a usage error,
143 if stopped by SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console

from mesh.node.flags import INJECTABLE_BUGS
from simulations.chaoskit.cluster import node_ids
from simulations.chaoskit.faults import FAULT_KINDS, FaultTiming
from simulations.chaoskit.history import read_history
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
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"fault kinds are {', '.join(FAULT_KINDS)}; got {text!r}")
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
    p.add_argument("--think", type=float, default=0.02, help="a client's pause between operations, at most")
    p.add_argument("--snapshot-every", type=int, default=400, help="entries between node snapshots")
    p.add_argument("--faults", type=_kinds, default=None, help="comma-separated fault kinds (default: all)")
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
    if args.think < 0 or args.snapshot_every < 1 or args.converge_timeout <= 0:
        print(
            "chaos: --think must not be negative, --snapshot-every and --converge-timeout must be positive",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
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
    )
    try:
        result = asyncio.run(_run(cfg))
    except asyncio.CancelledError:
        print("chaos: stopped by SIGTERM (every node stopped)", file=sys.stderr)
        return 143
    return 0 if result.ok else 1


async def _run(cfg: ChaosConfig) -> ChaosResult:
    # SIGTERM cancels the run, so that its cleanup stops every node.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_chaos(cfg)


if __name__ == "__main__":
    sys.exit(main())
