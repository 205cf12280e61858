"""The asyncio driver of one node: sockets, threads and timers around the
synchronous node core (mesh/node/core.py), which decides everything else.

What it owns:
- the peer transport (TCP): inbound messages, unreachable peers,
  snapshot outcomes and peers that closed every connection (a crashed
  process: a lost controller is replaced at once) go to the core, then the
  ready loop is woken;
- the ticks: `core.tick()` once per `cfg.tick` seconds of a fixed grid
  (the core's timers: elections, heartbeats, request deadlines, forward
  retries), from one loop timer (`call_at`, no task). The ticks the core
  says only count (`core.quiet_ticks()`: an idle follower's until its
  election timeout, a leader's until its next heartbeat) are run late, all
  at once, just before the next input or when the timer fires at the first
  tick that may act; so an idle node wakes for its heartbeats, not 20
  times a second. A loop stalled past that (a stopped process, a blocked
  loop) loses the ticks it missed, as a sleeping ticker did;
- a single ready loop that carries out the core's IO contract: `ready()`
  (write in the loop, cheap; a leader's appends go out at once), the fsync
  in a worker thread (so the loop keeps stepping heartbeats while the disk
  works: heartbeats are sent the moment the core makes them, never queued
  behind a Ready's fsync; DESIGN: delayed heartbeats cause needless
  elections), then `finish()` (send the rest, apply, resolve tickets);
- futures over the core's tickets, for the API's coroutines; the live
  watch streams (a `WatchCursor` each, woken when the state moves);
- handover on stop (the core picks the successor, the driver waits about
  an election timeout for the role to change).

A failed write or fsync stops the node (`failed`, `fatal`): the disk is in
an unknown state, and a node that heartbeats while committing nothing
would stall the mesh. A restart recovers from what is on disk.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from mesh.errors import NoLeader
from mesh.node.config import NodeConfig
from mesh.node.core import NodeCore, Ticket, WatchCursor
from mesh.node.live import LiveSubscription, LiveUpdate
from mesh.node.metrics import NodeMetrics
from mesh.node.offline import event_matches
from mesh.node.outbox import MemoryOutboxStore, OutboxStore
from mesh.node.outbox_file import FileOutboxStore
from mesh.raft import ConfChange, Role
from mesh.replica import Replica, ReplicaStorage
from mesh.state.kv import ChangeRecord
from mesh.state.model import HanaState
from mesh.transport.codec import PeerPayload
from mesh.transport.tcp import TcpTransport, TransportConfig

__all__ = ["MeshNode", "NodeConfig", "SystemClock"]

log = logging.getLogger("mesh.node")

# A tick due this close is run now (loop timers fire on whole milliseconds).
TIMER_SLACK = 0.002


class SystemClock:
    """The node core's clock in production (mesh.clock.Clock)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000


