"""Live parameters vs plain PUTs, side by side, on a 3-node mesh on this machine.

    python bench/live.py [--seconds 10] [--params 64] [--hz 120] [--fanout direct|relay]
                         [--rounds 4] [--writers 16,1] [--arms live,twin,fader,alone]
                         [--pairs 150] [--window 2] [--window-margin 0.5]
                         [--flood-seconds 60]
                         [--flood-sockets 50] [--only live]

Starts 3 `hana-node serve` processes on loopback (fsync on) and prints:
1. 64 parameters at 120 Hz from one source (a WebSocket on follower A)
   through `GET /v1/live`, and the same load through plain PUTs to A
   (each tick's 64 PUTs at once, at most 256 outstanding): at a subscriber
   on the other follower B (a live socket, or a watch for the PUTs), the
   delivery latency p50/p99 (each value is its send time on the shared
   monotonic clock), the values/s delivered, and the CPU of each node (% of
   one core, from /proc, and microseconds of CPU per value the source sent);
2. a concurrent PUT benchmark (--writers: 16, then 1 writer; sequential
   PUTs to the controller) alone, with the live load of 1. running (in a
   process of its own, as a fader is another program), with the live
   load's CPU twin, and with the fader program's twin alone, in rounds
   whose order rotates, and the ratios to alone. The twin is a process per
   busy process of the load, woken --hz times a second and busy for the
   CPU that process spent on it (above a node's idle CPU), touching no
   mesh: it says how much of the live load's cost to the PUTs is the CPU
   it takes on this machine's cores (only that: not what the live work
   does inside the nodes' event loops). The fader's twin alone is roughly
   what a live path of no cost would leave (the fader program includes
   the measuring subscriber). Each share is printed for all rounds with its 95%
   bootstrap interval over rounds (this VM's speed drifts within minutes,
   so rounds differ far more than the effect sought: the interval says
   whether there were enough of them); --arms live,alone runs only the
   comparison the target is about;
2b. with --pairs: the same PUT writers run throughout while one fader
   process turns the live load of 1. on and off every --window seconds,
   on-off and off-on alternating; PUTs/s with it on as a share of with it
   off, over the pairs, with its bootstrap interval. A pair's windows are
   seconds apart where 2.'s arms are tens of seconds apart, so the drift
   of a shared machine mostly cancels within a pair: for the same time,
   a far narrower interval than 2.;
3. with --flood-seconds: 50 sockets on A sending sets as fast as they can
   (8 of 256 keys each), the RSS of every node sampled every 5 s, and the
   latency of `GET /v1/status` on A meanwhile.
With --only live: the live stream of 1. only (no PUTs, no 2.): the quick
A/B of the live path's CPU per value (run it from outside the repository
with PYTHONPATH pointing at the tree to measure; every node runs that
tree's code).
Every process started is stopped by PID at the end. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.launcher import ProcessCluster, ServeProcess

SECRET = "bench-secret-0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Mesh:
    def __init__(self, root: Path, fanout: str) -> None:
        self.cluster = ProcessCluster(root)
        for i in (1, 2, 3):
            self.cluster.add(f"n{i}", args=["--live-fanout", fanout, "--log-level", "WARNING"])
        peers = self.cluster.static_peers()
        for node in self.cluster.nodes.values():
            node.peers = peers
        self.env = dict(os.environ, HANA_SECRET=SECRET)
        self.env.pop("HANA_MDNS_INTERFACES", None)

    def node(self, nid: str) -> ServeProcess:
        return self.cluster.nodes[nid]

    def pids(self) -> dict[str, int]:
        return {nid: n.proc.pid for nid, n in self.cluster.nodes.items() if n.proc is not None}

    def start(self) -> None:
        for nid in self.cluster.nodes:
            self.cluster.start(nid, self.env)

    async def leader(self, session: aiohttp.ClientSession) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            leaders = set()
            for n in self.cluster.nodes.values():
                try:
                    async with session.get(f"http://{n.api}/v1/status") as r:
                        leaders.add((await r.json()).get("leader"))
                except aiohttp.ClientError:
                    leaders.add(None)
            if len(leaders) == 1 and None not in leaders:
                return str(leaders.pop())
            await asyncio.sleep(0.1)
        raise RuntimeError("no leader within 30 s:\n" + self.cluster.logs())


class Cpu:
    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {n: cpu_seconds(p) for n, p in pids.items()}
        self.t = time.monotonic()

    def percent(self) -> dict[str, float]:
        wall = time.monotonic() - self.t
        return {n: 100 * (cpu_seconds(p) - self.start[n]) / wall for n, p in self.pids.items()}


async def live_source(session: aiohttp.ClientSession, api: str, keys: list[str], hz: float, stop: asyncio.Event) -> int:
    sent = 0
    async with session.ws_connect(f"http://{api}/v1/live?prefix=settings/none/") as ws:
        start = time.monotonic()
        tick = 0
        while not stop.is_set():
            tick += 1
            delay = start + tick / hz - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            await ws.send_str(orjson.dumps({"set": dict.fromkeys(keys, now), "gesture": "bench"}).decode())
            sent += len(keys)
        await ws.send_str(orjson.dumps({"end": "bench"}).decode())
    return sent


async def live_subscriber(
    session: aiohttp.ClientSession, api: str, prefix: str, lat: list[float], ready: asyncio.Event
) -> None:
    async with session.ws_connect(f"http://{api}/v1/live?prefix={prefix}") as ws:
        ready.set()
        async for msg in ws:
            now = time.monotonic()
            doc = orjson.loads(msg.data)
            if doc.get("type") == "live":
                lat.extend(now - v for v in doc["values"].values() if isinstance(v, float))


async def watch_subscriber(
    session: aiohttp.ClientSession, api: str, prefix: str, lat: list[float], ready: asyncio.Event
) -> None:
    async with session.ws_connect(f"http://{api}/v1/watch?prefix={prefix}") as ws:
        ready.set()
        async for msg in ws:
            now = time.monotonic()
            doc = orjson.loads(msg.data)
            if isinstance(doc.get("value"), float):
                lat.append(now - doc["value"])


async def put_source(session: aiohttp.ClientSession, api: str, keys: list[str], hz: float, stop: asyncio.Event) -> int:
    sent = 0
    outstanding: set[asyncio.Task[None]] = set()

    async def put(key: str, value: float) -> None:
        async with session.put(f"http://{api}/v1/kv/{key}", data=orjson.dumps({"value": value}), headers=JSON) as r:
            await r.read()

    start = time.monotonic()
    tick = 0
    while not stop.is_set():
        tick += 1
        delay = start + tick / hz - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        for key in keys:
            if len(outstanding) >= 256:
                break  # the write path cannot keep up: this value is not sent
            task = asyncio.ensure_future(put(key, now))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
            sent += 1
    await asyncio.gather(*outstanding, return_exceptions=True)
    return sent


JSON = {"Content-Type": "application/json"}


async def side_by_side(
    mesh: Mesh, session: aiohttp.ClientSession, a: str, b: str, args: argparse.Namespace
) -> dict[str, float]:
    """Prints 1.; returns the live stream's CPU per node above the node's
    idle CPU (% of a core): what the twins of 2. burn."""
    rows: dict[str, dict[str, str]] = {}
    live_usage: dict[str, float] = {}
    idle = Cpu(mesh.pids())
    await asyncio.sleep(3.0)  # a window of idle CPU
    idle_usage = idle.percent()
    kinds = ("live stream",) if args.only == "live" else ("live stream", "plain PUTs")
    for kind in kinds:
        prefix = f"parameters/bench/{'live' if kind == 'live stream' else 'put'}/"
        keys = [f"{prefix}p{i}" for i in range(args.params)]
        lat: list[float] = []
        ready, stop = asyncio.Event(), asyncio.Event()
        sub_fn = live_subscriber if kind == "live stream" else watch_subscriber
        sub = asyncio.ensure_future(sub_fn(session, mesh.node(b).api, prefix, lat, ready))
        await asyncio.wait_for(ready.wait(), 10)
        src_fn = live_source if kind == "live stream" else put_source
        cpu = Cpu(mesh.pids())
        src = asyncio.ensure_future(src_fn(session, mesh.node(a).api, keys, args.hz, stop))
        await asyncio.sleep(args.seconds)
        stop.set()
        sent = await src
        usage = cpu.percent()
        if kind == "live stream":
            live_usage = {nid: max(0.0, p - idle_usage[nid]) for nid, p in usage.items()}
        await asyncio.sleep(1.0)  # the last values arrive
        sub.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await sub
        rows[kind] = {
            "values sent/s (by the source)": f"{sent / args.seconds:.0f}",
            f"values delivered/s at {b}": f"{len(lat) / args.seconds:.0f}",
            "latency p50 (ms)": f"{pct(lat, 0.50) * 1000:.2f}",
            "latency p99 (ms)": f"{pct(lat, 0.99) * 1000:.2f}",
            "latency max (ms)": f"{max(lat, default=float('nan')) * 1000:.2f}",
        }
        for nid, p in sorted(usage.items()):
            role = {a: "source", b: "subscriber"}.get(nid, "controller")
            rows[kind][f"CPU {nid} ({role}), % of a core"] = f"{p:.1f}"
        for nid, p in sorted(usage.items()):
            role = {a: "source", b: "subscriber"}.get(nid, "controller")
            per_value = 1e4 * p * args.seconds / sent if sent else float("nan")
            rows[kind][f"CPU {nid} ({role}), us per value sent"] = f"{per_value:.1f}"
        await asyncio.sleep(1.0)  # the gesture settles
    print(
        f"\n1. {args.params} parameters at {args.hz:g} Hz from one source on {a}, subscriber on {b}, "
        f"{args.seconds:g} s each, fan-out {args.fanout}"
    )
    names = list(rows["live stream"])
    width = max(len(n) for n in names)
    print(f"{'':{width}}  {'live stream':>14}  {'plain PUTs':>14}")
    for n in names:
        print(f"{n:{width}}  {rows['live stream'][n]:>14}  {rows.get('plain PUTs', {}).get(n, '-'):>14}")
    print("idle CPU before, % of a core: " + ", ".join(f"{nid} {p:.1f}" for nid, p in sorted(idle_usage.items())))
    return live_usage


async def put_writer(
    session: aiohttp.ClientSession, api: str, i: int, going: Callable[[], bool], wrote: Callable[[float, float], None]
) -> None:
    """Writer `i` of the PUT benchmark: sequential PUTs to its own key while
    `going()`; `wrote(start, end)` for each one answered 200."""
    key = f"parameters/bench/rate/w{i}"
    n = 0
    while going():
        n += 1
        t = time.monotonic()
        async with session.put(f"http://{api}/v1/kv/{key}", data=orjson.dumps({"value": n}), headers=JSON) as r:
            await r.read()
            if r.status == 200:
                wrote(t, time.monotonic())


async def put_rate(
    session: aiohttp.ClientSession, api: str, seconds: float, writers: int = 16
) -> tuple[float, list[float]]:
    lat: list[float] = []
    deadline = time.monotonic() + seconds

    def wrote(start: float, end: float) -> None:
        lat.append(end - start)

    def going() -> bool:
        return time.monotonic() < deadline

    await asyncio.gather(*(put_writer(session, api, i, going, wrote) for i in range(writers)))
    return len(lat) / seconds, lat


async def toggled_source(session: aiohttp.ClientSession, api: str, keys: list[str], hz: float) -> None:
    """The fader of 2b: sends at `hz` while the last line on stdin was "on",
    nothing while it was "off" (a new gesture each time it is turned on);
    returns at "stop". Answers each line with "ok" once it took effect."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    on = asyncio.Event()
    gesture = 0
    async with session.ws_connect(f"http://{api}/v1/live?prefix=settings/none/") as ws:

        async def commands() -> None:
            nonlocal gesture
            while (line := (await reader.readline()).decode().strip()) not in ("stop", ""):
                if line == "on" and not on.is_set():
                    gesture += 1
                    on.set()
                elif line == "on":
                    pass  # on already: the same gesture goes on
                elif on.is_set():
                    on.clear()
                    await ws.send_str(orjson.dumps({"end": f"bench-{gesture}"}).decode())
                print("ok", flush=True)
            on.clear()

        told = asyncio.ensure_future(commands())
        while not told.done():
            turned_on = asyncio.ensure_future(on.wait())
            await asyncio.wait([told, turned_on], return_when=asyncio.FIRST_COMPLETED)
            turned_on.cancel()
            start, tick = time.monotonic(), 0
            while on.is_set():
                tick += 1
                delay = start + tick / hz - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if on.is_set():
                    doc = {"set": dict.fromkeys(keys, time.monotonic()), "gesture": f"bench-{gesture}"}
                    await ws.send_str(orjson.dumps(doc).decode())


