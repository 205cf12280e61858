"""`hana-node serve`: compose a node from its flags and run it until a signal.

The composition root: the one module (with mesh/adapter.py) above both the
API and the node. It picks the concrete classes (disk storage, mDNS
discovery, the node, the aiohttp app over a `NodeAdapter`) and runs them;
mesh/cli.py imports it only for `serve`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import faulthandler
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from mesh.adapter import NodeAdapter
from mesh.api.app import check_options, create_app
from mesh.api.auth import TokenAuth, TokensFileError, is_loopback
from mesh.api.guard import GUARD
from mesh.api.handle import MembershipAction, MembershipChange
from mesh.api.server import run_api
from mesh.api.trust_routes import TRUST
from mesh.discovery.base import parse_interfaces
from mesh.launcher import inherited_listener
from mesh.node.autopilot import Limits
from mesh.node.credentials import admin_token, check_private, cluster_secret, private_data_dir, remember_api
from mesh.node.discovery_glue import DiscoveryAgent, storage_is_fresh
from mesh.node.flags import CliError, check_live_flags, parse_hostport, parse_osc_targets, parse_peers
from mesh.node.outbox import OutboxCorrupt
from mesh.node.runtime import MeshNode, NodeConfig
from mesh.sealing import load_key
from mesh.storage.cipher import KeyMismatch
from mesh.storage.errors import DiskStorageError, StorageCorruption, StorageFailed, StorageLocked
from mesh.transport.tls import (
    API_HTTPS_MARKER,
    ApiTls,
    PeerTls,
    client_context,
    frame_secret,
    has_credentials,
    tls_paths,
)
from mesh.trust import boot as trust_boot
from mesh.trust import files as trust_files
from mesh.trust.service import TrustHooks, TrustService

if TYPE_CHECKING:
    from mesh.discovery.mdns import MdnsDiscovery
    from mesh.osc.service import OscOptions, OscService
    from mesh.storage.disk import DiskStorage, Durability

log = logging.getLogger("mesh.serve")
T = TypeVar("T")


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


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def open_storage(data_dir: Path, durability: Durability, key: bytes | None = None) -> DiskStorage:
    from mesh.storage.disk import DiskStorage

    return DiskStorage(data_dir, durability=durability, key=key)


def storage_advice(exc: BaseException, data_dir: Path, node_id: str) -> str:
    """What an operator should do about a storage failure that stopped (or
    never started) the node: one sentence or a few, for the log line's
    action= field. docs/operations.md has the long form of each."""
    if isinstance(exc, StorageFailed) and exc.__cause__ is not None:
        exc = exc.__cause__
    here = str(data_dir)
    if isinstance(exc, KeyMismatch):
        return (
            "the node did not start and changed nothing: start it with the --encrypt-at-rest key its data "
            "directory was written with (or without the flag if it was written in clear). A lost key cannot "
            f"be recovered: then run `hana-node members remove {node_id}` on a healthy member, move {here} "
            "aside and start afresh; the node catches up by a snapshot"
        )
    if isinstance(exc, StorageCorruption):
        return (
            "the node did not start and changed nothing. Do not edit these files, nor copy an older copy of "
            "the directory back (a voter must never forget what it acknowledged). If the other members are "
            f"healthy: run `hana-node members remove {node_id}` on one of them, `mv {here} {here}.damaged`, and "
            "start this node again: it joins empty as a learner and catches up by a snapshot (with --peers, add "
            f"it: `hana-node members add {node_id} --raft HOST:PORT`). If it was the only node: move the "
            "directory aside, start afresh and import your last save (hana-node import FILE.hana). "
            "docs/operations.md: Corrupt WAL"
        )
    if isinstance(exc, StorageLocked):
        return (
            "another process uses this data directory (its pid is above): stop it first (two nodes must never "
            "share one data directory), or give this node its own --data-dir"
        )
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (
                f"the disk holding {here} is full: free space (df -h {here}; old logs, core dumps, the spooled "
                "snapshots of another program), then start the node again: it recovers from what is on disk and "
                "catches up. docs/operations.md: Disk full"
            )
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return (
                f"the node may not write in {here}: the directory must belong to the user the node runs as "
                f"(chown -R USER {here}) on a writable file system"
            )
        if exc.errno == errno.EIO:
            return (
                f"the disk holding {here} reports input/output errors: check it (dmesg, smartctl) before "
                "starting the node again; replace it if it keeps failing (docs/operations.md: Corrupt WAL)"
            )
    return "the node stopped to protect its data: see the error above; a restart recovers from what is on disk"


def _storage_failure(exc: BaseException, data_dir: Path, node_id: str) -> None:
    """One log line for a storage failure at start: what failed, where, and what to do."""
    if isinstance(exc, StorageCorruption):
        log.critical(
            "node=%s event=storage_corrupt file=%s offset=%s reason=%r action=%r",
            node_id,
            exc.path,
            "-" if exc.offset is None else exc.offset,
            exc.reason,
            storage_advice(exc, data_dir, node_id),
        )
    else:
        log.critical(
            "node=%s event=storage_unusable data_dir=%s error=%r action=%r",
            node_id,
            data_dir,
            str(exc),
            storage_advice(exc, data_dir, node_id),
        )


def build(args: argparse.Namespace) -> tuple[NodeConfig, Path, TokenAuth | None, tuple[str, int], str]:
    """The node's configuration from its flags; every mistake is a CliError
    raised before anything is bound or written."""
    node_id = args.node_id or socket.gethostname()
    data_dir = Path(args.data_dir or Path("data") / node_id)
    api_host, api_port = parse_hostport(args.api, "--api")
    raft_host, raft_port = parse_hostport(args.raft, "--raft")
    if args.timing_multiplier <= 0:
        raise CliError("--timing-multiplier must be positive")
    if args.snapshot_every < 1 or args.keep_entries < 0:
        raise CliError("--snapshot-every must be positive and --keep-entries not negative")
    if args.history_limit < 1:
        raise CliError("--history-limit must be positive")
    if args.audit_limit < 1 or not 0 < args.audit_max_age < 100 * 365:
        raise CliError("--audit-limit must be positive and --audit-max-age between 0 and 36500 days")
    if args.voters < 1:
        raise CliError("--voters must be at least 1")
    check_live_flags(args.settle_ms, args.merge_ms)
    peers = parse_peers(args.peers) if args.peers else {}
    if peers and node_id not in peers:
        raise CliError(f"--peers must list this node's id ({node_id}) too")
    auth = None
    if args.tokens_file:
        check_private(Path(args.tokens_file), "--tokens-file")
        try:
            auth = TokenAuth.from_file(args.tokens_file)
        except TokensFileError as exc:
            raise CliError(str(exc)) from exc
    elif not is_loopback(api_host):
        raise CliError(f"--api {args.api} is not loopback: give --tokens-file so that clients must authenticate")
    if has_credentials(data_dir):
        # Certificates (issue 18): peer links are mutual TLS; no shared secret.
        if not getattr(args, "api_tls", False) and not is_loopback(api_host):
            raise CliError(
                f"--api {args.api} is not loopback and this node has certificates ({data_dir / 'tls'}): add "
                "--api-tls so that tokens and data cross the network encrypted (clients then use https:// and "
                f"verify the node against the cluster CA, {data_dir / 'tls' / 'ca.pem'}: hana-node --ca FILE)"
            )
        secret, secret_source = frame_secret(args.cluster), f"tls:{data_dir / 'tls'}"
    else:
        if getattr(args, "api_tls", False):
            raise CliError(
                f"--api-tls needs this node's certificate in {data_dir / 'tls'} (ca.pem, node.pem, node.key): "
                "run `hana-node init` on the first machine, or start with --join TOKEN from `hana-node invite`"
            )
        secret, secret_source = cluster_secret(args.secret_file, is_loopback(raft_host), args.raft)
    if args.header_timeout <= 0:
        raise CliError("--header-timeout must be positive")
    try:
        check_options(_split(args.allow_origin), _split(args.allow_host), args.max_body)
    except ValueError as exc:
        raise CliError(str(exc)) from None
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
        history_limit=args.history_limit,
        audit_limit=args.audit_limit,
        audit_max_age_ms=max(1, round(args.audit_max_age * 86_400_000)),
        inject_bug=args.inject_bug,
        settle_ms=args.settle_ms,
        merge_ms=args.merge_ms,
        coalesce_history=args.coalesce_history,
        live_fanout=args.live_fanout,
        offline_wait=_offline_wait(args),
    )
    return cfg, data_dir, auth, (api_host, api_port), secret_source


def _offline_wait(args: argparse.Namespace) -> float:
    """`--offline-wait SECONDS` (issue 14; default 1 s)."""
    wait = getattr(args, "offline_wait", None)
    if wait is None:
        return 1.0
    if not 0 <= wait <= 3600:
        raise CliError("--offline-wait must be between 0 and 3600 seconds")
    return float(wait)


def inherited_sockets(
    args: argparse.Namespace, api: tuple[str, int], raft: tuple[str, int]
) -> tuple[socket.socket | None, socket.socket | None]:
    """The listening sockets handed over with --api-fd / --raft-fd, checked
    against --api / --raft."""
    out: list[socket.socket | None] = []
    for fd, flag, (host, port) in ((args.api_fd, "--api-fd", api), (args.raft_fd, "--raft-fd", raft)):
        if fd is None:
            out.append(None)
            continue
        try:
            out.append(inherited_listener(fd, flag, host, port))
        except ValueError as exc:
            raise CliError(str(exc)) from None
    return out[0], out[1]


def build_discovery(args: argparse.Namespace, cfg: NodeConfig, data_dir: Path) -> DiscoveryAgent | None:
    """The mDNS discovery agent, or None with --no-mdns. Imports zeroconf
    only when mDNS is on."""
    if args.no_mdns:
        return None
    try:
        interfaces = parse_interfaces(args.mdns_interfaces)
    except ValueError as exc:
        raise CliError(f"--mdns-interfaces / HANA_MDNS_INTERFACES: {exc}") from None
    if cfg.raft_port == 0:
        raise CliError("--raft needs a fixed port with mDNS (the advertised address must be known before listening)")
    if args.expect < 1:
        raise CliError("--expect must be at least 1")
    from mesh.discovery.mdns import MdnsDiscovery

    try:
        discovery = MdnsDiscovery(cfg.cluster, cfg.node_id, (cfg.raft_host, cfg.raft_port), cfg.api_address, interfaces)
    except ValueError as exc:
        raise CliError(f"mDNS: {exc}") from None
    try:
        limits = Limits(
            max_voters=args.voters,
            stabilization=args.autopilot_stabilize,
            replace_after=args.autopilot_replace_after,
            remove_after=args.autopilot_remove_after,
        )
    except ValueError as exc:
        raise CliError(f"autopilot: {exc}") from None
    return DiscoveryAgent(
        cfg.node_id,
        discovery,
        data_dir,
        expect=args.expect,
        limits=limits,
        browse_window=args.browse_window,
        static_peers=cfg.peers,
    )


def tls_contexts(
    args: argparse.Namespace, data_dir: Path, cluster: str, node_id: str
) -> tuple[PeerTls | None, ApiTls | None]:
    """The peer-link TLS (None in pre-shared-secret mode) and the API's
    HTTPS context (None without --api-tls), loaded before anything binds."""
    if not has_credentials(data_dir):
        return None, None
    try:
        peer = PeerTls(data_dir, cluster, node_id)
        api = ApiTls(data_dir) if args.api_tls else None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CliError(
            f"the node's certificates in {data_dir / 'tls'} do not load: {exc} "
            "(they must be the files `hana-node init` or `serve --join` wrote, for this --id and --cluster)"
        ) from None
    return peer, api


def osc_options(args: argparse.Namespace) -> OscOptions | None:
    """The OSC bridge's flags (--osc-listen, --osc-send, --oscquery-port),
    checked before anything is bound; None when neither is given."""
    from mesh.osc.service import OscOptions

    if args.oscquery_port is not None and not args.osc_listen:
        raise CliError("--oscquery-port needs --osc-listen (OSCQuery serves the tree of the OSC listener)")
    if not args.osc_listen and not args.osc_send:
        return None
    listen = parse_hostport(args.osc_listen, "--osc-listen") if args.osc_listen else None
    port = 0 if args.oscquery_port is None else args.oscquery_port
    if not 0 <= port <= 65535:
        raise CliError(f"--oscquery-port {port} out of range")
    send = parse_osc_targets(args.osc_send) if args.osc_send else ()
    return OscOptions(listen, send, port, float(getattr(args, "settle_ms", 250)))


async def start_osc(
    opts: OscOptions, adapter: NodeAdapter, node: MeshNode, agent: DiscoveryAgent | None, app: Any
) -> OscService:
    from mesh.discovery.mdns import MdnsDiscovery
    from mesh.osc.service import start_osc as start

    mdns: MdnsDiscovery | None = None
    if agent is not None and isinstance(agent.discovery, MdnsDiscovery):
        mdns = agent.discovery
    try:
        return await start(
            opts,
            adapter,
            app,
            registry=node.metrics.registry,
            advertise=mdns.advertise_extra if mdns is not None else None,
            name=f"hana-{node.cluster}-{node.node_id}",
        )
    except OSError as exc:
        raise CliError(f"OSC: cannot bind --osc-listen / --oscquery-port / --osc-send: {exc}") from exc


async def _until(stop: asyncio.Event, coro: Awaitable[T]) -> T | None:
    """Run `coro` unless `stop` is set first (then cancel it and return None)."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _credentials(
    args: argparse.Namespace, stop: asyncio.Event
) -> tuple[trust_files.NodeCredentials | None, bool]:
    """Cluster credentials (issue 18), before the node decides between TLS
    and PSK: DATA/tls/ as it is, or got now with --join / --request-join.
    (None, True): stopped while waiting for an approval."""
    node_id = args.node_id or socket.gethostname()
    data_dir = Path(args.data_dir or Path("data") / node_id)
    api = parse_hostport(args.api, "--api")
    raft = parse_hostport(args.raft, "--raft")
    try:
        interfaces = parse_interfaces(args.mdns_interfaces) if args.request_join == "mdns" else None
        creds = await trust_boot.obtain(
            data_dir, node_id, args.join, args.request_join, raft, api, stop, args.cluster, interfaces
        )
    except (trust_boot.BootError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if creds is None:
        return None, bool(args.join or args.request_join)
    if args.cluster not in ("hana", creds.cluster):
        raise CliError(f"--cluster {args.cluster}: this node's certificate is for cluster {creds.cluster}")
    args.cluster = creds.cluster
    return creds, False


async def run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    os.umask(0o077)
    creds, stopped = await _credentials(args, stop)
    if stopped:
        log.info("node=%s event=shutdown_requested during=join", args.node_id)
        return 0
    cfg, data_dir, auth, (api_host, api_port), secret_source = build(args)
    # The at-rest key (issue 18) is read before anything is bound.
    key = load_key(args.encrypt_at_rest, "--encrypt-at-rest") if getattr(args, "encrypt_at_rest", None) else None
    api_sock, raft_sock = inherited_sockets(args, (api_host, api_port), (cfg.raft_host, cfg.raft_port))
    peer_tls, api_ssl = tls_contexts(args, data_dir, cfg.cluster, cfg.node_id)
    osc_opts = osc_options(args)
    osc: OscService | None = None
    log.info("node=%s event=cluster_secret source=%s", cfg.node_id, secret_source)
    agent = build_discovery(args, cfg, data_dir)
    # Everything the node writes (log, snapshots, saves, tokens) is the
    # user's alone: the log holds the whole show and every imported file.
    os.umask(0o077)
    try:
        if private_data_dir(data_dir):
            log.warning("node=%s event=data_dir_made_private path=%s mode=0700", cfg.node_id, data_dir)
        admin = None if auth is not None else admin_token(data_dir)
        if key is None:
            storage = open_storage(data_dir, args.durability)
        else:
            storage = open_storage(data_dir, args.durability, key)
    except (DiskStorageError, OSError) as exc:
        # Exit 1 as for any storage failure, with one line that says what to
        # do instead of a traceback.
        _storage_failure(exc, data_dir, cfg.node_id)
        return 1
    # The transport asks the trust state whether a peer is admitted (mesh/trust/service.py).
    trust_hooks = TrustHooks()
    if peer_tls is not None:
        peer_tls.peer_allowed = trust_hooks.peer_allowed
        peer_tls.note_pending = trust_hooks.note_pending
    trust_service: TrustService | None = None
    trust_task: asyncio.Future[None] | None = None
    try:
        fresh = storage_is_fresh(storage)
        if creds is not None and trust_boot.wants_bootstrap(data_dir) and not cfg.peers and fresh:
            cfg.peers = {cfg.node_id: (cfg.raft_host, cfg.raft_port)}  # `init`: a one-node cluster of itself
        if storage_is_fresh(storage) and not cfg.peers and agent is None and creds is None:
            raise CliError(
                f"{data_dir} holds no cluster yet and there is nothing to form one with: "
                "give --peers, or drop --no-mdns to find the other nodes with mDNS (see --expect)"
            )
        if agent is not None:
            try:
                formed = await _until(stop, agent.form(storage))
            except (OSError, ValueError) as exc:
                await agent.stop()
                if cfg.peers:
                    # With --peers, mDNS only helps: go on without it.
                    log.warning("node=%s event=mdns_unavailable error=%r", cfg.node_id, str(exc))
                    agent = None
                    formed = None
                else:
                    raise CliError(f"mDNS discovery failed: {exc}") from exc
            else:
                if formed is None:
                    log.info("node=%s event=shutdown_requested during=formation", cfg.node_id)
                    await agent.stop()
                    return 0
                log.info("node=%s event=formed action=%s conf=%s", cfg.node_id, formed.action, ",".join(formed.conf))
        try:
            node = MeshNode(cfg, storage)
        except OutboxCorrupt as exc:
            raise CliError(str(exc)) from exc
        # Peer links over mutual TLS when the node has certificates. T1
        # (mesh/trust) gives peer_allowed/note_pending over the state.
        node.transport.cfg.tls = peer_tls
        await node.start(raft_sock)
        if creds is not None:
            trust_boot.bootstrapped(data_dir)
            for pid, addr in trust_files.known_peers(data_dir).items():
                if pid != cfg.node_id and pid not in cfg.peers:
                    node.set_peer_address(pid, addr)
        if agent is not None:
            agent.attach(node)
            await agent.start()
        adapter = NodeAdapter(node, agent, cfg.peers)
        app = create_app(
            adapter,
            auth,
            admin_token=admin,
            allow_origins=_split(args.allow_origin),
            allow_hosts=_split(args.allow_host),
            max_body=args.max_body,
            # ?confirm=all asks the other members' HTTPS APIs, verified
            # against the cluster CA like any client.
            member_ssl=client_context(tls_paths(data_dir)[0]) if api_ssl is not None else None,
        )
        app[GUARD].sources.append(node.transport.bans.take_events)  # peer bans audited (issue 18)
        if creds is not None:
            trust_service = _trust_service(args, data_dir, adapter, f"{api_host}:{api_port}")
            app[TRUST] = trust_service
            trust_hooks.attach(trust_service)
            if agent is not None:
                agent.admissible = trust_service.admissible
            trust_task = asyncio.ensure_future(trust_service.run())
        if osc_opts is not None:
            osc = await start_osc(osc_opts, adapter, node, agent, app)
        runner = await run_api(
            app,
            api_host,
            api_port,
            header_timeout=args.header_timeout,
            sock=api_sock,
            ssl_context=api_ssl.context if api_ssl is not None else None,
        )
        log.info(
            "node=%s event=api_listening addr=%s:%d scheme=%s",
            cfg.node_id,
            api_host,
            api_port,
            "https" if api_ssl is not None else "http",
        )
        # The CLI of this machine finds the scheme (and the CA) through the
        # data dir its pointer names.
        marker = data_dir / API_HTTPS_MARKER
        if api_ssl is not None:
            marker.touch(mode=0o600)
        else:
            marker.unlink(missing_ok=True)
        if admin is not None:
            remember_api(f"{api_host}:{api_port}", data_dir)
        stopper = asyncio.ensure_future(stop.wait())
        failure = asyncio.ensure_future(node.failed.wait())
        await asyncio.wait({stopper, failure}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        failure.cancel()
        await runner.cleanup()
        if osc is not None:
            await osc.stop()
            osc = None
        if trust_task is not None and trust_service is not None:
            trust_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trust_task
            await trust_service.stop()
        if node.fatal is not None:
            if agent is not None:
                await agent.stop()
            await node.stop(transfer=False)
            log.critical(
                "node=%s event=exit reason=%r action=%r",
                cfg.node_id,
                node.fatal,
                storage_advice(node.fatal, data_dir, cfg.node_id),
            )
            return 1
        log.info("node=%s event=shutdown_requested", cfg.node_id)
        # Goodbyes first (peers drop this node at once), then hand over.
        if agent is not None:
            await agent.stop()
        await node.stop(transfer=True)
    finally:
        if osc is not None:
            await osc.stop()
        if agent is not None:
            await agent.stop()
        storage.close()
    return 0


def _trust_service(args: argparse.Namespace, data_dir: Path, adapter: NodeAdapter, api: str) -> TrustService:
    """The node's trust service: joins, renewals and the CA roll (mesh/trust/service.py)."""

    async def change(node_id: str, action: str, raft: tuple[str, int] | None) -> Any:
        change = MembershipChange(
            node=node_id,
            action=cast(MembershipAction, action),
            author=f"node:{adapter.node_id}",
            address="",
            reason="joined",
            raft=raft,
        )
        return await adapter.change_membership(change)

    scheme = "https" if getattr(args, "api_tls", False) else "http"
    return TrustService(
        data_dir, adapter, change, f"{scheme}://{api}", lifetime_s=args.cert_lifetime, interval=args.trust_interval
    )


def serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    # `kill -USR1 <pid>` prints every thread's stack: for a node that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    runner: Callable[[Coroutine[Any, Any, int]], int]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(run(args))
