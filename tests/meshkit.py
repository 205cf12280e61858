"""The one in-process mesh of the tests: MeshNodes in this process, real TCP
on loopback, memory storage unless a test brings its own.

Every node's peer port is bound (mesh.launcher.listening_socket) before any
node starts and handed to it (`MeshNode.start(raft_sock)`), so no other test
running in parallel can take a port between choosing and using it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from mesh.launcher import listening_socket
from mesh.node.runtime import MeshNode, NodeConfig
from mesh.raft import Role
from mesh.replica import ReplicaStorage
from mesh.storage.memory import MemoryStorage

SECRET = b"test-secret-0123456789"


class InProcessMesh:
    """`ids` bootstrap together (static peers); `joiners` start empty and
    wait to be added. `config` adds NodeConfig fields for every node;
    `storage(nid)` gives a node's store (default MemoryStorage)."""

    def __init__(
        self,
        ids: Iterable[str],
        joiners: Iterable[str] = (),
        *,
        secret: bytes = SECRET,
        storage: Callable[[str], ReplicaStorage] | None = None,
        **config: Any,
    ) -> None:
        self.ids = list(ids)
        self.joiners = list(joiners)
        everyone = [*self.ids, *self.joiners]
        self._socks = {nid: listening_socket() for nid in everyone}
        self.addrs = {nid: ("127.0.0.1", int(s.getsockname()[1])) for nid, s in self._socks.items()}
        peers = {nid: self.addrs[nid] for nid in self.ids}
        self.nodes: dict[str, MeshNode] = {}
        for n, nid in enumerate(everyone):
            cfg = NodeConfig(
                nid,
                "hana",
                secret,
                raft_port=self.addrs[nid][1],
                peers=peers if nid in self.ids else {},
                seed=n,
                **config,
            )
            self.nodes[nid] = MeshNode(cfg, storage(nid) if storage is not None else MemoryStorage())
        self._started: list[MeshNode] = []

    async def start(self, *nids: str) -> None:
        """Start the given nodes (default: all not started yet)."""
        for nid in nids or [n for n in self.nodes if self.nodes[n] not in self._started]:
            node = self.nodes[nid]
            await node.start(self._socks.pop(nid))
            self._started.append(node)

    def introduce_everyone(self) -> None:
        """What discovery would do: every node learns every address."""
        for nid, node in self.nodes.items():
            for other, addr in self.addrs.items():
                if other != nid:
                    node.transport.set_peer(other, addr)

    def leader(self, exclude: str | None = None) -> str | None:
        for nid, n in self.nodes.items():
            if nid != exclude and n.replica.raft.role == Role.LEADER:
                return nid
        return None

    def follower(self) -> str:
        lead = self.leader()
        return next(nid for nid in self.nodes if nid != lead)

    async def wait_leader(self, timeout: float = 10.0, exclude: str | None = None, agreed: bool = True) -> str:
        """A leader (that every other started node follows, if `agreed`)."""
        async with asyncio.timeout(timeout):
            while True:
                lead = self.leader(exclude)
                if lead is not None and (
                    not agreed or all(n.replica.raft.lead == lead for nid, n in self.nodes.items() if nid != exclude)
                ):
                    return lead
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for node in self._started:
            await node.stop(transfer=False)
        self._started.clear()
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