async def live_load(a_api: str, b_api: str, params: int, hz: float, seconds: float) -> None:
    """The live load of 1. in a process of its own (a fader is another
    program): so that its client-side work does not slow the PUT writers'
    event loop. Prints the subscriber's latency p99 (ms) and values seen."""
    keys = [f"parameters/bench/live/p{i}" for i in range(params)]
    lat: list[float] = []
    ready, stop = asyncio.Event(), asyncio.Event()
    async with aiohttp.ClientSession() as session:
        sub = asyncio.ensure_future(live_subscriber(session, b_api, "parameters/bench/live/", lat, ready))
        await asyncio.wait_for(ready.wait(), 10)
        cpu_start, wall_start = time.process_time(), time.monotonic()
        if seconds > 0:
            src = asyncio.ensure_future(live_source(session, a_api, keys, hz, stop))
            await asyncio.sleep(seconds)
            stop.set()
            await src
        else:
            await toggled_source(session, a_api, keys, hz)
            seconds = time.monotonic() - wall_start
        await asyncio.sleep(0.5)
        sub.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await sub
    cpu = 100 * (time.process_time() - cpu_start) / seconds
    print(f"{pct(lat, 0.99) * 1000:.2f} {len(lat)} {cpu:.1f}", flush=True)


def burn(share: float, hz: float, seconds: float) -> None:
    """The CPU twin of one process of the live load: woken `hz` times a
    second, busy for `share` of a core (CPU time, so preemption does not
    shorten it), touching no mesh. Prints its CPU, % of a core."""
    busy = share / hz
    start = time.monotonic()
    cpu_start = time.process_time()
    for tick in range(1, int(seconds * hz) + 1):
        delay = start + tick / hz - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # a load generator's pacing, not synchronisation
        end = time.thread_time() + busy
        while time.thread_time() < end:
            pass
    print(f"{100 * (time.process_time() - cpu_start) / seconds:.1f}", flush=True)


