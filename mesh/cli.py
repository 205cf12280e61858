"""The `hana-node` command line (same as `python node.py`).

    hana-node serve   --id ID --peers a=host:port,... [flags of docs/api.md]
    hana-node status  [--api HOST:PORT] [--json] [--watch]     (exit 0 / 1 / 2)
    hana-node get KEY / keys [PREFIX] / put KEY JSON / delete KEY
    hana-node watch   [--prefix P] [--since REV] [--give-up SECONDS]
    hana-node save NAME / saves [list] / saves delete NAME / restore NAME / export / import
    hana-node history / audit / undo / redo
    hana-node conflicts [list|show ID|resolve ID --take …] / reset COMPONENT [KEY…] / outbox
    hana-node members {list,add,remove,promote,demote} [ID]
    hana-node demo    [--nodes N] [--keep] [--data-dir DIR] [--no-browser]
    hana-node simulate ...   (the deterministic Raft simulator)
    hana-node chaos ...      (chaos against real nodes: simulations/chaos.py)

argparse (standard library) parses. Every command that talks to a node
takes --api, --token-file and --token; every one that prints records
prints a table or a line for people (rich: mesh/cli_tables.py,
mesh/status_view.py) and takes --json for scripts (the API's documents as
they are). `status` is fetched by mesh/cli_status.py, `watch` runs in
mesh/cli_watch.py. A reader that goes away (`| head`) ends a command
quietly.

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
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint
from typing import Any

from mesh import cli_trust
from mesh.node.flags import INJECTABLE_BUGS, CliError, add_live_flags, parse_hostport
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
        "--api-tls",
        action="store_true",
        help="serve the API over HTTPS with the node certificate (tls/ in the data dir; required for a "
        "non-loopback --api when the node has certificates)",
    )
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
        "--offline-wait",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="a write sent with ?offline=queue waits this long for a controller before it is queued (default 1 s)",
    )
    serve.add_argument(
        "--durability",
        choices=("fsync", "unsafe_no_fsync"),
        default="fsync",
        help="unsafe_no_fsync loses acknowledged writes on power loss: tests and benchmarks only",
    )
    serve.add_argument(
        "--encrypt-at-rest",
        default=None,
        metavar="KEYFILE",
        help="encrypt the log and snapshots with this 32-byte key file (0600); the data dir must be made with it",
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
    # The OSC bridge (mesh/osc): live sets from OSC, changes out as OSC, OSCQuery.
    serve.add_argument(
        "--osc-listen", default=None, metavar="HOST:PORT", help="receive OSC (UDP) here; serves OSCQuery on HOST too"
    )
    serve.add_argument(
        "--osc-send", default=None, metavar="HOST:PORT,…", help="send changes of OSC-mapped keys here as OSC (UDP)"
    )
    serve.add_argument(
        "--oscquery-port", type=int, default=None, metavar="PORT", help="OSCQuery HTTP port (default: OS-chosen)"
    )
    add_live_flags(serve)
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
    cli_trust.add_serve_flags(serve)

    _client_commands(sub)

    demo = sub.add_parser(
        "demo",
        help="run a local mesh on loopback until Ctrl-C (kill a node and restart it to rehearse a failure)",
        description=DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--nodes", type=int, default=None, help="how many nodes, 1-9 (default 3, or as many as the kept data has)"
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the data for the next run (in --data-dir, default $XDG_DATA_HOME/hana/demo); "
        "the next `demo --keep` resumes it",
    )
    demo.add_argument(
        "--data-dir", default=None, help="node data here, kept (default: a temporary directory, deleted at exit)"
    )
    demo.add_argument(
        "--tls",
        action="store_true",
        help="certificates for every node: mutual TLS between peers and an HTTPS API (a CA made for the demo)",
    )
    demo.add_argument(
        "--no-browser",
        action="store_true",
        default=os.environ.get("HANA_NO_BROWSER", "") not in ("", "0"),
        help="do not open the status page in a browser (also: env HANA_NO_BROWSER=1)",
    )

    own = frozenset(sub.choices)
    for name, ep in sorted((plugins or {}).items()):
        if name not in own:
            plugin = sub.add_parser(name, help=f"{ep.value} (its own flags: hana-node {name} --help)")
            plugin.add_argument("args", nargs=argparse.REMAINDER)
    return parser, own


# `hana-node status --help`: what the columns of mesh/status_view.py mean.
STATUS_HELP = """\
The header says which member was asked, the controller it follows (the
leader Raft elected; every write goes through it) and three positions:
  commit    the last log index stored on a majority: Raft's position in its
            log, which also counts entries that change no key (elections,
            membership changes)
  applied   the last log index this member has applied to its state
            (at most commit; equal when it has caught up)
  revision  the state's change counter: one more per committed change to
            keys; history, watch and --since count revisions, not indexes

