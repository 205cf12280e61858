"""The OSC bridge under a desk's load: 64 faders at 120 Hz, one bundle each frame.

    python bench/osc.py [--seconds 5] [--faders 64] [--hz 120]

Starts a 3-node mesh (`hana-node serve`, real processes on loopback, fsync
on): n1 with --osc-listen, n2 with --osc-send to a python-osc server in this
process. Sends one bundle of all faders per frame to n1 (each value a frame
counter, so the receiver knows when it was sent) and prints:
- OSC in -> live: delivery latency p50/p99 of the faders' values at a
  `GET /v1/live` subscriber on n3 (another node than the one OSC enters);
- OSC in -> OSC out: latency p50/p99 from the bundle leaving this process to
  n2's --osc-send reaching the python-osc server (across the mesh);
- values/s delivered at each, the bridge's packet counts (/v1/osc), and CPU
  per node (utime+stime over the run, from /proc).
Every process started is stopped by PID at the end. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_server import AsyncIOOSCUDPServer

from mesh.launcher import ProcessCluster

SECRET = "bench-osc-secret-0123456789abcdef"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def wait_ok(session: aiohttp.ClientSession, url: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return await r.json()
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no answer from {url}")
        await asyncio.sleep(0.1)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--faders", type=int, default=64)
    ap.add_argument("--hz", type=float, default=120.0)
    opts = ap.parse_args()
    loop = asyncio.get_running_loop()
    sent_at: dict[int, float] = {}
    out_latency: list[float] = []
    out_values = 0

    def on_osc(address: str, *args: Any) -> None:
        nonlocal out_values
        out_values += 1
        t = sent_at.get(round(args[0])) if args else None
        if t is not None and address == "/desk/f0":
            out_latency.append(time.perf_counter() - t)

    d = Dispatcher()
    d.set_default_handler(on_osc)
    rx, _ = await AsyncIOOSCUDPServer(("127.0.0.1", 0), d, loop).create_serve_endpoint()
    rx_port = rx.get_extra_info("sockname")[1]
    env = dict(os.environ, HANA_SECRET=SECRET)
    with tempfile.TemporaryDirectory() as tmp:
        c = ProcessCluster(Path(tmp))
        try:
            for nid in ("n1", "n2", "n3"):
                c.add(nid)
            peers = c.static_peers()
            for node in c.nodes.values():
                node.peers = peers
            c.start("n1", env, ["--osc-listen", "127.0.0.1:0"])
            c.start("n2", env, ["--osc-send", f"127.0.0.1:{rx_port}"])
            c.start("n3", env)
            async with aiohttp.ClientSession() as s:
                n1, n3 = (f"http://{c.nodes[n].api}" for n in ("n1", "n3"))
                for node in c.nodes.values():
                    await wait_ok(s, f"http://{node.api}/v1/status")
                while (await wait_ok(s, f"{n1}/v1/status")).get("leader") is None:
                    await asyncio.sleep(0.1)
                for i in range(opts.faders):
                    doc = {"kind": "osc", "address": f"/desk/f{i}", "target": f"parameters/desk/f{i}"}
                    async with s.put(f"{n1}/v1/kv/input_mappings/f{i}", json={"value": doc}) as r:
                        assert r.status == 200, await r.text()
                osc = await wait_ok(s, f"{n1}/v1/osc")
                while len(osc["mappings"]) < opts.faders:
                    await asyncio.sleep(0.1)
                    osc = await wait_ok(s, f"{n1}/v1/osc")
                host, port = osc["listen"].rsplit(":", 1)
                udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, int(port)))
                live_latency: list[float] = []
                live_values = 0
                ws = await s.ws_connect(f"{n3}/v1/live?prefix=parameters/desk/")

                async def watch() -> None:
                    nonlocal live_values
                    async for msg in ws:
                        doc = orjson.loads(msg.data)
                        if doc.get("type") != "live":
                            continue
                        live_values += len(doc["values"])
                        v = doc["values"].get("parameters/desk/f0")
                        t = sent_at.get(round(v)) if isinstance(v, (int, float)) else None
                        if t is not None:
                            live_latency.append(time.perf_counter() - t)

                watcher = asyncio.ensure_future(watch())
                pids = {nid: n.proc.pid for nid, n in c.nodes.items() if n.proc is not None}
                cpu0 = {nid: cpu_seconds(pid) for nid, pid in pids.items()}
                period = 1.0 / opts.hz
                frames = int(opts.seconds * opts.hz)
                start = time.perf_counter()
                for frame in range(1, frames + 1):
                    b = OscBundleBuilder(IMMEDIATELY)
                    for i in range(opts.faders):
                        m = OscMessageBuilder(f"/desk/f{i}")
                        m.add_arg(float(frame), "f")
                        b.add_content(m.build())
                    sent_at[frame] = time.perf_counter()
                    udp.sendto(b.build().dgram)
                    delay = start + frame * period - time.perf_counter()
                    await asyncio.sleep(max(0.0, delay))
                elapsed = time.perf_counter() - start
                await asyncio.sleep(1.0)  # the last values arrive; the gesture settles
                cpu1 = {nid: cpu_seconds(pid) for nid, pid in pids.items()}
                watcher.cancel()
                await ws.close()
                udp.close()
                osc = await wait_ok(s, f"{n1}/v1/osc")
        finally:
            c.stop_everything()
            rx.close()
    ms = 1000.0
    print(f"# bench/osc.py  {platform.node()}  python {platform.python_version()}  {os.cpu_count()} cpus")
    print(f"{opts.faders} faders x {opts.hz:g} Hz, one bundle per frame, {frames} frames in {elapsed:.2f} s")
    print(f"{'path':<28}{'p50 ms':>9}{'p99 ms':>9}{'values/s':>11}{'samples':>9}")
    for name, lat, values in (
        ("OSC in -> live (n1 -> n3)", live_latency, live_values),
        ("OSC in -> OSC out (n1 -> n2)", out_latency, out_values),
    ):
        print(f"{name:<28}{pct(lat, 0.5) * ms:>9.2f}{pct(lat, 0.99) * ms:>9.2f}{values / elapsed:>11.0f}{len(lat):>9}")
    print("packets at n1:", " ".join(f"{k}={v}" for k, v in osc["packets"].items()))
    print("cpu % per node:", " ".join(f"{nid}={100 * (cpu1[nid] - cpu0[nid]) / elapsed:.0f}" for nid in sorted(cpu1)))
    if live_latency:
        print(f"(mean live latency {statistics.mean(live_latency) * ms:.2f} ms)")


if __name__ == "__main__":
    asyncio.run(main())
