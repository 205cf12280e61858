"""Real `hana-node serve` processes for a chaos run, wired through the fault
proxy, and the process-level faults (SIGKILL, SIGSTOP/SIGCONT, a torn WAL
tail before a restart).

Every node lists its peers at the proxy's port for that direction
(`--peers n2=127.0.0.1:<port of link n1->n2>`), which API.md allows: the
address a node dials for a peer may differ from where the peer listens.
Every process started is recorded and killed by PID at the end, whatever
happened.

Every node runs with a tokens file (`--tokens-file`, written 0600 into the
run's folder), so that a request without a valid token counts for nothing:
the workload sends the operator token, the harness (role sampler, faults,
the checker's reads) the reader and admin tokens, and the hostile
neighbours of `--hostile` (hostile.py) try without one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import secrets
import signal
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from mesh.launcher import ServeProcess
from mesh.storage.records import RecordType, frame
from mesh.storage.wal import SEG_SUFFIX, WAL_DIR
from mesh.transport.tls import client_context
from mesh.trust import ca, local
from simulations.chaoskit.proxy import FaultProxy

log = logging.getLogger(__name__)

SECRET = "chaos-run-secret-0123456789abcdef"
# Small snapshots and log retention so that restarts, catch-up by snapshot
# and InstallSnapshot happen during short runs; history kept in full so
# the checker can compare every node's log with what clients were told.
NODE_ARGS = [
    "--keep-entries", "100",
    "--history-limit", "10000000",
]  # fmt: skip


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL it when the chaos process
    dies, however it dies, so that no node outlives a killed run."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


ROLES = ("reader", "operator", "admin")
TOKENS_FILE = "tokens.json"


@dataclass(frozen=True)
class ChaosTokens:
    """The bearer tokens of a run's tokens file, one per role."""

    reader: str
    operator: str
    admin: str

    @classmethod
    def generate(cls) -> ChaosTokens:
        return cls(*(f"chaos-{role}-{secrets.token_hex(16)}" for role in ROLES))

    def header(self, role: str) -> dict[str, str]:
        """The Authorization header of the token with this role."""
        return {"Authorization": f"Bearer {getattr(self, role)}"}

    def write(self, path: Path) -> None:
        """The tokens file `serve --tokens-file` reads (mesh/api/auth.py),
        readable by its owner only."""
        doc = {"tokens": [{"name": f"chaos-{role}", "token": getattr(self, role), "role": role} for role in ROLES]}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        os.chmod(path, 0o600)


@dataclass
class ChaosNode(ServeProcess):
    paused: bool = False
    # Exits we caused (SIGKILL); any other exit is a crash to report.
    expected_exit: bool = False
    crashes: list[int] = field(default_factory=list)

    def running(self) -> bool:
        return self.alive()


def node_ids(n: int) -> list[str]:
    """The ids of a run's nodes: n1 … nN."""
    return [f"n{i}" for i in range(1, n + 1)]


# --tls: the cluster name in the certificates (serve's default --cluster),
# the signer (the machine holding tls/ca.key, where rotate-ca runs) and how
# often the nodes' trust loop runs (hidden serve flag; the default 1 s makes
# a CA roll take several seconds of a short run).
TLS_CLUSTER = "hana"
SIGNER = "n1"
TLS_ARGS = ["--trust-interval", "0.2"]


def make_tls_credentials(root: Path, ids: list[str]) -> None:
    """Credentials a CA roll can run on: the first node as `hana-node init`
    leaves it (cluster CA with its key, tls/ca.key: the signer), every
    other node a certificate of that CA (127.0.0.1, localhost), as `serve
    --join` would have written it. (ProcessCluster(tls=True) writes no
    ca.key anywhere, so nobody there could run rotate-ca.) The peers stay
    the static `--peers` through the fault proxy: a join would make the
    controller dial the new node directly, around the proxy."""
    local.init_cluster(root / ids[0], TLS_CLUSTER, ids[0])
    signer = local.signer(root / ids[0])
    assert signer is not None
    for nid in ids[1:]:
        key = ca.new_key()
        cert = ca.issue(signer.key, signer.cert, key.public_key(), TLS_CLUSTER, nid, ["127.0.0.1", "localhost"])
        local.write_node(root / nid, key, cert)
        local.write_bundle(root / nid, [signer.cert])


