"""`hana-node demo`: a local mesh on loopback in one command, to look at
and to break.

Starts N `serve` processes (mesh.launcher: OS-chosen ports, handed over as
inherited sockets) with no peer list: they find each other with mDNS bound
to 127.0.0.1 (never the machine's network cards) and form one cluster with
`--expect N`, under a cluster name unique to the data directory
(`demo-<hex>`) so that two demos on one machine never merge. It waits until
they agree on a controller, then prints a banner: each node's API, the
status page (opened in a browser if there is one), where the data is, and
commands that work when pasted (the absolute path of this environment's
`hana-node`, which need not be on PATH).

Then it supervises: a node that exits is reported (with what that means for
the majority) and the others keep running, so a newcomer can rehearse a
failure. Lines typed on stdin drive it: `r NODE` restarts a node through
the launcher (same ports, same data: it catches up from the others, and
the demo says when it has), `k NODE` kills one, `s` prints the status, `q`
quits. Ctrl-C (or SIGTERM, or a closed terminal) stops every process it
started, by PID.

Data lives in a temporary directory deleted at exit, unless `--keep` (kept
in `--data-dir`, default `$XDG_DATA_HOME/hana/demo`) or `--data-dir`: the
next run with the same directory resumes the same mesh, on the same ports
when they are free.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import select
import shlex
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path
from typing import Any

from mesh.launcher import ProcessCluster, ServeProcess
from mesh.node.flags import CliError

GRACE_SECONDS = 5.0
POLL_SECONDS = 0.3
PORTS_FILE = "ports.json"


def demo_cluster_name(data_dir: Path) -> str:
    """A cluster name unique to this demo; kept in the data directory so that
    a demo restarted with the same --data-dir finds its own nodes again."""
    path = data_dir / "cluster-name"
    try:
        name = path.read_text().strip()
        if name:
            return name
    except OSError:
        pass
    name = f"demo-{secrets.token_hex(4)}"
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(name + "\n")
    return name


def default_keep_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hana" / "demo"


def hana_node_command() -> str:
    """`hana-node` as a command that works when pasted anywhere: this
    environment's script by absolute path (a venv's bin is rarely on PATH),
    else this interpreter running the module."""
    python = os.path.abspath(sys.executable)
    script = Path(python).parent / "hana-node"
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    return f"{shlex.quote(python)} -m mesh.cli"


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def wait_for_leader(apis: list[str], timeout: float, ca: Path | None = None) -> str:
    from mesh.client import ApiError, MeshClient, Unreachable

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = set()
        for api in apis:
            try:
                async with MeshClient(api, timeout=1.0, ca=ca) as c:
                    leaders.add((await c.status()).get("leader"))
            except (Unreachable, ApiError):
                leaders.add(None)
        if len(leaders) == 1 and None not in leaders:
            return str(leaders.pop())
        await asyncio.sleep(0.1)
    raise CliError(f"the demo mesh did not elect a controller within {timeout:.0f}s")


def node_status(node: ServeProcess, timeout: float = 1.0) -> dict[str, Any] | None:
    """GET /v1/status of a demo node (loopback, no token needed), or None."""
    context = ssl.create_default_context(cafile=str(node.ca)) if node.ca is not None else None
    try:
        with urllib.request.urlopen(f"{node.url}/v1/status", timeout=timeout, context=context) as resp:
            doc = json.loads(resp.read(1 << 20))
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return doc if isinstance(doc, dict) else None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def open_page(url: str, enabled: bool) -> str:
    """Open the status page in a browser if one is there, without waiting
    for it, and never in a terminal browser (lynx, w3m: it would take this
    terminal over). Says what happened, in a few words for the banner."""
    if not enabled:
        return "not opened: --no-browser or HANA_NO_BROWSER"
    graphical = sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if not graphical:
        return "no graphical session here: open it in a browser"
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return "no browser found: open it by hand"
    if isinstance(browser, webbrowser.GenericBrowser) and not isinstance(browser, webbrowser.BackgroundBrowser):
        return f"the browser here ({browser.name}) runs in a terminal: open it by hand"

    def run() -> None:
        try:
            if not browser.open(url, new=2):
                print(f"demo: the browser did not open {url}; open it by hand", file=sys.stderr, flush=True)
        except (webbrowser.Error, OSError) as exc:
            print(f"demo: could not open a browser ({exc}); open {url} by hand", file=sys.stderr, flush=True)

    threading.Thread(target=run, name="open-browser", daemon=True).start()
    return "opening it in your browser"


class _Stop(Exception):
    """A signal asked the demo to stop."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        if args.nodes is not None and not 1 <= args.nodes <= 9:
            raise CliError("--nodes must be between 1 and 9")
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        if args.data_dir:
            self.data_dir = Path(args.data_dir).absolute()
        elif args.keep:
            self.data_dir = default_keep_dir()
        else:
            self.tmp = tempfile.TemporaryDirectory(prefix="hana-demo-")
            self.data_dir = Path(self.tmp.name)
        self.keep = self.tmp is None
        self.resumed = (self.data_dir / "cluster-name").exists()
        self.old_ports = self._old_ports() if self.resumed else {}
        # A kept mesh restarts with as many nodes as it had, unless told.
        self.n = args.nodes if args.nodes is not None else min(9, len(self.old_ports) or 3)
        if self.old_ports and self.n < len(self.old_ports):
            print(
                f"demo: the kept mesh in {self.data_dir} has {len(self.old_ports)} nodes; starting {self.n} "
                f"(the others stay down; without a majority of its voters the mesh elects no controller)",
                file=sys.stderr,
                flush=True,
            )
        self.cluster = demo_cluster_name(self.data_dir)
        # --tls: certificates for every node (mutual TLS between peers, HTTPS API).
        self.tls = bool(getattr(args, "tls", False))
        self.mesh = ProcessCluster(self.data_dir, tls=self.tls)
        self.no_browser = bool(args.no_browser)
        # mDNS on loopback only, whatever the caller's environment says.
        self.env = dict(os.environ, HANA_MDNS_INTERFACES="127.0.0.1")
        self.hana = hana_node_command()
        self.reported: set[str] = set()  # nodes whose exit was reported
        self.catching_up: dict[str, float] = {}  # restarted node -> when
        self.stdin_open = True
        self._typed = b""

    # -- starting ---------------------------------------------------------------

    def _old_ports(self) -> dict[str, tuple[int, int]]:
        """The (api, raft) ports of each node of the last run with this data."""
        path = self.data_dir / PORTS_FILE
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            print(f"demo: ignoring {path} ({exc}): the nodes get new ports", file=sys.stderr, flush=True)
            return {}
        out: dict[str, tuple[int, int]] = {}
        for nid, ports in doc.items() if isinstance(doc, dict) else ():
            if isinstance(ports, list) and len(ports) == 2 and all(isinstance(p, int) and 0 < p < 65536 for p in ports):
                out[str(nid)] = (ports[0], ports[1])
        return out

    def _add(self, nid: str) -> ServeProcess:
        return self.mesh.add(nid, cluster=self.cluster, expect=self.n, mdns=True)

    def _start_nodes(self) -> None:
        """Node i of N, on the ports of the last run with this data when
        they are free (so its addresses, and commands printed then, still
        hold), else on the fresh ports the launcher chose."""
        for i in range(1, self.n + 1):
            nid = f"node{i}"
            node = self._add(nid)
            ports = self.old_ports.get(nid)
            if ports is not None:
                node.close()  # the launcher binds the old ports again at start, as for a restart
                node.api_port, node.raft_port = ports
                try:
                    self.mesh.start(nid, self.env)
                    continue
                except OSError as exc:
                    self.say(f"{nid}: the ports of the last run are taken ({exc}); it gets new ones")
                    node = self._add(nid)
            self.mesh.start(nid, self.env)
        (self.data_dir / PORTS_FILE).write_text(
            json.dumps({nid: [n.api_port, n.raft_port] for nid, n in self.mesh.nodes.items()}) + "\n"
        )

    def start(self) -> str:
        self._start_nodes()
        nodes = list(self.mesh.nodes.values())
        return asyncio.run(wait_for_leader([n.url for n in nodes], timeout=30.0, ca=nodes[0].ca))

    # -- the banner -------------------------------------------------------------

    def banner(self, leader: str) -> str:
        nodes = list(self.mesh.nodes.values())
        first, last = nodes[0].api, nodes[-1].api
        h = self.hana
        page = f"{nodes[0].url}/"
        how = open_page(page, not self.no_browser)
        if self.keep:
            data = f"Data: {self.data_dir} (kept: `{h} demo --keep"
            data += "`" if self.data_dir == default_keep_dir() else f" --data-dir {shlex.quote(str(self.data_dir))}`"
            data += " resumes this mesh next time; delete the directory to start afresh)"
        else:
            data = f"Data: {self.data_dir} (temporary: deleted when the demo stops; --keep keeps it for the next run)"
        lines = [
            "",
            f"hana mesh demo: {self.n} nodes on loopback "
            f"{'resumed from kept data' if self.resumed else 'found each other'} "
            f"(mDNS on 127.0.0.1, cluster {self.cluster}), controller {leader}",
        ]
        for n in nodes:
            pid = n.proc.pid if n.proc else "-"
            lines.append(f"  {n.node_id}  api {n.url}  pid {pid}  log {n.log_path}")
        if self.tls:
            lines += [
                "",
                f"TLS: peer links are mutual TLS 1.3 and the API is HTTPS, under a CA made for this demo "
                f"({nodes[0].ca}); the CLI below finds it on this machine (or give --ca FILE). A browser does "
                "not know that CA: it warns before the status page.",
            ]
        lines += [
            "",
            f"Status page: {page} (every node serves one; {how})",
            data,
            "",
            "Try, in another terminal (these work when pasted):",
            f"  {h} status --api {first}",
            f"  {h} put displays/left-wall '{{\"brightness\": 0.8}}' --api {last}",
            f"  {h} get displays/left-wall --api {first}",
            f"  {h} watch --prefix displays/ --api {first}",
            f"  {h} history --api {first}",
            f"  {h} members list --api {first}",
            "",
            f"Rehearse a failure: kill -9 <pid> of a node (or type `k {nodes[-1].node_id}` + Enter here);",
            f"the others keep running. Type `r {nodes[-1].node_id}` + Enter to restart it: it catches up.",
            "Keys (then Enter): r NODE restart, k NODE kill, s status, h help, q quit.",
            "Ctrl-C stops the mesh.",
        ]
        return "\n".join(lines)

    # -- supervising ------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"demo: {text}", flush=True)

    def _voters_alive(self) -> tuple[int, int] | None:
        """(voters running, voters) as a running node's status says."""
        for n in self.mesh.nodes.values():
            if not n.alive():
                continue
            doc = node_status(n)
            if doc is None:
                continue
            voters = [m.get("id") for m in doc.get("members") or [] if m.get("voter")]
            alive = sum(1 for v in voters if v in self.mesh.nodes and self.mesh.nodes[v].alive())
            return alive, len(voters)
        return None

    def check_exits(self) -> None:
        for nid, n in self.mesh.nodes.items():
            if n.proc is None or n.proc.poll() is None or nid in self.reported:
                continue
            self.reported.add(nid)
            self.catching_up.pop(nid, None)
            running = [m for m, p in self.mesh.nodes.items() if p.alive()]
            counts = self._voters_alive()
            if counts is None:
                quorum = "no node is running: the mesh is down"
            elif counts[0] * 2 > counts[1]:
                quorum = f"{counts[0]} of {counts[1]} voters still run, a majority: the mesh keeps accepting writes"
            else:
                quorum = (
                    f"only {counts[0]} of {counts[1]} voters run, no majority: writes wait "
                    "(reads with consistency=local still answer)"
                )
            self.say(
                f"{nid} exited ({describe_exit(n.proc.returncode)}; log {n.log_path}). "
                f"Still running: {', '.join(running) or 'none'}; {quorum}. "
                f"Type `r {nid}` + Enter to restart it."
            )

    def check_catch_up(self) -> None:
        for nid in list(self.catching_up):
            n = self.mesh.nodes[nid]
            doc = node_status(n)
            if doc is None or not doc.get("leader"):
                continue
            leader = self.mesh.nodes.get(str(doc["leader"]))
            lead_doc = node_status(leader) if leader is not None and leader.alive() else None
            if lead_doc is None:
                continue
            if int(doc.get("applied_index") or 0) >= int(lead_doc.get("commit_index") or 0):
                took = time.monotonic() - self.catching_up.pop(nid)
                self.say(
                    f"{nid} is back: {doc.get('role')}, caught up with the controller {doc['leader']} "
                    f"at revision {doc.get('revision')} ({took:.1f} s after its restart)"
                )

    def restart(self, nid: str) -> None:
        n = self.mesh.nodes[nid]
        if n.alive():
            self.say(f"{nid} is running (pid {n.proc.pid if n.proc else '-'}); `k {nid}` kills it")
            return
        try:
            proc = self.mesh.start(nid, self.env)
        except OSError as exc:
            self.say(f"cannot restart {nid}: {exc} (is another program on its port {n.api}?)")
            return
        self.reported.discard(nid)
        self.catching_up[nid] = time.monotonic()
        self.say(f"{nid} restarted (pid {proc.pid}) with its data: it catches up from the others")

    def kill(self, nid: str) -> None:
        n = self.mesh.nodes[nid]
        if not n.alive():
            self.say(f"{nid} is not running; `r {nid}` restarts it")
            return
        n.kill()
        self.check_exits()

    def status(self) -> None:
        alive = [n for n in self.mesh.nodes.values() if n.alive()]
        if not alive:
            self.say("no node is running")
            return
        cmd = [*shlex.split(self.hana), "status", "--api", alive[0].api]
        self.say(" ".join(shlex.quote(c) for c in cmd))
        try:
            subprocess.run(cmd, env=self.env, check=False, timeout=30)
        except subprocess.TimeoutExpired:
            self.say("status did not answer within 30 s")

    def help(self) -> None:
        ids = ", ".join(self.mesh.nodes)
        self.say(f"r NODE restart, k NODE kill, s status, q quit (then Enter); nodes: {ids}")

    def command(self, line: str) -> bool:
        """One typed line; False to quit."""
        words = line.split()
        if not words:
            return True
        verb, rest = words[0].lower(), words[1:]
        if verb in ("q", "quit", "exit"):
            return False
        if verb in ("h", "help", "?"):
            self.help()
            return True
        if verb in ("s", "status"):
            self.status()
            return True
        if verb in ("r", "restart", "k", "kill"):
            if len(rest) != 1:
                self.say(f"which node? e.g. `{verb} {next(iter(self.mesh.nodes))}`")
                return True
            nid = f"node{rest[0]}" if rest[0].isdigit() else rest[0]
            if nid not in self.mesh.nodes:
                self.say(f"no node {rest[0]!r}; nodes: {', '.join(self.mesh.nodes)}")
                return True
            (self.restart if verb in ("r", "restart") else self.kill)(nid)
            return True
        self.say(f"unknown command {line.strip()!r}; h for help")
        return True

    def _stdin_line(self) -> str | None:
        """A line typed on stdin within POLL_SECONDS, if any. Reads the raw
        descriptor (select and a buffered reader disagree about what is
        left to read) and never reads a terminal while in the background
        (that would stop the demo)."""
        if b"\n" in self._typed:
            line, _, self._typed = self._typed.partition(b"\n")
            return line.decode(errors="replace")
        if not self.stdin_open:
            time.sleep(POLL_SECONDS)
            return None
        try:
            fd = sys.stdin.fileno()
            if os.isatty(fd) and os.tcgetpgrp(fd) != os.getpgrp():
                time.sleep(POLL_SECONDS)
                return None
            ready, _, _ = select.select([fd], [], [], POLL_SECONDS)
            chunk = os.read(fd, 4096) if ready else None
        except (OSError, ValueError, AttributeError) as exc:  # AttributeError: no sys.stdin at all
            self.stdin_open = False
            self.say(f"stopped reading typed commands ({exc}); Ctrl-C still stops the mesh")
            return None
        if chunk is None:
            return None
        if not chunk:
            self.stdin_open = False  # EOF: go on without typed commands
            chunk = b"\n" if self._typed else b""
        self._typed += chunk
        if len(self._typed) > 4096 and b"\n" not in self._typed:
            self._typed = b""  # not a command anyone typed
        return None

    def supervise(self) -> None:
        while True:
            self.check_exits()
            self.check_catch_up()
            line = self._stdin_line()
            if line is not None and not self.command(line):
                return

    def stop(self) -> None:
        stop_processes([n.proc for n in self.mesh.nodes.values() if n.proc is not None])
        self.mesh.stop_everything()
        if self.tmp is not None:
            self.tmp.cleanup()
            print(f"deleted the demo data in {self.data_dir} (--keep keeps it)", flush=True)
        else:
            print(f"demo data kept in {self.data_dir}", flush=True)


def demo(args: argparse.Namespace) -> int:
    # Ctrl-C, kill and a closed terminal all stop every node we start. SIGINT
    # is set explicitly: a shell starts background jobs with it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    d: Demo | None = None
    try:
        d = Demo(args)
        leader = d.start()
        print(d.banner(leader), flush=True)
        d.supervise()
        print("\nstopping the demo mesh…", flush=True)
        return 0
    except (KeyboardInterrupt, _Stop):
        print("\nstopping the demo mesh…", flush=True)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if d is not None:
            # Every node is stopped first; only the closing words can fail
            # (a terminal that went away), and then nobody reads them.
            with contextlib.suppress(BrokenPipeError):
                d.stop()
