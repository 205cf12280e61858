"""Every option of a run, drawn from the seed's PRNG (and printed), as
TigerBeetle's VOPR does."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, fields

from simulations.sim.world import MS, SECOND

FAULT_KINDS: tuple[str, ...] = (
    "drop",  # lost messages
    "duplicate",  # messages delivered twice
    "delay",  # long delays, hence reordering
    "partition",  # symmetric partitions of any subset
    "asymmetric",  # one-way partitions
    "crash",  # crash and restart from the durable image
    "torn_write",  # crash in the middle of a Ready: written, not synced
    "pause",  # long GC pause / SIGSTOP: no ticks, messages queue
    "churn",  # membership changes (learners, promote, demote, remove, add)
    "transfer",  # leadership transfers
    "reconnect",  # a follower sees a live leader's connections close (a reconnect)
)


@dataclass(slots=True)
class Options:
    seed: int
    nodes: int
    faults: tuple[str, ...]
    # Timing.
    tick_us: int
    election_tick: int
    heartbeat_tick: int
    max_msg_bytes: int = 1 << 20
    max_inflight: int = 256
    skew: list[float] = field(default_factory=list)
    tick_jitter_us: int = 0
    # Network.
    delay_min_us: int = 0
    delay_mean_us: int = 0
    p_drop: float = 0.0
    p_duplicate: float = 0.0
    p_long_delay: float = 0.0
    long_delay_max_us: int = 0
    p_codec: float = 1.0
    # Disk.
    disk_latency_max_us: int = 0
    p_torn_write: float = 0.0
    # Fault rates (events per simulated second).
    crash_rate: float = 0.0
    pause_rate: float = 0.0
    partition_rate: float = 0.0
    # Chance to cut a leader off right after it appended entries (orphans).
    p_isolate_on_append: float = 0.0
    churn_rate: float = 0.0
    transfer_rate: float = 0.0
    reconnect_rate: float = 0.0
    # Replica.
    snapshot_every: int = 20
    keep_entries: int = 5
    # Workload.
    write_rate: float = 0.0
    read_rate: float = 0.0
    # Phases.
    safety_us: int = 0
    liveness_us: int = 0

    def describe(self) -> str:
        d = asdict(self)
        d["skew"] = [round(s, 3) for s in self.skew]
        return " ".join(f"{k}={v}" for k, v in d.items() if k != "seed")


def draw_options(
    seed: int,
    rng: random.Random,
    nodes: int | None = None,
    faults: tuple[str, ...] = FAULT_KINDS,
    safety_us: int | None = None,
) -> Options:
    on = set(faults)
    n = nodes if nodes is not None else rng.choice((3, 5, 7))
    o = Options(
        seed=seed,
        nodes=n,
        faults=tuple(k for k in FAULT_KINDS if k in on),
        tick_us=10 * MS,
        election_tick=10,
        heartbeat_tick=rng.choice((1, 2, 2, 3)),
    )
    # Small messages split appends (one entry each), as etcd's MaxSizePerMsg.
    o.max_msg_bytes = rng.choice((1, 64, 1024, 1 << 20))
    o.max_inflight = rng.choice((1, 4, 256))
    o.skew = [rng.uniform(-0.05, 0.05) for _ in range(n + 8)]
    o.tick_jitter_us = rng.randrange(0, 2 * MS)
    o.delay_min_us = rng.randrange(100, 1 * MS)
    o.delay_mean_us = rng.randrange(1 * MS, 10 * MS)
    o.p_drop = rng.uniform(0.0, 0.15) if "drop" in on else 0.0
    o.p_duplicate = rng.uniform(0.0, 0.08) if "duplicate" in on else 0.0
    o.p_long_delay = rng.uniform(0.0, 0.08) if "delay" in on else 0.0
    o.long_delay_max_us = rng.randrange(50 * MS, 400 * MS)
    o.p_codec = rng.choice((0.25, 0.5, 1.0))
    o.disk_latency_max_us = rng.randrange(50, 3 * MS)
    o.p_torn_write = rng.uniform(0.002, 0.02) if "torn_write" in on else 0.0
    o.crash_rate = rng.uniform(0.3, 3.0) if "crash" in on else 0.0
    o.pause_rate = rng.uniform(0.2, 2.0) if "pause" in on else 0.0
    o.partition_rate = rng.uniform(0.3, 3.0) if on & {"partition", "asymmetric"} else 0.0
    o.p_isolate_on_append = rng.uniform(0.0, 0.06) if "partition" in on else 0.0
    o.churn_rate = rng.uniform(0.5, 4.0) if "churn" in on else 0.0
    o.transfer_rate = rng.uniform(0.2, 2.0) if "transfer" in on else 0.0
    o.snapshot_every = rng.choice((4, 8, 16, 32, 1000))
    o.keep_entries = rng.choice((0, 1, 3, 10))
    # Log-uniform: some seeds leave leaders idle for long stretches (the
    # Figure 8 window), others keep them busy.
    o.write_rate = math.exp(rng.uniform(math.log(2.0), math.log(300.0)))
    o.read_rate = rng.uniform(10.0, 150.0)
    o.safety_us = safety_us if safety_us is not None else rng.randrange(3 * SECOND, 10 * SECOND)
    o.liveness_us = 10 * SECOND
    o.reconnect_rate = rng.uniform(0.3, 3.0) if "reconnect" in on else 0.0
    return o


@dataclass(slots=True)
class NodeOptions(Options):
    """The whole-node simulator's options: the Raft-level ones (drawn first,
    in the same order) and the node core's, the clients' and the watchers'."""

    # The node core (NodeConfig).
    request_timeout_us: int = 0
    forward_timeout_us: int = 0
    # Time from a wake-up of the ready loop to its Ready.
    loop_latency_us: int = 0
    # Wall-clock skew of each node (its HLC stamps and command times).
    wall_skew_ms: list[int] = field(default_factory=list)
    # Share of crashes that are a SIGTERM (handover first).
    p_graceful: float = 0.0
    # Clients (closed loop: one request at a time, then a pause).
    clients: int = 0
    keys: int = 0
    think_mean_us: int = 0
    http_delay_min_us: int = 0
    http_delay_mean_us: int = 0
    client_timeout_us: int = 0
    # Watchers: sessions of this length on one node, then on another.
    watchers: int = 0
    watch_session_min_us: int = 0
    watch_session_max_us: int = 0
    # A slow consumer: the pump of a watch session waits up to this long.
    watch_pump_max_us: int = 0
    # Offline writers (issue 14; drawn only with RunConfig(offline=True), after
    # everything else, so other seeds' draws stay as they were).
    offline_writers: int = 0
    offline_think_mean_us: int = 0
    resolve_every_us: int = 0


