"""The `hana-node` command line."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hana-node", description="hana mesh node")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate", help="run the deterministic Raft simulator (same as python -m simulations.deterministic)"
    )
    sim.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the simulator")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "simulate":
        from simulations.deterministic import main as simulate

        return simulate(args.args)
    print(f"unknown command {args.command}", file=sys.stderr)
    return 2
