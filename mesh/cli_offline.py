"""The commands of a node cut off from its controller (API.md "A node cut
off from the controller"): `conflicts list|show|resolve`, `reset`,
`outbox`, and the `--confirm all` / `--offline queue` flags of `put` and
`delete`.

    hana-node conflicts [list] [--all]          open conflicts (--all: resolved ones too)
    hana-node conflicts show ID                 both sides, and how to resolve
    hana-node conflicts resolve ID --take current|proposed|value [--value JSON]
    hana-node reset COMPONENT [KEY...]          schema defaults, one revision and undo step
    hana-node outbox [--state STATE]            this node's queued writes and their fates
    hana-node put KEY JSON --confirm all        prints which displays have it (exit 3 if not all)
    hana-node put KEY JSON --offline queue      kept in the node's outbox when cut off (202)

mesh/cli.py registers these (`add_commands`, `add_write_flags`) and hands
them over (`run`); tables are drawn here with mesh/cli_tables.py's
helpers. Answers the node refuses (404, 409, 400) are explained in words
on stderr with exit status 1; bad flags exit 2 (argparse, CliError).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mesh.cli_tables import _critical, _table, conflicts_table, hlc_time
from mesh.client import CONFIRM_CHOICES, OFFLINE_CHOICES, TAKES, ApiError, MeshClient, is_queued
from mesh.node.flags import CliError

COMMANDS = frozenset({"conflicts", "reset", "outbox"})
OUTBOX_STATES = ("queued", "replaying", "applied", "superseded", "conflict", "rejected")
FINAL_STATES = frozenset({"applied", "superseded", "conflict", "rejected"})
# `put --confirm all` wrote the value but some member did not confirm it
# (down, cut off, or slower than the request timeout): not an error (1),
# not a success a cue may rely on (0).
EXIT_NOT_EVERYWHERE = 3

Out = Callable[[argparse.Namespace, Any, Callable[[Any], Any]], int]
MakeCommand = Callable[..., argparse.ArgumentParser]


def add_write_flags(parser: argparse.ArgumentParser) -> None:
    """--confirm all and --offline queue, on put and delete."""
    parser.add_argument(
        "--confirm",
        choices=CONFIRM_CHOICES,
        default=None,
        help="all: wait until every reachable member has applied it and print which have "
        f"(exit {EXIT_NOT_EVERYWHERE} if a member is missing)",
    )
    parser.add_argument(
        "--offline",
        choices=OFFLINE_CHOICES,
        default=None,
        help="queue: if no controller answers, keep the write in this node's outbox (hana-node outbox shows its fate)",
    )


def add_commands(cmd: MakeCommand) -> None:
    """`cmd(name, help, **kw)` is mesh/cli.py's maker of a command that
    talks to a node (--api, tokens, --json)."""
    conflicts = cmd(
        "conflicts",
        "writes kept for a person to resolve: list, show ID, resolve ID --take …",
        description="A write made on a node cut off from its controller, to a key of a manual-policy "
        "component that changed meanwhile, is kept as a conflict. `resolve` keeps the current value "
        "(--take current), the offline edit (--take proposed) or a value you give (--take value "
        "--value JSON): one revision and one undo step, audited.",
    )
    conflicts.add_argument("action", nargs="?", choices=("list", "show", "resolve"), default="list")
    conflicts.add_argument("conflict_id", nargs="?", default=None, metavar="ID", help="show, resolve: the conflict")
    conflicts.add_argument("--all", action="store_true", help="list: resolved conflicts too")
    conflicts.add_argument("--take", choices=TAKES, default=None, help="resolve: which side to keep")
    conflicts.add_argument("--value", default=None, metavar="JSON", help="resolve --take value: the value to keep")

    reset = cmd(
        "reset",
        "set a component's keys (or the keys named) to their schema defaults (one undo step)",
        description="Keys with a schema default get it; keys without one are deleted. One revision and "
        "one undo step (hana-node undo reverts it).",
    )
    reset.add_argument("component", help="component name, e.g. displays")
    reset.add_argument("keys", nargs="*", metavar="KEY", help="only these keys (full keys, e.g. displays/left)")

    outbox = cmd(
        "outbox",
        "writes this node queued while cut off (--offline queue) and their fates",
        description="Fates: applied; superseded (last writer wins: a later edit won); conflict (kept for a "
        "person: hana-node conflicts); rejected (invalid by the time it was replayed). queued and "
        "replaying are not final yet.",
    )
    outbox.add_argument("--state", choices=OUTBOX_STATES, default=None, help="only items in this state")


async def run(c: MeshClient, args: argparse.Namespace, out: Out) -> int:
    """Run one of COMMANDS; a refusal is explained (exit 1)."""
    try:
        if args.command == "conflicts":
            return await _conflicts(c, args, out)
        if args.command == "reset":
            return await _reset(c, args, out)
        if args.command == "outbox":
            doc = await c.outbox()
            if args.state:
                doc = {**doc, "items": [i for i in doc.get("items") or [] if i.get("state") == args.state]}
            return out(args, doc, outbox_table)
    except ApiError as exc:
        print(f"hana-node {args.command}: {explain(args, exc)}", file=sys.stderr)
        return 1
    raise CliError(f"unknown command {args.command}")


async def write(c: MeshClient, args: argparse.Namespace, value: Any, out: Out) -> int:
    """put (value given) or delete, with --confirm and --offline. Exit 0;
    EXIT_NOT_EVERYWHERE when --confirm all names members missing."""
    kw = {"confirm": args.confirm, "offline": args.offline}
    if args.command == "put":
        doc = await c.put(args.key, value, args.expected_version, **kw)
    else:
        doc = await c.delete(args.key, args.expected_version, **kw)
    code = out(args, doc, lambda d: write_line(args.command, d))
    return code or (confirm_exit(doc) if args.confirm else 0)


async def _conflicts(c: MeshClient, args: argparse.Namespace, out: Out) -> int:
    cid = args.conflict_id
    if args.action == "list":
        if cid:
            raise CliError(f"conflicts list takes no id (did you mean: hana-node conflicts show {cid}?)")
        if args.take or args.value is not None:
            raise CliError("--take and --value go with: hana-node conflicts resolve ID")
        doc = await c.conflicts(include_resolved=args.all)
        if not args.all:
            doc = {**doc, "conflicts": [x for x in doc.get("conflicts") or [] if x.get("status") == "open"]}
        return out(args, doc, conflicts_table)
    if not cid:
        raise CliError(f"conflicts {args.action} needs a conflict id (hana-node conflicts lists them)")
    if args.action == "show":
        if args.take or args.value is not None:
            raise CliError(f"--take and --value go with: hana-node conflicts resolve {cid}")
        return out(args, await c.conflict(cid), conflict_view)
    if args.take is None:
        raise CliError(f"conflicts resolve needs --take current, proposed or value (hana-node conflicts show {cid})")
    if args.take == "value":
        if args.value is None:
            raise CliError("--take value needs --value JSON, the value to keep")
        value = parse_json(args.value, "--value")
        doc = await c.resolve(cid, "value", value)
    else:
        if args.value is not None:
            raise CliError(f"--value goes with --take value, not --take {args.take}")
        doc = await c.resolve(cid, args.take)
    return out(args, doc, resolved_line)


async def _reset(c: MeshClient, args: argparse.Namespace, out: Out) -> int:
    outside = [k for k in args.keys if not k.startswith(args.component + "/")]
    if outside:
        raise CliError(f"keys {', '.join(outside)} are not in component {args.component!r} (give full keys)")
    doc = await c.reset(args.component, args.keys or None)
    return out(args, doc, lambda d: reset_line(args.component, d))


def parse_json(text: str, what: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{what} is not JSON: {exc} (quote strings: '\"text\"')") from None


def explain(args: argparse.Namespace, exc: ApiError) -> str:
    """A refusal in words: what happened, that nothing changed, what to do."""
    cmd, code, msg = args.command, exc.code, exc.message
    cid = getattr(args, "conflict_id", None)
    if cmd == "conflicts":
        if exc.status == 404:
            return f"this node knows no conflict {cid!r}; nothing changed (hana-node conflicts --all lists them)"
        if exc.status == 409:
            return f"conflict {cid!r} is already resolved; nothing changed (hana-node conflicts show {cid})"
        if exc.status == 400:
            return f"the node refused the resolution ({code}: {msg}); nothing changed"
        if exc.status == 403:
            return f"resolving needs the operator role ({code}: {msg}): give a token with --token-file"
    if cmd == "reset":
        if exc.status == 404:
            return f"no component {args.component!r} or no such key ({code}: {msg}); nothing changed"
        if exc.status == 400:
            return f"the node refused the reset ({code}: {msg}); nothing changed"
    if cmd in ("put", "delete"):
        if exc.status == 400:
            return f"the node refused the write ({code}: {msg}); nothing changed"
        if exc.status == 409:
            cur = (exc.body.get("error") or {}).get("current") if isinstance(exc.body, dict) else None
            now = f"; it is at version {cur.get('version')}" if isinstance(cur, dict) else ""
            return f"{args.key} is not at the version expected ({code}: {msg}){now}; nothing changed"
        if exc.status == 404:
            return f"{args.key} does not exist; nothing changed"
        if exc.status == 503 and getattr(args, "offline", None) is None:
            return f"no controller took the write ({code}: {msg}); nothing changed (--offline queue keeps it)"
    if cmd in ("get", "keys") and exc.status == 503:
        return f"no controller reachable ({code}: {msg}); --consistency local reads this node's copy (marked stale)"
    if exc.status == 503:
        return f"no controller reachable ({code}: {msg})"
    return str(exc)


# -- what the commands print --------------------------------------------------------------


def write_line(command: str, doc: Any, api: str | None = None) -> RenderableType:
    """put/delete: what it did, queued in the outbox (202), and with
    --confirm all which members have applied it."""
    d = doc if isinstance(doc, Mapping) else {}
    if is_queued(d):
        keys = d.get("key") or ", ".join(str(k) for k in d.get("keys") or [])
        return Text(
            f"{keys}: no controller reachable; queued as {d['queued']} in this node's outbox "
            f"({d.get('outbox', '?')} queued, base version {d.get('base_version', '-')}); "
            "it replays when the node hears a controller again: hana-node outbox shows its fate",
            style="yellow",
        )
    if command == "put" and d.get("superseded"):
        line = Text(f"{d.get('key')}: superseded (a later edit already won); nothing changed")
    elif command == "put":
        line = Text(f"{d.get('key')}: version {d.get('version')} at revision {d.get('revision')}")
    else:
        line = Text(f"{d.get('key')}: deleted at revision {d.get('revision')}")
    if "applied_by" not in d and "missing" not in d:
        return line
    have = [str(x) for x in d.get("applied_by") or []]
    missing = [str(x) for x in d.get("missing") or []]
    lines = [line, Text(f"applied by {len(have)}: {', '.join(have) or '-'}", style="green")]
    if missing:
        lines.append(
            Text(f"missing {len(missing)}: {', '.join(missing)} (not applied within the request timeout)", style="red")
        )
    else:
        lines.append(Text("every member has it", style="green"))
    return Group(*lines)


def confirm_exit(doc: Any) -> int:
    """put/delete --confirm all: 0 when every member has it, else
    EXIT_NOT_EVERYWHERE (also when it was only queued: no display has it yet)."""
    return EXIT_NOT_EVERYWHERE if isinstance(doc, Mapping) and (doc.get("missing") or is_queued(doc)) else 0


def notice_line(doc: Mapping[str, Any]) -> str:
    """A watch's outbox or conflict message, for people (`hana-node watch`)."""
    keys = doc.get("key") or ", ".join(str(k) for k in doc.get("keys") or [])
    if doc.get("type") == "outbox":
        return f"queued write {doc.get('id')} ({keys}): {doc.get('state')} - {_result_text(doc).plain}"
    critical = "critical " if doc.get("critical") else ""
    if doc.get("status") == "open":
        return f"{critical}conflict {doc.get('id')} opened on {keys}: hana-node conflicts show {doc.get('id')}"
    return f"{critical}conflict {doc.get('id')} on {keys}: {doc.get('status')}"