def draw_node_options(
    seed: int,
    rng: random.Random,
    nodes: int | None = None,
    faults: tuple[str, ...] = FAULT_KINDS,
    safety_us: int | None = None,
    offline: bool = False,
) -> NodeOptions:
    base = draw_options(seed, rng, nodes, faults, safety_us)
    o = NodeOptions(**{f.name: getattr(base, f.name) for f in fields(Options)})
    o.request_timeout_us = rng.randrange(400 * MS, 2 * SECOND)
    o.forward_timeout_us = rng.randrange(50 * MS, 500 * MS)
    o.loop_latency_us = rng.randrange(10, 500)
    o.wall_skew_ms = [rng.randrange(-1500, 1501) for _ in range(o.nodes + 8)]
    o.p_graceful = 0.25 if "crash" in faults else 0.0
    o.clients = rng.randrange(2, 13)
    o.keys = rng.randrange(2, 7)
    o.think_mean_us = rng.randrange(200, 20 * MS)
    o.http_delay_min_us = rng.randrange(50, 500)
    o.http_delay_mean_us = rng.randrange(200, 3 * MS)
    o.client_timeout_us = o.request_timeout_us + rng.randrange(200 * MS, 1500 * MS)
    o.watchers = rng.randrange(1, 4)
    o.watch_session_min_us = rng.randrange(50 * MS, 300 * MS)
    o.watch_session_max_us = o.watch_session_min_us + rng.randrange(100 * MS, 1500 * MS)
    o.watch_pump_max_us = rng.choice((0, 1 * MS, 20 * MS))
    o.safety_us = safety_us if safety_us is not None else rng.randrange(3 * SECOND, 8 * SECOND)
    if offline:
        o.offline_writers = rng.randrange(2, 6)
        o.offline_think_mean_us = rng.randrange(20 * MS, 200 * MS)
        o.resolve_every_us = rng.randrange(50 * MS, 500 * MS)
        # Queued writes replay after the heal, besides the live fader's
        # settles, through the slowest links drawn (one entry per message,
        # seven nodes): seed 500856 needed more than 20 s to converge.
        o.liveness_us = 60 * SECOND
    return o
