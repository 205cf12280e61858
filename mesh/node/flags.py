"""Parsing of the address flags shared by the CLI and `serve`."""

from __future__ import annotations

import argparse

# Deliberately broken behaviours behind the hidden `serve --inject-bug`:
# the chaos checker must catch each (tests/chaos/test_chaos_run.py).
# "stale_reads": every node answers linearizable reads from its local state,
# without ReadIndex. "ack_unreplicated": the controller counts an entry as
# committed (applies it, answers the client) once it is on its own disk,
# before a majority has it.
INJECTABLE_BUGS = ("stale_reads", "ack_unreplicated")


class CliError(Exception):
    """A user mistake or an unreachable node: printed without a traceback."""


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise CliError(f"{what}: expected HOST:PORT, got {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise CliError(f"{what}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise CliError(f"{what}: port {number} out of range")
    return host.strip("[]"), number


def parse_peers(text: str) -> dict[str, tuple[str, int]]:
    peers: dict[str, tuple[str, int]] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        nid, sep, addr = item.partition("=")
        if not sep or not nid:
            raise CliError(f"--peers: expected id=host:port, got {item!r}")
        if nid in peers:
            raise CliError(f"--peers: {nid} listed twice")
        peers[nid] = parse_hostport(addr, f"--peers {nid}")
    if not peers:
        raise CliError("--peers: no peers given")
    return peers


def parse_osc_targets(text: str) -> tuple[tuple[str, int], ...]:
    """`--osc-send HOST:PORT[,HOST:PORT...]`: where the OSC bridge sends."""
    targets: list[tuple[str, int]] = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        host, port = parse_hostport(item, "--osc-send")
        if port == 0:
            raise CliError(f"--osc-send {item}: port 0 is not an address to send to")
        if (host, port) in targets:
            raise CliError(f"--osc-send: {item} listed twice")
        targets.append((host, port))
    if not targets:
        raise CliError("--osc-send: expected HOST:PORT[,HOST:PORT...]")
    if len(targets) > 16:
        raise CliError("--osc-send: at most 16 targets")
    return tuple(targets)


# Live parameters (mesh/node/live.py) and command merging: their serve flags.
DEFAULT_SETTLE_MS = 250
DEFAULT_MERGE_MS = 500


def add_live_flags(serve: argparse.ArgumentParser) -> None:
    """`serve --settle-ms`, `--merge-ms` and `--coalesce-history`."""
    serve.add_argument(
        "--settle-ms",
        type=int,
        default=DEFAULT_SETTLE_MS,
        metavar="MS",
        help="a live gesture without a new value for this long is committed (its final values, one undo step)",
    )
    serve.add_argument(
        "--merge-ms",
        type=int,
        default=DEFAULT_MERGE_MS,
        metavar="MS",
        help="writes of one key by one author this close together are one undo step (0: never merged)",
    )
    serve.add_argument(
        "--coalesce-history",
        action="store_true",
        help="writes merged into one undo step (--merge-ms) also leave one history record, from the first "
        "write's before-value to the last write's value (default: history keeps every record)",
    )
    # Hidden: live values through the controller instead of straight to every
    # peer, for bench/live.py's comparison of the two fan-outs.
    serve.add_argument("--live-fanout", choices=("direct", "relay"), default="direct", help=argparse.SUPPRESS)


def check_live_flags(settle_ms: int, merge_ms: int) -> None:
    if not 1 <= settle_ms <= 60_000:
        raise CliError("--settle-ms must be from 1 to 60000")
    if not 0 <= merge_ms <= 60_000:
        raise CliError("--merge-ms must be from 0 to 60000")