class MeshNode:
    def __init__(self, cfg: NodeConfig, storage: ReplicaStorage, outbox: OutboxStore | None = None) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.cluster = cfg.cluster
        self.storage = storage
        self.metrics = NodeMetrics(cfg.node_id)
        spool = getattr(storage, "path", None)
        self.transport = TcpTransport(
            TransportConfig(
                cfg.node_id,
                cfg.cluster,
                cfg.secret,
                api_address=cfg.api_address,
                max_frame=cfg.max_frame,
                snapshot_chunk=cfg.snapshot_chunk,
                max_snapshot_bytes=cfg.max_snapshot_bytes,
                spool_dir=str(spool) if spool is not None else None,
            ),
            self._on_peer_message,
            self._on_unreachable,
            self._on_snapshot_status,
            self._on_peer_closed,
        )
        if outbox is None:
            # The outbox lives beside the log (a memory store has no directory).
            outbox = FileOutboxStore(spool, cfg.node_id) if spool is not None else MemoryOutboxStore()
        self.core = NodeCore(
            cfg,
            storage,
            self.transport,
            SystemClock(),
            rng=random.Random(cfg.seed if cfg.seed is not None else os.urandom(8)),
            boot_id=os.urandom(4).hex(),
            metrics=self.metrics,
            outbox=outbox,
        )
        self._wake = asyncio.Event()
        self._applied = asyncio.Condition()
        self._leader_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.raft_address: tuple[str, int] = (cfg.raft_host, cfg.raft_port)
        # Set when the node cannot go on (a storage failure): serve exits.
        self.failed = asyncio.Event()
        self.fatal: BaseException | None = None
        # The core's event log as the watchers last were told of it.
        self._events_told = 0
        # The tick grid (loop time): tick n is due at _tick_base + n * tick;
        # _ticks_run of them ran; up to _tick_quiet more may run late; the
        # timer fires at the first one that may act (None: not ticking).
        self._tick_base = 0.0
        self._ticks_run = 0
        self._tick_quiet = 0
        self._tick_timer: asyncio.TimerHandle | None = None
        self._tick_timer_at = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------

    @property
    def replica(self) -> Replica:
        return self.core.replica

    @property
    def kv(self) -> HanaState:
        return self.core.kv

    @property
    def tick_seconds(self) -> float:
        return self.cfg.tick

    async def start(self, raft_sock: socket.socket | None = None) -> None:
        """Listen for peers (on `raft_sock` if given: an inherited listening
        socket) and start ticking."""
        self.raft_address = await self.transport.listen(self.cfg.raft_host, self.cfg.raft_port, raft_sock)
        for peer, addr in self.cfg.peers.items():
            self.transport.set_peer(peer, addr)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._ready_loop(), name="ready")]
        self._loop = loop
        self._tick_base = loop.time()
        self._ticks_run = 0
        self._tick_quiet = 0
        self._plan_tick()
        raw = self.core.raw
        log.info(
            "node=%s event=started term=%d commit=%d applied=%d raft=%s:%d members=%s",
            self.node_id,
            raw.term,
            raw.committed,
            self.core.applied,
            *self.raft_address,
            ",".join(raw.conf_state().members()),
        )

    async def stop(self, transfer: bool = True) -> None:
        """Settle open live gestures and hand leadership over (bounded
        waits), then stop everything."""
        await self._settle_live()
        if transfer:
            await self._handover()
        self._stopping = True
        if self._tick_timer is not None:
            self._tick_timer.cancel()
            self._tick_timer = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transport.close()
        # Writes in a log may still commit: their outcome is unknown.
        self.core.shutdown()
        close = getattr(self.core.outbox.store, "close", None)
        if close is not None:
            close()
        async with self._applied:
            self._applied.notify_all()
        log.info("node=%s event=stopped term=%d", self.node_id, self.core.raw.term)

    async def _settle_live(self) -> None:
        """A node stopped mid-gesture commits its gestures' final values
        first (waiting at most the request timeout for them)."""
        live = self.core.live
        if not live.end_all():
            return
        live.tick()
        self._wake.set()
        deadline = time.monotonic() + self.cfg.request_timeout
        while live.settles and time.monotonic() < deadline and not self.failed.is_set():
            await asyncio.sleep(self.cfg.tick)
        log.info("node=%s event=live_settled_on_stop pending=%d", self.node_id, len(live.settles))

    async def _handover(self) -> None:
        if self.core.handover() is None:
            return
        self._wake.set()
        deadline = time.monotonic() + self.cfg.tick * self.cfg.election_ticks
        while time.monotonic() < deadline and self.core.role == Role.LEADER:
            self._leader_changed.clear()
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self._leader_changed.wait()
            except TimeoutError:
                break

    # -- inputs ------------------------------------------------------------------

    def _kick(self) -> None:
        """Wake the ready loop (after an input made straight into the replica,
        as the log fuzz test does)."""
        self._wake.set()

    # -- the ticks -------------------------------------------------------------------

    def _catch_up(self) -> None:
        """Run the ticks due by now, before an input reaches the core or
        when the timer fires: those the core called quiet only counted
        (`tick_quiet`), the others in full."""
        loop = self._loop
        if loop is None or self._stopping:
            return
        # A timer may fire a hair early (the loop's clock has 1 ms steps).
        due = int((loop.time() - self._tick_base + TIMER_SLACK) / self.cfg.tick)
        n = due - self._ticks_run
        if n <= 0:
            return
        # The timer is set at or before the first tick that may act: ticks
        # due past it mean the loop was late (a stopped process, a blocked
        # loop). Those are lost, as with a sleeping ticker (else a follower
        # stopped for a while would campaign the moment it runs again).
        allowed = max(1, self._tick_timer_at - self._ticks_run)
        if n > allowed:
            self._ticks_run += n - allowed
            n = allowed
        core = self.core
        quiet = min(n, self._tick_quiet)
        if quiet:
            core.tick_quiet(quiet)
            self._tick_quiet -= quiet
        for _ in range(n - quiet):
            core.tick()
            self._tick_quiet = 0
        self._ticks_run += n
        if core.has_ready() or core.events.seq != self._events_told:
            self._wake.set()

    def _plan_tick(self) -> None:
        """Ask the core how many ticks are quiet now; have the timer fire at
        the first that may act. Moved later too, not only earlier: a
        heartbeat renews the controller's contact, and a timer left at the
        old deadline would wake the loop for nothing (a wake-up of an idle
        process costs far more than moving a timer while awake)."""
        loop = self._loop
        if loop is None or self._stopping:
            return
        quiet = self.core.quiet_ticks()
        self._tick_quiet = quiet
        at = self._ticks_run + quiet + 1
        timer = self._tick_timer
        if timer is not None:
            if self._tick_timer_at == at:
                return
            timer.cancel()
        self._tick_timer_at = at
        self._tick_timer = loop.call_at(self._tick_base + at * self.cfg.tick, self._on_tick_timer)

    def _on_tick_timer(self) -> None:
        self._tick_timer = None
        # Asked again: inputs since the plan may have moved the first tick
        # that may act later (a heartbeat renews the controller's contact).
        # Ticks due now are quiet if no more are due than the core says.
        self._tick_quiet = self.core.quiet_ticks()
        self._catch_up()
        self._plan_tick()

    def _input(self) -> None:
        """Before an input reaches the core: the ticks due first. The input
        may end the quiet: every tick runs in full until planned again."""
        self._catch_up()
        self._tick_quiet = 0

    async def _tell_events(self) -> None:
        """Wake the watchers when the core logged typed events (status,
        outbox, conflict) since they were last woken."""
        if self.core.events.seq != self._events_told:
            self._events_told = self.core.events.seq
            async with self._applied:
                self._applied.notify_all()

    def _on_peer_message(self, m: PeerPayload) -> None:
        if self._stopping:
            return
        self._input()
        core = self.core
        core.receive(m)
        if core.has_ready() or core.events.seq != self._events_told:
            self._wake.set()
        else:
            # Nothing to write, send or tell (a heartbeat's answer on the
            # controller, a live frame): no ready-loop step, only the plan.
            self._plan_tick()

    def _on_unreachable(self, peer: str) -> None:
        self._input()
        self.core.report_unreachable(peer)
        self._plan_tick()

    def _on_peer_closed(self, peer: str) -> None:
        """Every connection with `peer` was closed by it (its process is
        gone): if it was the controller, the core elects one at once."""
        if self._stopping:
            return
        self._input()
        self.core.peer_closed(peer)
        self._wake.set()

    def _on_snapshot_status(self, peer: str, ok: bool) -> None:
        if self._stopping:
            return
        self._input()
        self.core.report_snapshot(peer, ok)
        self._wake.set()

    # -- the ready loop ------------------------------------------------------------

    async def _ready_loop(self) -> None:
        core = self.core
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while core.has_ready():
                    rd = core.ready()
                    if rd.must_sync:
                        started = time.perf_counter()
                        await asyncio.to_thread(core.sync)
                        self.metrics.fsync_seconds.observe(time.perf_counter() - started)
                    done = core.finish(rd)
                    if done.leader_changed:
                        self._leader_changed.set()
                    if done.applied:
                        self._events_told = self.core.events.seq
                        async with self._applied:
                            self._applied.notify_all()
                await self._tell_events()
                self._plan_tick()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A failed write or fsync leaves the disk in an unknown state: the
            # node must not go on (it would heartbeat while committing
            # nothing). Stop, loudly; a restart recovers from what is on disk.
            log.critical("node=%s event=fatal_storage_error error=%r", self.node_id, exc, exc_info=True)
            self.fatal = exc
            self.failed.set()

    async def _outcome(self, ticket: Ticket) -> Any:
        """The ticket's result (or its error raised), once the core decides."""
        if not ticket.done:
            self._wake.set()
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def resolved(_: Ticket) -> None:
                if not fut.done():
                    fut.set_result(None)

            ticket.on_done = resolved
            await fut
        return ticket.value()

    # -- requests ------------------------------------------------------------------

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        """Commit a state-machine command (forwarded to the controller if
        this node is not it) and return its result once applied here.
        Raises TooLarge, NoLeader (nothing committed) or Timeout (unknown)."""
        self._input()
        result: dict[str, Any] = await self._outcome(self.core.propose(command))
        return result

    async def propose_offline(self, command: dict[str, Any]) -> dict[str, Any]:
        """A write with `?offline=queue` (issue 14): proposed as usual when a
        controller is heard within `cfg.offline_wait`; kept in the durable
        outbox (and answered `{"queued": id, …}`) when none is, or when the
        proposal certainly did not apply (NoLeader). A Timeout (outcome
        unknown) is raised as for any write."""
        deadline = time.monotonic() + self.cfg.offline_wait
        while not self.core.connected() and time.monotonic() < deadline and not self._stopping:
            await asyncio.sleep(min(self.cfg.tick, max(0.0, deadline - time.monotonic())))
        if self.core.connected():
            try:
                return await self.propose(dict(command))
            except NoLeader:
                pass
        self._input()
        answer = self.core.queue_write(command)
        self._plan_tick()
        await self._tell_events()
        return answer

    def outbox(self) -> dict[str, Any]:
        """`GET /v1/outbox`."""
        return self.core.outbox.view()

    def outbox_overlay(self, prefix: str) -> dict[str, tuple[str, Any]]:
        return self.core.outbox.overlay(prefix)

    async def read_barrier(self, linearizable: bool) -> None:
        self._input()
        await self._outcome(self.core.read(linearizable))

    async def change_membership(self, cc: ConfChange) -> dict[str, Any]:
        """Propose one membership change on the controller and wait until it
        is committed and applied here. Raises NotLeader (with the leader's id)
        on a follower, Conflict if the change is refused (one already
        pending, a no-op, removing the last voter), Timeout if unknown."""
        self._input()
        result: dict[str, Any] = await self._outcome(self.core.change_membership(cc))
        return result

    def peer_health(self) -> dict[str, tuple[float | None, int]]:
        """For the autopilot, on the leader: per member, the monotonic time a
        frame last arrived from it (None: never) and its match index."""
        return self.core.peer_health()

    # -- watch -------------------------------------------------------------------

    async def watch(self, prefix: str, since: int) -> AsyncIterator[ChangeRecord]:
        cursor = self.core.open_watch(prefix, since)
        while not self._stopping:
            # A batch and the revision it covers are taken together: more may
            # be applied while the consumer works through it (every `yield`
            # can wait on a slow client), and those come next time.
            for rec in cursor.take():
                yield rec
            async with self._applied:
                await self._applied.wait_for(lambda: cursor.pending() or self._stopping)

    # -- live parameters (mesh/node/live.py) -------------------------------------

    def live_set(
        self, values: dict[str, Any], *, gesture: str | None, author: str, role: str = "operator"
    ) -> LiveUpdate:
        """Validate (raises StateError) and publish live values."""
        self._input()
        update = self.core.live.set(values, gesture, author=author, role=role)
        self._plan_tick()  # an open gesture is ticked on time
        return update

    def live_check(self, values: dict[str, Any], *, gesture: str | None, author: str, role: str = "operator") -> None:
        self.core.live.validate(values, gesture, author, role)

    def live_end(self, gesture: str, *, author: str) -> bool:
        self._input()
        ended = self.core.live.end(gesture, author=author)
        self._plan_tick()
        return ended

    def live_subscribe(self, prefix: str) -> LiveSubscription:
        return LiveSubscription(self.core.live, prefix, asyncio.Event())

    async def watch_events(self, prefix: str, since: int) -> AsyncIterator[dict[str, Any]]:
        """The messages of a watch stream: change records (`"type":
        "change"`) in revision order without gaps, and the typed events of
        the core logged after the watch opened (status, outbox, conflict)
        whose keys are under `prefix` (mesh/node/offline.py)."""
        cursor = self.core.open_watch(prefix, since)
        events = self.core.events
        seen = events.seq
        while not self._stopping:
            for rec in cursor.take():
                yield {"type": "change", **rec.to_dict()}
            for seq, event in events.since(seen):
                seen = seq
                if event_matches(event, prefix):
                    yield event
            async with self._applied:
                await self._applied.wait_for(functools.partial(self._watch_moved, cursor, seen))

    def _watch_moved(self, cursor: WatchCursor, seen: int) -> bool:
        return cursor.pending() or self.core.events.seq > seen or self._stopping

    # -- status ------------------------------------------------------------------

    def connected(self) -> bool:
        return self.core.connected()

    def controller_contact_ms(self) -> int | None:
        return self.core.controller_contact_ms()

    def status(self) -> dict[str, Any]:
        return self.core.status(self.raft_address)

    # -- addresses (for the API's adapter, mesh/adapter.py) -----------------------

    def api_address_of(self, node_id: str) -> str | None:
        """The API address of `node_id` as this node knows it: its own, or
        what the peer said in its handshake; None if unknown."""
        if node_id == self.node_id:
            return self.cfg.api_address or None
        return self.transport.peer_api.get(node_id) or None

    def set_peer_address(self, node_id: str, address: tuple[str, int]) -> None:
        """Dial `node_id` at `address` (once it is a member of the applied
        configuration)."""
        self.transport.set_peer(node_id, address)

    def last_index(self) -> int:
        """The index of the last entry of this node's log."""
        return self.core.raw.last_index

    def metrics_text(self) -> bytes:
        self.metrics.observe(self.core.replica)
        self.metrics.observe_transport(self.transport)
        live = self.core.live
        st = self.transport.stats
        counts = {
            **live.stats,
            "sent_to_peers": st.live_sent,
            "received_from_peers": st.live_received,
            "coalesced_for_peers": st.live_coalesced,
            "dropped_peer_queue_full": st.dropped_live_overflow,
            "dropped_malformed": st.dropped_live_malformed,
        }
        self.metrics.observe_live(counts, len(live.view), len(live.gestures))
        core = self.core
        self.metrics.observe_offline(len(core.kv.pending), core.conflicts_opened, core.outbox.count())
        return self.metrics.render()