async def _start_live_load(
    mesh: Mesh, a: str, b: str, args: argparse.Namespace, toggled: bool = False
) -> asyncio.subprocess.Process:
    """The fader program: for --seconds (and a margin), or (toggled) turned
    on and off by lines on its stdin (`toggled_source`)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--live-load",
        mesh.node(a).api,
        mesh.node(b).api,
        "--seconds",
        "0" if toggled else str(args.seconds + 1.5),
        "--params",
        str(args.params),
        "--hz",
        str(args.hz),
        stdin=asyncio.subprocess.PIPE if toggled else None,
        stdout=asyncio.subprocess.PIPE,
    )


async def _start_twin(shares: list[float], args: argparse.Namespace) -> list[asyncio.subprocess.Process]:
    return [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--burn",
            f"{share:.4f}",
            "--hz",
            str(args.hz),
            "--seconds",
            str(args.seconds + 1.5),
            stdout=asyncio.subprocess.PIPE,
        )
        for share in shares
    ]


# The arms of 2., in the order of the first round; each later round starts
# one further on, so in 4 rounds each arm comes at each place once (a loaded
# machine drifts). The twins copy the CPU of the live arm before them, so
# the first round starts with the live load.
ARMS = ("live", "twin", "fader", "alone")
ARM_NAMES = {
    "alone": "alone",
    "live": "with the live load of 1. (its own process)",
    "twin": "with the load's CPU twin (no mesh)",
    "fader": "with the fader's twin alone",
}


def arms_flag(text: str) -> tuple[str, ...]:
    arms = tuple(dict.fromkeys(a.strip() for a in text.split(",")))
    unknown = set(arms) - set(ARMS)
    if unknown or "alone" not in arms or "live" not in arms:
        raise argparse.ArgumentTypeError(f"arms are some of {','.join(ARMS)}, with live and alone")
    if "twin" in arms or "fader" in arms:
        # The twins copy the fader's CPU of a live arm before them.
        arms = ("live", *(a for a in arms if a != "live"))
    return arms


async def concurrent_puts(
    mesh: Mesh,
    session: aiohttp.ClientSession,
    lead: str,
    a: str,
    b: str,
    args: argparse.Namespace,
    writers: int,
    node_cpu: dict[str, float],
    arms: tuple[str, ...] = ARMS,
) -> None:
    """2.: the PUT rate alone, with the live load of 1., with its CPU twin,
    and with the fader's twin alone. The twin is one process per busy
    process of the live load (the source node, the subscriber node, the
    fader program with its measuring subscriber), each woken --hz times a
    second and busy for the CPU that process spent on the live load (the
    nodes' from 1., above their idle CPU; the fader's from the live arm
    before), touching no mesh. If the twin costs the PUTs
    as much as the live load does, the live path takes from the log only
    the CPU it uses, on cores the PUTs need; the fader's twin alone is what
    the PUTs would lose to a mesh whose live path cost nothing."""
    api = mesh.node(lead).api
    fader_cpu = 0.0
    rounds = []
    for r in range(args.rounds):
        result: dict[str, tuple[float, list[float]]] = {}
        live_p99 = 0.0
        twin_cpu = "-"
        for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:
            if arm == "alone":
                result[arm] = await put_rate(session, api, args.seconds, writers)
                continue
            if arm == "live":
                procs = [await _start_live_load(mesh, a, b, args)]
            elif arm == "twin":
                procs = await _start_twin([node_cpu[a] / 100, node_cpu[b] / 100, fader_cpu / 100], args)
            else:
                procs = await _start_twin([fader_cpu / 100], args)
            await asyncio.sleep(1.0)  # the load runs
            result[arm] = await put_rate(session, api, args.seconds, writers)
            outs = [(await p.communicate())[0].decode().split() for p in procs]
            if arm == "live":
                live_p99, fader_cpu = float(outs[0][0]), float(outs[0][2])
                await asyncio.sleep(1.0)  # the settle of the load's gesture commits
            elif arm == "twin":
                twin_cpu = "+".join(out[0] for out in outs)
        rounds.append((result, live_p99, fader_cpu, twin_cpu))
    print(
        f"\n2. concurrent PUTs ({writers} writer{'s' if writers > 1 else ''} to the controller {lead}), "
        f"{args.seconds:g} s each: {', '.join(ARM_NAMES[arm] for arm in arms)}; {args.rounds} rounds, order rotating"
    )
    print(
        f"{'round':>5}  {'PUTs/s alone':>12}  {'with live':>9}  {'ratio':>6}  {'with twin':>9}  {'ratio':>6}  "
        f"{'fader twin':>10}  {'ratio':>6}  {'PUT p99 alone':>13}  {'live':>8}  {'twin':>8}  "
        f"{'live p99 at ' + b:>15}  {'fader CPU':>9}  {'twin CPU ' + a + '+' + b + '+fader':>20}"
    )
    for i, (res, lp99, fcpu, tcpu) in enumerate(rounds, 1):
        res = {arm: res.get(arm, (float("nan"), [])) for arm in ARMS}
        alone, live, twin, fader = (res[arm][0] for arm in ("alone", "live", "twin", "fader"))
        print(
            f"{i:>5}  {alone:>12.0f}  {live:>9.0f}  {100 * live / alone:>5.1f}%  {twin:>9.0f}  "
            f"{100 * twin / alone:>5.1f}%  {fader:>10.0f}  {100 * fader / alone:>5.1f}%  "
            f"{pct(res['alone'][1], 0.99) * 1000:>10.2f} ms  {pct(res['live'][1], 0.99) * 1000:>5.2f} ms  "
            f"{pct(res['twin'][1], 0.99) * 1000:>5.2f} ms  {lp99:>12.2f} ms  {fcpu:>8.1f}%  {tcpu:>19}%"
        )
    shares = []
    for arm in arms:
        if arm == "alone":
            continue
        pairs = [(res["alone"][0], res[arm][0]) for res, *_ in rounds]
        low, high = ratio_interval(pairs)
        per_round = sorted(b / a for a, b in pairs if a > 0)
        shares.append(
            f"{ARM_NAMES[arm]}: {100 * sum(b for _, b in pairs) / sum(a for a, _ in pairs):.1f}% "
            f"(95% interval {100 * low:.1f}-{100 * high:.1f}%, median round {100 * pct(per_round, 0.5):.1f}%)"
        )
    print("PUT rate as a share of the rate alone (all rounds; interval: bootstrap over rounds): " + "; ".join(shares))


async def interleaved_puts(
    mesh: Mesh,
    session: aiohttp.ClientSession,
    lead: str,
    a: str,
    b: str,
    args: argparse.Namespace,
    writers: int,
) -> None:
    """2b.: the PUT writers run throughout while the live load of 1. (one
    fader process, kept running) is turned on and off every --window
    seconds, --pairs pairs of windows, on-off and off-on alternating. A
    pair's two windows are seconds apart, not the tens of seconds of 2.'s
    arms, so this VM's drift mostly cancels within a pair. The first
    --window-margin seconds of each window are not counted (the load
    starting or stopping, and the settle of the gesture that just ended)."""
    api = mesh.node(lead).api
    fader = await _start_live_load(mesh, a, b, args, toggled=True)
    assert fader.stdin is not None and fader.stdout is not None

    async def tell(line: str) -> None:
        assert fader.stdin is not None and fader.stdout is not None
        fader.stdin.write(f"{line}\n".encode())
        await fader.stdin.drain()
        answer = await asyncio.wait_for(fader.stdout.readline(), 10)
        if answer.strip() != b"ok":
            raise RuntimeError(f"the fader answered {answer!r} to {line!r}")

    done: list[float] = []
    stop = asyncio.Event()

    def wrote(start: float, end: float) -> None:
        done.append(end)

    tasks = [
        asyncio.ensure_future(put_writer(session, api, i, lambda: not stop.is_set(), wrote)) for i in range(writers)
    ]
    windows: list[tuple[str, float, float]] = []
    try:
        await tell("off")
        await asyncio.sleep(args.window)  # the writers get going
        for k in range(args.pairs):
            for state in ("on", "off") if k % 2 == 0 else ("off", "on"):
                await tell(state)
                begin = time.monotonic()
                await asyncio.sleep(args.window)
                windows.append((state, begin, time.monotonic()))
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        fader.stdin.write(b"stop\n")
        out = (await fader.communicate())[0].decode().split()
    live_p99, seen, fader_cpu = out[-3:]
    on_seconds = sum(end - begin for state, begin, end in windows if state == "on")
    pairs = pair_rates(sorted(done), windows, args.window_margin)
    alone, live = sum(x for x, _ in pairs), sum(y for _, y in pairs)
    low, high = ratio_interval(pairs)
    print(
        f"\n2b. concurrent PUTs ({writers} writer{'s' if writers > 1 else ''} to the controller {lead}) throughout, "
        f"the live load of 1. turned on and off every {args.window:g} s: {len(pairs)} pairs of windows, on-off "
        f"and off-on alternating, the first {args.window_margin:g} s of each window not counted"
    )
    print(
        f"PUTs/s alone {alone / len(pairs):.0f}, with the live load {live / len(pairs):.0f}: "
        f"{100 * live / alone:.1f}% (95% interval {100 * low:.1f}-{100 * high:.1f}%, median pair "
        f"{100 * pct(sorted(y / x for x, y in pairs if x > 0), 0.5):.1f}%); live p99 at {b} {live_p99} ms, "
        f"values delivered at {b} {int(seen) / on_seconds:.0f}/s while on (the source sends "
        f"{args.params * args.hz:.0f}/s), fader CPU {fader_cpu}% of a core over the whole run (on half the time)"
    )


def pair_rates(done: list[float], windows: list[tuple[str, float, float]], margin: float) -> list[tuple[float, float]]:
    """PUTs/s (off, on) of each pair of windows (state, begin, end) in
    turn: the completions (`done`, sorted times) from `margin` seconds
    after a window begins to its end."""
    pairs = []
    for k in range(0, len(windows) - 1, 2):
        rates = {}
        for state, begin, end in windows[k : k + 2]:
            begin += margin
            rates[state] = (bisect.bisect_left(done, end) - bisect.bisect_left(done, begin)) / (end - begin)
        if set(rates) != {"on", "off"}:
            raise ValueError(f"windows {k} and {k + 1} are not one on and one off")
        pairs.append((rates["off"], rates["on"]))
    return pairs


def ratio_interval(pairs: list[tuple[float, float]], draws: int = 4000, seed: int = 0) -> tuple[float, float]:
    """The 95% bootstrap interval of sum(b) / sum(a) over rounds (a, b): how
    far the all-rounds ratio could be from the truth, given how much rounds
    differ on a machine whose speed drifts. Seeded: the same rounds give
    the same interval."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(draws):
        sample = rng.choices(pairs, k=len(pairs))
        alone = sum(a for a, _ in sample)
        ratios.append(sum(b for _, b in sample) / alone if alone else float("nan"))
    return pct(ratios, 0.025), pct(ratios, 0.975)