def _side(title: str, side: Mapping[str, Any], fields: tuple[str, ...]) -> RenderableType:
    who = " ".join(f"{f} {hlc_time(side.get(f)) if f == 'time' else side.get(f)}" for f in fields if f in side)
    value = orjson.dumps(side.get("value"), option=orjson.OPT_INDENT_2).decode()
    return Group(Text(f"{title}: {who}", style="bold"), Text(value))


def conflict_view(c: Mapping[str, Any]) -> RenderableType:
    """One conflict: both sides in full, and the commands that resolve it."""
    head = Text(f"conflict {c.get('id')} on {c.get('key')} ", style="bold")
    head.append(f"({c.get('component')}, {c.get('status')}", style="")
    if _critical(c):
        head.append(", critical", style="bold red")
    head.append(f"); the offline edit was based on version {c.get('base_version')}")
    parts: list[RenderableType] = [
        head,
        _side("current", c.get("current") or {}, ("version", "author", "time")),
        _side("proposed", c.get("proposed") or {}, ("author", "node", "time")),
    ]
    if c.get("status") == "open":
        cid = c.get("id")
        parts.append(
            Text(
                f"resolve: hana-node conflicts resolve {cid} --take current | --take proposed | "
                f"--take value --value JSON",
                style="dim",
            )
        )
    return Group(*parts)


