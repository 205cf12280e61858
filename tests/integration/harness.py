"""Real `hana-node serve` processes on loopback, started and stopped by PID.

Every process a test starts is recorded and killed at teardown, whatever
happened. Waiting is always polling a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mesh.client import ApiError, MeshClient, Unreachable
from mesh.launcher import ProcessCluster, ServeProcess

T = TypeVar("T")
SECRET = "integration-test-secret-0123456789"


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = await check()
            if value:
                return value
        except (Unreachable, ApiError) as exc:
            last_error = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


@contextlib.contextmanager
def running_cluster(root: Path, n: int, extra_args: list[str] | None = None) -> Iterator[Cluster]:
    """A Cluster whose every started process is killed on the way out."""
    c = Cluster.create(root, n, extra_args)
    try:
        yield c
    finally:
        c.stop_everything()


@dataclass
class NodeProc(ServeProcess):
    """A serve process (mesh.launcher) with API clients for tests."""

    def client(self, timeout: float = 10.0) -> MeshClient:
        return MeshClient(self.api, timeout=timeout)

    def admin_client(self, timeout: float = 10.0) -> MeshClient:
        """A client with this node's admin token (written at its first start)."""
        token = (self.data_dir / "admin-token").read_text().strip()
        return MeshClient(self.api, token=token, timeout=timeout)


@dataclass
class Cluster(ProcessCluster):
    """n1 … nN with static --peers, mDNS off, the test secret."""

    extra_args: list[str] = field(default_factory=list)
    # HANA_SECRET for every node; None: no secret given (loopback nodes then
    # share the per-user secret file under XDG_CONFIG_HOME).
    secret: str | None = SECRET
    nodes: dict[str, NodeProc] = field(default_factory=dict)  # type: ignore[assignment]

    @classmethod
    def create(cls, root: Path, n: int, extra_args: list[str] | None = None) -> Cluster:
        c = cls(root, extra_args=list(extra_args or []))
        for i in range(1, n + 1):
            nid = f"n{i}"
            c.nodes[nid] = NodeProc(nid, root / nid, root / f"{nid}.log", args=c.extra_args)
        peers = c.static_peers()
        for node in c.nodes.values():
            node.peers = peers
        return c

    def env(self) -> dict[str, str]:
        env = dict(os.environ, HANA_MDNS_INTERFACES="127.0.0.1")
        env.pop("HANA_SECRET", None)
        if self.secret is not None:
            env["HANA_SECRET"] = self.secret
        return env

    def start(self, nid: str, extra: list[str] | None = None) -> None:  # type: ignore[override]
        super().start(nid, self.env(), extra or [])

    def start_all(self) -> None:
        for nid in self.nodes:
            self.start(nid)

    def signal(self, nid: str, sig: signal.Signals) -> None:
        self.nodes[nid].signal(sig)

    def kill(self, nid: str) -> None:
        self.nodes[nid].kill()

    def terminate(self, nid: str, timeout: float = 15.0) -> int:
        return self.nodes[nid].terminate(timeout)

    async def status(self, nid: str) -> dict[str, Any]:
        async with self.nodes[nid].client(timeout=2.0) as c:
            return await c.status()

    async def wait_leader(self, among: list[str] | None = None, timeout: float = 20.0) -> str:
        """A leader that every node in `among` agrees on."""
        ids = among or [n for n, p in self.nodes.items() if p.alive()]

        async def agreed() -> str | None:
            leaders = set()
            for nid in ids:
                leaders.add((await self.status(nid)).get("leader"))
            if len(leaders) == 1 and None not in leaders:
                leader = leaders.pop()
                return leader if leader in ids else None
            return None

        try:
            return await eventually(agreed, timeout, f"one leader among {ids}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
