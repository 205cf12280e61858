"""Live parameters: values that move at frame rate beside the log. Sans-IO.

A fader sends 60-120 values a second; each one through the fsynced,
replicated log would be an fsync, a history record and an undo step. So a
live value travels outside the log (`LiveTable`), to every node, and only a
gesture's final values are committed, once, when it ends.

The live table of one node (driven by the node core, which is driven by
the runtime or the simulator; no clock but the injected `Clock`, no IO but
`Transport.send`, no asyncio):

- `set(values, gesture, author, role)` on the node a client talks to (the
  origin): validated as a write of each key would be (`HanaState.prevalidate`
  of the equivalent put, so an unknown component or an invalid value raises
  `StateError` and goes nowhere), stamped with this node's next live
  sequence number, put in the live view, handed to local subscribers and
  sent to every peer (`LiveFrame`, on the transport's live queue).
- `receive(frame)`: values from a peer. Per (source, key) only a higher
  sequence number is taken: per key the last value wins, older ones may be
  skipped, nothing goes backwards (a source's numbers start from its wall
  clock at boot, so they keep growing across its restarts).
- `tick()`: a gesture without a new value for `settle_ms`, or ended
  (`end(gesture)`), settles: its origin proposes one `settle` command (see
  mesh/state/gestures.py) with each key's final value, retried until it
  commits (or for `SETTLE_GIVE_UP` seconds). While a gesture is open its
  origin re-sends its latest values every `resend_ms`, so a node that
  missed values (a pause, a partition, a dropped connection) converges as
  soon as it hears again. Entries not refreshed for `expire_ms` leave the
  view (an origin that died mid-gesture).
- `on_applied()` (after the state machine applied entries): a history
  record of a settled gesture takes its keys out of the live view (the
  state holds the value now) and raises the floor of (origin, key) to the
  gesture's last sequence number, so a live value of it still in flight is
  dropped; a subscriber that missed the final value gets it then.

The live view of a key is its live entry, else the state's value
(`value(key)`). Everything is bounded: keys in the view (`max_keys`),
open gestures, keys per gesture, a value's size, sequence floors,
subscriber buffers (which coalesce per key when their consumer is slow).

Fan-out is direct (the origin sends to every peer), chosen by measurement
(bench/live.py `--fanout direct|relay`, 64 parameters at 120 Hz from one
follower to a subscriber on the other, 3 nodes on this 2-core machine):
direct delivered at p50 1.17 ms / p99 4.93 ms with the controller at 3% of
a core; through the controller p50 1.65 ms / p99 6.14 ms with it at 6%.
The relay adds a hop of queueing and event-loop latency for every
subscriber not on the controller, and puts every value of every gesture
on the one node that also orders every write, for no ordering gain (order
is per source and per key, which direct delivery keeps). What the relay
would save, the origin's sends to N-1 peers, is one coalesced frame per
peer per batch (cheap at hana's up to 100 peers). `fanout="relay"` (the
controller re-sends to the others) stays for that comparison.

Only to the nodes that want them: every node tells its peers which
prefixes its subscribers watch (`LiveInterest`: on a change, to a peer not
told yet, and again every `INTEREST_EVERY_*` seconds), and an origin sends
a peer only the values under them (to a peer it has not heard from yet,
everything). A node without a subscriber (the controller, typically) then
spends nothing on a gesture it would only drop at the settle: measured by
bench/live.py, the controller's live CPU went from 6-7 % of a core to
nothing, and the concurrent PUT rate under the live load rose accordingly.
A peer that starts wanting keys is sent the open gestures' current values
of them at once, so its new subscriber converges without waiting for the
next re-send.

Per value, a fader's tick (one set of 64 keys, 120 times a second) costs as
little Python as a batch allows (bench/live_path.py: 4.8 -> 1.9 us per value
over source, wire and subscriber): a set of known keys is validated in one
pass (`_batch_ok`: the state machine's `check_value` over the batch, its
schema skipped only for a component whose schema takes any JSON value,
cached per key and per registry); which keys a subscriber or a peer wants is
decided once per batch of keys (`_plan`); this node's own floors are raised
per batch; view entries and other sources' floors are updated in place; a
subscriber's sink and a peer's live queue hold a batch as it came while
nothing else waits (merged, one item at a time as before, when something
does). What a tick still costs a node is mostly per message, not per value:
the WebSocket read, the event loop's wake-ups, the peer frame's MAC, seal
and write (bench/live.py --params 1 against 64).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import Any, Protocol

import orjson

from mesh.clock import Clock
from mesh.errors import MeshError
from mesh.state.commands import check_put_value
from mesh.state.components import Component, Registry
from mesh.state.errors import StateError
from mesh.state.kv import ChangeRecord, CommandError, Compacted
from mesh.state.limits import MAX_DEPTH, MAX_NAME_CHARS
from mesh.state.model import HanaState
from mesh.state.values import check_value
from mesh.transport.base import Transport
from mesh.transport.codec import MAX_INTEREST_PREFIXES, MAX_LIVE_ITEMS, LiveFrame, LiveInterest, LiveItem

log = logging.getLogger("mesh.node")

# A live value's encoded size, at most (bigger ones are ordinary writes).
MAX_LIVE_VALUE_BYTES = 16 << 10
MAX_OPEN_GESTURES = 256
MAX_GESTURE_KEYS = 1024
# A settle that could not commit is retried this long, then given up (logged).
SETTLE_GIVE_UP = 60.0
SETTLE_RETRY = 0.5
FANOUTS = ("direct", "relay")
# How often a node re-tells every peer which live values it wants: with a
# subscriber (a lost "send me" would starve it), and without one (a lost
# "stop" only costs the peer some sends). Also told at once on a change
# and to a peer not told yet.
INTEREST_EVERY_WANTING = 2.0
INTEREST_EVERY_IDLE = 10.0
# A peer that sent values this node does not want is told again, at most
# this often.
INTEREST_REMIND = 1.0
MAX_PEER_INTERESTS = 4096
Interest = tuple[str, ...] | None  # None: every live value

_MISSING = object()
_SMALL_SCALARS = (int, float, bool, type(None))
_SMALL_SCALAR_TYPES = frozenset(_SMALL_SCALARS)
# Which keys of a batch go to a consumer (cached per batch of keys, see
# `LiveTable._plan`): True every one, False none, else their positions.
Selection = bool | list[int]
# Batches of keys whose selections are remembered, at most (a fader sends
# the same keys every tick; a flood of random sets only churns the cache).
MAX_PLANS = 256
_KEY = itemgetter(0)
_VALUE = itemgetter(1)
_SEQ = itemgetter(3)
_SOURCE_GESTURE = itemgetter(2, 4)
# LiveItem((key, value, source, seq, gesture)) without a Python call.
_make_item: Callable[[tuple[str, Any, str, int, str | None]], LiveItem] = partial(tuple.__new__, LiveItem)


@dataclass(frozen=True)
class LiveUpdate:
    """Live values as a subscriber receives them: `values` set by node
    `source` (the highest of their sequence numbers is `seq`), in `gesture`
    (None: set without a gesture id)."""

    values: dict[str, Any]
    gesture: str | None
    source: str
    seq: int


@dataclass(slots=True)
class _Entry:
    value: Any
    source: str
    seq: int
    gesture: str | None
    heard: float


@dataclass(slots=True)
class _Floor:
    seq: int
    settled: bool  # a settle of this origin covered `seq`


@dataclass(slots=True)
class _Gesture:
    gid: str  # the id committed in history: the client's, or made up
    client_id: str | None
    author: str
    role: str
    values: dict[str, Any] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)
    seq: int = 0
    last: float = 0.0
    ended: bool = False


@dataclass(slots=True)
class _Settle:
    command: dict[str, Any]
    gid: str
    started: float
    # When to (re)try; None: not scheduled (in flight, or waiting its turn).
    retry_at: float | None = None
    attempts: int = 0


class _Ticket(Protocol):
    done: bool
    error: MeshError | None
    result: Any
    on_done: Any


class LiveSink:
    """One subscriber's buffer (sans-IO): pending values, the latest per
    key (a slow consumer gets values coalesced, never an unbounded queue),
    at most `limit` keys (beyond, the oldest pending key is dropped).
    `wake()` is called when something arrives."""

    def __init__(self, prefix: str, wake: Callable[[], None], limit: int = 4096) -> None:
        self.prefix = prefix
        self.wake = wake
        self.limit = limit
        # Oldest first (OrderedDict: dropping the oldest is O(1)).
        self._pending: OrderedDict[str, LiveItem] = OrderedDict()
        # A batch held as it came while nothing else is pending (the usual
        # case: the consumer keeps up), so that a fader's tick costs no
        # step per value; merged into `pending` (one push per item, in
        # order) when anything else needs it.
        self._batch: Sequence[LiveItem] | None = None
        self.coalesced = 0
        self.dropped = 0
        self.closed = False

    @property
    def pending(self) -> OrderedDict[str, LiveItem]:
        """What waits for the consumer: the latest item per key, oldest first."""
        if self._batch is not None:
            batch, self._batch = self._batch, None
            for item in batch:
                self.push(item)
        return self._pending

    def has_pending(self) -> bool:
        return self._batch is not None or bool(self._pending)

    def push(self, item: LiveItem) -> None:
        pending = self.pending
        if pending.pop(item.key, None) is not None:
            self.coalesced += 1
        pending[item.key] = item
        if len(pending) > self.limit:
            pending.popitem(last=False)
            self.dropped += 1

    def push_many(self, items: Sequence[LiveItem]) -> None:
        """`push` each item, in order (held as a batch when nothing is
        pending)."""
        if self._batch is None and not self._pending and 0 < len(items) <= self.limit:
            self._batch = items
            return
        for item in items:
            self.push(item)

    def take(self) -> list[LiveUpdate]:
        """Everything pending, as updates grouped by (source, gesture) in
        the order they arrived."""
        batch = self._batch
        if batch is not None and not self._pending and len(set(map(_SOURCE_GESTURE, batch))) == 1:
            # A batch of one source and gesture (the usual case): one
            # update, built without a step per value, unless a key is in
            # it twice (then pushed one by one, below).
            values = dict(zip(map(_KEY, batch), map(_VALUE, batch), strict=True))
            if len(values) == len(batch):
                self._batch = None
                first = batch[0]
                return [LiveUpdate(values, first.gesture, first.source, max(map(_SEQ, batch)))]
        groups: dict[tuple[str, str | None], LiveUpdate] = {}
        seqs: dict[tuple[str, str | None], int] = {}
        for item in self.pending.values():
            slot = (item.source, item.gesture)
            update = groups.get(slot)
            if update is None:
                update = groups[slot] = LiveUpdate({}, item.gesture, item.source, item.seq)
            update.values[item.key] = item.value
            seqs[slot] = max(seqs.get(slot, 0), item.seq)
        self._pending = OrderedDict()
        return [LiveUpdate(u.values, u.gesture, u.source, seqs[s]) for s, u in groups.items()]


class _Event(Protocol):
    def set(self) -> None: ...

    def clear(self) -> None: ...

    async def wait(self) -> Any: ...


class LiveSubscription:
    """An async iterator of `LiveUpdate` over one `LiveSink` (bounded,
    coalescing per key when the consumer is slow); `close()` ends it. The
    event (asyncio.Event in the runtime) is given by the driver, so this
    module imports no asyncio."""

    def __init__(self, table: LiveTable, prefix: str, event: _Event, limit: int = 4096) -> None:
        self._table = table
        self._event = event
        self._ready: deque[LiveUpdate] = deque()
        self.sink = LiveSink(prefix, event.set, limit)
        table.add_sink(self.sink)

    def close(self) -> None:
        if not self.sink.closed:
            self.sink.closed = True
            self._table.remove_sink(self.sink)
            self._event.set()

    def __aiter__(self) -> LiveSubscription:
        return self

    async def __anext__(self) -> LiveUpdate:
        while not self._ready:
            if self.sink.closed:
                raise StopAsyncIteration
            if self.sink.has_pending():
                self._ready.extend(self.sink.take())
                break
            self._event.clear()
            await self._event.wait()
        return self._ready.popleft()


def live_error(code: str, message: str, **extra: Any) -> StateError:
    return StateError(code, message, **extra)


class LiveTable:
    def __init__(
        self,
        node_id: str,
        clock: Clock,
        transport: Transport,
        kv: HanaState,
        *,
        peers: Callable[[], Iterable[str]],
        leader: Callable[[], str | None],
        propose: Callable[[dict[str, Any]], _Ticket],
        settle_ms: int = 250,
        resend_ms: int = 500,
        expire_ms: int = 10_000,
        max_keys: int = 4096,
        fanout: str = "direct",
    ) -> None:
        if fanout not in FANOUTS:
            raise ValueError(f"fanout must be one of {', '.join(FANOUTS)}")
        if settle_ms < 1 or resend_ms < 1 or expire_ms < 1 or max_keys < 1:
            raise ValueError("live timings and limits must be positive")
        self.id = node_id
        self.clock = clock
        self.transport = transport
        self.kv = kv
        self.peers = peers
        self.leader = leader
        self.propose = propose
        self.settle_s = settle_ms / 1000
        self.resend_s = resend_ms / 1000
        self.expire_s = expire_ms / 1000
        self.max_keys = max_keys
        self.fanout = fanout
        # Keys whose name and component passed the state machine's checks,
        # and whether their component's schema takes any JSON value (then
        # a value that is JSON, `check_value`, needs no schema check); for
        # the registry they were looked up in (another one: looked up again).
        self._known: OrderedDict[str, Component] = OrderedDict()
        self._anything: dict[str, bool] = {}
        self._registry: Registry = kv.registry
        # Per batch of keys (a tuple, as a set sent them), which of them
        # each consumer (a subscriber's prefix, a peer's interest) wants.
        self._plans: dict[tuple[str, ...], dict[Interest, Selection]] = {}
        self.view: dict[str, _Entry] = {}
        # Set by end_all (the node is stopping): no new live value is taken.
        self.stopping = False
        # Per (source, key) of another node, the highest live seq taken.
        self.floors: OrderedDict[tuple[str, str], _Floor] = OrderedDict()
        self.max_floors = 4 * max_keys
        # This node's own floors: per key, the highest seq it set or saw
        # settled (only the number counts for them), and the highest of
        # all (a set above it raises a whole batch at once).
        self._own: dict[str, int] = {}
        self._own_high = -1
        self.gestures: dict[tuple[str, str | None], _Gesture] = {}
        self.settles: dict[str, _Settle] = {}
        self.sinks: list[LiveSink] = []
        # Sequence numbers start from the wall clock (ms * 1000), so that
        # they keep growing across restarts of this node.
        self._seq = max(0, clock.wall_ms()) * 1000
        self._next_resend = 0.0
        self._next_expire = 0.0
        # What each peer said it wants (absent: not heard, send everything),
        # what this node last told its peers, whom it told and when.
        self.peer_interest: OrderedDict[str, Interest] = OrderedDict()
        self._interest: Interest = ()
        self._told: dict[str, float] = {}
        self._reminded: dict[str, float] = {}
        # From the oldest record held: a restarted node learns the floors
        # of the gestures settled before (their late live values are stale).
        self._cursor = kv.oldest_revision()
        self.stats: dict[str, int] = {
            "set": 0,
            "received": 0,
            "stale": 0,
            "dropped_full": 0,
            "settled": 0,
            "settle_failed": 0,
            "superseded": 0,
            "expired": 0,
        }

    # -- setting (the origin) ------------------------------------------------------

    def validate(self, values: Any, gesture: Any, author: str, role: str = "operator") -> None:
        """Raise StateError unless `values` could be set (each key as a put
        of the state machine would be checked)."""
        if not isinstance(values, dict) or not values:
            raise live_error("invalid_value", "set needs an object of key: value")
        if len(values) > MAX_GESTURE_KEYS:
            raise live_error("too_large", f"at most {MAX_GESTURE_KEYS} keys per set")
        if gesture is not None and (not isinstance(gesture, str) or not 0 < len(gesture) <= MAX_NAME_CHARS):
            raise live_error("invalid_value", f"gesture must be a string of 1 to {MAX_NAME_CHARS} characters")
        # The state machine's own checks of the equivalent puts: in full
        # (key syntax, component, role, value) the first time a key is set,
        # then the value checks of a put (`check_put_value`) for a key
        # checked before (a fader sends the same keys 120 times a second).
        if self.kv.registry is not self._registry:
            # Components are fixed for a node's life today; if its registry
            # were ever replaced, no key's lookup may outlive it.
            self._registry = self.kv.registry
            self._known.clear()
            self._anything.clear()
        known = self._known
        fresh = [key for key in values if key not in known]
        if fresh or role not in ("operator", "admin"):
            ops = [{"op": "put", "key": key, "value": values[key]} for key in fresh or values]
            try:
                self.kv.prevalidate({"op": "txn", "ops": ops, "author": author, "role": role})
            except StateError as exc:
                exc.extra.pop("op_index", None)
                raise
            for key in fresh:
                if len(known) >= 4 * self.max_keys:
                    self._anything.pop(known.popitem(last=False)[0], None)
                comp = known[key] = self._registry.component_of(key)
                self._anything[key] = comp.schema.accepts_anything()
        elif self._batch_ok(values):
            # Every value passed the checks below, in one pass.
            if len(self.view) + len(values) > self.max_keys:
                for key in values:
                    if key not in self.view and len(self.view) >= self.max_keys:
                        raise live_error("too_large", f"more than {self.max_keys} keys are live at once", key=key)
            return
        for key, value in values.items():
            if key not in fresh:
                check_put_value(known[key], key, value)
            # A number is far below the size limit: not encoded to measure
            # it (a fader sends one per key 120 times a second).
            size = 0 if type(value) in _SMALL_SCALARS else len(orjson.dumps(value))
            if size > MAX_LIVE_VALUE_BYTES:
                raise live_error(
                    "too_large",
                    f"live value of {key} is {size} bytes (limit {MAX_LIVE_VALUE_BYTES}); write it with a PUT",
                    key=key,
                )
            if key not in self.view and len(self.view) >= self.max_keys:
                raise live_error("too_large", f"more than {self.max_keys} keys are live at once", key=key)

    def _batch_ok(self, values: dict[str, Any]) -> bool:
        """True if each of `values` passes the value checks of `validate`
        (`check_put_value`, the live size limit), found in one pass: every
        key known, of a component whose schema takes any JSON value, every
        value a number, a boolean or null (far below any size limit), and
        JSON (the state machine's `check_value`, over the batch at once).
        False: not known this way (the checks run one key at a time, and
        say what is wrong)."""
        if not all(map(self._anything.get, values)):
            return False
        if not set(map(type, values.values())) <= _SMALL_SCALAR_TYPES:
            return False
        try:
            # The batch is one level deeper than each value in it.
            check_value(values, "live values", max_bytes=None, max_depth=MAX_DEPTH + 1)
        except CommandError:
            return False
        return True

    def set(
        self, values: dict[str, Any], gesture: str | None = None, *, author: str, role: str = "operator"
    ) -> LiveUpdate:
        """Validate (raises StateError), then publish: the live view, local
        subscribers, every peer. The values join the open gesture of
        (author, gesture), or open one."""
        self.validate(values, gesture, author, role)
        if self.stopping:
            # The stop settled this node's gestures already; a set now would
            # open a second gesture under the same id (found by the
            # simulator, seed 501090: two history records of one gesture).
            raise live_error("not_ready", "this node is shutting down: send live values to another member")
        slot = (author, gesture)
        g = self.gestures.get(slot)
        if g is None:
            if len(self.gestures) >= MAX_OPEN_GESTURES:
                raise live_error("too_large", f"more than {MAX_OPEN_GESTURES} gestures are open at once")
            g = _Gesture(gesture if gesture is not None else f"{self.id}.{self._seq + 1}", gesture, author, role)
            self.gestures[slot] = g
        if len(g.values) + len(values) > MAX_GESTURE_KEYS and len(g.values.keys() | values.keys()) > MAX_GESTURE_KEYS:
            raise live_error("too_large", f"a gesture moves at most {MAX_GESTURE_KEYS} keys")
        self._seq += 1
        seq = self._seq
        now = self.clock.monotonic()
        g.ended = False
        g.last = now
        g.seq = seq
        seqs = dict.fromkeys(values, seq)
        g.values.update(values)
        g.seqs.update(seqs)
        sid = self.id
        view = self.view
        for key, value in values.items():
            entry = view.get(key)
            if entry is None:
                view[key] = _Entry(value, sid, seq, gesture, now)
            else:
                entry.value, entry.source, entry.seq, entry.gesture, entry.heard = value, sid, seq, gesture, now
        if seq > self._own_high:
            # Above every floor of this node's own: raised all at once.
            self._own.update(seqs)
            self._own_high = seq
            self._trim_own()
        else:  # its clock went back across a restart
            for key in values:
                self._raise_floor(sid, key, seq, False)
        items = list(map(_make_item, zip(values, values.values(), repeat(sid), repeat(seq), repeat(gesture))))
        self.stats["set"] += len(items)
        keys = tuple(values)
        self._deliver(items, keys)
        self._send(items, exclude=(), keys=keys)
        return LiveUpdate(dict(values), gesture, self.id, seq)

    def end(self, gesture: str, *, author: str) -> bool:
        """End `author`'s open gesture `gesture`: it settles on the next
        tick. False if no such gesture is open (already settled, say)."""
        g = self.gestures.get((author, gesture))
        if g is None:
            return False
        g.ended = True
        return True

    def end_all(self) -> int:
        """End every open gesture (the node is stopping): they settle on
        the next tick, and no new value is taken from now on. Returns how
        many."""
        self.stopping = True
        for g in self.gestures.values():
            g.ended = True
        return len(self.gestures)

    def _send(self, items: list[LiveItem], exclude: Iterable[str], keys: tuple[str, ...] | None = None) -> None:
        if not items:
            return
        if self.fanout == "relay":
            lead = self.leader()
            if lead is not None and lead != self.id:
                # The controller relays: it gets everything, and filters.
                if lead not in exclude:
                    self._send_to(lead, items)
                return
        if keys is None:
            keys = tuple(map(_KEY, items))
        plan = self._plan(keys)
        interests = self.peer_interest
        for peer in self.peers():
            if peer in exclude:
                continue
            wanted = _select(plan, keys, interests.get(peer))
            if wanted is True:
                self._send_to(peer, items)
            elif wanted:
                self._send_to(peer, [items[i] for i in wanted])

    def _plan(self, keys: tuple[str, ...]) -> dict[Interest, Selection]:
        """The selections of the batch `keys` (filled by `_select`)."""
        plan = self._plans.get(keys)
        if plan is None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            plan = self._plans[keys] = {}
        return plan

    def _send_to(self, peer: str, items: list[LiveItem]) -> None:
        if len(items) <= MAX_LIVE_ITEMS:
            self.transport.send(LiveFrame(peer, self.id, tuple(items)))
            return
        for start in range(0, len(items), MAX_LIVE_ITEMS):
            self.transport.send(LiveFrame(peer, self.id, tuple(items[start : start + MAX_LIVE_ITEMS])))

    # -- who wants what ---------------------------------------------------------------

    def interest(self) -> Interest:
        """The prefixes this node's subscribers watch (None: everything)."""
        prefixes = sorted({sink.prefix for sink in self.sinks})
        if "" in prefixes or len(prefixes) > MAX_INTEREST_PREFIXES:
            return None
        # A prefix under another one adds nothing.
        kept: list[str] = []
        for p in prefixes:
            if not kept or not p.startswith(kept[-1]):
                kept.append(p)
        return tuple(kept)

    def _interest_changed(self) -> None:
        interest = self.interest()
        if interest != self._interest:
            self._interest = interest
            self._told.clear()  # tell everyone, on the next tick at the latest
            self._tell_peers(self.clock.monotonic())

    def _tell_peers(self, now: float) -> None:
        every = INTEREST_EVERY_IDLE if self._interest == () else INTEREST_EVERY_WANTING
        for peer in self.peers():
            told = self._told.get(peer)
            if told is None or now - told >= every:
                self._tell(peer, now)
        if len(self._told) > MAX_PEER_INTERESTS:
            keep = set(self.peers())
            self._told = {p: t for p, t in self._told.items() if p in keep}

    def _tell(self, peer: str, now: float) -> None:
        self._told[peer] = now
        self.transport.send(LiveInterest(peer, self.id, self._interest))

    def receive_interest(self, m: LiveInterest) -> None:
        """A peer says which live values it wants. If it wants keys it did
        not want before, it gets the open gestures' current values of them
        now (its new subscriber converges at once)."""
        before = self.peer_interest.pop(m.frm, None)  # not heard: it was sent everything
        self.peer_interest[m.frm] = m.prefixes
        while len(self.peer_interest) > MAX_PEER_INTERESTS:
            self.peer_interest.popitem(last=False)
        if m.prefixes == before:
            return
        newly = [
            item
            for item in _wanted(self._open_items(), m.prefixes)
            if before is not None and not item.key.startswith(before)
        ]
        if newly and m.frm in self.peers():
            self._send_to(m.frm, newly)

    def _open_items(self) -> list[LiveItem]:
        return [
            LiveItem(k, v, self.id, g.seqs[k], g.client_id) for g in self.gestures.values() for k, v in g.values.items()
        ]

    def _remind(self, peer: str, now: float) -> None:
        """`peer` sent values nobody here wants: it has not heard (or lost)
        what this node wants; tell it again (not more than once a second)."""
        last = self._reminded.get(peer)
        if last is None or now - last >= INTEREST_REMIND:
            self._reminded[peer] = now
            if len(self._reminded) > MAX_PEER_INTERESTS:
                self._reminded.clear()
            self._tell(peer, now)

    # -- receiving ------------------------------------------------------------------

    def receive(self, frame: LiveFrame) -> None:
        now = self.clock.monotonic()
        accepted: list[LiveItem] = []
        sid = self.id
        view = self.view
        floors = self.floors
        max_keys = self.max_keys
        stale = 0
        for item in frame.items:
            key, value, source, seq, gesture = item
            if source == sid:
                continue
            slot = (source, key)
            floor = floors.get(slot)
            if floor is not None:
                fseq = floor.seq
                if seq < fseq or (seq == fseq and floor.settled):
                    stale += 1
                    continue
                if seq == fseq:
                    # A re-send of what this node has: keep it fresh.
                    entry = view.get(key)
                    if entry is not None and entry.source == source and entry.seq == seq:
                        entry.heard = now
                        continue
            entry = view.get(key)
            if entry is None and len(view) >= max_keys:
                self.stats["dropped_full"] += 1
                continue
            # `_raise_floor(source, key, seq, False)`, in place: seq is
            # above the floor, or equal to an unsettled one.
            if floor is None:
                floors[slot] = _Floor(seq, False)
                if len(floors) > self.max_floors:
                    floors.popitem(last=False)
            else:
                floor.seq, floor.settled = seq, False
                floors.move_to_end(slot)
            if entry is None:
                view[key] = _Entry(value, source, seq, gesture, now)
            else:
                entry.value, entry.source, entry.seq, entry.gesture, entry.heard = value, source, seq, gesture, now
            accepted.append(item)
        if stale:
            self.stats["stale"] += stale
        self.stats["received"] += len(accepted)
        keys = tuple(map(_KEY, frame.items))
        if accepted:
            self._deliver(accepted, keys if len(accepted) == len(keys) else None)
        if self.fanout == "direct" and keys and _select(self._plan(keys), keys, self._interest) is False:
            self._remind(frame.frm, now)
        if self.fanout == "relay" and accepted and self.leader() == self.id:
            by_source: dict[str, list[LiveItem]] = {}
            for item in accepted:
                by_source.setdefault(item.source, []).append(item)
            for source, items in by_source.items():
                self._send(items, exclude=(source, frame.frm))

    def _raise_floor(self, source: str, key: str, seq: int, settled: bool) -> None:
        if source == self.id:
            own = self._own
            if seq > own.get(key, -1):
                own[key] = seq
                self._own_high = max(self._own_high, seq)
                self._trim_own()
            return
        slot = (source, key)
        floor = self.floors.pop(slot, None)
        if floor is None or seq > floor.seq:
            floor = _Floor(seq, settled)
        elif seq == floor.seq:
            floor.settled = floor.settled or settled
        self.floors[slot] = floor
        if len(self.floors) > self.max_floors:
            self.floors.popitem(last=False)

    def _trim_own(self) -> None:
        """At most `max_floors` own floors: beyond, the lowest (least
        recently set) quarter goes."""
        if len(self._own) > self.max_floors:
            keep = sorted(self._own.items(), key=_VALUE)[-(3 * self.max_floors // 4) :]
            self._own = dict(keep)

    def _floor_seq(self, source: str, key: str) -> int | None:
        """The floor of (source, key): the highest seq of it taken or settled."""
        if source == self.id:
            return self._own.get(key)
        floor = self.floors.get((source, key))
        return None if floor is None else floor.seq

    # -- subscribers ------------------------------------------------------------------

    def add_sink(self, sink: LiveSink) -> None:
        self.sinks.append(sink)
        self._interest_changed()

    def remove_sink(self, sink: LiveSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)
            self._interest_changed()

    def _deliver(self, items: list[LiveItem], keys: tuple[str, ...] | None = None) -> None:
        """Hand `items` (their keys: `keys`) to the subscribers that watch them."""
        if not items or not self.sinks:
            return
        if keys is None:
            keys = tuple(map(_KEY, items))
        plan = self._plan(keys)
        for sink in self.sinks:
            wanted = _select(plan, keys, (sink.prefix,))
            if wanted is False:
                continue
            sink.push_many(items if wanted is True else [items[i] for i in wanted])
            sink.wake()

    # -- the live view ----------------------------------------------------------------

    def value(self, key: str, default: Any = None) -> Any:
        """The key's live value, else its value in the state, else `default`."""
        entry = self.view.get(key)
        if entry is not None:
            return entry.value
        kv = self.kv.get(key)
        return kv.value if kv is not None else default

    def snapshot(self, prefix: str = "") -> dict[str, Any]:
        """Every live key under `prefix` with its value, source and seq."""
        return {
            k: {"value": e.value, "source": e.source, "seq": e.seq, "gesture": e.gesture}
            for k, e in sorted(self.view.items())
            if k.startswith(prefix)
        }

    # -- time ---------------------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock.monotonic()
        for slot, g in list(self.gestures.items()):
            if g.ended or now - g.last >= self.settle_s:
                del self.gestures[slot]
                self._begin_settle(g, now)
        for s in list(self.settles.values()):
            if s.retry_at is not None and now >= s.retry_at:
                self._attempt(s, now)
        if now >= self._next_resend:
            self._next_resend = now + self.resend_s
            self._send(self._open_items(), exclude=())
            self._tell_peers(now)
        if now >= self._next_expire:
            self._next_expire = now + min(1.0, self.expire_s)
            open_keys = {k for g in self.gestures.values() for k in g.values}
            for key, entry in list(self.view.items()):
                if now - entry.heard >= self.expire_s and not (entry.source == self.id and key in open_keys):
                    del self.view[key]
                    self.stats["expired"] += 1

    # -- settling ---------------------------------------------------------------------------

    def _begin_settle(self, g: _Gesture, now: float) -> None:
        # A key this node set since in another gesture is that gesture's to
        # settle: committing this one's older value would undo the newer
        # move (simulator seed 20037: a gesture ended by silence settled
        # after a later one, ended explicitly, of the same key).
        values = {}
        for key, value in g.values.items():
            floor = self._own.get(key)
            if floor is None or g.seqs[key] >= floor:
                values[key] = value
        if not values:
            self.stats["superseded"] += 1
            return
        command = {
            "op": "settle",
            "gesture": g.gid,
            "seq": g.seq,
            "values": values,
            "author": g.author,
            "role": g.role,
            # One request id for every retry: the state machine applies
            # a gesture's settle once (a retry after an unknown outcome
            # is answered with the first result).
            "rid": f"{self.id}.live.{g.seq}",
        }
        s = _Settle(command, g.gid, now)
        self.settles[f"{g.author}\x00{g.gid}\x00{g.seq}"] = s
        # One settle at a time, oldest first: two gestures of one key in a
        # row must commit in that order, or the older one's retry would
        # overwrite the newer one's value (found by the simulator with
        # subscribers, seed 2: the settle of sim-g5 applied after sim-g6's).
        if len(self.settles) == 1:
            self._attempt(s, now)

    def _next_settle(self) -> None:
        """The settle in flight finished: the next one goes on the next tick
        (not from inside the callback, which runs while entries apply)."""
        for s in self.settles.values():
            if s.attempts == 0 and s.retry_at is None:
                s.retry_at = self.clock.monotonic()
            return

    def _attempt(self, s: _Settle, now: float) -> None:
        if s.attempts == 0:
            s.started = now  # its give-up time counts from its turn
        s.retry_at = None
        s.attempts += 1
        slot = f"{s.command['author']}\x00{s.gid}\x00{s.command['seq']}"
        try:
            ticket = self.propose(dict(s.command))
        except MeshError as exc:
            self._settle_failed(slot, s, f"{type(exc).__name__}: {exc}")
            return

        def done(t: Any) -> None:
            if self.settles.get(slot) is not s:
                return
            if t.error is not None:
                self._retry(slot, s, f"{type(t.error).__name__}: {t.error}")
                return
            result = t.result
            if isinstance(result, dict) and "error" in result:
                self._settle_failed(slot, s, str(result["error"].get("message", result["error"])))
                return
            del self.settles[slot]
            self.stats["settled"] += 1
            self._next_settle()
            log.info(
                "node=%s event=gesture_settled gesture=%s keys=%d revision=%s attempts=%d",
                self.id,
                s.gid,
                len(s.command["values"]),
                result.get("revision") if isinstance(result, dict) else None,
                s.attempts,
            )

        ticket.on_done = done

    def _retry(self, slot: str, s: _Settle, why: str) -> None:
        now = self.clock.monotonic()
        if now - s.started >= SETTLE_GIVE_UP:
            self._settle_failed(slot, s, f"no controller took it within {SETTLE_GIVE_UP:g}s ({why})")
            return
        s.retry_at = now + SETTLE_RETRY

    def _settle_failed(self, slot: str, s: _Settle, why: str) -> None:
        self.settles.pop(slot, None)
        self._next_settle()
        self.stats["settle_failed"] += 1
        log.error(
            "node=%s event=gesture_settle_failed gesture=%s keys=%d reason=%r action=%r",
            self.id,
            s.gid,
            len(s.command["values"]),
            why,
            "the gesture's final values were not committed; write them with PUT (or move the control again) "
            "once the mesh has a controller",
        )

    # -- the log's side -----------------------------------------------------------------------

    def on_applied(self) -> None:
        """After entries were applied: settled gestures leave the view."""
        kv = self.kv
        if self._cursor > kv.revision:
            return
        try:
            records = kv.changes_since(self._cursor)
        except Compacted:
            records = []
        self._cursor = kv.revision + 1
        settled: list[LiveItem] = []
        for rec in records:
            if rec.gesture:
                item = self._settled(rec)
                if item is not None:
                    settled.append(item)
        self._deliver(settled)

    def _settled(self, rec: ChangeRecord) -> LiveItem | None:
        """A settled value of (rec.node, rec.key): the live entry it covers
        leaves the view; a subscriber that had not seen this value gets it."""
        floor = self._floor_seq(rec.node, rec.key)
        # A later live value of this origin went to subscribers already (its
        # view entry may have expired since): this older one must not follow
        # it (simulator seed 13 with leader_reads_locally).
        newer_seen = floor is not None and floor > rec.gesture_seq
        self._raise_floor(rec.node, rec.key, rec.gesture_seq, True)
        entry = self.view.get(rec.key)
        if entry is not None and entry.source == rec.node and entry.seq <= rec.gesture_seq:
            del self.view[rec.key]
            if entry.seq == rec.gesture_seq:
                return None  # subscribers saw this very value
        elif entry is not None:
            return None  # a newer live value (another source, or later) stays
        if newer_seen:
            return None
        gesture = None if rec.gesture.startswith(f"{rec.node}.") else rec.gesture
        return LiveItem(rec.key, rec.value, rec.node, rec.gesture_seq, gesture)


def _select(plan: dict[Interest, Selection], keys: tuple[str, ...], interest: Interest) -> Selection:
    """Which of `keys` a consumer with `interest` wants, remembered in
    `plan` (the batch's, `LiveTable._plan`): a fader's keys are matched
    against each prefix once, not 120 times a second."""
    wanted = plan.get(interest)
    if wanted is None:
        if interest is None:
            wanted = True
        elif not interest:
            wanted = False
        else:
            at = [i for i, key in enumerate(keys) if key.startswith(interest)]
            wanted = True if len(at) == len(keys) else (at or False)
        plan[interest] = wanted
    return wanted


def _wanted(items: list[LiveItem], interest: Interest) -> list[LiveItem]:
    """The items a node with `interest` wants."""
    if interest is None:
        return items
    if not interest:
        return []
    return [item for item in items if item.key.startswith(interest)]
