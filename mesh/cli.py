"""The `hana-node` command line (same as `python node.py`).

    hana-node serve   --id ID --peers a=host:port,... [flags of shared/API.md]
    hana-node status  [--api HOST:PORT] [--json] [--watch]
    hana-node get KEY / put KEY JSON / delete KEY / watch [--prefix P] [--since REV]
    hana-node members {list,add,remove,promote,demote} [ID] [--api HOST:PORT]
    hana-node demo    [--nodes 3]
    hana-node simulate ...   (the deterministic Raft simulator)
    hana-node chaos ...      (chaos against real nodes: simulations/chaos.py)

argparse (standard library) parses; rich draws the status table.

`simulate` and `chaos` are dev tooling (simulations/), not part of the
product: they are commands that the distribution registers in the entry
point group `hana_node.commands` (pyproject.toml), looked up by name when
asked for. mesh never imports simulations.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from typing import Any

from mesh.node.flags import INJECTABLE_BUGS, CliError, parse_hostport
from mesh.state.limits import DEFAULT_MAX_BODY

DEFAULT_API = "127.0.0.1:7070"
# Commands other packages add to hana-node: name = "module:function", the
# function taking the command's arguments and returning the exit status.
PLUGIN_GROUP = "hana_node.commands"


def build_parser(plugins: Mapping[str, EntryPoint] | None = None) -> argparse.ArgumentParser:
    """hana-node's own commands, plus `plugins` (listed for --help and for
    the error about an unknown command; they parse their own flags)."""
    return _build(plugins)[0]


def _build(plugins: Mapping[str, EntryPoint] | None) -> tuple[argparse.ArgumentParser, frozenset[str]]:
    """The parser and the names of hana-node's own commands."""
    parser = argparse.ArgumentParser(prog="hana-node", description="hana mesh node")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a mesh node")
    serve.add_argument("--id", dest="node_id", default=None, help="node id, unique in the cluster (default: host name)")
    serve.add_argument("--data-dir", default=None, help="log, snapshots and saves (default: ./data/<id>)")
    serve.add_argument("--api", default=DEFAULT_API, help="HTTP/WebSocket API address")
    serve.add_argument("--raft", default="127.0.0.1:7071", help="peer traffic address")
    serve.add_argument("--cluster", default="hana", help="cluster name; nodes of other clusters are ignored")
    serve.add_argument("--secret-file", default=None, help="cluster secret file (or env HANA_SECRET)")
    serve.add_argument("--peers", default=None, help="static initial voters: id=host:port,... (this node included)")
    serve.add_argument("--expect", type=int, default=1, help="with mDNS: bootstrap once N nodes are seen")
    serve.add_argument("--no-mdns", action="store_true", help="do not advertise or browse with zeroconf")
    serve.add_argument("--mdns-interfaces", default=os.environ.get("HANA_MDNS_INTERFACES"), help="zeroconf IPs")
    serve.add_argument("--voters", type=int, default=5, help="at most N voters; further nodes join as learners")
    serve.add_argument("--tokens-file", default=None, help="bearer tokens (required when --api is not loopback)")
    serve.add_argument(
        "--allow-origin",
        default="",
        metavar="ORIGIN,…",
        help="web pages (scheme://host[:port]) besides the node's own that may call the API from a browser",
    )
    serve.add_argument(
        "--allow-host",
        default="",
        metavar="HOST[:PORT],…",
        help="names besides the node's own addresses a request's Host may carry (e.g. a DNS name of this machine)",
    )
    serve.add_argument(
        "--max-body", type=int, default=DEFAULT_MAX_BODY, metavar="BYTES", help="largest request body (default 4 MiB)"
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a request's headers must arrive within this time (slow clients are cut off)",
    )
    serve.add_argument("--timing-multiplier", type=float, default=1.0, help="scales every Raft timeout")
    serve.add_argument(
        "--durability",
        choices=("fsync", "unsafe_no_fsync"),
        default="fsync",
        help="unsafe_no_fsync loses acknowledged writes on power loss: tests and benchmarks only",
    )
    serve.add_argument("--snapshot-every", type=int, default=10_000, help="entries applied between snapshots")
    serve.add_argument("--keep-entries", type=int, default=1_000, help="log entries kept behind a snapshot")
    serve.add_argument(
        "--audit-limit", type=int, default=10_000, metavar="N", help="audit entries kept (the same on every node)"
    )
    serve.add_argument(
        "--audit-max-age",
        type=float,
        default=90.0,
        metavar="DAYS",
        help="audit entries older than this are dropped (by the times in the log; the same on every node)",
    )
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    # Hidden: autopilot and formation timings (tests and benchmarks shorten them).
    serve.add_argument("--autopilot-stabilize", type=float, default=10.0, help=argparse.SUPPRESS)
    serve.add_argument("--autopilot-replace-after", type=float, default=30.0, help=argparse.SUPPRESS)
    serve.add_argument("--autopilot-remove-after", type=float, default=1800.0, help=argparse.SUPPRESS)
    serve.add_argument("--browse-window", type=float, default=2.0, help=argparse.SUPPRESS)
    # Hidden: the chaos runner keeps every change in history so that its
    # checker can compare each node's log with what clients were told.
    serve.add_argument("--history-limit", type=int, default=10_000, help=argparse.SUPPRESS)
    # Hidden and unsafe: deliberately broken builds, so that a test can show
    # the chaos checker catches them (simulations/chaoskit). Never in a show.
    serve.add_argument("--inject-bug", choices=INJECTABLE_BUGS, default=None, help=argparse.SUPPRESS)
    # Hidden: listening sockets handed over by the process that started the
    # node (mesh.launcher), bound to --api / --raft: no port race.
    serve.add_argument("--api-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--raft-fd", type=int, default=None, help=argparse.SUPPRESS)

    status = sub.add_parser("status", help="show the mesh as one node sees it")
    status.add_argument("--api", default=DEFAULT_API)
    status.add_argument("--json", action="store_true", help="print the raw status document")
    status.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")

    get = sub.add_parser("get", help="read a key")
    get.add_argument("key")
    get.add_argument("--api", default=DEFAULT_API)
    get.add_argument("--consistency", choices=("linearizable", "local"), default="linearizable")

    put = sub.add_parser("put", help="write a key (value is JSON)")
    put.add_argument("key")
    put.add_argument("value", help="JSON value, e.g. '{\"brightness\": 0.8}' or '\"text\"'")
    put.add_argument("--api", default=DEFAULT_API)
    put.add_argument("--expected-version", type=int, default=None)

    delete = sub.add_parser("delete", help="delete a key")
    delete.add_argument("key")
    delete.add_argument("--api", default=DEFAULT_API)

    watch = sub.add_parser("watch", help="print change records as they commit")
    watch.add_argument("--api", default=DEFAULT_API)
    watch.add_argument("--prefix", default="")
    watch.add_argument("--since", type=int, default=None)

    save = sub.add_parser("save", help="capture the whole show (or chosen components) as a named save")
    save.add_argument("name")
    save.add_argument("--components", default=None, help="comma-separated component names")
    save.add_argument("--api", default=DEFAULT_API)

    saves = sub.add_parser("saves", help="list the saves")
    saves.add_argument("--api", default=DEFAULT_API)

    restore = sub.add_parser("restore", help="restore a save (one change; undo reverts it)")
    restore.add_argument("name")
    restore.add_argument("--components", default=None, help="comma-separated component names")
    restore.add_argument("--api", default=DEFAULT_API)

    export = sub.add_parser("export", help="write a save to a .hana file")
    export.add_argument("name")
    export.add_argument("file")
    export.add_argument("--api", default=DEFAULT_API)

    imp = sub.add_parser("import", help="import a .hana file as a save")
    imp.add_argument("file")
    imp.add_argument("--name", default=None, help="save name (default: the file name without .hana)")
    imp.add_argument("--api", default=DEFAULT_API)

    history = sub.add_parser("history", help="change records, oldest first")
    history.add_argument("--prefix", default="")
    history.add_argument("--since", type=int, default=0)
    history.add_argument("--limit", type=int, default=50)
    history.add_argument("--api", default=DEFAULT_API)

    for verb in ("undo", "redo"):
        p = sub.add_parser(verb, help=f"{verb} the last change group (yours unless --author)")
        p.add_argument("--author", default=None, help="whose stack (default: your identity)")
        p.add_argument("--force", action="store_true", help="even if later changes touched the same keys")
        p.add_argument("--api", default=DEFAULT_API)

    members = sub.add_parser("members", help="list the members, or add/remove/promote/demote one by hand")
    members.add_argument("action", choices=("list", "add", "remove", "promote", "demote"))
    members.add_argument("member_id", nargs="?", default=None, metavar="ID", help="node id (all but list)")
    members.add_argument("--voter", action="store_true", help="add: as a voter at once (default: a learner)")
    members.add_argument("--raft", default=None, help="add: the node's HOST:PORT if discovery has not found it")
    members.add_argument("--json", action="store_true", help="list: print the raw document")
    members.add_argument("--api", default=DEFAULT_API)

    demo = sub.add_parser("demo", help="run a local mesh on loopback until Ctrl-C")
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--data-dir", default=None, help="keep node data here (default: a temporary directory)")

    # Every command that talks to a node's API can present a bearer token
    # (required when the node's API is bound beyond loopback). Without one,
    # a node on this machine started by this user lends its admin token.
    for name, cmd in sub.choices.items():
        if name not in ("serve", "demo"):
            cmd.add_argument(
                "--token-file",
                default=os.environ.get("HANA_TOKEN_FILE"),
                help="file holding the bearer token, mode 0600 (default: env HANA_TOKEN_FILE)",
            )
            cmd.add_argument(
                "--token",
                default=os.environ.get("HANA_TOKEN"),
                help="bearer token (default: env HANA_TOKEN); visible to other users in ps: prefer --token-file",
            )
    own = frozenset(sub.choices)
    for name, ep in sorted((plugins or {}).items()):
        if name not in own:
            plugin = sub.add_parser(name, help=f"{ep.value} (its own flags: hana-node {name} --help)")
            plugin.add_argument("args", nargs=argparse.REMAINDER)
    return parser, own


