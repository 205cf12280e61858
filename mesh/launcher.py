"""Starting `hana-node serve` processes on this machine: the one builder of
the serve command line, and a cluster of such processes stopped by PID.
The demo, the integration tests, the chaos runs and the benches all use it.

Ports are never chosen by binding and closing a socket and hoping nobody
takes the port before the child binds it again: the parent binds each
listening socket on an OS-chosen port and hands it to the child as an
inherited descriptor (`serve --api-fd N --raft-fd N`, hidden flags); the
child serves on it. So a port is in use from the moment it is chosen, and
the peers' `--peers` list can name every port before any node starts.

The parent closes its copies once the child runs, so a node that dies
leaves its ports closed, as on a real machine (peers dialling it are
refused at once, instead of waiting in a backlog nobody accepts from). A
restart binds the same ports again (they were free since the node died).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


def listening_socket(host: str = LOOPBACK, port: int = 0) -> socket.socket:
    """A TCP socket listening on host:port (0: the OS picks)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def free_ports(n: int) -> list[int]:
    """Ports free now, for third-party servers that cannot take an inherited
    socket (etcd in the benchmark): bound and released, so another process
    could take one before the server binds it. Never for hana nodes."""
    socks = [listening_socket() for _ in range(n)]
    try:
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def serve_command(
    node_id: str,
    *,
    api: str,
    raft: str,
    data_dir: Path,
    peers: dict[str, str] | None = None,
    cluster: str | None = None,
    expect: int | None = None,
    mdns: bool = False,
    api_fd: int | None = None,
    raft_fd: int | None = None,
    args: Iterable[str] = (),
) -> list[str]:
    """The command line of one `hana-node serve` (as `python -m mesh.cli`,
    so that it runs the code of the interpreter's environment)."""
    cmd = [sys.executable, "-m", "mesh.cli", "serve", "--id", node_id, "--api", api, "--raft", raft]
    cmd += ["--data-dir", str(data_dir)]
    if peers:
        cmd += ["--peers", ",".join(f"{nid}={addr}" for nid, addr in peers.items())]
    if cluster is not None:
        cmd += ["--cluster", cluster]
    if expect is not None:
        cmd += ["--expect", str(expect)]
    if not mdns:
        cmd.append("--no-mdns")
    if api_fd is not None:
        cmd += ["--api-fd", str(api_fd)]
    if raft_fd is not None:
        cmd += ["--raft-fd", str(raft_fd)]
    cmd += list(args)
    return cmd


