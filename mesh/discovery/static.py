"""A fixed seed list (`--peers id=host:port,...`): the discovery used when
mDNS is off. The view never changes after construction unless the owner
calls `set_seeds`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from mesh.discovery.base import BootstrapState, Peer


class StaticDiscovery:
    """Peers from a list given on the command line. Static peers advertise
    nothing, so their bootstrap state is reported as MEMBER with `conf` the
    whole seed list (every node of a static cluster lists the same ids)."""

    def __init__(self, cluster: str, node_id: str, seeds: Mapping[str, tuple[str, int]], protocol: int = 0) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.protocol = protocol
        self.changed = asyncio.Event()
        self._callbacks: list[Callable[[dict[str, Peer]], None]] = []
        self._peers: dict[str, Peer] = {}
        self._build(seeds)

    def _build(self, seeds: Mapping[str, tuple[str, int]]) -> None:
        conf = tuple(sorted(seeds))
        self._peers = {
            nid: Peer(nid, self.cluster, host, port, "", self.protocol, "static", BootstrapState.MEMBER, conf)
            for nid, (host, port) in sorted(seeds.items())
            if nid != self.node_id
        }

    async def start(self) -> None:
        self._notify()

    async def stop(self) -> None:
        return None

    def peers(self) -> dict[str, Peer]:
        return dict(self._peers)

    def on_change(self, callback: Callable[[dict[str, Peer]], None]) -> None:
        self._callbacks.append(callback)

    async def advertise_state(self, state: BootstrapState, conf: tuple[str, ...]) -> None:
        return None

    def set_seeds(self, seeds: Mapping[str, tuple[str, int]]) -> None:
        self._build(seeds)
        self._notify()

    def _notify(self) -> None:
        self.changed.set()
        view = self.peers()
        for cb in list(self._callbacks):
            cb(view)
