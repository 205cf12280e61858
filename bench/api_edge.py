"""What hostile request bodies cost the API, measured (issue 12 findings 4
and 6).

    python bench/api_edge.py [--bombs 5] [--big-mib 32]

A server process (this script with --serve: a single node's HTTP app over an
in-memory state, tokens required, on 127.0.0.1, served as `hana-node serve`
serves it: with `mesh.api.server.run_api` where the checkout has it, else
aiohttp's defaults, so the same script measures older checkouts). Prints:
- a large body: one PUT of --big-mib MiB without a token and one with an
  operator token: each answer's status and the growth of the server's peak
  RSS (VmHWM);
- compressed bodies: --bombs gzip bodies of about 255 KB (each inflates to
  255 MiB) sent without a token: the statuses, and the worst event-loop
  stall a 10 ms ticker in the server saw while they were handled.
Nothing is asserted; run it from the checkout to measure. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.api.app import create_app
from mesh.api.auth import TokenAuth
from mesh.state.model import HanaState

TOKEN = "bench-operator-token-0123456789"


class Node:
    node_id = "bench"
    cluster = "hana"

    def __init__(self) -> None:
        self.kv = HanaState()
        self._index = itertools.count(1)

    def status(self) -> dict[str, Any]:
        return {"id": self.node_id, "cluster": self.cluster, "leader": self.node_id, "members": []}

    async def read_barrier(self, linearizable: bool) -> None:
        return None

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        return self.kv.apply(next(self._index), orjson.dumps(command))

    def metrics_text(self) -> bytes:
        return b""


async def serve(app: web.Application) -> tuple[Any, int]:
    try:
        from mesh.api.server import run_api
    except ImportError:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, runner.addresses[0][1]
    runner = await run_api(app, "127.0.0.1", 0)
    return runner, runner.addresses[0][1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


async def run_server() -> None:
    """--serve: print the port, then on each SIGUSR1 the worst loop stall
    since the previous one; stop on SIGTERM."""
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.json"
        tokens.write_bytes(orjson.dumps({"tokens": [{"name": "ops", "token": TOKEN, "role": "operator"}]}))
        app = create_app(Node(), TokenAuth.from_file(tokens))  # type: ignore[arg-type]
        runner, port = await serve(app)
    loop = asyncio.get_running_loop()
    worst = [0.0]
    stop = asyncio.Event()

    def report() -> None:
        print(f"stall {worst[0] * 1000:.0f}", flush=True)
        worst[0] = 0.0

    loop.add_signal_handler(signal.SIGUSR1, report)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"port {port}", flush=True)

    async def ticker() -> None:
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            worst[0] = max(worst[0], loop.time() - t - 0.01)

    tick = asyncio.ensure_future(ticker())
    await stop.wait()
    tick.cancel()
    await runner.cleanup()


async def main(args: argparse.Namespace) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    try:
        port = int((await proc.stdout.readline()).split()[1])
        base = f"http://127.0.0.1:{port}"
        print(f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, server pid {proc.pid}")

        async def stall_ms() -> str:
            os.kill(proc.pid, signal.SIGUSR1)
            return (await proc.stdout.readline()).decode().split()[1]  # type: ignore[union-attr]

        comp = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = b"\0" * (1 << 20)
        bomb = b"".join(comp.compress(zeros) for _ in range(255)) + comp.flush()
        json = {"Content-Type": "application/json"}
        big = b'{"value": "' + b"x" * (args.big_mib << 20) + b'"}'
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
            for label, headers in (("without a token", {}), ("operator token", {"Authorization": f"Bearer {TOKEN}"})):
                before = peak_rss_mib(proc.pid)
                try:
                    async with s.put(base + "/v1/kv/parameters/x", data=big, headers={**json, **headers}) as resp:
                        status: int | str = resp.status
                except aiohttp.ClientError as exc:  # the server may close while the body is still sent
                    status = type(exc).__name__
                after = peak_rss_mib(proc.pid)
                rss = f"server peak RSS {before:.0f} -> {after:.0f} MiB"
                print(f"large body: {args.big_mib} MiB, {label}: {status}, {rss}")
            await stall_ms()
            statuses = []
            started = time.monotonic()
            for _ in range(args.bombs):
                async with s.put(
                    base + "/v1/kv/parameters/x", data=bomb, headers={"Content-Encoding": "gzip", **json}
                ) as resp:
                    statuses.append(resp.status)
            took = time.monotonic() - started
            print(
                f"compressed bodies: {args.bombs} x {len(bomb) // 1024} KB gzip without a token: "
                f"statuses {sorted(set(statuses))}, {took:.2f} s in all, worst server loop stall {await stall_ms()} ms"
            )
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bombs", type=int, default=5)
    parser.add_argument("--big-mib", type=int, default=32)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    asyncio.run(run_server() if cli.serve else main(cli))