class ChaosCluster:
    def __init__(
        self,
        root: Path,
        n: int,
        proxy: FaultProxy,
        extra_args: list[str] | None = None,
        snapshot_every: int = 400,
        tokens: ChaosTokens | None = None,
        tls: bool = False,
    ) -> None:
        self.root = root
        # --tls: mutual TLS peer links (through the proxy, which relays the
        # bytes), HTTPS API; every harness client verifies the nodes against
        # ssl_context, which trusts every CA seen in a node's ca.pem
        # (refresh_trust), as an operator hands clients the new CA in a roll.
        self.tls = tls
        self.ssl_context: ssl.SSLContext | None = None
        self._trusted: set[bytes] = set()
        self.snapshot_every = snapshot_every
        self.proxy = proxy
        self.extra_args = list(extra_args or [])
        self.tokens = tokens
        self.tokens_file: Path | None = None
        if tokens is not None:
            self.tokens_file = root / TOKENS_FILE
            tokens.write(self.tokens_file)
        args = [
            *NODE_ARGS,
            "--snapshot-every", str(snapshot_every),
            *(["--tokens-file", str(self.tokens_file)] if self.tokens_file is not None else []),
            *self.extra_args,
            *(TLS_ARGS if tls else []),
        ]  # fmt: skip
        self.nodes: dict[str, ChaosNode] = {
            nid: ChaosNode(nid, root / nid, root / f"{nid}.log", args=args, tls=tls) for nid in node_ids(n)
        }
        if tls:
            make_tls_credentials(root, self.ids)
            self.ssl_context = client_context(self.nodes[SIGNER].data_dir / "tls" / "ca.pem")
            self.refresh_trust()
        self.link_ports: dict[tuple[str, str], int] = {}
        self.started: list[subprocess.Popen[bytes]] = []

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    @property
    def scheme(self) -> str:
        """The API's scheme: https with --tls."""
        return "https" if self.tls else "http"

    def url(self, nid: str) -> str:
        """The base URL of a node's API."""
        return f"{self.scheme}://{self.nodes[nid].api}"

    def connector(self, limit: int = 100) -> aiohttp.TCPConnector:
        """A connector for a harness session: verifies the nodes' HTTPS
        certificates against ssl_context with --tls."""
        return aiohttp.TCPConnector(limit=limit, ssl=self.ssl_context if self.ssl_context is not None else True)

    def refresh_trust(self) -> int:
        """Trust every CA found in a node's tls/ca.pem (new ones only, kept
        after the nodes drop them); the number of CAs newly trusted."""
        if self.ssl_context is None:
            return 0
        added = 0
        for node in self.nodes.values():
            try:
                certs = local.bundle(node.data_dir)
            except (OSError, ValueError):
                continue  # being rewritten: the next refresh reads it
            for cert in certs:
                pem = ca.cert_pem(cert)
                if pem not in self._trusted:
                    self.ssl_context.load_verify_locations(cadata=pem.decode())
                    self._trusted.add(pem)
                    added += 1
        return added

    async def wire(self) -> None:
        """One proxy link per ordered pair of nodes."""
        for src in self.nodes:
            for dst, node in self.nodes.items():
                if src != dst:
                    self.link_ports[(src, dst)] = await self.proxy.add_link(src, dst, ("127.0.0.1", node.raft_port))

    def peers_of(self, src: str) -> dict[str, str]:
        """Where `src` dials each node: itself directly, the others through
        the proxy link from src to them."""
        return {
            nid: node.raft if nid == src else f"127.0.0.1:{self.link_ports[(src, nid)]}"
            for nid, node in self.nodes.items()
        }

    def start(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.running():
            raise RuntimeError(f"{nid} is already running")
        node.peers = self.peers_of(nid)
        env = dict(os.environ, HANA_SECRET=SECRET, HANA_MDNS_INTERFACES="127.0.0.1")
        proc = node.start(env, preexec_fn=_die_with_parent)
        node.expected_exit = False
        node.paused = False
        self.started.append(proc)
        log.info("event=node_started node=%s pid=%d", nid, proc.pid)

    def start_all(self) -> None:
        for nid in self.nodes:
            self.start(nid)

    def kill(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.proc is None or node.proc.poll() is not None:
            return
        node.expected_exit = True
        node.proc.kill()
        node.proc.wait(timeout=10)
        node.paused = False
        log.info("event=node_killed node=%s", nid)

    def pause(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.running() and not node.paused:
            assert node.proc is not None
            os.kill(node.proc.pid, signal.SIGSTOP)
            node.paused = True

    def resume(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.running() and node.paused:
            assert node.proc is not None
            os.kill(node.proc.pid, signal.SIGCONT)
        node.paused = False

    def tear_wal_tail(self, nid: str, rng: random.Random, *, zeros: bool) -> str:
        """Append what a power cut leaves of a write in flight to the last
        WAL segment of a stopped node: a record cut short, or a run of
        zeros (a block the disk allocated but never wrote). Never touches
        bytes that were there before: cutting synced records would be
        losing acknowledged data, which Raft cannot survive on a majority
        and is not what a torn write is."""
        node = self.nodes[nid]
        if node.running():
            raise RuntimeError(f"{nid} must be stopped before its log is torn")
        segments = sorted((node.data_dir / WAL_DIR).glob(f"*{SEG_SUFFIX}"))
        if not segments:
            return "no segment"
        last = segments[-1]
        if not zeros:
            record = frame(int(RecordType.ENTRY), rng.randbytes(rng.randint(40, 600)))
            tail = record[: rng.randint(1, len(record) - 1)]
            what = f"{len(tail)} of {len(record)} bytes of a record"
        else:
            tail = bytes(rng.choice((512, 4096)))
            what = f"{len(tail)} zero bytes"
        with open(last, "ab") as f:
            f.write(tail)
        return f"{last.name}: {what}"

    def unexpected_exits(self) -> list[str]:
        """Nodes that exited without being killed by us (each reported once)."""
        out = []
        for nid, node in self.nodes.items():
            if node.proc is not None and node.proc.poll() is not None and not node.expected_exit:
                node.crashes.append(node.proc.returncode)
                node.expected_exit = True
                out.append(f"{nid} exited with status {node.proc.returncode}")
        return out

    def stop_everything(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
                except ProcessLookupError:
                    continue
        for proc in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for node in self.nodes.values():
            node.close()

    def header(self, role: str) -> dict[str, str]:
        """The Authorization header for a harness request with this role
        (none when the nodes run without a tokens file)."""
        return {} if self.tokens is None else self.tokens.header(role)

    async def status(self, nid: str, timeout: float = 3.0) -> dict[str, Any] | None:
        """`GET /v1/status` of one node (reader token), or None if it does
        not answer with a status document."""
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=timeout), connector=self.connector()
                ) as session,
                session.get(f"{self.url(nid)}/v1/status", headers=self.header("reader")) as resp,
            ):
                doc = orjson.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            return None
        return doc if isinstance(doc, dict) else None
