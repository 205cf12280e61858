"""mDNS discovery with python-zeroconf's asyncio API: the only module of
hana mesh that imports zeroconf.

Each node registers one instance `<cluster>-<id>._hana-mesh._tcp.local.`
with the TXT record of mesh/discovery/base.py and browses the same type.
Services of other clusters, of other TXT layouts, and this node's own
instance are ignored. Browse queries and resolves ask for multicast answers
(`DNSQuestionType.QM`): with every process sharing port 5353, unicast
answers make a late joiner wait about a second.

Interfaces: `interfaces=None` is zeroconf's default (all interfaces). Tests
and the demo must pass `["127.0.0.1"]` (see NOTES-network.md): with IPv4
addresses only, the instance is created with `IPVersion.V4Only`.

mDNS is for *finding* peers only. After a SIGKILL a peer's PTR record lives
on in caches for about 20 minutes; liveness comes from Raft.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Callable

from zeroconf import (
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from mesh.discovery.base import SERVICE_TYPE, BootstrapState, Peer, decode_txt, encode_txt
from mesh.raft.messages import PROTOCOL_VERSION

log = logging.getLogger("mesh.discovery")

RESOLVE_TIMEOUT_MS = 3000
_LABEL = re.compile(r"[^A-Za-z0-9-]")


def ip_version_for(interfaces: list[str] | None) -> IPVersion | None:
    """V4Only for a list of IPv4 addresses, V6Only for IPv6, All for both;
    None (zeroconf decides) for the default interfaces."""
    if not interfaces:
        return None
    versions = {ipaddress.ip_address(i).version for i in interfaces}
    if versions == {4}:
        return IPVersion.V4Only
    if versions == {6}:
        return IPVersion.V6Only
    return IPVersion.All


def instance_name(cluster: str, node_id: str) -> str:
    """The service instance name; unique per node and cluster (zeroconf
    refuses duplicate names on a segment). Raises ValueError if too long."""
    label = f"{cluster}-{node_id}"
    if len(label.encode()) > 63:
        raise ValueError(f"mDNS instance name {label!r} is longer than 63 bytes (shorten --cluster or --id)")
    return f"{label}.{SERVICE_TYPE}"


class MdnsDiscovery:
    """Advertise this node and browse for the others of `cluster`.

    Use: `d = MdnsDiscovery(cluster, node_id, raft_addr, api_addr, interfaces)`;
    `await d.start()`; read `d.peers()` whenever `d.changed` is set (clear it
    first) or register `d.on_change(cb)`; call `await d.advertise_state(...)`
    when the bootstrap state changes; `await d.stop()` on shutdown (sends
    goodbyes, so peers drop this node within about half a second).

    `zeroconf`: an existing AsyncZeroconf to use (not closed by `stop()`);
    tests inject records through it. `advertise=False`: browse only.
    """

    def __init__(
        self,
        cluster: str,
        node_id: str,
        raft_addr: tuple[str, int],
        api_addr: str = "",
        interfaces: list[str] | None = None,
        *,
        protocol: int = PROTOCOL_VERSION,
        state: BootstrapState = BootstrapState.FRESH,
        conf: tuple[str, ...] = (),
        zeroconf: AsyncZeroconf | None = None,
        advertise: bool = True,
    ) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.raft_addr = raft_addr
        self.api_addr = api_addr
        self.interfaces = list(interfaces) if interfaces else None
        self.protocol = protocol
        self.state = state
        self.conf = tuple(conf)
        self.advertise = advertise
        self.name = instance_name(cluster, node_id)
        # Validate the TXT now, not at start().
        encode_txt(node_id, cluster, raft_addr, api_addr, protocol, state, self.conf)
        self.changed = asyncio.Event()
        self._callbacks: list[Callable[[dict[str, Peer]], None]] = []
        self._by_name: dict[str, Peer] = {}
        self._own_zc = zeroconf is None
        self._aiozc = zeroconf
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._started = False
        self._extra: list[AsyncServiceInfo] = []

    # -- public ---------------------------------------------------------------

    @property
    def zeroconf(self) -> AsyncZeroconf:
        if self._aiozc is None:
            raise RuntimeError("MdnsDiscovery is not started")
        return self._aiozc

    async def start(self) -> None:
        if self._started:
            return
        if self._aiozc is None:
            interfaces = self.interfaces if self.interfaces else InterfaceChoice.All
            self._aiozc = AsyncZeroconf(interfaces=interfaces, ip_version=ip_version_for(self.interfaces))
        self._started = True
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf,
            [SERVICE_TYPE],
            handlers=[self._on_service_state_change],
            question_type=DNSQuestionType.QM,
        )
        if self.advertise:
            self._info = self._service_info()
            try:
                await (await self._aiozc.async_register_service(self._info))
            except NonUniqueNameException:
                await self.stop()
                raise ValueError(f"another node advertises {self.name} on this network") from None
        log.info("node=%s event=mdns_started name=%s interfaces=%s", self.node_id, self.name, self.interfaces or "all")

    async def stop(self) -> None:
        """Withdraw the advertisement (goodbye packets) and stop browsing."""
        if not self._started:
            return
        self._started = False
        for task in self._resolving.values():
            task.cancel()
        for task in list(self._resolving.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._resolving.clear()
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        assert self._aiozc is not None
        for extra in self._extra:
            with contextlib.suppress(Exception):
                await (await self._aiozc.async_unregister_service(extra))
        self._extra.clear()
        if self._info is not None:
            with contextlib.suppress(Exception):
                await (await self._aiozc.async_unregister_service(self._info))
            self._info = None
        if self._own_zc:
            await self._aiozc.async_close()
            self._aiozc = None

    def peers(self) -> dict[str, Peer]:
        return {p.node_id: p for p in self._by_name.values()}

    def on_change(self, callback: Callable[[dict[str, Peer]], None]) -> None:
        self._callbacks.append(callback)

    async def advertise_state(self, state: BootstrapState, conf: tuple[str, ...]) -> None:
        """Change this node's bootstrap state in its TXT record. A caller
        locking a configuration must persist the lock *before* this call."""
        conf = tuple(conf)
        encode_txt(self.node_id, self.cluster, self.raft_addr, self.api_addr, self.protocol, state, conf)
        if (state, conf) == (self.state, self.conf):
            return
        self.state, self.conf = state, conf
        if self._started and self._info is not None and self._aiozc is not None:
            self._info = self._service_info()
            await (await self._aiozc.async_update_service(self._info))

    async def advertise_extra(self, service_type: str, label: str, host: str, port: int) -> str:
        """Advertise one more service of this node on the same zeroconf
        (OSCQuery's `_oscjson._tcp.local.`: mesh/osc) at `host:port` (an
        unspecified host: the interfaces' addresses); withdrawn by `stop()`.
        Returns the instance name (zeroconf renames it if taken)."""
        if not self._started or self._aiozc is None:
            raise RuntimeError("MdnsDiscovery is not started")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        addresses = [str(ip)] if ip is not None and not ip.is_unspecified else list(self.interfaces or [])
        info = AsyncServiceInfo(
            service_type,
            f"{_LABEL.sub('-', label)[:63]}.{service_type}",
            port=port,
            properties={},
            server=_LABEL.sub("-", f"hana-{self.cluster}-{self.node_id}")[:63] + ".local.",
            parsed_addresses=addresses,
        )
        await (await self._aiozc.async_register_service(info, allow_name_change=True))
        self._extra.append(info)
        log.info("node=%s event=mdns_extra_service name=%s port=%d", self.node_id, info.name, port)
        return str(info.name)

    # -- internals ------------------------------------------------------------

    def _address(self) -> list[str]:
        host = self.raft_addr[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and not ip.is_unspecified:
            return [str(ip)]
        return list(self.interfaces or [])

    def _service_info(self) -> AsyncServiceInfo:
        props = encode_txt(
            self.node_id, self.cluster, self.raft_addr, self.api_addr, self.protocol, self.state, self.conf
        )
        server = _LABEL.sub("-", f"hana-{self.cluster}-{self.node_id}")[:63] + ".local."
        return AsyncServiceInfo(
            SERVICE_TYPE,
            self.name,
            port=self.raft_addr[1],
            properties=props,
            server=server,
            parsed_addresses=self._address(),
        )

    def _on_service_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if service_type != SERVICE_TYPE or name == self.name:
            return
        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(name, None)
            if task is not None:
                task.cancel()
            if self._by_name.pop(name, None) is not None:
                self._notify()
            return
        info = AsyncServiceInfo(service_type, name)
        if info.load_from_cache(zeroconf):
            self._accept(name, info)
        elif name not in self._resolving:
            self._resolving[name] = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name, info))

    async def _resolve(self, zeroconf: Zeroconf, name: str, info: AsyncServiceInfo) -> None:
        try:
            if await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS, question_type=DNSQuestionType.QM):
                self._accept(name, info)
            else:
                log.debug("node=%s event=mdns_unresolved name=%s", self.node_id, name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("node=%s event=mdns_resolve_failed name=%s", self.node_id, name)
        finally:
            if self._resolving.get(name) is asyncio.current_task():
                del self._resolving[name]

    def _accept(self, name: str, info: AsyncServiceInfo) -> None:
        try:
            peer = decode_txt(info.properties, "mdns")
        except ValueError as exc:
            log.debug("node=%s event=mdns_ignored name=%s reason=%r", self.node_id, name, str(exc))
            return
        if peer.cluster != self.cluster:
            # Another cluster (or a name reused by one): never part of our view.
            if self._by_name.pop(name, None) is not None:
                self._notify()
            return
        if peer.node_id == self.node_id:
            log.warning("node=%s event=mdns_duplicate_id name=%s", self.node_id, name)
            return
        if self._is_unspecified(peer.raft_host):
            addrs = info.parsed_scoped_addresses()
            if addrs:
                peer = _with_host(peer, addrs[0])
        if self._by_name.get(name) != peer:
            self._by_name[name] = peer
            self._notify()

    @staticmethod
    def _is_unspecified(host: str) -> bool:
        try:
            return ipaddress.ip_address(host).is_unspecified
        except ValueError:
            return False

    def _notify(self) -> None:
        self.changed.set()
        view = self.peers()
        for cb in list(self._callbacks):
            try:
                cb(view)
            except Exception:
                log.exception("node=%s event=discovery_callback_failed", self.node_id)


def _with_host(peer: Peer, host: str) -> Peer:
    return Peer(
        peer.node_id,
        peer.cluster,
        host,
        peer.raft_port,
        peer.api,
        peer.protocol,
        peer.source,
        peer.state,
        peer.conf,
    )