def plugin_commands() -> dict[str, EntryPoint]:
    """The commands installed in PLUGIN_GROUP, by name (package metadata)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def run_plugin(ep: EntryPoint, argv: list[str]) -> int:
    """Run a plugin command with its arguments; 2 if it cannot be loaded."""
    try:
        command = ep.load()
    except (ImportError, AttributeError) as exc:
        print(
            f"hana-node {ep.name}: cannot load {ep.value} ({exc}); it ships with the source checkout: "
            "run `pip install -e .` there",
            file=sys.stderr,
        )
        return 2
    return int(command(argv))


def resolve_token(args: argparse.Namespace, api: str) -> tuple[str | None, bool]:
    """The token to present to `api`, and whether it is only a guess:
    --token, --token-file (or their environment variables), else the admin
    token of a node this user runs on this machine at that address (never
    one node's token to another). A guess the node refuses is dropped."""
    from mesh.node.credentials import find_admin_token, token_from_file

    if args.token:
        return str(args.token), False
    if args.token_file:
        return token_from_file(args.token_file), False
    return find_admin_token(api), True


def _client(api: str, args: argparse.Namespace, timeout: float = 10.0) -> Any:
    from mesh import client

    token, guessed = resolve_token(args, api)
    return client.MeshClient(api, token=token, timeout=timeout, token_optional=guessed)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, own = _build(None)
    if not argv or argv[0] not in own:
        # Only then look plugins up (it reads every installed package's
        # metadata). A plugin parses its own flags (argparse's REMAINDER
        # would take `hana-node chaos --nodes 5` for options of hana-node).
        plugins = plugin_commands()
        if argv and argv[0] in plugins:
            return run_plugin(plugins[argv[0]], argv[1:])
        parser = build_parser(plugins)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            from mesh.serve import serve

            return serve(args)
        if args.command == "demo":
            from mesh.node.demo import demo

            return demo(args)
        return asyncio.run(_client_command(args))
    except CliError as exc:
        print(f"hana-node {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _client_command(args: argparse.Namespace) -> int:
    from mesh import client

    api = args.api
    parse_hostport(api, "--api")
    async with _client(api, args) as c:
        try:
            if args.command == "status":
                return await _status(c, args)
            if args.command == "get":
                doc = await c.get(args.key, args.consistency)
                print(_dumps(doc))
                return 0
            if args.command == "put":
                try:
                    import orjson

                    value = orjson.loads(args.value)
                except ValueError as exc:
                    raise CliError(f"value is not JSON: {exc} (quote strings: '\"text\"')") from None
                print(_dumps(await c.put(args.key, value, args.expected_version)))
                return 0
            if args.command == "delete":
                print(_dumps(await c.delete(args.key)))
                return 0
            if args.command == "members":
                return await _members(c, args)
            if args.command in _STATE_COMMANDS:
                return await _state_command(c, args)
            if args.command == "watch":
                async for rec in c.watch(args.prefix, args.since):
                    print(_dumps(rec), flush=True)
                return 0
        except client.ApiError as exc:
            print(f"hana-node {args.command}: {exc}", file=sys.stderr)
            return 1
        except client.Unreachable as exc:
            raise CliError(str(exc)) from None
    raise CliError(f"unknown command {args.command}")


_MEMBER_ACTIONS = {"remove": "remove", "promote": "promote", "demote": "demote"}


async def _members(c: Any, args: argparse.Namespace) -> int:
    """`hana-node members …`: a change goes to the controller; a follower's
    503 not_leader names the controller's API, which is asked once."""
    from mesh import client

    if args.action == "list":
        doc = await c.request("GET", "/v1/members")
        if args.json:
            print(_dumps(doc))
            return 0
        _print_members(doc)
        return 0
    if not args.member_id:
        raise CliError(f"members {args.action} needs a node id")
    action = ("add_voter" if args.voter else "add_learner") if args.action == "add" else _MEMBER_ACTIONS[args.action]
    body: dict[str, Any] = {"id": args.member_id, "action": action}
    if args.raft:
        parse_hostport(args.raft, "--raft")
        body["raft"] = args.raft
    try:
        doc = await c.request("POST", "/v1/members", body)
    except client.ApiError as exc:
        leader_api = exc.body.get("error", {}).get("leader_api") if exc.code == "not_leader" else None
        if not leader_api:
            raise
        async with _client(leader_api, args) as leader:
            doc = await leader.request("POST", "/v1/members", body)
    print(_dumps(doc))
    return 0


def _print_members(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for col in ("id", "role", "voter", "found", "healthy", "lag", "last contact", "raft", "api"):
        table.add_column(col)
    for m in doc.get("members", []):
        healthy = m.get("healthy")
        contact = m.get("last_contact_ms")
        table.add_row(
            str(m.get("id")),
            str(m.get("role")),
            "yes" if m.get("voter") else "no",
            str(m.get("found")),
            "-" if healthy is None else ("yes" if healthy else "[red]no[/red]"),
            "-" if m.get("lag") is None else str(m.get("lag")),
            "-" if contact is None else f"{contact:.0f} ms",
            str(m.get("raft") or "-"),
            str(m.get("api") or "-"),
        )
    for p in doc.get("discovered", []):
        table.add_row(str(p["id"]), f"not a member ({p['state']})", "no", str(p["found"]), "-", "-", "-",
                      str(p.get("raft") or "-"), str(p.get("api") or "-"))  # fmt: skip
    # A pipe or a narrow terminal must not truncate the table.
    console = Console(width=max(Console().width, 150))
    console.print(f"cluster {doc.get('cluster')}  seen from {doc.get('id')}  leader {doc.get('leader') or 'none'}")
    console.print(table)


_STATE_COMMANDS = frozenset({"save", "saves", "restore", "export", "import", "history", "undo", "redo"})


def _split(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


async def _state_command(c: Any, args: argparse.Namespace) -> int:
    from pathlib import Path

    cmd = args.command
    if cmd == "save":
        doc: Any = await c.save(args.name, _split(args.components))
    elif cmd == "saves":
        doc = await c.saves()
    elif cmd == "restore":
        doc = await c.restore(args.name, _split(args.components))
    elif cmd == "export":
        blob = await c.export_save(args.name)
        Path(args.file).write_bytes(blob)
        print(f"wrote {args.file} ({len(blob)} bytes)")
        return 0
    elif cmd == "import":
        path = Path(args.file)
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc}") from exc
        name = args.name or (path.name[: -len(".hana")] if path.name.endswith(".hana") else path.name)
        doc = await c.import_save(name, blob)
    elif cmd == "history":
        doc = await c.history(args.prefix, args.since, args.limit)
    else:
        doc = await c.undo(args.author, args.force, redo=cmd == "redo")
    print(_dumps(doc))
    return 0


def _dumps(doc: Any) -> str:
    import orjson

    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


async def _status(c: Any, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from mesh import client
    from mesh.status_view import render_status

    if args.json:
        print(_dumps(await c.status()))
        return 0
    # A pipe or a narrow terminal must not truncate the table.
    console = Console(width=max(Console().width, 150))
    if not args.watch:
        doc = await c.status()
        console.print(render_status(doc, await _member_views(doc, args)))
        return 0
    with Live(console=console, auto_refresh=False) as live:
        while True:
            try:
                doc = await c.status()
                live.update(render_status(doc, await _member_views(doc, args)), refresh=True)
            except (client.Unreachable, client.ApiError) as exc:
                live.update(f"[red]{exc}[/red]", refresh=True)
            await asyncio.sleep(1.0)


async def _member_views(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, Any] | str]:
    """Each other member's own status, asked of its API (short timeout)."""
    from mesh import client

    async def one(api: str) -> dict[str, Any] | str:
        try:
            async with _client(api, args, timeout=1.0) as c:
                return await c.status()
        except (client.Unreachable, client.ApiError) as exc:
            return type(exc).__name__.lower()

    members = [m for m in doc.get("members", []) if m.get("id") != doc.get("id") and m.get("api")]
    results = await asyncio.gather(*(one(m["api"]) for m in members))
    return {m["id"]: r for m, r in zip(members, results, strict=True)}


if __name__ == "__main__":
    raise SystemExit(main())
