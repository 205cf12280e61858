"""`hana-node demo`: a local mesh on loopback in one command.

Starts N `serve` processes (OS-chosen free ports, data in a temporary
directory unless --data-dir) with no peer list: they find each other with
mDNS bound to 127.0.0.1 (never the machine's network cards) and form one
cluster with `--expect N`, under a cluster name unique to this run
(`demo-<hex>`) so that two demos on one machine never merge. It waits
until they agree on a controller, prints
where each API is and how to look at the mesh, and on Ctrl-C stops every
process it started (SIGTERM, then SIGKILL after a grace period), by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mesh.launcher import ProcessCluster
from mesh.node.flags import CliError

GRACE_SECONDS = 5.0


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


async def wait_for_leader(apis: list[str], timeout: float) -> str:
    from mesh.client import ApiError, MeshClient, Unreachable

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = set()
        for api in apis:
            try:
                async with MeshClient(api, timeout=1.0) as c:
                    leaders.add((await c.status()).get("leader"))
            except (Unreachable, ApiError):
                leaders.add(None)
        if len(leaders) == 1 and None not in leaders:
            return str(leaders.pop())
        await asyncio.sleep(0.1)
    raise CliError(f"the demo mesh did not elect a controller within {timeout:.0f}s")


class _Stop(Exception):
    """A signal asked the demo to stop."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def demo(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 9:
        raise CliError("--nodes must be between 1 and 9")
    # Ctrl-C, kill and a closed terminal all stop every node we start. SIGINT
    # is set explicitly: a shell starts background jobs with it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    tmp = None
    if args.data_dir:
        data_dir = Path(args.data_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="hana-demo-")
        data_dir = Path(tmp.name)
    cluster = demo_cluster_name(data_dir)
    mesh = ProcessCluster(data_dir)
    for i in range(1, args.nodes + 1):
        mesh.add(f"node{i}", cluster=cluster, expect=args.nodes, mdns=True)
    ids = list(mesh.nodes)
    # mDNS on loopback only, whatever the caller's environment says.
    env = dict(os.environ, HANA_MDNS_INTERFACES="127.0.0.1")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for nid in ids:
            procs.append(mesh.start(nid, env))
        apis = [n.api for n in mesh.nodes.values()]
        leader = asyncio.run(wait_for_leader(apis, timeout=30.0))
        print(
            f"\nhana mesh demo: {args.nodes} nodes on loopback found each other (mDNS on 127.0.0.1, "
            f"cluster {cluster}), controller {leader}, data and logs in {data_dir}"
        )
        for nid, api, proc in zip(ids, apis, procs, strict=True):
            print(f"  {nid}  api http://{api}  pid {proc.pid}  log {mesh.nodes[nid].log_path}")
        print("\nTry, in another terminal:")
        print(f"  hana-node status --api {apis[0]}")
        print(f"  hana-node put displays/left-wall '{{\"brightness\": 0.8}}' --api {apis[-1]}")
        print(f"  hana-node get displays/left-wall --api {apis[0]}")
        print(f"  hana-node watch --prefix displays/ --api {apis[0]}")
        print(f"  hana-node members list --api {apis[0]}")
        print("\nCtrl-C stops the mesh.", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        dead = [nid for nid, p in zip(ids, procs, strict=True) if p.poll() is not None]
        print(f"node(s) {', '.join(dead)} exited; stopping the demo", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stop):
        print("\nstopping the demo mesh…", flush=True)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        stop_processes(procs)
        mesh.stop_everything()
        if tmp is not None:
            tmp.cleanup()
