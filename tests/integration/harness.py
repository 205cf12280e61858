"""Real `hana-node serve` processes on loopback, started and stopped by PID.

Every process a test starts is recorded and killed at teardown, whatever
happened. Waiting is always polling a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mesh.client import ApiError, MeshClient, Unreachable
from mesh.node.demo import free_ports

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
class NodeProc:
    node_id: str
    api_port: int
    raft_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    def client(self, timeout: float = 10.0) -> MeshClient:
        return MeshClient(self.api, timeout=timeout)

    def admin_client(self, timeout: float = 10.0) -> MeshClient:
        """A client with this node's admin token (written at its first start)."""
        token = (self.data_dir / "admin-token").read_text().strip()
        return MeshClient(self.api, token=token, timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    root: Path
    nodes: dict[str, NodeProc] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # HANA_SECRET for every node; None: no secret given (loopback nodes then
    # share the per-user secret file under XDG_CONFIG_HOME).
    secret: str | None = SECRET

    @classmethod
    def create(cls, root: Path, n: int, extra_args: list[str] | None = None) -> Cluster:
        ports = free_ports(2 * n)
        c = cls(root, extra_args=list(extra_args or []))
        for i in range(n):
            nid = f"n{i + 1}"
            c.nodes[nid] = NodeProc(nid, ports[i], ports[n + i], root / nid, root / f"{nid}.log")
        return c

    def peers_flag(self) -> str:
        return ",".join(f"{n.node_id}=127.0.0.1:{n.raft_port}" for n in self.nodes.values())

    def start(self, nid: str, extra: list[str] | None = None) -> None:
        node = self.nodes[nid]
        assert not node.alive(), f"{nid} is already running"
        cmd = [
            sys.executable, "-m", "mesh.cli", "serve",
            "--id", nid,
            "--api", node.api,
            "--raft", f"127.0.0.1:{node.raft_port}",
            "--peers", self.peers_flag(),
            "--data-dir", str(node.data_dir),
            "--no-mdns",
            *self.extra_args,
            *(extra or []),
        ]  # fmt: skip
        env = dict(os.environ, HANA_MDNS_INTERFACES="127.0.0.1")
        env.pop("HANA_SECRET", None)
        if self.secret is not None:
            env["HANA_SECRET"] = self.secret
        log = open(node.log_path, "ab")  # noqa: SIM115 - the child owns it
        node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.started.append(node.proc)

    def start_all(self) -> None:
        for nid in self.nodes:
            self.start(nid)

    def signal(self, nid: str, sig: signal.Signals) -> None:
        proc = self.nodes[nid].proc
        assert proc is not None
        os.kill(proc.pid, sig)

    def kill(self, nid: str) -> None:
        proc = self.nodes[nid].proc
        assert proc is not None
        proc.kill()
        proc.wait(timeout=10)

    def terminate(self, nid: str, timeout: float = 15.0) -> int:
        proc = self.nodes[nid].proc
        assert proc is not None
        proc.terminate()
        return proc.wait(timeout=timeout)

    def stop_everything(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    continue
                proc.kill()
        for proc in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def logs(self) -> str:
        out = []
        for n in self.nodes.values():
            if n.log_path.exists():
                out.append(f"--- {n.node_id} ---\n" + n.log_path.read_text(errors="replace")[-4000:])
        return "\n".join(out)

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
