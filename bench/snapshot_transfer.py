"""A large state to a new learner: how long, and how much memory.

    python bench/snapshot_transfer.py [--mb 500] [--value-kb 512] [--clients 8]

Starts 3 `hana-node serve` processes (--peers, --durability unsafe_no_fsync,
mDNS on 127.0.0.1 with a cluster name of its own), fills about --mb MB of
values through the API, writes small entries until the controller takes a
snapshot covering them (--keep-entries 0: the log behind it is gone), then
starts a 4th node with an empty data directory. The autopilot adds it as a
learner (it is discovered over mDNS); the controller has to stream the
snapshot. Prints, never asserts:
- the snapshot's size, the time from the learner's start and from its
  addition until it has applied the snapshot's index, and the stream's
  throughput (the controller's event=snapshot_sent line);
- peak RSS (VmHWM) of the controller during the transfer (its high-water
  mark is reset through /proc/<pid>/clear_refs just before the learner
  starts, where the kernel allows it) and of the learner, and RSS before.
Every process started is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

# The repository's own package first (this directory holds a mesh.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.launcher import ServeProcess

SECRET = "bench-snapshot-secret-0123456789"


def proc_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.0f} MB"


class Node(ServeProcess):
    """A bench node (mesh.launcher), fsync off, with the bench's URL."""

    @property
    def url(self) -> str:
        return f"http://{self.api}"

    def launch(self, cluster: str, peers: dict[str, str] | None, extra: list[str]) -> None:
        # mDNS on for all: the controller's autopilot adds the learner it finds.
        self.cluster, self.peers, self.mdns = cluster, peers, True
        self.args = ["--durability", "unsafe_no_fsync", *extra]
        self.start(dict(os.environ, HANA_SECRET=SECRET, HANA_MDNS_INTERFACES="127.0.0.1"))

    def stop(self) -> None:
        self.kill()


