"""The node core: everything a mesh node decides, above the Raft core, as a
synchronous state machine without clock, sockets, threads or asyncio.

The asyncio runtime (mesh/node/runtime.py) drives it in production; the
deterministic simulator (simulations/sim/nodes.py) drives many of them in
one process; both through the same calls. RawNode is to the Raft core what
the runtime is to this one: a thin driver that owns the IO.

What it decides
- what to send to peers, and when (urgent heartbeats at once; a Ready's
  appends before its fsync, acknowledgements and votes after);
- writes: propose on the controller, or forward to it and retry (same
  request id, so the state machine applies a write at most once) when the
  answer does not come or the controller changes; wait for the entry to be
  applied here; and the answer: the state machine's result (done), NoLeader
  (503: certainly not applied), or Timeout (504: the outcome is unknown);
- the controller's side of forwarding: members only, the state machine's
  stateless checks first (a final `ForwardResponse.rejection`), then append;
  a new controller appends nothing (its own writes or forwarded ones) until
  it applied every entry of the terms before its own, so that its hybrid
  logical clock stamps follow the log order (`_caught_up`);
- linearizable read barriers (ReadIndex, retried across leader changes);
- leadership handover (the best successor) and stepping down when the disk
  hangs; membership changes; whom the transport dials (members, the leader,
  and while no leader is known the candidates whose logs are at least as
  recent: a voter behind on membership must still be able to vote);
- watch positions (`WatchCursor`); autopilot decisions; the bootstrap of a
  fresh store from the static peer list;
- live parameters (`self.live`, mesh/node/live.py): live frames from peers,
  its timers on every tick, settled gestures seen after every apply.

The 503/504 rule (a lie here is a bug users hit, see CHANGELOG "Fixed"):
a write answers NoLeader only when no attempt can have reached a
controller's log: every forward was withdrawn unsent (the transport says so)
or refused with an answer, every local append was truncated. Once a forward
went unanswered after it may have been written (`maybe_appended`), every
failure of that write is a Timeout, and so is a result that changed nothing
(a refusal such as a version conflict): the state machine remembers only
results that changed something under the request id, so the unanswered
copy may still apply later. Forward ids start at a point drawn from the boot
id, so that a late answer to a forward of an earlier life of this node
resolves nothing of this one. Each of these rules was found by the
whole-node simulator or by a chaos run; tests/node/test_core.py keeps one
test per rule.

Inputs (each returns at once; none blocks or reads a clock but `clock`):
    tick()                      time passes (every `cfg.tick` seconds)
    receive(payload)            a peer message (Raft, forwarded write or answer)
    report_unreachable(peer)    the transport could not deliver to `peer`
    peer_closed(peer)           `peer` closed every connection with this node
                                (its process died): a lost controller is
                                replaced at once (Raft's leader_connection_lost)
    report_snapshot(peer, ok)   a snapshot stream to `peer` ended
    propose(command) -> Ticket  a state-machine command (raises TooLarge)
    read(linearizable) -> Ticket         a read barrier
    change_membership(cc) -> Ticket      on the controller (raises NotLeader, Conflict)
    handover() -> target | None          start handing leadership over
    open_watch(prefix, since) -> WatchCursor
    queue_write(command) -> dict         keep a write in the offline outbox (issue 14)
    shutdown()                  answer everything pending; ignore inputs after

Offline (issue 14): `contact` knows when a controller was last heard
(`connected()`, `controller_contact_ms()`); `events` (mesh/node/offline.py)
holds the typed messages of watch streams (status on loss/regain, outbox
fates, conflicts opened or resolved, which a critical one also logs at
warning); the durable `outbox` (mesh/node/outbox.py) is replayed in order
while a controller is heard, each write under its stable request id.
A `Ticket` is resolved exactly once, by some later input, with a result or a
`MeshError`; `Ticket.on_done` is called then (the runtime resolves a future
there, the simulator answers its client).

The IO contract (the driver runs it whenever `has_ready()`):
    rd = core.ready()     persist the Ready's writes, send what may leave now
    if rd.must_sync:
        core.sync()       make them durable: the only call that may run on
                          another thread (it touches the storage only); the
                          driver may feed inputs meanwhile
    done = core.finish(rd)   send the rest, apply, resolve tickets
`done.applied` says the state moved (wake watchers), `done.leader_changed`
that the leader or role changed.

Outputs go through the `Transport` protocol (send, withdraw, set_members);
time comes from the `Clock` protocol (deadlines, the times stamped into
commands). Both have in-memory twins (mesh/transport/memory.py,
mesh/clock.py). Timers are ticks: the core looks at its deadlines on every
`tick()`, so a deadline is noticed within one tick.

Deliberate bugs (`cfg.inject_bug`, never in real use): one explicit hook per
node, `_install_bug`, checked at start; "stale_reads" makes `read` skip the
barrier, "ack_unreplicated" goes to `RawNode.inject_bug`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from mesh.clock import Clock
from mesh.errors import Conflict, Gone, MeshError, NoLeader, NotLeader, Timeout, TooLarge
from mesh.node import autopilot
from mesh.node.config import NodeConfig
from mesh.node.flags import INJECTABLE_BUGS
from mesh.node.live import LiveTable
from mesh.node.offline import Contact, EventLog
from mesh.node.outbox import FINAL, MemoryOutboxStore, Outbox, OutboxStore
from mesh.raft import ConfChange, Config, ConfState, Message, MessageType, ProposalDropped, Ready, Role
from mesh.raft.rawnode import INJECTABLE as RAFT_BUGS
from mesh.replica import ProposalOutcome, ReadOutcome, ReadyOutcome, Replica, ReplicaStorage, bootstrap
from mesh.state.hlc import HLC
from mesh.state.kv import ChangeRecord, CommandError, Compacted
from mesh.state.limits import MAX_COMMAND_BYTES
from mesh.state.model import HanaState
from mesh.transport.base import Transport
from mesh.transport.codec import ForwardRequest, ForwardResponse, LiveFrame, LiveInterest, PeerPayload

log = logging.getLogger("mesh.node")

# A read retries ReadIndex after this many ticks without an answer; a
# request waiting for a controller looks again after WAIT_TICKS.
READ_RETRY_TICKS = 10
WAIT_TICKS = 2
# NodeCore.quiet_ticks defers at most this long (the live table's resends
# and expiry run on the clock, every 0.5 s at the earliest).
QUIET_MAX_SECONDS = 0.5
_VOTES = frozenset({MessageType.VOTE, MessageType.PRE_VOTE})


class CoreMetrics(Protocol):
    """Where the core counts what it did (mesh.node.metrics.NodeMetrics)."""

    def proposal(self, result: str) -> None:
        """ "appended" (a write reached the controller's log) or "failed"."""
        ...

    def leader_elected(self) -> None: ...

    def lost_log(self) -> None: ...

    def forward_refused(self, reason: str) -> None: ...


@dataclass(slots=True)
class CountingMetrics:
    """CoreMetrics kept as plain counts (the simulator, tests)."""

    proposals: dict[str, int] = field(default_factory=dict)
    leaders: int = 0
    lost_logs: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def proposal(self, result: str) -> None:
        self.proposals[result] = self.proposals.get(result, 0) + 1

    def leader_elected(self) -> None:
        self.leaders += 1

    def lost_log(self) -> None:
        self.lost_logs += 1

    def forward_refused(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


class Ticket:
    """The outcome of one request, resolved exactly once: `result` (a write:
    the state machine's result; a membership change: index, term and the
    new configuration; a read barrier: None) or `error` (a MeshError:
    NoLeader, nothing happened; Timeout, unknown). `on_done(ticket)` is
    called when it is resolved (at once if set on a resolved ticket)."""

    __slots__ = ("_on_done", "done", "error", "result")

    def __init__(self) -> None:
        self.done = False
        self.result: Any = None
        self.error: MeshError | None = None
        self._on_done: Callable[[Ticket], None] | None = None

    @property
    def on_done(self) -> Callable[[Ticket], None] | None:
        return self._on_done

    @on_done.setter
    def on_done(self, fn: Callable[[Ticket], None] | None) -> None:
        self._on_done = fn
        if fn is not None and self.done:
            fn(self)

    def _resolve(self, result: Any = None, error: MeshError | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.result = result
        self.error = error
        if self._on_done is not None:
            self._on_done(self)

    def value(self) -> Any:
        """The result, or the error raised."""
        if not self.done:
            raise RuntimeError("ticket not resolved yet")
        if self.error is not None:
            raise self.error
        return self.result


# Where a write is. HELD: on a new controller that has not applied its
# predecessors' entries yet (see `_caught_up`).
WAITING, HELD, FORWARDED, APPENDED, DONE = "waiting", "held", "forwarded", "appended", "done"
# Forwarded writes a new controller holds until it caught up, at most.
MAX_HELD_FORWARDS = 10_000
# Queued offline writes replayed at once, at most, and how long one attempt
# may take (issue 14).
REPLAY_WINDOW = 64
REPLAY_SCAN = 1024
REPLAY_TIMEOUTS = 2  # request timeouts


class _Write:
    __slots__ = (
        "data",
        "deadline",
        "forward",
        "forward_expires",
        "index",
        "maybe_appended",
        "reason",
        "remembered",
        "serial",
        "state",
        "term",
        "ticket",
        "tried",
        "wait_ticks",
    )

    def __init__(self, serial: int, data: bytes, deadline: float) -> None:
        self.serial = serial
        self.ticket = Ticket()
        self.data = data
        self.deadline = deadline
        # Set once an attempt may have reached a controller's log.
        self.maybe_appended = False
        self.state = WAITING
        # The leader the last attempt went to (None: none known).
        self.tried: str | None = None
        self.forward: ForwardRequest | None = None
        self.forward_expires = 0.0
        self.wait_ticks = 0
        self.reason = ""
        self.index = 0
        self.term = 0
        # The state machine remembers this command's result whatever it did
        # (an offline write's replay): a copy applied later answers the same.
        self.remembered = False


class _Read:
    __slots__ = ("asked_ticks", "context", "deadline", "reason", "serial", "ticket", "wait_ticks")

    def __init__(self, serial: int, deadline: float) -> None:
        self.serial = serial
        self.ticket = Ticket()
        self.deadline = deadline
        self.context = b""  # empty while waiting for a controller
        self.asked_ticks = 0
        self.wait_ticks = 0
        self.reason = ""


class _Change:
    __slots__ = ("deadline", "index", "serial", "term", "ticket")

    def __init__(self, serial: int, deadline: float) -> None:
        self.serial = serial
        self.ticket = Ticket()
        self.deadline = deadline
        self.index = 0
        self.term = 0


@dataclass(slots=True, frozen=True)
class Finished:
    """What `finish` did, for the driver: wake watchers on `applied`, wake
    whoever waits for a leader change on `leader_changed`."""

    applied: bool
    leader_changed: bool
    outcome: ReadyOutcome


class WatchCursor:
    """One watcher's position in the change history: `take()` returns every
    record under `prefix` from `next` on that was not handed out yet, in
    revision order, and moves `next` past the revision the batch covers (the
    batch and its revision are taken together, so records applied while the
    consumer works through a batch come with the next one). Raises Gone when
    the history from `next` on was compacted away."""

    __slots__ = ("kv", "next", "prefix")

    def __init__(self, kv: HanaState, prefix: str, since: int) -> None:
        self.kv = kv
        self.prefix = prefix
        self.next = max(since, 1)

    def take(self) -> list[ChangeRecord]:
        covered = self.kv.revision
        try:
            records = self.kv.changes_since(self.next, self.prefix)
        except Compacted as exc:
            raise Gone(str(exc), oldest=exc.oldest) from exc
        self.next = max(self.next, covered + 1)
        return records

    def pending(self) -> bool:
        """Something was applied since the last `take`."""
        return self.kv.revision >= self.next


def _changed_nothing(result: object) -> bool:
    """A state-machine result that changed nothing (a refusal, or a write
    skipped by last-writer-wins): the state machine does not remember it
    under the request id, so a later copy of the command applies again."""
    if not isinstance(result, dict):
        return False
    error = result.get("error")
    if error is not None:
        return not (isinstance(error, dict) and error.get("code") == "conflict_kept")
    return bool(result.get("superseded"))


def _made_stamp(data: bytes) -> HLC:
    """The `made` stamp of an offline write's command (a zero stamp if it has
    none that parses: the state machine refuses such a command anyway)."""
    try:
        made = orjson.loads(data).get("made")
        return HLC.decode(made)
    except (orjson.JSONDecodeError, AttributeError, ValueError):
        return HLC()


def _id_base(boot_id: str) -> int:
    """Where this life's forward ids start: 40 bits drawn from the boot id,
    times 4096 (below 2**52: exact in any JSON parser). Two lives' ids meet
    only if one makes more forwards than the distance between their bases."""
    return int.from_bytes(hashlib.blake2b(boot_id.encode(), digest_size=5).digest(), "big") << 12


class _RateLimited:
    """Log an event at most once per `interval` seconds per key (on the
    core's clock)."""

    def __init__(self, clock: Clock, interval: float) -> None:
        self.clock = clock
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = self.clock.monotonic()
        if now - self._last.get(key, -1e18) >= self.interval:
            n = self._suppressed.pop(key, 0)
            log.warning(msg + (f" ({n} similar suppressed)" if n else ""), *args)
            self._last[key] = now
        else:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1


class NodeCore:
    def __init__(
        self,
        cfg: NodeConfig,
        storage: ReplicaStorage,
        transport: Transport,
        clock: Clock,
        *,
        rng: random.Random,
        boot_id: str,
        metrics: CoreMetrics | None = None,
        outbox: OutboxStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.node_id
        self.storage = storage
        self.transport = transport
        self.clock = clock
        self.boot_id = boot_id
        self.metrics: CoreMetrics = metrics if metrics is not None else CountingMetrics()
        self.kv = HanaState(
            history_limit=cfg.history_limit,
            audit_limit=cfg.audit_limit,
            audit_max_age_ms=cfg.audit_max_age_ms,
            cluster=cfg.cluster,
        )
        # Stamps every command this node appends as leader (see _stamp_hlc).
        self._hlc = HLC(0, 0, cfg.node_id)
        if storage.last_index() == 0 and storage.snapshot().is_empty() and cfg.peers:
            # A fresh store with a static peer list: this is an initial member.
            if cfg.node_id not in cfg.peers:
                raise ValueError(f"--peers must list this node ({cfg.node_id}) too")
            bootstrap(storage, ConfState.of(cfg.peers))
        raft_cfg = Config(
            id=cfg.node_id,
            rng=rng,
            election_tick=cfg.election_ticks,
            heartbeat_tick=cfg.heartbeat_ticks,
            max_inflight=cfg.max_inflight,
            max_msg_bytes=cfg.max_msg_bytes,
            learner_feed_ticks=cfg.learner_feed_ticks,
        )
        self.replica = Replica(
            raft_cfg, storage, self.kv, snapshot_every=cfg.snapshot_every, keep_entries=cfg.keep_entries
        )
        self.raw = self.replica.node
        self.stopping = False
        self.bugs: frozenset[str] = frozenset()
        if cfg.inject_bug:
            self._install_bug(cfg.inject_bug)
        self._serials = itertools.count(1)
        # Forward ids differ between lives of this node: an answer to a
        # forward of an earlier life (delayed in a peer's queue across a
        # restart) must not resolve a write of this one (found by the
        # whole-node simulator: a write answered with another's result).
        self._forward_ids = itertools.count(_id_base(boot_id))
        self._read_seq = itertools.count(1)
        self._request_seq = itertools.count(1)
        self._writes: dict[int, _Write] = {}
        self._forwards: dict[int, _Write] = {}
        self._reads: dict[int, _Read] = {}
        self._asked: dict[bytes, _Read] = {}
        self._changes: dict[int, _Change] = {}
        # Writes (own and forwarded) a new controller holds until it caught up.
        self._held: dict[int, _Write] = {}
        self._held_forwards: list[ForwardRequest] = []
        self._caught_up_in = 0  # the term in which _caught_up last held
        # What the transport was last told to dial (see _sync_members).
        self._dial_key: tuple[object, object, str | None, frozenset[str]] | None = None
        # Candidates this node may have to answer: id -> term asked for.
        self._candidates: dict[str, int] = {}
        self._last_role: Role | None = None
        self._last_leader: str | None = None
        # The controller this node followed last (kept when it is lost: its
        # last contact tells how long the node has been cut off from it).
        self._followed: str | None = None
        self._sync_started: float | None = None
        self._slow_sync_reported = False
        self._rlog = _RateLimited(clock, 10.0)
        self._autopilot: autopilot.HealthTracker | None = None
        self._autopilot_was_leader = False
        # Offline (issue 14): when a controller was last heard, and the typed
        # messages of the watch streams (mesh/node/offline.py).
        self.contact = Contact(cfg.tick * cfg.election_ticks)
        self.events = EventLog()
        self._was_connected = False
        # The durable outbox of offline writes (mesh/node/outbox.py) and its
        # replay: queued seq -> the write in flight.
        self.outbox = Outbox(cfg.node_id, outbox if outbox is not None else MemoryOutboxStore(), boot_id)
        self._replaying: dict[int, _Write] = {}
        # A replay that failed waits before it is tried again: seq -> (when, failures).
        self._replay_backoff: dict[int, tuple[float, int]] = {}
        self.conflicts_opened: dict[bool, int] = {False: 0, True: 0}
        # quiet_ticks never defers more than this many ticks.
        self._quiet_max = max(1, int(QUIET_MAX_SECONDS / cfg.tick))
        self._sync_members()
        # Live parameters beside the log (mesh/node/live.py).
        self.live = LiveTable(
            self.id,
            clock,
            transport,
            self.kv,
            peers=self._live_peers,
            leader=lambda: self.raw.lead,
            propose=self.propose,
            settle_ms=cfg.settle_ms,
            expire_ms=cfg.live_expire_ms,
            fanout=cfg.live_fanout,
        )

    # -- deliberate bugs --------------------------------------------------------------

    def _install_bug(self, name: str) -> None:
        """The one hook for deliberate bugs (see the module docstring)."""
        if name not in INJECTABLE_BUGS:
            raise ValueError(f"unknown bug {name!r} (known: {', '.join(INJECTABLE_BUGS)})")
        log.warning("node=%s event=unsafe_bug_injected bug=%s", self.id, name)
        if name in RAFT_BUGS:
            self.raw.inject_bug(name)
        self.bugs = self.bugs | {name}

    # -- inputs -----------------------------------------------------------------------

    def tick(self) -> None:
        if self.stopping:
            return
        for peer in self.transport.snapshots_in_flight():
            # Still streaming: the core must not give up and resend.
            self.raw.report_snapshot_progress(peer)
        self.replica.tick()
        if self.raw.role == Role.LEADER:
            self.contact.hear(self.clock.monotonic())
        self._watch_disk()
        self._expire()
        self.live.tick()
        self._check_contact()
        self._replay()
        self._flush_urgent()

    def tick_quiet(self, n: int) -> None:
        """`n` ticks that `quiet_ticks` said only count: the same as `n`
        calls of `tick()` then, for less (the Raft core's counters move;
        every other timer of the node core has nothing due in them)."""
        if self.stopping or n <= 0:
            return
        replica = self.replica
        for _ in range(n):
            replica.tick()
        if self.raw.role == Role.LEADER:
            self.contact.hear(self.clock.monotonic())

    def quiet_ticks(self) -> int:
        """How many of the next ticks, with no input between them, would do
        nothing but count (Raft.quiet_ticks): a driver may run them late,
        all at once before its next input, as long as the tick after them
        runs on time. So an idle node wakes for its heartbeats and election
        timer, not 1/tick times a second. 0 while anything waits on a tick
        (a request, a forward, a replay, an fsync, a snapshot stream, a
        live gesture or settle); never past the moment the controller's
        contact would expire (a status event), nor past QUIET_MAX_SECONDS
        (the live table's periodic work is timed on the clock)."""
        if self.stopping:
            return self._quiet_max
        if (
            self._writes
            or self._reads
            or self._changes
            or self._held
            or self._held_forwards
            or self._replaying
            or self._replay_backoff
            or self._sync_started is not None
            or self.outbox.count()
            or self.live.gestures
            or self.live.settles
            or self.transport.snapshots_in_flight()
        ):
            return 0
        quiet = min(self.raw.quiet_ticks(), self._quiet_max)
        now = self.clock.monotonic()
        heard = self.contact.heard
        if self._was_connected and heard is not None:
            # The tick that notices the lost controller must come on time.
            quiet = min(quiet, self._ticks_before(heard + self.contact.timeout - now))
        # The live table's resends, interest announcements and expiry run on
        # the clock (mesh/node/live.py, LiveTable.tick).
        live = self.live
        return min(quiet, self._ticks_before(min(live._next_resend, live._next_expire) - now))

    def _ticks_before(self, left: float) -> int:
        """How many ticks surely come before a moment `left` seconds away."""
        return max(0, math.ceil(left / self.cfg.tick - 1e-6) - 1)

    def receive(self, m: PeerPayload) -> None:
        if self.stopping:
            return
        if isinstance(m, Message):
            if m.type in _VOTES and self.raw.lead is None and self._up_to_date(m):
                self._candidates[m.frm] = m.term
            self.replica.step(m)
            self._sync_members()
            if m.frm == self.raw.lead and m.term == self.raw.term:
                self.contact.hear(self.clock.monotonic())
        elif isinstance(m, ForwardRequest):
            self._serve_forward(m)
        elif isinstance(m, LiveFrame):
            self.live.receive(m)
            return
        elif isinstance(m, LiveInterest):
            self.live.receive_interest(m)
            return
        else:
            if m.frm == self.raw.lead:
                self.contact.hear(self.clock.monotonic())
            self._forward_answered(m)
        self._check_contact()
        self._flush_urgent()

    # -- knowing it is cut off (issue 14) -------------------------------------------

    def connected(self) -> bool:
        """This node heard a controller within the election timeout."""
        return self.contact.connected(self.clock.monotonic())

    def controller_contact_ms(self) -> int | None:
        """Milliseconds since a controller was last heard (None: never)."""
        return self.contact.contact_ms(self.clock.monotonic())

    def _check_contact(self) -> None:
        """A status event (and a log line) when the node loses or regains
        its controller."""
        connected = self.connected()
        if connected == self._was_connected:
            return
        self._was_connected = connected
        lead = self.raw.lead if connected else None
        log.info(
            "node=%s event=%s term=%d leader=%s",
            self.id,
            "controller_regained" if connected else "controller_lost",
            self.raw.term,
            lead,
        )
        self.events.add({"type": "status", "connected": connected, "leader": lead})

    # -- offline writes (issue 14; mesh/node/outbox.py) ---------------------------------

    def queue_write(self, command: dict[str, Any]) -> dict[str, Any]:
        """Keep a write (put, delete or txn; checked by the caller with
        `kv.prepare`) in the durable outbox, stamped with the moment it is
        made, and answer what `202` says. Raises TooLarge."""
        wall = self.clock.wall_ms()
        self._hlc = self._hlc.receive(self.kv.clock, wall, self.id)
        command["node"] = self.id
        command["time"] = wall
        command["made"] = self._hlc.encode()
        command.pop("rid", None)
        if command["op"] == "txn":
            keys = list(dict.fromkeys(op["key"] for op in command["ops"] if op.get("op") != "check"))
        else:
            keys = [command["key"]]
        if not keys:
            raise ValueError("a queued transaction needs a put or a delete")
        versions = {}
        for key in keys:
            cur = self.kv.get(key)
            versions[key] = cur.version if cur is not None else 0
        size = len(orjson.dumps(command)) + 512
        if size > MAX_COMMAND_BYTES:
            raise TooLarge(
                f"the command is about {size} bytes encoded, over {MAX_COMMAND_BYTES}", limit=MAX_COMMAND_BYTES
            )
        item = self.outbox.queue(command, keys, command["made"], versions)
        log.info(
            "node=%s event=write_queued id=%s op=%s keys=%d made=%s queued=%d",
            self.id,
            item.id,
            item.op,
            len(keys),
            item.made,
            self.outbox.count(),
        )
        self.events.add(item.event())
        answer: dict[str, Any] = {"queued": item.id}
        if item.op == "txn":
            answer["keys"] = keys
            answer["base_versions"] = dict(item.base)
        else:
            answer["key"] = keys[0]
            answer["base_version"] = item.base[keys[0]]
        answer["outbox"] = self.outbox.count()
        return answer

    def _replay(self) -> None:
        """Replay the outbox in order while a controller is heard: up to
        REPLAY_WINDOW writes in flight, a write waiting while an earlier
        queued write of one of its keys is not final (so each key's writes
        apply in the order they were made, and a chained base is known)."""
        if self.stopping or not self._was_connected or self.raw.lead is None:
            return
        busy: set[str] = set()
        # The first REPLAY_SCAN queued writes only: a long outbox costs no
        # more per call than a short one.
        for item in list(itertools.islice(self.outbox.queued(), REPLAY_SCAN)):
            if len(self._replaying) >= REPLAY_WINDOW:
                return
            clash = any(k in busy for k in item.keys)
            busy.update(item.keys)
            if clash or item.seq in self._replaying:
                continue
            backoff = self._replay_backoff.get(item.seq)
            if backoff is not None and self.clock.monotonic() < backoff[0]:
                continue
            data = orjson.dumps(self.outbox.replay_command(item))
            # Nobody waits on a replay: it may wait longer than a client's
            # request for its entry to apply on a node behind, rather than
            # append copy after copy (and backs off after a failure).
            w = _Write(next(self._serials), data, self.clock.monotonic() + REPLAY_TIMEOUTS * self.cfg.request_timeout)
            w.remembered = True
            self._replaying[item.seq] = w
            item.state = "replaying"
            self._writes[w.serial] = w
            seq = item.seq
            w.ticket.on_done = lambda t, seq=seq: self._replayed(seq, t)
            self._attempt(w)
            if self.stopping:
                return

    def _replayed(self, seq: int, ticket: Ticket) -> None:
        self._replaying.pop(seq, None)
        item = self.outbox.items.get(seq)
        if item is None or item.state in FINAL:
            return
        if ticket.error is not None or not isinstance(ticket.result, dict):
            # Not applied (503) or unknown (504): replayed again later under
            # the same request id, so that it applies once; after a backoff
            # (a node far behind must not append copy after copy).
            item.state = "queued"
            failures = self._replay_backoff.get(seq, (0.0, 0))[1] + 1
            wait = min(self.cfg.request_timeout, self.cfg.tick * (2**failures))
            self._replay_backoff[seq] = (self.clock.monotonic() + wait, failures)
            return
        self._replay_backoff.pop(seq, None)
        self.outbox.settle(item, ticket.result)
        log.info(
            "node=%s event=outbox_replayed id=%s state=%s queued=%d",
            self.id,
            item.id,
            item.state,
            self.outbox.count(),
        )
        self.events.add(item.event())

    def _take_notices(self) -> None:
        """Conflicts the state machine opened or resolved: watch events, and
        a critical one raised loudly."""
        for notice in self.kv.take_notices():
            self.events.add({k: v for k, v in notice.items() if k != "keys" or len(v) > 1})
            if notice["status"] != "open":
                continue
            self.conflicts_opened[bool(notice["critical"])] += 1
            if notice["critical"]:
                log.warning(
                    "node=%s event=critical_conflict id=%s key=%s component=%s action=%r",
                    self.id,
                    notice["id"],
                    notice["key"],
                    notice["component"],
                    "a write to a critical component was kept for a person: see GET /v1/conflicts and resolve "
                    "it with POST /v1/conflicts/{id}/resolve (or hana-node conflicts resolve)",
                )

    def report_unreachable(self, peer: str) -> None:
        self.raw.report_unreachable(peer)

    def peer_closed(self, peer: str) -> None:
        """The transport saw `peer` close every connection with this node (end
        of stream or reset from its side, in both directions): its process
        is gone. A crash closes sockets, a pulled cable does not, so this is
        the fast path of a failover; an isolated controller still costs an
        election timeout. If `peer` is the controller this voter follows, it
        forgets it and campaigns at once or takes its turn (see
        Raft.leader_connection_lost); writes forwarded to it are retried as
        soon as a successor is known (`_on_soft_state`)."""
        if self.stopping:
            return
        raw = self.raw
        if not raw.leader_connection_lost(peer):
            return
        log.info(
            "node=%s event=leader_connection_lost peer=%s term=%d campaign=%s",
            self.id,
            peer,
            raw.term,
            "now" if raw.role != Role.FOLLOWER else "turn" if raw.lost_leader_wait else "other",
        )
        self._sync_members()
        self._flush_urgent()

    def report_snapshot(self, peer: str, ok: bool) -> None:
        if self.stopping:
            return
        self.raw.report_snapshot(peer, ok)
        self._flush_urgent()

    def _flush_urgent(self) -> None:
        for m in self.raw.take_urgent():
            self.transport.send(m)

    # -- writes -------------------------------------------------------------------------

    def propose(self, command: dict[str, Any]) -> Ticket:
        """Commit `command` (a state-machine command, checked by the caller
        with `kv.prepare`). Raises TooLarge at once; the ticket resolves with
        the state machine's result, NoLeader (not applied) or Timeout."""
        data = self._stamp(command)
        if len(data) > MAX_COMMAND_BYTES:
            raise TooLarge(
                f"the command is {len(data)} bytes encoded, over the limit of {MAX_COMMAND_BYTES} bytes; "
                "send smaller values or split the change",
                limit=MAX_COMMAND_BYTES,
            )
        w = _Write(next(self._serials), data, self.clock.monotonic() + self.cfg.request_timeout)
        if self.stopping:
            w.ticket._resolve(error=NoLeader("node is shutting down"))
            return w.ticket
        self._writes[w.serial] = w
        self._attempt(w)
        self._flush_urgent()
        return w.ticket

    def _stamp(self, command: dict[str, Any]) -> bytes:
        command.setdefault("node", self.id)
        command.setdefault("time", self.clock.wall_ms())
        if self.cfg.merge_ms and command.get("op") in ("put", "delete"):
            command.setdefault("merge_ms", self.cfg.merge_ms)
            if self.cfg.coalesce_history:
                command.setdefault("coalesce", True)
        # A request id, unique across restarts of this node: if a forwarded
        # copy is retried after a leader change, the state machine applies it
        # once and answers the retry with the first result.
        if command.get("op") != "settle" or not isinstance(command.get("rid"), str):
            command["rid"] = f"{self.id}.{self.boot_id}.{next(self._request_seq)}"
        # (A settle keeps the request id its live table gave it, the same on
        # every retry: a gesture is committed once, whatever the retries.)
        return orjson.dumps(command)

    def _stamp_hlc(self, data: bytes) -> bytes:
        """The leader stamps each command with its hybrid logical clock as it
        appends it: the leader has applied every committed change, so its
        stamps follow the log order and last-writer-wins means "the later
        decision wins", whatever the clocks of the nodes that forwarded them.

        Commands are compact orjson objects (`{...}` with no trailing space),
        so the stamp is spliced in before the closing brace instead of
        decoding and re-encoding every write on the controller's hot path."""
        self._hlc = self._hlc.receive(self.kv.clock, self.clock.wall_ms(), self.id)
        if b'"made":"' in data:
            # An offline write (issue 14): what this controller stamps after it
            # comes after the moment it was made.
            self._hlc = self._hlc.receive(_made_stamp(data), self.clock.wall_ms(), self.id)
        stamp = orjson.dumps(self._hlc.encode())
        if len(data) > 2 and data[:1] == b"{" and data[-1:] == b"}":
            return data[:-1] + b',"hlc":' + stamp + b"}"
        return data  # not an object: the state machine rejects it, identically everywhere

    def _attempt(self, w: _Write) -> None:
        """One attempt: append (controller), forward (follower) or wait."""
        while True:
            raw = self.raw
            tried = raw.lead
            if not raw.is_member(self.id) and not w.maybe_appended:
                # The controller serves forwarded writes from members only: a
                # node not (yet, or no longer) in the configuration says so
                # at once rather than waiting for answers that never come.
                self._fail(
                    w,
                    NoLeader(
                        "this node is not a member of the mesh (not added yet, or removed); "
                        "write through a member, or wait until the controller adds this node"
                    ),
                )
                return
            if raw.role == Role.LEADER:
                w.tried = tried
                if not self._caught_up():
                    w.state = HELD
                    self._held[w.serial] = w
                    return
                try:
                    index = self.replica.propose(self._stamp_hlc(w.data), token=w)
                except ProposalDropped as exc:
                    # A transfer in progress, or removed: retry at once if a
                    # new leader is already known, else wait for one.
                    if self._dropped(w, exc.reason):
                        continue
                    return
                w.state, w.index, w.term = APPENDED, index, raw.term
                self.metrics.proposal("appended")
                return
            if raw.lead is not None:
                self._forward(w, raw.lead)
                return
            self._wait(w, "no controller known")
            return

    def _caught_up(self) -> bool:
        """This controller applied every entry of the terms before its own
        (its term's first entry is applied). Until then it appends nothing:
        its hybrid logical clock has not seen the stamps of those entries,
        and a stamp it gave now could be older than theirs, so that a write
        decided later would lose to an earlier one under last-writer-wins
        (found by the whole-node simulator, with skewed wall clocks)."""
        term = self.raw.term
        if self._caught_up_in == term:
            return True
        if self.raw.term_at(self.replica.applied) != term:
            return False
        self._caught_up_in = term  # applied only moves on within the term
        return True

    def _release_held(self) -> None:
        """After an apply or a role change: what the controller held goes on."""
        if not self._held and not self._held_forwards:
            return
        leading = self.raw.role == Role.LEADER
        if leading and not self._caught_up():
            return
        held, self._held = self._held, {}
        forwards, self._held_forwards = self._held_forwards, []
        for w in held.values():
            if w.state == HELD:
                self._attempt(w)
        for req in forwards:
            if leading:
                self._serve_forward(req)
            else:
                self.transport.send(
                    ForwardResponse(req.frm, self.id, req.id, error="leadership changed", leader=self.raw.lead)
                )

    def _dropped(self, w: _Write, reason: str) -> bool:
        """An attempt failed without reaching a log: True to retry at once (a
        new leader is known), else the write waits for one."""
        if self.raw.lead in (None, w.tried):
            self._wait(w, reason)
            return False
        return True

    def _wait(self, w: _Write, reason: str) -> None:
        """Wait for a controller: look again on a leader change or after
        WAIT_TICKS ticks; at the deadline, no controller was reachable."""
        if self.clock.monotonic() >= w.deadline:
            self._fail(w, NoLeader(f"no controller reachable ({reason})"))
            return
        w.state, w.reason, w.wait_ticks = WAITING, reason, WAIT_TICKS

    def _forward(self, w: _Write, leader: str) -> None:
        now = self.clock.monotonic()
        req = ForwardRequest(leader, self.id, next(self._forward_ids), w.data)
        w.state, w.tried, w.forward = FORWARDED, leader, req
        w.forward_expires = now + max(0.01, min(w.deadline - now, self.cfg.forward_timeout))
        self._forwards[req.id] = w
        self.transport.send(req)

    def _forward_unanswered(self, w: _Write, reason: str) -> None:
        """A forward got no answer in time, or its controller changed."""
        req = w.forward
        assert req is not None
        self._forwards.pop(req.id, None)
        w.forward = None
        leader = req.to
        if self.transport.withdraw(req):
            # Never written to a connection: certainly not appended.
            if self.clock.monotonic() >= w.deadline:
                self._fail(w, NoLeader(f"controller {leader} unreachable; the write was not sent"))
            elif self._dropped(w, f"{reason}; not sent"):
                self._attempt(w)
            return
        # It may have reached the controller's log, and a successor may
        # commit it: from now on no failure of this write is a definite one.
        w.maybe_appended = True
        if self.clock.monotonic() >= w.deadline:
            self._fail(w, Timeout(f"controller {leader} did not answer; the outcome of this write is unknown"))
        elif self._dropped(w, reason):
            self._attempt(w)

    def _forward_answered(self, resp: ForwardResponse) -> None:
        w = self._forwards.get(resp.id)
        if w is None or w.state != FORWARDED or w.forward is None or resp.frm != w.forward.to:
            return  # an answer to an attempt given up on (or not ours)
        del self._forwards[resp.id]
        w.forward = None
        if resp.rejection is not None:
            # The command itself is invalid: final, nothing in any log.
            self._done(w, {"error": dict(resp.rejection)})
        elif resp.error:
            if self._dropped(w, resp.error):
                self._attempt(w)
        else:
            w.state, w.index, w.term = APPENDED, resp.index, resp.term
            self.metrics.proposal("appended")
            outcome = self.replica.expect(resp.index, resp.term, token=w)
            if outcome is not None:
                self._on_outcome(outcome)

    def _may_commit(self, w: _Write) -> bool:
        """The entry of an appended write may still commit: it was appended in
        the current term, or this node's log holds it (index and term)."""
        if w.index <= self.replica.applied:
            return False  # applied already: its outcome came (or never will)
        return w.term == self.raw.term or self.raw.term_at(w.index) == w.term

    def _fail(self, w: _Write, error: MeshError) -> None:
        if isinstance(error, NoLeader) and w.maybe_appended:
            # An earlier forward went unanswered: the controller may have
            # appended it, and it may yet commit. Saying "nothing happened"
            # (503) would be a lie; the client must treat it as unknown.
            error = Timeout(f"{error}; an earlier attempt may have been applied, so the outcome is unknown")
        self._finish_write(w)
        w.ticket._resolve(error=error)

    def _done(self, w: _Write, result: Any) -> None:
        self._finish_write(w)
        w.ticket._resolve(result)

    def _finish_write(self, w: _Write) -> None:
        w.state = DONE
        self._writes.pop(w.serial, None)
        self._held.pop(w.serial, None)
        if w.forward is not None:
            self._forwards.pop(w.forward.id, None)
            w.forward = None

    # -- the controller's side of forwarding ---------------------------------------------

    def _serve_forward(self, req: ForwardRequest) -> None:
        if not self.raw.is_member(req.frm):
            # Only members of the applied configuration may write through the
            # controller; anyone else with the secret gets nothing, not even
            # an answer.
            self._refuse_forward(req, "not_member")
            return
        rejection = self._check_forwarded(req)
        if rejection is not None:
            self._refuse_forward(req, rejection["code"])
            self.transport.send(ForwardResponse(req.frm, self.id, req.id, rejection=rejection))
            return
        if self.raw.role == Role.LEADER and not self._caught_up():
            if len(self._held_forwards) < MAX_HELD_FORWARDS:
                self._held_forwards.append(req)
                return
            resp = ForwardResponse(req.frm, self.id, req.id, error="the controller is catching up", leader=self.id)
            self.transport.send(resp)
            return
        try:
            index = self.replica.propose(self._stamp_hlc(req.data))
            self.raw.hurry(req.frm, index)  # a paced learner waits to apply it
            resp = ForwardResponse(req.frm, self.id, req.id, index=index, term=self.raw.term)
        except ProposalDropped as exc:
            resp = ForwardResponse(req.frm, self.id, req.id, error=exc.reason, leader=exc.leader)
        self.transport.send(resp)

    def _check_forwarded(self, req: ForwardRequest) -> dict[str, str] | None:
        """The state machine's own stateless checks, on the controller too:
        a member's API checked the command already, but nothing invalid
        reaches the log whoever sent it."""
        if len(req.data) > MAX_COMMAND_BYTES:
            return {"code": "too_large", "message": f"command of {len(req.data)} bytes exceeds {MAX_COMMAND_BYTES}"}
        try:
            self.kv.prevalidate(orjson.loads(req.data))
        except orjson.JSONDecodeError as exc:
            return {"code": "invalid_command", "message": f"command is not JSON: {exc}"}
        except CommandError as exc:
            return {"code": exc.code, "message": str(exc)[:4096] or exc.code}
        return None

    def _refuse_forward(self, req: ForwardRequest, reason: str) -> None:
        self.metrics.forward_refused(reason)
        self._rlog.warning(
            f"fwd:{reason}",  # not per sender: ids are the sender's to choose
            "node=%s event=forward_refused reason=%s from=%s bytes=%d term=%d",
            self.id,
            reason,
            req.frm,
            len(req.data),
            self.raw.term,
        )

    # -- reads --------------------------------------------------------------------------

    def read(self, linearizable: bool) -> Ticket:
        """A read barrier: resolves (None) once the local state may serve a
        read of that consistency; for linearizable, after a ReadIndex round
        confirmed the controller and this node applied up to its index.
        Fails with NoLeader."""
        r = _Read(next(self._serials), self.clock.monotonic() + self.cfg.request_timeout)
        if not linearizable or "stale_reads" in self.bugs:
            r.ticket._resolve(None)
            return r.ticket
        if self.stopping:
            r.ticket._resolve(error=NoLeader("node is shutting down"))
            return r.ticket
        self._reads[r.serial] = r
        self._ask(r)
        self._flush_urgent()
        return r.ticket

    def _ask(self, r: _Read) -> None:
        # Unique across restarts: an answer to a read of an earlier life of
        # this node must not release a read of this one.
        ctx = f"{self.id}:{self.boot_id}:{next(self._read_seq)}".encode()
        try:
            self.replica.read_index(ctx)
        except ProposalDropped as exc:
            self._read_wait(r, exc.reason)
            return
        r.context, r.asked_ticks = ctx, 0
        self._asked[ctx] = r

    def _read_wait(self, r: _Read, reason: str) -> None:
        if r.context:
            self._asked.pop(r.context, None)
            r.context = b""
        if self.clock.monotonic() >= r.deadline:
            self._read_failed(r, NoLeader(f"no controller reachable ({reason})"))
            return
        r.reason, r.wait_ticks = reason, WAIT_TICKS

    def _read_failed(self, r: _Read, error: MeshError) -> None:
        self._reads.pop(r.serial, None)
        if r.context:
            self._asked.pop(r.context, None)
        r.ticket._resolve(error=error)

    def _on_read(self, out: ReadOutcome) -> None:
        r = self._asked.pop(out.context, None)
        if r is None:
            return
        self._reads.pop(r.serial, None)
        r.ticket._resolve(None)

    # -- membership ---------------------------------------------------------------------

    def change_membership(self, cc: ConfChange) -> Ticket:
        """Propose one membership change on the controller; the ticket
        resolves once it is applied here ({"index", "term", "conf"}), or with
        NoLeader (replaced) or Timeout (unknown). Raises NotLeader on any
        other node, Conflict if the change is refused (one already pending,
        a no-op, removing the last voter)."""
        raw = self.raw
        if raw.role != Role.LEADER or self.stopping:
            raise NotLeader(f"membership changes go to the controller ({raw.lead or 'unknown'})", leader=raw.lead)
        c = _Change(next(self._serials), self.clock.monotonic() + self.cfg.request_timeout)
        try:
            c.index = self.replica.propose_conf_change(cc, token=c)
        except ProposalDropped as exc:
            raise Conflict(exc.reason, code="membership_refused") from exc
        c.term = raw.term
        self._changes[c.serial] = c
        log.info(
            "node=%s event=membership_proposed term=%d index=%d change=%s member=%s",
            self.id,
            c.term,
            c.index,
            cc.type,
            cc.node,
        )
        self._flush_urgent()
        return c.ticket

    def peer_health(self) -> dict[str, tuple[float | None, int]]:
        """On the leader, per member: the monotonic time a frame last
        arrived from it (None: never) and its match index."""
        now = self.clock.monotonic()
        heard = self.transport.last_heard
        return {
            nid: (now if nid == self.id else heard.get(nid), pr.match)
            for nid, pr in self.raw.progress(any_role=True).items()
        }

    def autopilot(self, discovered: Iterable[str], limits: autopilot.Limits) -> ConfChange | None:
        """On the controller: the one membership change the autopilot wants
        now (mesh/node/autopilot.py decides), carrying who and why for the
        audit trail; None when there is nothing to do or this node does not
        lead. The caller proposes it with `change_membership`."""
        raw = self.raw
        if raw.role != Role.LEADER:
            self._autopilot_was_leader = False
            return None
        now = self.clock.monotonic()
        if self._autopilot is None or self._autopilot.limits != limits:
            self._autopilot = autopilot.HealthTracker(limits)
        if not self._autopilot_was_leader:
            # Members are judged from when this node began to lead.
            self._autopilot.reset()
            self._autopilot_was_leader = True
        last_index = raw.last_index
        health = self._autopilot.observe(now, last_index, self.peer_health())
        conf = raw.conf_state()
        changes = autopilot.decide(
            leader=self.id,
            voters=conf.voters,
            learners=conf.learners,
            health=health,
            leader_last_index=last_index,
            discovered=discovered,
            limits=limits,
            now=now,
            pending=raw.conf_change_pending(),
        )
        if not changes:
            return None
        reason = autopilot.describe(changes[0], conf, health.get(changes[0].node), now, limits)
        cc = replace(changes[0], context={"author": "autopilot", "node": self.id, "reason": reason})
        log.info(
            "node=%s term=%d event=autopilot_change change=%s member=%s reason=%s",
            self.id,
            raw.term,
            cc.type,
            cc.node,
            reason,
        )
        return cc

    # -- handover and the disk ------------------------------------------------------------

    def handover(self) -> str | None:
        """On a leader with other voters: start transferring leadership to
        the best successor (recently active, most caught up) and return it;
        the driver waits (about an election timeout) for the role to change.
        None when there is nobody to hand over to."""
        target = self._best_successor()
        if target is None:
            return None
        log.info("node=%s event=transfer_leadership to=%s term=%d", self.id, target, self.raw.term)
        self.replica.transfer_leader(target)
        self._flush_urgent()
        return target

    def _best_successor(self) -> str | None:
        progress = self.raw.progress()
        voters = [v for v in self.raw.members()[0] if v != self.id and v in progress]
        if self.raw.role != Role.LEADER or not voters:
            return None
        return min(voters, key=lambda v: (not progress[v].recent_active, -progress[v].match, v))

    def _watch_disk(self) -> None:
        """A leader whose fsync hangs can still heartbeat (heartbeats bypass
        the disk) but commits nothing: hand leadership to a healthy follower
        instead of stalling the mesh (consul issue 3552)."""
        started = self._sync_started
        if started is None or self._slow_sync_reported:
            return
        stalled = self.clock.monotonic() - started
        if stalled < self.cfg.tick * self.cfg.election_ticks:
            return
        self._slow_sync_reported = True
        raw = self.raw
        log.warning(
            "node=%s event=slow_fsync term=%d index=%d stalled_ms=%.0f",
            self.id,
            raw.term,
            raw.last_index,
            stalled * 1000,
        )
        if raw.role == Role.LEADER:
            # A transfer would wait for the successor to receive entries this
            # node cannot release before its fsync returns: step down instead.
            # Its Readies are blocked, so it cannot win an election meanwhile.
            log.warning("node=%s event=step_down term=%d reason=slow_disk", self.id, raw.term)
            self.raw.step_down()

    # -- timers ---------------------------------------------------------------------------

    def _expire(self) -> None:
        """Deadlines and retries, looked at on every tick."""
        now = self.clock.monotonic()
        for w in list(self._writes.values()):
            if w.state == WAITING:
                if now >= w.deadline:
                    self._fail(w, NoLeader(f"no controller reachable ({w.reason})"))
                else:
                    w.wait_ticks -= 1
                    if w.wait_ticks <= 0:
                        self._attempt(w)
            elif w.state == FORWARDED:
                if now >= w.forward_expires:
                    self._forward_unanswered(w, "forward timed out")
            elif w.state == HELD and now >= w.deadline:
                self._fail(w, NoLeader("the new controller did not catch up in time; the write was not appended"))
            elif w.state == APPENDED and now >= w.deadline and w.remembered and self._may_commit(w):
                # A replay in a log that may still commit it: nobody waits on
                # it, so wait on rather than append copy after copy.
                w.deadline = now + self.cfg.request_timeout
            elif w.state == APPENDED and now >= w.deadline:
                self._fail(
                    w, Timeout(f"write not applied within {self.cfg.request_timeout:g}s; the outcome is unknown")
                )
        for r in list(self._reads.values()):
            if r.context:
                r.asked_ticks += 1
                if now >= r.deadline:
                    self._read_failed(r, NoLeader("could not confirm the controller for a linearizable read"))
                elif r.asked_ticks >= READ_RETRY_TICKS:
                    self._asked.pop(r.context, None)
                    r.context = b""
                    self._ask(r)
            elif now >= r.deadline:
                self._read_failed(r, NoLeader(f"no controller reachable ({r.reason})"))
            else:
                r.wait_ticks -= 1
                if r.wait_ticks <= 0:
                    self._ask(r)
        for c in list(self._changes.values()):
            if now >= c.deadline:
                self._changes.pop(c.serial, None)
                c.ticket._resolve(
                    error=Timeout(f"membership change at {c.index} not applied in time; the outcome is unknown")
                )

    # -- the Ready --------------------------------------------------------------------------

    def has_ready(self) -> bool:
        return self.replica.has_ready()

    def ready(self) -> Ready:
        """Step 1 of the IO contract: persist the Ready's writes (not yet
        durable) and send what may leave before they are: a leader's appends
        and heartbeats, so the followers write while this node fsyncs."""
        rd = self.replica.ready()
        self._sync_members()
        for lost in rd.lost_logs:
            self.metrics.lost_log()
            log.error(
                "node=%s event=follower_lost_log peer=%s term=%d match=%d hint=%d action=%r",
                self.id,
                lost.node,
                self.raw.term,
                lost.match,
                lost.hint,
                "the member lost entries it had acknowledged (data directory deleted or damaged?); it is being "
                "caught up by appends or a snapshot. A voter that loses its data can leave committed writes on "
                "fewer than a majority: remove such a voter and add it back as a learner instead of restarting "
                "it empty",
            )
        early = self.replica.persist(rd)
        for m in early:
            self.transport.send(m)
        if rd.must_sync:
            self._sync_started = self.clock.monotonic()
        return rd

    def sync(self) -> None:
        """Step 2: make step 1's writes durable. Touches the storage only, so
        a driver may run it on a worker thread while it feeds inputs."""
        self.replica.sync()

    def finish(self, rd: Ready) -> Finished:
        """Step 3: send what waited for the disk, apply, resolve tickets."""
        self._sync_started = None
        self._slow_sync_reported = False
        out = self.replica.finish(rd)
        for m in out.messages:
            self.transport.send(m)
        leader_changed = rd.soft_state is not None and self._on_soft_state()
        for p in out.proposals:
            self._on_outcome(p)
        if out.installed is not None:
            meta = out.installed.meta
            log.info(
                "node=%s event=snapshot_installed term=%d index=%d snapshot_term=%d bytes=%d",
                self.id,
                self.raw.term,
                meta.index,
                meta.term,
                len(out.installed.data),
            )
        for read in out.reads:
            self._on_read(read)
        if out.applied or leader_changed:
            self._release_held()
        if out.applied or out.installed is not None:
            self.live.on_applied()
        if out.snapshot_taken is not None:
            log.info(
                "node=%s event=snapshot_taken term=%d index=%d bytes=%d",
                self.id,
                self.raw.term,
                out.snapshot_taken.meta.index,
                len(out.snapshot_taken.data),
            )
        self._take_notices()
        self._check_contact()
        self._replay()
        self._flush_urgent()
        return Finished(bool(out.applied) or out.installed is not None, leader_changed, out)

    def handle_ready(self) -> Finished:
        """All three steps at once (tests and simple drivers)."""
        rd = self.ready()
        if rd.must_sync:
            self.sync()
        return self.finish(rd)

    def _on_outcome(self, p: ProposalOutcome) -> None:
        token = p.token
        if not p.ok:
            self.metrics.proposal("failed")
        if isinstance(token, _Write):
            w = token
            if w.state != APPENDED or (w.index, w.term) != (p.index, p.term):
                return  # an attempt given up on
            if p.ok:
                if w.maybe_appended and _changed_nothing(p.result) and not w.remembered:
                    # The state machine answers a second copy of a command
                    # with the first one's result only if the first changed
                    # something; a copy of this write still in flight (an
                    # earlier forward went unanswered) may apply later, when
                    # the state lets it. So "it did not happen" is not known
                    # (found by the whole-node simulator: a 409 whose write
                    # an earlier copy made later).
                    self._fail(
                        w,
                        Timeout(
                            f"entry {p.index} did not change anything, but an earlier copy of this write may "
                            "still be applied; the outcome is unknown"
                        ),
                    )
                else:
                    self._done(w, p.result)
            elif p.unknown:
                self._fail(w, Timeout(f"entry {p.index}: {p.reason}"))
            else:
                self._fail(w, NoLeader(f"entry {p.index} was replaced after a leader change; retry"))
        elif isinstance(token, _Change):
            c = token
            if self._changes.pop(c.serial, None) is None:
                return
            if p.ok:
                c.ticket._resolve({"index": c.index, "term": c.term, "conf": self.raw.conf_state().to_dict()})
            elif p.unknown:
                c.ticket._resolve(error=Timeout(f"membership change at {c.index}: {p.reason}"))
            else:
                c.ticket._resolve(
                    error=NoLeader(f"membership change at {c.index} was replaced after a leader change; retry")
                )

    def _on_soft_state(self) -> bool:
        raw = self.raw
        if raw.role == self._last_role and raw.lead == self._last_leader:
            return False
        log.info(
            "node=%s event=role_change role=%s term=%d leader=%s commit=%d%s",
            self.id,
            raw.role,
            raw.term,
            raw.lead,
            raw.committed,
            # Why it campaigned (e.g. connection_lost: its controller's process died).
            f" campaign={raw.campaign_cause}" if raw.role != Role.FOLLOWER and raw.campaign_cause else "",
        )
        if raw.role == Role.LEADER and self._last_role != Role.LEADER:
            self.metrics.leader_elected()
            self.contact.hear(self.clock.monotonic())
        leader_moved = raw.lead != self._last_leader
        if leader_moved and raw.lead is not None and self._was_connected:
            self.events.add({"type": "status", "connected": True, "leader": raw.lead})
        self._last_role = raw.role
        self._last_leader = raw.lead
        if raw.lead is not None:
            self._followed = raw.lead
        # Requests waiting for a controller look again now; those failed
        # below wait for the next change (or WAIT_TICKS).
        waiting = [w for w in self._writes.values() if w.state == WAITING]
        waiting_reads = [r for r in self._reads.values() if not r.context]
        if leader_moved:
            # Writes forwarded to the old leader will get no answer: retry
            # them with the new one now rather than at a timeout.
            for w in [w for w in self._writes.values() if w.state == FORWARDED]:
                self._forward_unanswered(w, "the leader changed")
        if raw.role != Role.LEADER:
            for r in [r for r in self._reads.values() if r.context]:
                self._read_wait(r, "leadership changed during a read")
        for w in waiting:
            if w.state == WAITING:
                self._attempt(w)
        for r in waiting_reads:
            if not r.context and r.serial in self._reads:
                self._ask(r)
        return True

    def _up_to_date(self, m: Message) -> bool:
        """A vote request from a log at least as recent as this node's."""
        raw = self.raw
        last_term = raw.last_term
        return m.log_term > last_term or (m.log_term == last_term and m.index >= raw.last_index)

    def _sync_members(self) -> None:
        """Tell the transport whom to dial: the members of the applied
        configuration, plus the leader we follow (a follower whose
        configuration is behind must still answer it), plus, while no leader
        is known, the candidates whose logs are at least as recent as ours
        for the term they asked in: they may be voters of a configuration
        this node has not applied yet, and an election may need its vote
        (found by the whole-node simulator: a lagging voter could not answer
        the only candidates that could win, and no leader was ever elected).
        A node that is not a member itself (joining) dials every address it
        knows. Cheap enough for every message: the configuration's sets
        change only on a change."""
        raw = self.raw
        voters, learners = raw.members()
        lead = raw.lead
        candidates = self._candidates
        extra: frozenset[str] = frozenset()
        if candidates:
            if lead is not None:
                candidates.clear()
            else:
                for c in [c for c, t in candidates.items() if t < raw.term]:
                    del candidates[c]
                extra = frozenset(candidates)
        seen = self._dial_key
        if seen is not None and seen[0] is voters and seen[1] is learners and seen[2] == lead and seen[3] == extra:
            return
        self._dial_key = (voters, learners, lead, extra)
        members = set(voters | learners)
        if self.id not in members:
            self.transport.set_members(None)
            return
        if lead is not None:
            members.add(lead)
        members |= extra
        members.discard(self.id)
        self.transport.set_members(members)

    def _live_peers(self) -> list[str]:
        """Whom live values go to: every member but this node."""
        voters, learners = self.raw.members()
        return sorted(p for p in voters | learners if p != self.id)  # a fixed order: the simulator replays it

    # -- watches ----------------------------------------------------------------------------

    def open_watch(self, prefix: str, since: int) -> WatchCursor:
        """A watcher's position: every change under `prefix` from revision
        `since` on (a watcher that resumes gives the last revision it saw)."""
        return WatchCursor(self.kv, prefix, since)

    # -- shutting down ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Answer everything pending and ignore further inputs."""
        self.stopping = True
        self._held_forwards = []
        for w in list(self._writes.values()):
            if w.state in (APPENDED, FORWARDED) or w.maybe_appended:
                # In a log (or maybe): it may still commit.
                self._fail(w, Timeout("node is shutting down; the outcome of this write is unknown"))
            else:
                self._fail(w, NoLeader("node is shutting down; the write was not sent"))
        for r in list(self._reads.values()):
            self._read_failed(r, NoLeader("node is shutting down"))
        for c in list(self._changes.values()):
            self._changes.pop(c.serial, None)
            c.ticket._resolve(error=Timeout(f"node is shutting down; membership change at {c.index} is unknown"))

    # -- status -------------------------------------------------------------------------------

    @property
    def role(self) -> Role:
        return self.raw.role

    @property
    def applied(self) -> int:
        return self.replica.applied

    def pending(self) -> int:
        """Requests not resolved yet (writes, reads, membership changes)."""
        return len(self._writes) + len(self._reads) + len(self._changes)

    def status(self, raft_address: tuple[str, int]) -> dict[str, Any]:
        """The `GET /v1/status` document."""
        raw = self.raw
        conf = raw.conf_state()
        now = self.clock.monotonic()
        progress = raw.progress()
        transport = self.transport
        addresses = transport.peers()
        members = []
        for nid in conf.members():
            pr = progress.get(nid)
            if nid == self.id:
                raft_addr: str | None = f"{raft_address[0]}:{raft_address[1]}"
                api: str | None = self.cfg.api_address
                last_contact: float | None = 0.0
            else:
                addr = addresses.get(nid)
                raft_addr = f"{addr[0]}:{addr[1]}" if addr else None
                api = transport.peer_api.get(nid) or None
                heard = transport.last_heard.get(nid)
                if raw.role != Role.LEADER and nid not in (raw.lead, self._followed):
                    # Followers hear each other only now and then (a vote, a
                    # node's live interest): an age from that says nothing
                    # of the member's health. The controller's page judges it.
                    # The controller this node followed last keeps its age,
                    # also once lost (its page says how long it is cut off).
                    heard = None
                last_contact = round((now - heard) * 1000, 1) if heard is not None else None
            if nid == raw.lead:
                role = "leader"
            elif nid in conf.learners:
                role = "learner"
            else:
                role = "follower"
            members.append(
                {
                    "id": nid,
                    "raft": raft_addr,
                    "api": api,
                    "voter": nid in conf.voters,
                    "role": role,
                    "match_index": pr.match if pr is not None else None,
                    "last_contact_ms": last_contact,
                }
            )
        return {
            "id": self.id,
            "cluster": self.cfg.cluster,
            "role": "learner" if raw.is_learner() else str(raw.role),
            "term": raw.term,
            "leader": raw.lead,
            "commit_index": raw.committed,
            "applied_index": self.replica.applied,
            "revision": self.kv.revision,
            "members": members,
            "connected": self.connected(),
            "controller_contact_ms": self.controller_contact_ms(),
        }
