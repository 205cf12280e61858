"""`hana-node serve`: compose a node from its flags and run it until a signal."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from aiohttp import web

from mesh.api.app import create_app
from mesh.api.auth import TokenAuth, TokensFileError, is_loopback
from mesh.node.flags import CliError, parse_hostport, parse_peers
from mesh.node.runtime import MeshNode, NodeConfig

log = logging.getLogger("mesh.serve")

# Used when no secret is given, with a loud warning: fine on a laptop, never
# on a venue network.
DEVELOPMENT_SECRET = b"hana-mesh-development-secret-do-not-use-on-stage"


class LogfmtFormatter(logging.Formatter):
    """One line per event: time, level, component, then the event's key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = f"ts={ts} level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def read_secret(path: str | None) -> tuple[bytes, bool]:
    """The cluster secret, and whether it is the development default."""
    if path:
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise CliError(f"--secret-file: cannot read {path}: {exc}") from exc
        if len(secret) < 16:
            raise CliError(f"--secret-file: {path} holds fewer than 16 bytes; use a long random secret")
        return secret, False
    env = os.environ.get("HANA_SECRET")
    if env:
        if len(env) < 16:
            raise CliError("HANA_SECRET must be at least 16 characters")
        return env.encode(), False
    return DEVELOPMENT_SECRET, True


def open_storage(data_dir: Path, durability: str):  # type: ignore[no-untyped-def]
    from mesh.storage.disk import DiskStorage

    return DiskStorage(data_dir, durability=durability)


def build(args: argparse.Namespace) -> tuple[NodeConfig, Path, TokenAuth | None, tuple[str, int]]:
    node_id = args.node_id or socket.gethostname()
    data_dir = Path(args.data_dir or Path("data") / node_id)
    api_host, api_port = parse_hostport(args.api, "--api")
    raft_host, raft_port = parse_hostport(args.raft, "--raft")
    if args.timing_multiplier <= 0:
        raise CliError("--timing-multiplier must be positive")
    if args.snapshot_every < 1 or args.keep_entries < 0:
        raise CliError("--snapshot-every must be positive and --keep-entries not negative")
    if args.voters < 1:
        raise CliError("--voters must be at least 1")
    peers = parse_peers(args.peers) if args.peers else {}
    if peers and node_id not in peers:
        raise CliError(f"--peers must list this node's id ({node_id}) too")
    auth = None
    if args.tokens_file:
        try:
            auth = TokenAuth.from_file(args.tokens_file)
        except TokensFileError as exc:
            raise CliError(str(exc)) from exc
    elif not is_loopback(api_host):
        raise CliError(f"--api {args.api} is not loopback: give --tokens-file so that clients must authenticate")
    secret, _ = read_secret(args.secret_file)
    cfg = NodeConfig(
        node_id=node_id,
        cluster=args.cluster,
        secret=secret,
        raft_host=raft_host,
        raft_port=raft_port,
        api_address=f"{api_host}:{api_port}",
        peers=peers,
        timing_multiplier=args.timing_multiplier,
        snapshot_every=args.snapshot_every,
        keep_entries=args.keep_entries,
    )
    return cfg, data_dir, auth, (api_host, api_port)


async def run(args: argparse.Namespace) -> int:
    cfg, data_dir, auth, (api_host, api_port) = build(args)
    _, dev_secret = read_secret(args.secret_file)
    if dev_secret:
        log.warning("node=%s event=development_secret detail=%r", cfg.node_id, "no --secret-file or HANA_SECRET")
    if not args.peers and not args.no_mdns:
        log.info("node=%s event=no_peers detail=%r", cfg.node_id, "mDNS discovery is not built yet; rejoining only")
    data_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(data_dir, args.durability)
    try:
        if storage.last_index() == 0 and storage.snapshot().is_empty() and not cfg.peers:
            raise CliError(f"{data_dir} holds no cluster yet and no --peers were given: nothing to join")
        node = MeshNode(cfg, storage)
        await node.start()
        app = create_app(node, auth)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, api_host, api_port)
        await site.start()
        log.info("node=%s event=api_listening addr=%s:%d", cfg.node_id, api_host, api_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stopper = asyncio.ensure_future(stop.wait())
        failure = asyncio.ensure_future(node.failed.wait())
        await asyncio.wait({stopper, failure}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        failure.cancel()
        await runner.cleanup()
        if node.fatal is not None:
            await node.stop(transfer=False)
            log.critical("node=%s event=exit reason=%r", cfg.node_id, node.fatal)
            return 1
        log.info("node=%s event=shutdown_requested", cfg.node_id)
        await node.stop(transfer=True)
    finally:
        storage.close()
    return 0


def serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    # `kill -USR1 <pid>` prints every thread's stack: for a node that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(run(args))
