"""`hana-node live …` and `hana-node osc …`: the live stream and the OSC
bridge from the command line (issue 15).

    hana-node live set KEY VALUE [--gesture ID] [--keep]
        one live set through the node's `GET /v1/live` WebSocket; waits for
        the node to echo it (or answer an error: exit 1), then ends the
        gesture (committed at once: one history record, one undo step)
        unless --keep (then it settles after --settle-ms of silence).
    hana-node live watch [--prefix P] [--json]
        a table of the keys under P redrawn in place: current value, updates
        a second, where the last one came from (a node's live stream, or
        "log" for committed changes) and how long ago. --json prints every
        message as the node sent it, one per line (live messages, then
        committed changes as {"type": "change", …}).
    hana-node osc status [--json]      GET /v1/osc: listener, OSCQuery,
                                       targets, mappings, packet counts
    hana-node osc monitor [--json]     every packet the OSC listener gets,
                                       with what it mapped to (or why not)

All take --api, --token-file and --token like every client command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from mesh.node.flags import CliError

if TYPE_CHECKING:
    from mesh.client import ApiError, MeshClient

ECHO_TIMEOUT = 5.0
RATE_WINDOW = 1.0
REFRESH = 0.25
MAX_KEYS = 10_000

ClientFactory = Callable[[str, float], "MeshClient"]


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser, bool], None]) -> None:
    """Register `live` and `osc` on hana-node's subparsers; `common(p,
    json)` adds the flags every client command takes (--api, tokens, --json)."""
    live = sub.add_parser("live", help="set live values, or watch them move (the live stream)")
    live_sub = live.add_subparsers(dest="live_command", required=True, metavar="{set,watch}")
    p = live_sub.add_parser(
        "set",
        help="set one value live (validated like a write); ends the gesture at once unless --keep",
        description="Send KEY=VALUE to the node's live stream and wait for it to be accepted. The gesture then "
        "ends, so the value is committed at once (one history record, one undo step); with --keep it stays "
        "live and settles after the node's --settle-ms without a new value.",
    )
    p.add_argument("key", help="e.g. parameters/master/brightness")
    p.add_argument("value", help="JSON value, e.g. 0.8 or '\"text\"'")
    p.add_argument("--gesture", default=None, help="gesture id to set under (default: a new one)")
    p.add_argument("--keep", action="store_true", help="do not end the gesture (it settles by silence)")
    common(p, True)
    p = live_sub.add_parser(
        "watch",
        help="a self-updating table of live values and their rates (--json: one message per line)",
    )
    p.add_argument("--prefix", default="", help="only keys under this prefix")
    common(p, True)

    osc = sub.add_parser("osc", help="the node's OSC bridge: its status, or a monitor of incoming OSC")
    osc_sub = osc.add_subparsers(dest="osc_command", required=True, metavar="{status,monitor}")
    p = osc_sub.add_parser("status", help="listener, OSCQuery address, send targets, mappings, packet counts")
    common(p, True)
    p = osc_sub.add_parser(
        "monitor",
        help="print every OSC packet the node receives and what it maps to, until Ctrl-C",
    )
    common(p, True)


async def run(args: argparse.Namespace, make: ClientFactory) -> int:
    from mesh.client import Unreachable

    try:
        if args.command == "live" and args.live_command == "set":
            return await live_set(args, make)
        if args.command == "live":
            return await live_watch(args, make)
        if args.osc_command == "status":
            return await osc_status(args, make)
        return await osc_monitor(args, make)
    except Unreachable as exc:
        raise CliError(str(exc)) from None


def _no_bridge(args: argparse.Namespace, exc: ApiError) -> CliError | None:
    if exc.status == 404:
        return CliError(
            f"the node at {args.api} runs no OSC bridge: start it with --osc-listen HOST:PORT (or --osc-send)"
        )
    return None


def _refused(args: argparse.Namespace, exc: ApiError) -> CliError:
    if exc.status == 401:
        return CliError(f"{args.api} asks for a token: give --token-file F (or env HANA_TOKEN_FILE)")
    if exc.status == 403:
        return CliError(f"{args.api} refused: your token's role may not do this ({exc.message})")
    if exc.status == 404:
        return CliError(f"{args.api} has no such endpoint (an older node?): {exc.message}")
    return CliError(f"{args.api} refused the connection: {exc}")


# -- live set -----------------------------------------------------------------------


def parse_value(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"value is not JSON: {exc} (quote strings: '\"text\"')") from None


async def live_set(args: argparse.Namespace, make: ClientFactory) -> int:
    from mesh.client import ApiError

    if not args.key or "/" not in args.key:
        raise CliError(f"key {args.key!r}: expected component/name, e.g. parameters/master/brightness")
    value = parse_value(args.value)
    gesture = args.gesture or f"cli-{os.getpid()}-{int(time.time() * 1000):x}"
    async with make(args.api, 10.0) as c:
        try:
            async with c.socket("/v1/live", {"prefix": args.key}) as ws:
                await ws.send({"set": {args.key: value}, "gesture": gesture})
                doc = await _echo(ws, args.key, gesture)
                if doc.get("type") == "error":
                    print(f"hana-node live set: {_error_text(doc)}", file=sys.stderr)
                    return 1
                if not args.keep:
                    await ws.send({"end": gesture})
        except ApiError as exc:
            raise _refused(args, exc) from None
    if args.json:
        print(orjson.dumps({"key": args.key, "value": value, "gesture": gesture, "ended": not args.keep}).decode())
    else:
        how = "live; settles after the node's --settle-ms" if args.keep else "gesture ended: committed"
        print(f"set {args.key} = {_short(value)} (gesture {gesture}, {how})")
    return 0


async def _echo(ws: Any, key: str, gesture: str) -> dict[str, Any]:
    """The node's answer to our set: an error, or the live message that
    carries our key (our own set echoed to our subscription)."""
    try:
        async with asyncio.timeout(ECHO_TIMEOUT):
            while True:
                doc = await ws.receive()
                if doc is None:
                    raise CliError("the node closed the live stream before answering")
                if not isinstance(doc, dict):
                    continue
                if doc.get("type") == "error" or "error" in doc:
                    return doc
                if doc.get("type") == "live" and key in (doc.get("values") or {}):
                    return doc
    except TimeoutError:
        raise CliError(f"no answer from the live stream within {ECHO_TIMEOUT:g} s") from None


def _error_text(doc: dict[str, Any]) -> str:
    err = doc.get("error", doc)
    if isinstance(err, dict):
        code, message = err.get("code"), err.get("message")
        return f"{code}: {message}" if code and message else str(message or code or err)
    return str(err)


def _short(value: Any, width: int = 40) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


# -- live watch ---------------------------------------------------------------------


@dataclass
class Row:
    value: Any
    source: str
    at: float
    stamps: deque[float] = field(default_factory=lambda: deque(maxlen=2_000))

    def rate(self, now: float) -> float:
        while self.stamps and now - self.stamps[0] > RATE_WINDOW:
            self.stamps.popleft()
        return len(self.stamps) / RATE_WINDOW


class LiveView:
    """Current values by key, and how often each changes (the last second)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rows: dict[str, Row] = {}
        self.dropped = 0

    def seed(self, key: str, value: Any) -> None:
        if key in self.rows or len(self.rows) < MAX_KEYS:
            self.rows.setdefault(key, Row(value, "log", self.clock()))

    def update(self, values: dict[str, Any], source: str) -> None:
        now = self.clock()
        for key, value in values.items():
            row = self.rows.get(key)
            if row is None:
                if len(self.rows) >= MAX_KEYS:
                    self.dropped += 1
                    continue
                row = self.rows[key] = Row(value, source, now)
            row.value, row.source, row.at = value, source, now
            row.stamps.append(now)

    def message(self, doc: Any) -> None:
        if not isinstance(doc, dict):
            return
        if doc.get("type") == "live" and isinstance(doc.get("values"), dict):
            self.update(doc["values"], str(doc.get("source", "?")))
        elif "key" in doc and "revision" in doc:  # a committed change (the watch)
            if doc.get("op") == "delete":
                self.rows.pop(doc["key"], None)
            else:
                self.update({doc["key"]: doc.get("value")}, "log")

    def table(self, height: int | None = None) -> Any:
        from rich.table import Table

        now = self.clock()
        t = Table(box=None, pad_edge=False, header_style="bold")
        for name in ("key", "value", "/s", "from", "age"):
            t.add_column(name, justify="right" if name in ("/s", "age") else "left", no_wrap=True)
        keys = sorted(self.rows)
        shown = keys if height is None else keys[: max(1, height - 3)]
        for key in shown:
            row = self.rows[key]
            age = now - row.at
            t.add_row(key, _short(row.value), f"{row.rate(now):.0f}", row.source, f"{age:.1f}s")
        if len(shown) < len(keys):
            t.caption = f"{len(keys) - len(shown)} more keys (narrow --prefix)"
        return t


async def live_watch(args: argparse.Namespace, make: ClientFactory) -> int:
    from mesh.client import ApiError, WatchClosed

    view = LiveView()
    async with make(args.api, 10.0) as c:
        try:
            listing = await c.list(args.prefix, "local")
        except ApiError as exc:
            raise _refused(args, exc) from None
        for item in listing.get("items") or []:
            view.seed(item["key"], item.get("value"))
        since = str(int(listing.get("revision", 0)) + 1)  # committed changes after the listing: none missed
        try:
            async with (
                c.socket("/v1/live", {"prefix": args.prefix}) as live,
                c.socket("/v1/watch", {"prefix": args.prefix, "since": since}) as changes,
            ):
                queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=10_000)
                pumps = [asyncio.ensure_future(_pump(name, s, queue)) for name, s in (("live", live), ("log", changes))]
                try:
                    if args.json:
                        return await _print_json(queue)
                    return await _draw(view, queue)
                finally:
                    for p in pumps:
                        p.cancel()
                    for p in pumps:
                        with contextlib.suppress(asyncio.CancelledError, WatchClosed, ApiError):
                            await p
        except ApiError as exc:
            raise _refused(args, exc) from None


async def _pump(name: str, sock: Any, queue: asyncio.Queue[tuple[str, Any]]) -> None:
    try:
        async for doc in sock:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # a slow terminal: the oldest goes (the table keeps the latest)
            queue.put_nowait((name, doc))
    finally:
        queue.put_nowait((name, None))


async def _print_json(queue: asyncio.Queue[tuple[str, Any]]) -> int:
    while True:
        name, doc = await queue.get()
        if doc is None:
            print(f"hana-node live watch: the node closed the {name} stream", file=sys.stderr)
            return 1
        if name == "log" and isinstance(doc, dict) and "type" not in doc:
            doc = {"type": "change", **doc}
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        sys.stdout.flush()


async def _draw(view: LiveView, queue: asyncio.Queue[tuple[str, Any]]) -> int:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from mesh.cli_tables import console

    out = console()
    with Live(console=out, auto_refresh=False, redirect_stderr=False) as screen:
        next_draw = 0.0
        while True:
            try:
                # Not asyncio.wait_for: on Python 3.11 it loses a
                # cancellation (Ctrl-C) that lands as queue.get() completes,
                # and this loop would then never end.
                async with asyncio.timeout(REFRESH):
                    name, doc = await queue.get()
            except TimeoutError:
                name, doc = "", False
            if doc is None:
                print(f"hana-node live watch: the node closed the {name} stream", file=sys.stderr)
                return 1
            if doc is not False:
                view.message(doc)
            now = time.monotonic()
            if now >= next_draw:
                next_draw = now + REFRESH
                stamp = Text(f"{len(view.rows)} keys; Ctrl-C stops", style="dim")
                screen.update(Group(view.table(out.height), stamp), refresh=True)


# -- osc ----------------------------------------------------------------------------


async def osc_status(args: argparse.Namespace, make: ClientFactory) -> int:
    from mesh.client import ApiError

    async with make(args.api, 10.0) as c:
        try:
            doc = await c.request("GET", "/v1/osc")
        except ApiError as exc:
            raise (_no_bridge(args, exc) or _refused(args, exc)) from None
    if args.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0
    from rich.table import Table

    from mesh.cli_tables import console

    out = console()
    out.print(f"listen   {doc.get('listen') or '-'}   oscquery {doc.get('oscquery') or '-'}")
    out.print(f"send     {', '.join(doc.get('send') or []) or '-'}   sent {doc.get('sent', 0)}")
    packets = doc.get("packets") or {}
    out.print("packets  " + "  ".join(f"{k} {v}" for k, v in packets.items()))
    t = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("address", "target", "type", "value", "mapping"):
        t.add_column(name, no_wrap=True)
    for m in doc.get("mappings") or []:
        t.add_row(m.get("address"), m.get("target"), m.get("type"), _short(m.get("value")), m.get("key"))
    out.print(t)
    for key, why in (doc.get("refused_mappings") or {}).items():
        out.print(f"[yellow]refused[/yellow] {key}: {why}")
    return 0


def monitor_line(event: dict[str, Any]) -> str:
    """One line per packet: time, sender, result, each message and where it went."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0) / 1000))
    stamp += f".{int(event.get('time', 0)) % 1000:03d}"
    head = f"{stamp} {event.get('from', '?'):<21} {event.get('result', '?'):<12}"
    parts = []
    for m in event.get("messages") or []:
        args = " ".join(_short(a, 16) for a in m.get("args") or [])
        target = m.get("maps_to")
        where = ", ".join(f"{k}={_short(v, 20)}" for k, v in target.items()) if target else "-"
        parts.append(f"{m.get('address')} {args} -> {where}")
    if not parts:
        parts.append(f"({event.get('bytes', '?')} bytes)")
    line = head + " | ".join(parts)
    if event.get("reason"):
        line += f"  [{event['reason']}]"
    if event.get("dropped"):
        line += f"  ({event['dropped']} events missed)"
    return line


async def osc_monitor(args: argparse.Namespace, make: ClientFactory) -> int:
    from mesh.client import ApiError

    async with make(args.api, 10.0) as c:
        try:
            async with c.socket("/v1/osc/monitor") as ws:
                if not args.json:
                    print(f"monitoring OSC at {args.api}; Ctrl-C stops", file=sys.stderr)
                for n in itertools.count():
                    doc = await ws.receive()
                    if doc is None:
                        print(f"hana-node osc monitor: the node closed the monitor after {n} packets", file=sys.stderr)
                        return 1
                    if args.json:
                        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
                    else:
                        sys.stdout.write(monitor_line(doc) + "\n")
                    sys.stdout.flush()
        except ApiError as exc:
            raise (_no_bridge(args, exc) or _refused(args, exc)) from None
    return 0  # pragma: no cover - the loop ends by returning