async def status(session: aiohttp.ClientSession, node: Node) -> dict[str, Any] | None:
    try:
        async with session.get(node.url + "/v1/status", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return await r.json() if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


async def poll(what: str, check: Any, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


async def put(session: aiohttp.ClientSession, node: Node, key: str, body: bytes) -> None:
    for _ in range(50):
        async with session.put(f"{node.url}/v1/kv/{key}", data=body, headers={"Content-Type": "application/json"}) as r:
            if r.status == 200:
                return
            text = await r.text()
            if r.status not in (503, 504):
                raise RuntimeError(f"PUT {key}: {r.status} {text[:200]}")
            # 503/504: a leader change (taking a large snapshot stalls the
            # controller's loop); writing the same value again is harmless.
        await asyncio.sleep(0.1)
    raise RuntimeError(f"PUT {key} never succeeded")


def log_match(node: Node, pattern: str) -> re.Match[str] | None:
    text = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
    matches = list(re.finditer(pattern, text))
    return matches[-1] if matches else None


async def run(args: argparse.Namespace, root: Path) -> None:
    nodes = [Node(f"n{i + 1}", root / f"n{i + 1}", root / f"n{i + 1}.log") for i in range(4)]
    cluster = f"bench-snap-{secrets.token_hex(3)}"
    peers = {n.node_id: n.raft for n in nodes[:3]}
    value_bytes = args.value_kb * 1024
    count = max(1, args.mb * 1024 * 1024 // value_bytes)
    snapshot_every = count + 20
    common = [
        "--snapshot-every", str(snapshot_every),
        "--keep-entries", "0",
        "--history-limit", "16",
        "--autopilot-stabilize", "3600",
    ]  # fmt: skip
    try:
        for n in nodes[:3]:
            n.launch(cluster, peers, common)
        async with aiohttp.ClientSession() as session:

            async def leader() -> Node | None:
                for n in nodes[:3]:
                    st = await status(session, n)
                    if st and st.get("leader") == n.node_id:
                        return n
                return None

            lead: Node = await poll("a controller", leader, 60)
            total = count * value_bytes >> 20
            print(f"controller {lead.node_id}; filling {count} values of {args.value_kb} KiB ({total} MB)")
            body = b'{"value":"' + b"v" * (value_bytes - 16) + b'"}'
            started = time.monotonic()
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(count):
                queue.put_nowait(i)

            async def writer() -> None:
                while True:
                    try:
                        i = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    await put(session, lead, f"parameters/big/{i}", body)

            await asyncio.gather(*(writer() for _ in range(args.clients)))
            fill = time.monotonic() - started
            print(f"filled in {fill:.1f} s ({count * value_bytes / fill / 1e6:.1f} MB/s through the API)")
            i = 0
            while log_match(lead, r"event=snapshot_taken term=\d+ index=(\d+) bytes=(\d+)") is None:
                await put(session, lead, f"parameters/tick/{i}", b'{"value":1}')
                i += 1
                if i > snapshot_every + 100:
                    raise RuntimeError("the controller took no snapshot")
                if i % 10 == 0:
                    await asyncio.sleep(0.05)
            snap = await poll(
                "the snapshot",
                lambda: asyncio.sleep(0, log_match(lead, r"event=snapshot_taken term=\d+ index=(\d+) bytes=(\d+)")),
                10,
            )
            snap_index, snap_bytes = int(snap.group(1)), int(snap.group(2))
            print(f"snapshot at index {snap_index}: {snap_bytes / 1e6:.1f} MB")
            lead = await poll("a controller", leader, 60)  # it may have moved while filling
            assert lead.proc is not None
            lead_rss_before = proc_kb(lead.proc.pid, "VmRSS")
            lead_hwm_before = proc_kb(lead.proc.pid, "VmHWM")
            cleared = reset_hwm(lead.proc.pid)

            learner = nodes[3]
            learner_started = time.monotonic()
            learner.launch(cluster, None, common)

            async def added() -> bool:
                st = await status(session, lead)
                return bool(st) and any(m["id"] == learner.node_id for m in st["members"])

            await poll("the learner to be added", added, 120)
            added_at = time.monotonic()

            async def applied() -> bool:
                st = await status(session, learner)
                return bool(st) and st.get("applied_index", 0) >= snap_index

            await poll("the learner to apply the snapshot", applied, args.timeout, interval=0.1)
            done = time.monotonic()
            assert learner.proc is not None
            lead_hwm = proc_kb(lead.proc.pid, "VmHWM")
            learner_hwm = proc_kb(learner.proc.pid, "VmHWM")
            pattern = rf"peer={learner.node_id} event=snapshot_sent index=\d+ bytes=(\d+) seconds=([\d.]+)"
            sent = next((m for n in nodes[:3] if (m := log_match(n, pattern))), None)
            final = await leader()
            if final is not lead:
                print(f"(the controller moved to {final.node_id if final else 'none'} during the transfer)")
            print()
            print(f"snapshot bytes                 {snap_bytes / 1e6:.1f} MB")
            print(f"learner start -> applied       {done - learner_started:.1f} s")
            print(f"learner added -> applied       {done - added_at:.1f} s")
            if sent:
                secs = float(sent.group(2))
                rate = int(sent.group(1)) / max(secs, 1e-9) / 1e6
                print(f"stream (controller's count)    {secs:.1f} s, {rate:.0f} MB/s")
            print(f"controller RSS before          {mb(lead_rss_before)} (peak while filling {mb(lead_hwm_before)})")
            label = "controller peak RSS, transfer" if cleared else "controller peak RSS (whole run)"
            print(f"{label:<31}{mb(lead_hwm)}")
            print(f"learner peak RSS               {mb(learner_hwm)}")
    finally:
        for n in nodes:
            n.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=500, help="state size to fill, MB (default 500)")
    p.add_argument("--value-kb", type=int, default=512, help="size of each value, KiB (default 512)")
    p.add_argument("--clients", type=int, default=8, help="concurrent writers while filling")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the learner")
    p.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hana-bench-snap-"))
    try:
        asyncio.run(run(args, root))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(root)


if __name__ == "__main__":
    main()
