"""Run the deterministic simulator over many seeds.

    python -m simulations.deterministic --seeds 1000 [--nodes 5] [--faults crash,partition]
        [--seed-start S] [--jobs J] [--duration SECONDS] [--mutation NAME] [--verbose]
        [--whole-node]

Every option of a run is drawn from its seed, so `--seed-start S --seeds 1
--verbose` replays seed S exactly, printing its options and full trace.
`--whole-node` runs whole nodes (the node core with HanaState, clients,
watchers; simulations/sim/wholenode.py) instead of bare replicas.
`--mutation all` runs every mutation of the mode over the seeds and prints
how many seeds caught each (exit status 1 if one was never caught).
Exit status: 0 when no seed violated an invariant, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from simulations.sim import FAULT_KINDS, RunConfig, SeedResult, run_many
from simulations.sim.world import SECOND


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulations.deterministic", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=100, help="number of seeds to run (default 100)")
    p.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--nodes", type=int, choices=(1, 2, 3, 4, 5, 6, 7), help="initial voters (default: drawn per seed)")
    p.add_argument(
        "--faults",
        default="all",
        help=f"comma-separated fault kinds, 'all' or 'none' (kinds: {','.join(FAULT_KINDS)})",
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPU count)")
    p.add_argument(
        "--duration",
        "--steps",
        type=float,
        default=None,
        help="safety phase in simulated seconds (default: 2-4, drawn)",
    )
    p.add_argument(
        "--mutation", default=None, help="inject a named bug (see simulations.mutations), or 'all': catch rates"
    )
    p.add_argument("--verbose", action="store_true", help="print each seed's options and full trace")
    p.add_argument(
        "--disk",
        action="store_true",
        help="nodes use the real on-disk store (mesh.storage.disk) in a temporary directory; crashes reopen it",
    )
    p.add_argument(
        "--whole-node",
        action="store_true",
        help="run whole nodes (node core, HanaState, clients and watchers) instead of bare replicas",
    )
    p.add_argument(
        "--offline-writers",
        action="store_true",
        help="whole nodes with offline writers (issue 14): writes queued on nodes cut off from the controller, "
        "replayed, their fates, lww by the edit's stamp, manual conflicts and conflict sets checked "
        "(implies --whole-node)",
    )
    return p


def parse_faults(text: str) -> tuple[str, ...]:
    if text == "all":
        return FAULT_KINDS
    if text in ("none", ""):
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise SystemExit(f"unknown fault kind(s): {', '.join(unknown)} (known: {', '.join(FAULT_KINDS)})")
    return kinds


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.offline_writers:
        args.whole_node = True
    if args.mutation == "all":
        return mutation_rates(args)
    if args.mutation:
        from simulations.mutations import MUTATIONS, WHOLE_NODE

        if args.mutation not in MUTATIONS:
            raise SystemExit(f"unknown mutation {args.mutation!r} (known: {', '.join(sorted(MUTATIONS))})")
        if args.mutation in WHOLE_NODE and not args.whole_node:
            raise SystemExit(f"mutation {args.mutation!r} lives above the Raft core: add --whole-node")
    if args.disk and args.whole_node:
        raise SystemExit("--disk is for the Raft-level simulator (whole nodes run on the in-memory store)")
    cfg = RunConfig(
        nodes=args.nodes,
        faults=parse_faults(args.faults),
        safety_us=int(args.duration * SECOND) if args.duration is not None else None,
        mutation=args.mutation,
        verbose=args.verbose,
        disk=args.disk,
        whole_node=args.whole_node,
        offline=args.offline_writers,
    )
    console = Console(stderr=False)
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    results: list[SeedResult] = []
    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[bad]} violations"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=args.verbose,
    ) as progress:
        task = progress.add_task("seeds", total=len(seeds), bad=0)
        bad = 0
        for res in run_many(seeds, cfg, jobs=max(1, args.jobs)):
            results.append(res)
            if not res.ok:
                bad += 1
            if args.verbose:
                _print_verbose(console, res)
            progress.update(task, advance=1, bad=bad)
    wall = time.perf_counter() - start
    results.sort(key=lambda r: r.seed)
    failures = [r for r in results if not r.ok]
    console.print(summary_table(results, wall, cfg))
    for r in failures:
        console.rule(f"[red]seed {r.seed}: {r.invariant}")
        console.print(r.report(), markup=False, highlight=False, soft_wrap=True)
        console.print(f"replay: {replay_command(r.seed, args)}", markup=False, soft_wrap=True)
    if failures:
        print(f"options: {' '.join(sys.argv[1:])}; failing seeds: {' '.join(str(r.seed) for r in failures)}")
    if failures:
        console.print(f"[red]{len(failures)} seed(s) violated an invariant[/red]")
        return 1
    console.print("[green]no violations[/green]")
    return 0


def mutation_rates(args: argparse.Namespace) -> int:
    """Every mutation of the mode over the same seeds: how many seeds caught
    it (a violation other than liveness), and the first that did."""
    from simulations.mutations import MUTATIONS, OFFLINE, WHOLE_NODE

    names = [m for m in MUTATIONS if (m in WHOLE_NODE) == args.whole_node]
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    table = Table(title=f"mutations caught over seeds {seeds.start}..{seeds.stop - 1}", show_header=True)
    for col in ("mutation", "seeds that caught it", "rate", "first", "invariants", "what it breaks"):
        table.add_column(col)
    missed = []
    start = time.perf_counter()
    for name in names:
        cfg = RunConfig(
            nodes=args.nodes,
            faults=parse_faults(args.faults),
            safety_us=int(args.duration * SECOND) if args.duration is not None else None,
            mutation=name,
            whole_node=args.whole_node,
            offline=args.offline_writers or name in OFFLINE,
        )
        caught = sorted(
            (r for r in run_many(seeds, cfg, jobs=max(1, args.jobs)) if not r.ok and r.invariant != "liveness"),
            key=lambda r: r.seed,
        )
        kinds = Counter(r.invariant for r in caught)
        if not caught:
            missed.append(name)
        table.add_row(
            name,
            f"{len(caught)}/{len(seeds)}",
            f"{100 * len(caught) / len(seeds):.1f}%",
            str(caught[0].seed) if caught else "never",
            ", ".join(f"{k} x{n}" for k, n in kinds.most_common(3)),
            MUTATIONS[name][1],
        )
    Console(width=max(160, Console().width)).print(table)
    print(f"{len(names)} mutations, {len(seeds)} seeds each, {time.perf_counter() - start:.0f} s")
    if missed:
        print(f"never caught: {', '.join(missed)}")
        return 1
    return 0


def replay_command(seed: int, args: argparse.Namespace) -> str:
    parts = [sys.executable, "-m", "simulations.deterministic", "--seed-start", str(seed), "--seeds", "1", "--verbose"]
    if args.nodes:
        parts += ["--nodes", str(args.nodes)]
    if args.faults != "all":
        parts += ["--faults", args.faults]
    if args.duration is not None:
        parts += ["--duration", str(args.duration)]
    if args.mutation:
        parts += ["--mutation", args.mutation]
    if args.offline_writers:
        parts.append("--offline-writers")
    elif args.whole_node:
        parts.append("--whole-node")
    return " ".join(parts)


def _print_verbose(console: Console, res: SeedResult) -> None:
    console.rule(f"seed {res.seed}")
    console.print(f"options: {res.options}", markup=False, highlight=False, soft_wrap=True)
    for line in res.trace:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def summary_table(results: list[SeedResult], wall: float, cfg: RunConfig) -> Table:
    faults: Counter[str] = Counter()
    violations: Counter[str] = Counter()
    by_nodes: Counter[int] = Counter()
    for r in results:
        faults.update(r.faults)
        by_nodes[r.nodes] += 1
        if not r.ok:
            violations[r.invariant] += 1
    sim_s = sum(r.sim_us for r in results) / SECOND
    t = Table(title="hana mesh deterministic simulation", show_header=True)
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("seeds run", str(len(results)))
    t.add_row("cluster sizes", ", ".join(f"{n} nodes: {c}" for n, c in sorted(by_nodes.items())))
    t.add_row("mode", "whole nodes (node core, HanaState, clients)" if cfg.whole_node else "replicas (Raft level)")
    t.add_row("mutation", cfg.mutation or "none")
    t.add_row("wall time", f"{wall:.1f} s ({len(results) / wall:.1f} seeds/s)" if wall > 0 else "0 s")
    t.add_row("mean wall per seed (one core)", f"{sum(r.wall_s for r in results) / max(1, len(results)):.3f} s")
    t.add_row("simulated time", f"{sim_s:.1f} s")
    t.add_row("events", str(sum(r.events for r in results)))
    t.add_row("entries committed", str(sum(r.committed for r in results)))
    t.add_row("writes acknowledged", str(sum(r.acked for r in results)))
    t.add_row("linearizable reads", str(sum(r.reads for r in results)))
    if cfg.whole_node:
        outcomes: Counter[str] = Counter()
        for r in results:
            outcomes.update(r.outcomes)
        for kind in ("ok", "fail", "unknown"):
            t.add_row(f"client requests: {kind}", str(outcomes[kind]))
        t.add_row("watch events delivered", str(sum(r.watch_events for r in results)))
        live: Counter[str] = Counter()
        for r in results:
            live.update(r.live)
        for kind in sorted(live):
            t.add_row(f"live: {kind}", str(live[kind]))
        offline: Counter[str] = Counter()
        for r in results:
            offline.update(r.offline)
        for name in sorted(offline):
            t.add_row(f"offline writes: {name}", str(offline[name]))
    t.add_row("elections (terms with a leader)", str(sum(r.elections for r in results)))
    t.add_row("controller connections seen closed", str(sum(r.controller_closed for r in results)))
    for kind in sorted(faults):
        t.add_row(f"faults: {kind}", str(faults[kind]))
    t.add_row("violations", str(sum(violations.values())))
    for inv, n in sorted(violations.items()):
        t.add_row(f"  {inv}", str(n))
    return t


if __name__ == "__main__":
    sys.exit(main())
