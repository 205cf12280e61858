"""Starting the OSC side of a node (`hana-node serve --osc-listen/--osc-send`):
the bridge, its OSCQuery server, its API routes and its mDNS advertisement,
stopped together. Called by the composition root (mesh/serve.py) with the
node's handle, its API app (before it starts serving) and its metrics
registry."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from mesh.osc import routes
from mesh.osc.bridge import LiveNode, OscBridge
from mesh.osc.oscquery import OscQueryServer

log = logging.getLogger("mesh.osc")

OSCQUERY_SERVICE = "_oscjson._tcp.local."
# advertise(service_type, label, host, port) -> instance name
Advertise = Callable[[str, str, str, int], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class OscOptions:
    listen: tuple[str, int] | None
    send: tuple[tuple[str, int], ...] = ()
    oscquery_port: int = 0
    settle_ms: float = 250.0


class OscService:
    def __init__(self, bridge: OscBridge, oscquery: OscQueryServer | None) -> None:
        self.bridge = bridge
        self.oscquery = oscquery

    async def stop(self) -> None:
        if self.oscquery is not None:
            await self.oscquery.stop()
        await self.bridge.stop()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def start_osc(
    opts: OscOptions,
    node: LiveNode,
    app: web.Application,
    *,
    registry: CollectorRegistry | None,
    advertise: Advertise | None,
    name: str,
) -> OscService:
    """Bind and start everything; raises OSError if a socket cannot be bound
    (nothing is left running then)."""
    bridge = OscBridge(node, listen=opts.listen, send=opts.send, settle_ms=opts.settle_ms, registry=registry)
    await bridge.start()
    oscquery = None
    try:
        if opts.listen is not None:
            if not _loopback(opts.listen[0]):
                log.warning(
                    "node=%s event=osc_open addr=%s:%d action=%r",
                    node.node_id,
                    *opts.listen,
                    "OSC has no authentication: anyone who can reach this address can move every mapped "
                    "parameter; listen on a show network only",
                )
            oscquery = OscQueryServer(bridge, opts.listen[0], opts.oscquery_port, name)
            await oscquery.start()
    except BaseException:
        await bridge.stop()
        raise
    assert oscquery is None or oscquery.bound is not None
    routes.register(app, bridge, f"{oscquery.bound[0]}:{oscquery.bound[1]}" if oscquery and oscquery.bound else None)
    if oscquery is not None and oscquery.bound is not None:
        if advertise is None:
            log.info("node=%s event=oscquery_not_advertised reason=no_mdns", node.node_id)
        else:
            try:
                await advertise(OSCQUERY_SERVICE, name, opts.listen[0] if opts.listen else "", oscquery.bound[1])
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning(
                    "node=%s event=oscquery_not_advertised error=%r action=%r",
                    node.node_id,
                    str(exc),
                    "show tools will not find it by themselves; give them the OSCQuery address of GET /v1/osc",
                )
    return OscService(bridge, oscquery)