One row per member:
  member    node id (* the member asked)
  role      leader (the controller), follower, candidate, learner (a copy
            that does not vote), or unreachable (its API did not answer)
  v         v: a voter (counts for the majority); blank: a learner
  health    ok; behind (more than 250 entries behind the controller);
            down (unreachable, or the controller has not heard it for 2 s);
            cut off (answers, but the controller does not hear it);
            no ctrl (answers, but knows no controller); ? (unknown from
            here: its API, and the controller's, listen on their own
            machines' loopback; run status on the controller's machine)
  lag       log entries the member is behind the controller
  contact   time since the controller last heard the member (for the
            controller's row: since the member asked heard it)
  applied   the member's applied index
  api       the member's API address
Wider terminals also show term, how each member was found, and its raft
address.

Exit status: 0 when the member asked knows a controller and every voter
is healthy, 1 when a voter is unhealthy or behind, 2 when there is no
controller or the node cannot be reached.
"""


DEMO_HELP = """\
Starts N nodes on loopback that find each other with mDNS (on 127.0.0.1
only), prints each node's API address, the status page's address (opened
in a browser if one is there) and commands to paste, and runs until Ctrl-C,
which stops every node it started.

Rehearse a failure: kill a node (kill -9 PID, or type `k node2` + Enter).
The demo says so and keeps the others running; type `r node2` + Enter to
restart it and watch it catch up. `s` + Enter prints the status; `q` quits.

Without --keep or --data-dir the data lives in a temporary directory that is
deleted at exit; with --keep it stays for the next run (the banner says
where), and the next `demo --keep` resumes the same mesh.
"""


def _client_commands(sub: Any) -> None:
    """The commands that talk to a node's API. Each takes --api and a
    token; each that prints records prints a table and takes --json."""

    def cmd(name: str, help: str, *, json: bool = True, **kw: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, **kw)
        common(p, json)
        return p

    def common(p: argparse.ArgumentParser, json: bool) -> None:
        p.add_argument(
            "--api", default=DEFAULT_API, metavar="HOST:PORT", help=f"the node to ask (default {DEFAULT_API})"
        )
        if json:
            p.add_argument("--json", action="store_true", help="print the API's JSON document(s) as they are")
        # Every command that talks to a node's API can present a bearer
        # token (required when the node's API is bound beyond loopback).
        # Without one, a node on this machine started by this user lends
        # its admin token.
        p.add_argument(
            "--token-file",
            default=os.environ.get("HANA_TOKEN_FILE"),
            help="file holding the bearer token, mode 0600 (default: env HANA_TOKEN_FILE)",
        )
        p.add_argument(
            "--token",
            default=os.environ.get("HANA_TOKEN"),
            help="bearer token (default: env HANA_TOKEN); visible to other users in ps: prefer --token-file",
        )
        p.add_argument(
            "--ca",
            default=os.environ.get("HANA_CA"),
            metavar="FILE",
            help="the cluster CA bundle to verify an HTTPS node against (default: env HANA_CA, else the CA of "
            "the node this user runs at that address on this machine); --api https://HOST:PORT",
        )

    status = cmd(
        "status",
        "show the mesh as one node sees it (exit 0 healthy, 1 a voter down or behind, 2 no controller)",
        description=STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--watch", action="store_true", help="redraw in place every second until Ctrl-C")

    get = cmd("get", "read a key")
    get.add_argument("key")
    get.add_argument("--consistency", choices=("linearizable", "local"), default="linearizable")

    keys = cmd("keys", "list the keys under a prefix (default: every key) with their versions and values")
    keys.add_argument("prefix", nargs="?", default=None, help="key prefix, e.g. displays/")
    keys.add_argument("--prefix", dest="prefix_flag", default="", metavar="PREFIX", help="the same, as a flag")
    keys.add_argument("--consistency", choices=("linearizable", "local"), default="linearizable")

    put = cmd("put", "write a key (value is JSON)")
    put.add_argument("key")
    put.add_argument("value", help="JSON value, e.g. '{\"brightness\": 0.8}' or '\"text\"'")
    put.add_argument("--expected-version", type=int, default=None, help="only if the key is at this version (0: new)")

    delete = cmd("delete", "delete a key")
    delete.add_argument("key")
    delete.add_argument("--expected-version", type=int, default=None, help="only if the key is at this version")

    watch = cmd(
        "watch",
        "print one line per change as it commits; survives the death of its node",
        description="One line per change, in revision order. If the node goes away, the watch says so on "
        "stderr and resumes on another member from the next revision (nothing missed, nothing twice); "
        "it exits 2 when no member has answered for --give-up seconds, 1 if the revision to resume from "
        "is no longer held. --json prints each message as the API sent it, one per line.",
    )
    watch.add_argument("--prefix", default="", help="only keys under this prefix")
    watch.add_argument("--since", type=int, default=None, help="start at this revision (default: the next change)")
    watch.add_argument(
        "--give-up", type=float, default=30.0, metavar="SECONDS", help="exit 2 after this long without a member"
    )

    save = cmd("save", "capture the whole show (or chosen components) as a named save")
    save.add_argument("name")
    save.add_argument("--components", default=None, help="comma-separated component names")

    saves = cmd("saves", "list the saves (saves [list]), or delete one (saves delete NAME; admin)")
    saves.add_argument("action", nargs="?", choices=("list", "delete"), default="list")
    saves.add_argument("name", nargs="?", default=None, help="the save to delete")

    restore = cmd("restore", "restore a save (one change; undo reverts it; admin)")
    restore.add_argument("name")
    restore.add_argument("--components", default=None, help="comma-separated component names")

    export = cmd("export", "write a save to a .hana file", json=False)
    export.add_argument("name")
    export.add_argument("file")
    export.add_argument("--key", default=None, metavar="FILE", help="encrypt and sign the file (AES-GCM) with this key")

    imp = cmd("import", "import a .hana file as a save (admin)")
    imp.add_argument("file")
    imp.add_argument("--name", default=None, help="save name (default: the file name without .hana)")
    imp.add_argument("--key", default=None, metavar="FILE", help="the key of an encrypted file (export --key)")

    history = cmd("history", "change records, oldest first")
    history.add_argument("--prefix", default="")
    history.add_argument("--since", type=int, default=0, help="from this revision")
    history.add_argument("--limit", type=int, default=50, help="at most this many records")

    audit = cmd("audit", "the audit trail: saves, restores, imports, undo/redo, membership, security events")
    audit.add_argument("action", nargs="?", choices=("list", "verify", "export"), default="list")
    audit.add_argument("--since", type=int, default=0, help="from this revision")
    audit.add_argument("--limit", type=int, default=None, help="at most this many entries")
    from mesh import cli_audit

    cli_audit.add_arguments(audit)

    for verb in ("undo", "redo"):
        p = cmd(verb, f"{verb} the last change group (yours unless --author)")
        p.add_argument("--author", default=None, help="whose stack (default: your identity)")
        p.add_argument("--force", action="store_true", help="even if later changes touched the same keys")

    members = cmd(
        "members",
        "list the members, or add/remove/promote/demote one by hand",
        description="Membership by hand (admin). Stop a machine before removing it: while discovery still "
        "sees it, the autopilot adds it back as a learner.",
    )
    members.add_argument("action", choices=("list", "add", "remove", "promote", "demote", "approve"))
    members.add_argument("member_id", nargs="?", default=None, metavar="ID", help="node id (all but list)")
    members.add_argument("--voter", action="store_true", help="add: as a voter at once (default: a learner)")
    members.add_argument("--raft", default=None, help="add: the node's HOST:PORT if discovery has not found it")
    cli_trust.add_commands(sub, cmd)

    from mesh import cli_live  # `live` and `osc` (issue 15)

    cli_live.add_commands(sub, common)
    from mesh import cli_offline  # conflicts, reset, outbox; --confirm/--offline on writes

    cli_offline.add_write_flags(put)
    cli_offline.add_write_flags(delete)
    cli_offline.add_commands(cmd)


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


def resolve_ca(args: argparse.Namespace, api: str) -> tuple[str | None, bool]:
    """The CA bundle to verify `api` (HOST:PORT) against, and whether it
    speaks HTTPS: --ca (or HANA_CA) means HTTPS; else a node this user runs
    at that address on this machine says (its data dir's api.https marker
    and tls/ca.pem)."""
    from mesh.node.credentials import node_data_dir
    from mesh.transport.tls import API_HTTPS_MARKER, tls_paths

    if args.ca:
        if not os.path.isfile(args.ca):
            raise CliError(f"--ca {args.ca}: no such file (the cluster CA bundle, tls/ca.pem of a node's data dir)")
        return str(args.ca), True
    data_dir = node_data_dir(api)
    if data_dir is not None and (data_dir / API_HTTPS_MARKER).exists():
        ca = tls_paths(data_dir)[0]
        return (str(ca) if ca.exists() else None), True
    return None, False


def _client(api: str, args: argparse.Namespace, timeout: float = 10.0) -> Any:
    from mesh import client

    _scheme, sep, bare = api.rpartition("://")
    token, guessed = resolve_token(args, bare)
    ca, https = resolve_ca(args, bare)
    url = api if sep else (f"https://{bare}" if https else bare)
    return client.MeshClient(url, token=token, timeout=timeout, token_optional=guessed, ca=ca)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`hana-node watch | head -1`): that ends the
        # command, quietly. Further writes to stdout (Python flushes it at
        # exit) go nowhere instead of raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


def _main(argv: list[str]) -> int:
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
        if args.command == "init":
            return cli_trust.init(args)
        if args.command == "demo":
            from mesh.node.demo import demo

            return demo(args)
        return asyncio.run(_client_command(args))
    except CliError as exc:
        print(f"hana-node {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _out(args: argparse.Namespace, doc: Any, human: Callable[[Any], Any]) -> int:
    """Print `doc` as JSON (--json) or as `human(doc)` renders it."""
    if getattr(args, "json", False):
        print(_dumps(doc), flush=True)
    else:
        from mesh.cli_tables import console

        console().print(human(doc))
    return 0


async def _client_command(args: argparse.Namespace) -> int:
    from mesh import client

    scheme, sep, bare = args.api.rpartition("://")
    if sep and scheme not in ("http", "https"):
        raise CliError(f"--api {args.api}: expected HOST:PORT, http://HOST:PORT or https://HOST:PORT")
    parse_hostport(bare, "--api")
    if args.command == "audit" and args.action != "list":
        from mesh import cli_audit

        try:
            return await cli_audit.audit_command(args, lambda api, a: _client(api, a))
        except client.ApiError as exc:
            print(f"hana-node audit {args.action}: {exc}", file=sys.stderr)
            return 1
        except client.Unreachable as exc:
            raise CliError(str(exc)) from None
    if args.command == "status":
        return await _status(args)
    if args.command == "watch":
        from mesh.cli_watch import Watcher

        return await Watcher(
            lambda api, timeout: _client(api, args, timeout),
            args.api,
            args.prefix,
            args.since,
            as_json=args.json,
            give_up=args.give_up,
        ).run()
    if args.command in ("live", "osc"):
        from mesh import cli_live

        return await cli_live.run(args, lambda api, timeout: _client(api, args, timeout))
    async with _client(args.api, args) as c:
        try:
            return await _one_command(c, args)
        except client.ApiError as exc:
            from mesh.cli_offline import explain

            print(f"hana-node {args.command}: {explain(args, exc)}", file=sys.stderr)
            return 1
        except client.Unreachable as exc:
            raise CliError(str(exc)) from None


async def _one_command(c: Any, args: argparse.Namespace) -> int:
    from pathlib import Path

    from mesh import cli_offline
    from mesh import cli_tables as t

    cmd = args.command
    if cmd == "get":
        return _out(args, await c.get(args.key, args.consistency), t.key_view)
    if cmd == "keys":
        prefix = args.prefix if args.prefix is not None else args.prefix_flag
        return _out(args, await c.list(prefix, args.consistency), t.keys_table)
    if cmd == "put":
        try:
            import orjson

            value = orjson.loads(args.value)
        except ValueError as exc:
            raise CliError(f"value is not JSON: {exc} (quote strings: '\"text\"')") from None
        return await cli_offline.write(c, args, value, _out)
    if cmd == "delete":
        return await cli_offline.write(c, args, None, _out)
    if cmd in cli_offline.COMMANDS:
        return await cli_offline.run(c, args, _out)
    if cmd == "members":
        return await _members(c, args)
    if cmd in ("invite", "rotate-ca"):
        return await cli_trust.run_command(c, args, _out)
    if cmd == "save":
        doc = await c.save(args.name, _split(args.components))
        return _out(args, doc, lambda d: t.result_line("save", d))
    if cmd == "saves":
        if args.action == "delete":
            if not args.name:
                raise CliError("saves delete needs the name of a save (hana-node saves lists them)")
            return _out(args, await c.delete_save(args.name), lambda d: t.result_line("saves delete", d))
        if args.name:
            raise CliError(f"saves list takes no name (did you mean: hana-node saves delete {args.name}?)")
        return _out(args, await c.saves(), t.saves_table)
    if cmd == "restore":
        doc = await c.restore(args.name, _split(args.components))
        return _out(args, doc, lambda d: t.result_line("restore", d))
    if cmd == "export":
        from mesh import sealing

        key = sealing.load_key(args.key) if args.key else None
        blob = await c.export_save(args.name)
        if key is not None:
            blob = sealing.seal(blob, key)
        Path(args.file).write_bytes(blob)
        print(f"wrote {args.file} ({len(blob)} bytes)")
        return 0
    if cmd == "import":
        path = Path(args.file)
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc}") from exc
        from mesh import sealing

        if args.key:
            try:
                blob = sealing.unseal(blob, sealing.load_key(args.key))
            except sealing.SealError as exc:
                raise CliError(f"{path}: {exc}; nothing was imported") from None
        elif sealing.is_sealed(blob):
            raise CliError(f"{path} is encrypted: give --key FILE (the key it was exported with)")
        name = args.name or (path.name[: -len(".hana")] if path.name.endswith(".hana") else path.name)
        doc = await c.import_save(name, blob)
        return _out(args, doc, lambda d: t.result_line("import", d))
    if cmd == "history":
        return _out(args, await c.history(args.prefix, args.since, args.limit), t.history_table)
    if cmd == "audit":
        return _out(args, await c.audit(args.since, args.limit), t.audit_table)
    if cmd in ("undo", "redo"):
        doc = await c.undo(args.author, args.force, redo=cmd == "redo")
        return _out(args, doc, lambda d: t.result_line(cmd, d))
    raise CliError(f"unknown command {cmd}")


_MEMBER_ACTIONS = {"remove": "remove", "promote": "promote", "demote": "demote"}


async def _members(c: Any, args: argparse.Namespace) -> int:
    """`hana-node members …`: a change goes to the controller; a follower's
    503 not_leader names the controller's API, which is asked once."""
    from mesh import cli_tables as t
    from mesh import client

    if args.action == "list":
        if args.member_id:
            raise CliError("members list takes no id")
        return _out(args, await c.members(), t.members_table)
    if not args.member_id:
        raise CliError(f"members {args.action} needs a node id")
    if args.action == "approve":
        return await cli_trust.approve(c, args, _out)
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
    return _out(args, doc, lambda d: t.result_line("members", d))


def _split(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def _dumps(doc: Any) -> str:
    import orjson

    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


async def _status(args: argparse.Namespace) -> int:
    """`hana-node status`: exit 0 healthy, 1 a voter down or behind, 2 no
    controller or the node asked cannot be reached (mesh/status_view.py)."""
    from mesh import cli_status, client
    from mesh.cli_tables import console
    from mesh.status_view import EXIT_NO_CONTROLLER, render_status

    def make(api: str, timeout: float) -> Any:
        return _client(api, args, timeout)

    if args.watch:
        return await _status_watch(args, make)
    try:
        doc = await cli_status.asked_status(make, args.api)
    except (client.Unreachable, client.ApiError) as exc:
        why = cli_status.reason(exc, cli_status.ASKED_TIMEOUT)
        if isinstance(exc, client.ApiError) and exc.status == 401:
            advice = "give a token: --token-file F (or env HANA_TOKEN_FILE)"
        else:
            advice = "is a node running there, and is that its --api address?"
        print(f"hana-node status: no status from {args.api} ({why}): {advice}", file=sys.stderr)
        return EXIT_NO_CONTROLLER
    report = await cli_status.gather(make, doc)
    if args.json:
        print(_dumps(doc), flush=True)
    else:
        out = console()
        out.print(render_status(report, out.width))
    return report.code


async def _status_watch(args: argparse.Namespace, make: Callable[[str, float], Any]) -> int:
    """Redraw in place every second. When the member asked stops
    answering, show the view of another member (and say so)."""
    import time

    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from mesh import cli_status, client
    from mesh.cli_tables import console, human_time
    from mesh.status_view import render_status

    out = console()
    known = [args.api]
    code = 2
    with Live(console=out, auto_refresh=False, redirect_stderr=False) as live:
        while True:
            view: Any = None
            problems: list[str] = []
            for api in known:
                try:
                    doc = await cli_status.asked_status(make, api)
                except (client.Unreachable, client.ApiError) as exc:
                    problems.append(f"{api}: {cli_status.reason(exc, cli_status.ASKED_TIMEOUT)}")
                    continue
                for m in doc.get("members") or []:
                    if m.get("api") and m["api"] not in known:
                        known.append(m["api"])
                report = await cli_status.gather(make, doc)
                code = report.code
                view = render_status(report, out.width)
                break
            stamp = Text(f"{human_time(int(time.time() * 1000))}  refreshing every second; Ctrl-C stops", style="dim")
            if view is None:
                code = 2
                view = Text("no member answers: " + "; ".join(problems), style="bold red")
            elif problems:
                view = Group(Text("not answering: " + "; ".join(problems), style="yellow"), view)
            live.update(Group(view, stamp), refresh=True)
            await asyncio.sleep(1.0)
    return code  # pragma: no cover - Ctrl-C ends the loop


if __name__ == "__main__":
    raise SystemExit(main())