@dataclass
class ServeProcess:
    """One node: its listening sockets (held by the parent for the node's
    whole life in the harness), its command line and its current process."""

    node_id: str
    data_dir: Path
    log_path: Path
    # Further serve flags, e.g. ["--snapshot-every", "100"].
    args: list[str] = field(default_factory=list)
    cluster: str | None = None
    expect: int | None = None
    mdns: bool = False
    # id -> host:port this node dials for each peer (itself included), or
    # None for a node that finds its peers with mDNS.
    peers: dict[str, str] | None = None
    # Certificates in data_dir/tls (ProcessCluster(tls=True)): peer links
    # are mutual TLS and the API is HTTPS (--api-tls).
    tls: bool = False
    proc: subprocess.Popen[bytes] | None = None
    # Bound now (port 0: the OS picks), handed to the first process; later
    # starts bind the same ports again.
    _socks: list[socket.socket] | None = field(default=None, repr=False)
    api_port: int = field(init=False)
    raft_port: int = field(init=False)

    def __post_init__(self) -> None:
        self._socks = [listening_socket(), listening_socket()]
        self.api_port, self.raft_port = (int(s.getsockname()[1]) for s in self._socks)

    @property
    def api(self) -> str:
        return f"{LOOPBACK}:{self.api_port}"

    @property
    def raft(self) -> str:
        return f"{LOOPBACK}:{self.raft_port}"

    @property
    def url(self) -> str:
        """The API's address for a client: https:// with TLS."""
        return f"{'https' if self.tls else 'http'}://{self.api}"

    @property
    def ca(self) -> Path | None:
        """The cluster CA bundle a client verifies this node against (TLS)."""
        return self.data_dir / "tls" / "ca.pem" if self.tls else None

    def command(self, extra: Iterable[str] = (), fds: tuple[int, int] | None = None) -> list[str]:
        return serve_command(
            self.node_id,
            api=self.api,
            raft=self.raft,
            data_dir=self.data_dir,
            peers=self.peers,
            cluster=self.cluster,
            expect=self.expect,
            mdns=self.mdns,
            api_fd=fds[0] if fds else None,
            raft_fd=fds[1] if fds else None,
            args=[*self.args, *(["--api-tls"] if self.tls else []), *extra],
        )

    def start(
        self,
        env: dict[str, str] | None = None,
        extra: Iterable[str] = (),
        preexec_fn: Callable[[], None] | None = None,
    ) -> subprocess.Popen[bytes]:
        if self.alive():
            raise RuntimeError(f"{self.node_id} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        socks = self._socks or [listening_socket(LOOPBACK, self.api_port), listening_socket(LOOPBACK, self.raft_port)]
        self._socks = None
        try:
            fds = (socks[0].fileno(), socks[1].fileno())
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(
                    self.command(extra, fds),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    pass_fds=fds,
                    preexec_fn=preexec_fn,
                )
        finally:
            for sock in socks:
                sock.close()  # the child has its own copies now
        return self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL (a stopped process is continued first, so it dies now)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(timeout=timeout)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the exit status."""
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout=timeout)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        """Release the ports if no process was ever given them."""
        for sock in self._socks or []:
            sock.close()
        self._socks = None


@dataclass
class ProcessCluster:
    """Serve processes of one test or run; `stop_everything` kills each
    process it ever started, by PID, whatever happened."""

    root: Path
    nodes: dict[str, ServeProcess] = field(default_factory=dict)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Loopback certificates: one CA for the cluster, a certificate per node
    # added (the files of `hana-node init`/`join`, mesh/transport/tls.py).
    tls: bool = False
    _ca: object = field(default=None, repr=False)

    def add(self, node_id: str, **options: object) -> ServeProcess:
        if self.tls:
            options.setdefault("tls", True)
        node = ServeProcess(node_id, self.root / node_id, self.root / f"{node_id}.log", **options)  # type: ignore[arg-type]
        if node.tls:
            from mesh.transport.tls import DevCa

            cluster = node.cluster or "hana"
            if self._ca is None:
                self._ca = DevCa.make(cluster)
            assert isinstance(self._ca, DevCa)
            if not (node.data_dir / "tls" / "node.pem").exists():
                self._ca.write_node(node.data_dir, cluster, node_id)
        self.nodes[node_id] = node
        return node

    def static_peers(self) -> dict[str, str]:
        """Every node's raft address: the `--peers` of a static cluster."""
        return {nid: n.raft for nid, n in self.nodes.items()}

    def start(
        self,
        node_id: str,
        env: dict[str, str] | None = None,
        extra: Iterable[str] = (),
        preexec_fn: Callable[[], None] | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = self.nodes[node_id].start(env, extra, preexec_fn)
        self.started.append(proc)
        return proc

    def stop_everything(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
        for proc in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for node in self.nodes.values():
            node.close()

    def logs(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {nid} ---\n{n.log_tail(chars)}" for nid, n in self.nodes.items() if n.log_path.exists())


@contextlib.contextmanager
def process_cluster(root: Path) -> Iterator[ProcessCluster]:
    """A ProcessCluster whose every process is killed on the way out."""
    c = ProcessCluster(root)
    try:
        yield c
    finally:
        c.stop_everything()


def inherited_listener(fd: int, what: str, host: str, port: int) -> socket.socket:
    """The listening socket handed over as descriptor `fd` (serve
    --api-fd/--raft-fd); ValueError if it is not one bound to host:port."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"{what} {fd}: not an open socket ({exc.strerror or exc})") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        bound = sock.getsockname()
    except OSError as exc:
        sock.detach()
        raise ValueError(f"{what} {fd}: not a socket ({exc.strerror or exc})") from None
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise ValueError(f"{what} {fd}: not a listening TCP socket")
    if port and bound[1] != port:
        sock.detach()
        raise ValueError(f"{what} {fd}: bound to port {bound[1]}, not {port}")
    sock.setblocking(False)
    return sock