async def flood(mesh: Mesh, session: aiohttp.ClientSession, a: str, args: argparse.Namespace) -> None:
    keys = [f"parameters/bench/flood/k{i}" for i in range(256)]
    stop = asyncio.Event()
    sent = [0]
    errors = [0]

    async def socket(i: int) -> None:
        rng = random.Random(i)
        async with session.ws_connect(f"http://{mesh.node(a).api}/v1/live?prefix=settings/none/") as ws:
            reader = asyncio.ensure_future(drain(ws))
            while not stop.is_set():
                await ws.send_str(orjson.dumps({"set": {k: rng.random() for k in rng.sample(keys, 8)}}).decode())
                sent[0] += 1
                if sent[0] % 64 == 0:
                    await asyncio.sleep(0)
            reader.cancel()

    async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if orjson.loads(msg.data).get("type") == "error":
                errors[0] += 1

    pids = mesh.pids()
    before = {n: rss_mib(p) for n, p in pids.items()}
    status_lat: list[float] = []
    samples: list[tuple[float, dict[str, float]]] = []
    tasks = [asyncio.ensure_future(socket(i)) for i in range(args.flood_sockets)]
    start = time.monotonic()
    next_sample = start + 5
    while time.monotonic() - start < args.flood_seconds:
        t = time.monotonic()
        async with session.get(f"http://{mesh.node(a).api}/v1/status") as r:
            await r.read()
        status_lat.append(time.monotonic() - t)
        if time.monotonic() >= next_sample:
            samples.append((time.monotonic() - start, {n: rss_mib(p) for n, p in pids.items()}))
            next_sample += 5
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(f"\n3. flood: {args.flood_sockets} sockets on {a} sending sets as fast as they can, {args.flood_seconds:g} s")
    print(f"sets sent: {sent[0]} ({sent[0] / args.flood_seconds:.0f}/s); errors answered: {errors[0]}")
    print("RSS (MiB)  " + "  ".join(f"{n:>7}" for n in sorted(pids)))
    print("before     " + "  ".join(f"{before[n]:>7.1f}" for n in sorted(pids)))
    for t, rss in samples:
        print(f"{t:>5.0f} s    " + "  ".join(f"{rss[n]:>7.1f}" for n in sorted(pids)))
    print(
        f"GET /v1/status on {a} during the flood: p50 {pct(status_lat, 0.5) * 1000:.1f} ms, "
        f"p99 {pct(status_lat, 0.99) * 1000:.1f} ms, max {max(status_lat) * 1000:.1f} ms"
    )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="hana-bench-live-") as root:
        mesh = Mesh(Path(root), args.fanout)
        try:
            mesh.start()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
                lead = await mesh.leader(session)
                a, b = sorted(n for n in mesh.cluster.nodes if n != lead)
                print(
                    f"machine: {platform.machine()} {platform.system()} {platform.release()}, {os.cpu_count()} cpus, "
                    f"Python {platform.python_version()}; 3 nodes on loopback, fsync on; controller {lead}"
                )
                node_cpu = await side_by_side(mesh, session, a, b, args)
                if args.only == "live":
                    return
                for writers in args.writers if args.rounds > 0 else ():
                    await concurrent_puts(mesh, session, lead, a, b, args, writers, node_cpu, args.arms)
                for writers in args.writers if args.pairs > 0 else ():
                    await interleaved_puts(mesh, session, lead, a, b, args, writers)
                if args.flood_seconds > 0:
                    await flood(mesh, session, a, args)
        finally:
            mesh.cluster.stop_everything()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--params", type=int, default=64)
    p.add_argument("--hz", type=float, default=120.0)
    p.add_argument("--fanout", choices=("direct", "relay"), default="direct")
    p.add_argument("--flood-seconds", type=float, default=0.0)
    p.add_argument("--flood-sockets", type=int, default=50)
    p.add_argument("--rounds", type=int, default=4, help="rounds of the concurrent PUT benchmark, order rotating")
    p.add_argument(
        "--writers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[16, 1],
        help="sequential PUT writers of the concurrent PUT benchmark, one run of it per count (default 16,1)",
    )
    p.add_argument(
        "--arms",
        type=arms_flag,
        default=ARMS,
        help="the arms of 2., comma separated (default live,twin,fader,alone); live,alone: more rounds of the "
        "one comparison the target is about in the same time",
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="2b.: pairs of windows with the live load turned on and off while the PUT writers run (0: no 2b.)",
    )
    p.add_argument("--window", type=float, default=2.0, help="2b.: seconds each window lasts")
    p.add_argument("--window-margin", type=float, default=0.5, help="2b.: seconds at a window's start not counted")
    p.add_argument("--only", choices=("live",), help="live: only the live stream of 1. (the A/B of its CPU per value)")
    p.add_argument("--live-load", nargs=2, metavar=("SOURCE_API", "SUBSCRIBER_API"), help=argparse.SUPPRESS)
    p.add_argument("--burn", type=float, metavar="SHARE", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.burn is not None:
        burn(args.burn, args.hz, args.seconds)
        return
    if args.live_load:
        source_api, subscriber_api = args.live_load
        asyncio.run(live_load(source_api, subscriber_api, args.params, args.hz, args.seconds))
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