def resolved_line(doc: Mapping[str, Any]) -> Text:
    return Text(
        f"conflict {doc.get('id')} resolved: took {doc.get('take')} for {doc.get('key')} "
        f"at revision {doc.get('revision')} (hana-node undo reverts it)"
    )


def reset_line(component: str, doc: Mapping[str, Any]) -> Text:
    keys = [str(k) for k in doc.get("keys") or []]
    shown = ", ".join(keys[:5]) + (" …" if len(keys) > 5 else "")
    if not keys:
        return Text(f"{component}: nothing to reset (every key already at its default)")
    return Text(
        f"{component}: {len(keys)} key(s) reset to defaults at revision {doc.get('revision')}: {shown} "
        "(hana-node undo reverts it)"
    )


def _result_text(item: Mapping[str, Any]) -> Text:
    state, result = item.get("state"), item.get("result")
    r = result if isinstance(result, Mapping) else {}
    if state == "applied":
        return Text(f"revision {r.get('revision', '-')}")
    if state == "superseded":
        cur = r.get("current")
        at = f" (v{cur.get('version')})" if isinstance(cur, Mapping) else ""
        return Text(f"later edit won{at}", style="dim")
    if state == "conflict":
        return Text(f"conflict {r.get('conflict', '?')}", style="bold red")
    if state == "rejected":
        inner = r.get("error")
        err: Mapping[str, Any] = inner if isinstance(inner, Mapping) else r
        return Text(f"{err.get('code', '?')}: {err.get('message', '')}", style="red")
    return Text("waiting for a controller", style="yellow") if state == "queued" else Text("being replayed")


def outbox_table(doc: Mapping[str, Any]) -> RenderableType:
    """GET /v1/outbox: queued writes first, then the fates of final ones."""
    items = [i for i in doc.get("items") or [] if isinstance(i, Mapping)]
    if not items:
        return Text("the outbox is empty (nothing queued, no recent fates)", style="dim")
    table: Table = _table("id", "state", "op", "key", "made", "result")
    styles = {"applied": "green", "superseded": "dim", "conflict": "bold red", "rejected": "red", "queued": "yellow"}
    for i in items:
        key = i.get("key") or ", ".join(str(k) for k in i.get("keys") or [])
        state = str(i.get("state"))
        table.add_row(
            Text(str(i.get("id"))),
            Text(state, style=styles.get(state, "")),
            Text(str(i.get("op", "-"))),
            Text(str(key)),
            Text(hlc_time(i.get("made"))),
            _result_text(i),
        )
    waiting = sum(1 for i in items if i.get("state") not in FINAL_STATES)
    foot = f"{len(items)} item(s), {waiting} not final yet"
    if doc.get("connected") is False and waiting:
        foot += "; this node hears no controller: they replay when it does"
    return Group(table, Text(foot, style="dim"))
