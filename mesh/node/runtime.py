"""The asyncio driver: one per process, around one synchronous `Replica`.

Event flow:
- a ticker calls `tick()` every `tick_seconds` (times the timing multiplier);
- inbound peer messages are stepped as they arrive;
- a single ready loop turns each Ready into IO: write (in the loop, cheap),
  fsync in a worker thread (so the loop keeps stepping heartbeats while the
  disk works), then send, apply, resolve waiters, wake watchers, advance;
- heartbeats and heartbeat responses are sent the moment the core makes
  them, never queued behind a Ready's fsync: they promise nothing that needs
  the disk (DESIGN: delayed heartbeats cause needless elections).

Peer side hardening (issue 12): only the members of the applied
configuration (and the known leader) are dialed, so the sender to a removed
member stops; the controller serves forwarded writes from members only; a
command is capped at MAX_COMMAND_BYTES; a follower that lost its log is
reported loudly (event=follower_lost_log) and caught up; snapshots stream
through the transport, which reports their progress and outcome to the core.

Writes on a follower are forwarded to the controller over the peer
transport; the follower then waits until it has applied that index itself,
checks the term there is the one the controller appended at (else the entry
was replaced: not committed), and answers with the result its own state
machine computed, which every node computes identically.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import Counter, Gauge

from mesh.errors import Conflict, Gone, NoLeader, NotLeader, Timeout, TooLarge
from mesh.node.metrics import NodeMetrics
from mesh.raft import ConfChange, Config, ConfState, Message, MessageType, ProposalDropped, Role
from mesh.raft.progress import ProgressTracker
from mesh.replica import Replica, ReplicaStorage, bootstrap
from mesh.state.audit import DEFAULT_AUDIT_LIMIT, DEFAULT_AUDIT_MAX_AGE_MS
from mesh.state.hlc import HLC
from mesh.state.kv import ChangeRecord, CommandError, Compacted
from mesh.state.limits import MAX_COMMAND_BYTES
from mesh.state.model import HanaState
from mesh.transport.codec import ForwardRequest, ForwardResponse, PeerPayload
from mesh.transport.tcp import RateLimitedLog, TcpTransport, TransportConfig

log = logging.getLogger("mesh.node")

URGENT = frozenset({MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESP})


@dataclass(slots=True)
class NodeConfig:
    node_id: str
    cluster: str
    secret: bytes
    raft_host: str = "127.0.0.1"
    raft_port: int = 7071
    api_address: str = ""
    # Initial voters: id -> (host, port) to dial. Empty: join an existing
    # cluster (or wait for discovery).
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Every Raft timeout scales with this (Consul's raft_multiplier).
    timing_multiplier: float = 1.0
    tick_seconds: float = 0.05
    # 300-600 ms to detect a lost leader, heartbeats every 100 ms.
    election_ticks: int = 6
    heartbeat_ticks: int = 2
    request_timeout: float = 5.0
    snapshot_every: int = 10_000
    keep_entries: int = 1_000
    history_limit: int = 10_000
    # The audit trail keeps at most this many entries, none older than this
    # (by the times in the log). Every node must use the same values.
    audit_limit: int = DEFAULT_AUDIT_LIMIT
    audit_max_age_ms: int = DEFAULT_AUDIT_MAX_AGE_MS
    seed: int | None = None
    # A deliberately broken behaviour (mesh.node.flags.INJECTABLE_BUGS), for
    # showing that the chaos checker catches it. None in every real use.
    inject_bug: str | None = None
    # Peer frames and snapshot streams (see mesh.transport.tcp).
    max_frame: int = 64 << 20
    snapshot_chunk: int = 1 << 20
    max_snapshot_bytes: int = 1 << 40


def _commit_on_own_copy(self: ProgressTracker) -> int:
    """The injected bug "ack_unreplicated": the largest index any voter (the
    leader itself, once durable) stores, instead of a majority's."""
    return max((self.progress[v].match for v in self.voters), default=0)


class ForwardUnanswered(ProposalDropped):
    """A forwarded write got no answer in time: the controller may have
    appended it (the retry is safe, the request id dedups it)."""


class _Rejected(Exception):
    """The controller refused a forwarded command as invalid, before the
    log: `result` is the state machine's error result, final."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result["error"].get("message", ""))
        self.result = result


@dataclass
class _Attempt:
    # Set once an attempt may have reached a controller's log.
    maybe_appended: bool = False


class KVStateMachine:
    """Adapter: the replica's StateMachine protocol over the hana state,
    keeping the results of entries someone waits for."""

    # Results of the last applied entries, for a forwarded write whose index
    # is learned only after this node already applied it.
    RECENT = 4096

    def __init__(self, kv: HanaState) -> None:
        self.kv = kv
        self.wanted: set[int] = set()
        self.results: dict[int, Any] = {}
        self.recent: dict[int, Any] = {}

    def apply(self, entry_index: int, data: bytes) -> object:
        result = self.kv.apply(entry_index, data)
        if entry_index in self.wanted:
            self.results[entry_index] = result
        self.recent[entry_index] = result
        if len(self.recent) > self.RECENT:
            del self.recent[next(iter(self.recent))]
        return result

    def apply_conf_change(self, index: int, cc: ConfChange) -> None:
        # Membership changes are audited (who, from where, why).
        self.kv.apply_conf_change(index, cc)

    def snapshot(self) -> bytes:
        return self.kv.snapshot()

    def restore(self, data: bytes, index: int) -> None:
        self.kv.restore(data, index)


@dataclass(slots=True)
class _Waiter:
    term: int
    future: asyncio.Future[dict[str, Any]]


class MeshNode:
    def __init__(self, cfg: NodeConfig, storage: ReplicaStorage) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.cluster = cfg.cluster
        self.storage = storage
        self._kv = HanaState(
            history_limit=cfg.history_limit,
            audit_limit=cfg.audit_limit,
            audit_max_age_ms=cfg.audit_max_age_ms,
            cluster=cfg.cluster,
        )
        # Stamps every command this node appends as leader (see _stamp_hlc).
        self._hlc = HLC(0, 0, cfg.node_id)
        self.sm = KVStateMachine(self._kv)
        rng = random.Random(cfg.seed if cfg.seed is not None else os.urandom(8))
        if storage.last_index() == 0 and storage.snapshot().is_empty() and cfg.peers:
            if cfg.node_id not in cfg.peers:
                raise ValueError(f"--peers must list this node ({cfg.node_id}) too")
            bootstrap(storage, ConfState.of(cfg.peers))
        raft_cfg = Config(
            id=cfg.node_id,
            rng=rng,
            election_tick=cfg.election_ticks,
            heartbeat_tick=cfg.heartbeat_ticks,
        )
        self.replica = Replica(
            raft_cfg, storage, self.sm, snapshot_every=cfg.snapshot_every, keep_entries=cfg.keep_entries
        )
        self.metrics = NodeMetrics(cfg.node_id)
        registry = self.metrics.registry
        self._lost_logs = Counter(
            "hana_raft_follower_lost_log", "Followers found to have lost acknowledged entries", registry=registry
        )
        self._forwards_refused = Counter(
            "hana_forwards_refused", "Forwarded writes the controller refused", ["reason"], registry=registry
        )
        self._snapshot_stats = Gauge(
            "hana_peer_snapshots", "Snapshot streams by outcome (transport counters)", ["outcome"], registry=registry
        )
        self._rlog = RateLimitedLog(10.0, log)
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
        )
        # What the transport was last told to dial (see _sync_members).
        self._dial_key: tuple[object, object, str | None] | None = None
        self._wake = asyncio.Event()
        self._applied = asyncio.Condition()
        self._waiters: dict[int, _Waiter] = {}
        self._reads: dict[bytes, asyncio.Future[None]] = {}
        self._forwards: dict[int, asyncio.Future[ForwardResponse]] = {}
        self._ids = itertools.count(1)
        self._read_seq = itertools.count(1)
        self._request_seq = itertools.count(1)
        self._boot_id = os.urandom(4).hex()
        self._leader_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.raft_address: tuple[str, int] = (cfg.raft_host, cfg.raft_port)
        self._last_role: Role | None = None
        self._sync_started: float | None = None
        self._slow_sync_reported = False
        # Set when the node cannot go on (a storage failure): serve exits.
        self.failed = asyncio.Event()
        self.fatal: BaseException | None = None
        self._last_leader: str | None = None

    # -- lifecycle -------------------------------------------------------------

    @property
    def kv(self) -> HanaState:
        return self._kv

    @property
    def tick_seconds(self) -> float:
        return self.cfg.tick_seconds * self.cfg.timing_multiplier

    async def start(self) -> None:
        self.raft_address = await self.transport.listen(self.cfg.raft_host, self.cfg.raft_port)
        self._sync_members()
        for peer, addr in self.cfg.peers.items():
            self.transport.set_peer(peer, addr)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._ticker(), name="ticker"),
            loop.create_task(self._ready_loop(), name="ready"),
        ]
        raft = self.replica.raft
        log.info(
            "node=%s event=started term=%d commit=%d applied=%d raft=%s:%d members=%s",
            self.node_id,
            raft.term,
            raft.log.committed,
            self.replica.applied,
            *self.raft_address,
            ",".join(raft.conf_state().members()),
        )
        if self.cfg.inject_bug:
            log.warning("node=%s event=unsafe_bug_injected bug=%s", self.node_id, self.cfg.inject_bug)
            if self.cfg.inject_bug == "ack_unreplicated":
                # Process-wide and for good: this process is the broken build.
                ProgressTracker.committed_index = _commit_on_own_copy  # type: ignore[method-assign]

    async def stop(self, transfer: bool = True) -> None:
        """Hand leadership over (bounded wait), then stop everything."""
        if transfer and self.replica.raft.role == Role.LEADER and len(self.replica.raft.tracker.voters) > 1:
            await self._handover()
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transport.close()
        for w in self._waiters.values():
            if not w.future.done():
                # The entry is in the log and may still commit: unknown.
                w.future.set_exception(Timeout("node is shutting down; the outcome of this write is unknown"))
        log.info("node=%s event=stopped term=%d", self.node_id, self.replica.raft.term)

    async def _handover(self) -> None:
        raft = self.replica.raft
        target = self._best_successor()
        if target is None:
            return
        log.info("node=%s event=transfer_leadership to=%s term=%d", self.node_id, target, raft.term)
        self.replica.transfer_leader(target)
        self._kick()
        deadline = time.monotonic() + self.tick_seconds * self.cfg.election_ticks
        while time.monotonic() < deadline and self.replica.raft.role == Role.LEADER:
            self._leader_changed.clear()
            try:
                await asyncio.wait_for(self._leader_changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break

    # -- inputs ------------------------------------------------------------------

    def _kick(self) -> None:
        self._send_urgent()
        self._wake.set()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            for peer in self.transport.snapshots_in_flight():
                # Still streaming: the core must not give up and resend.
                self.replica.node.report_snapshot_progress(peer)
            self.replica.tick()
            self._watch_disk()
            self._kick()

    def _watch_disk(self) -> None:
        """A leader whose fsync hangs can still heartbeat (heartbeats bypass
        the disk) but commits nothing: hand leadership to a healthy follower
        instead of stalling the mesh (consul issue 3552)."""
        started = self._sync_started
        if started is None or self._slow_sync_reported:
            return
        stalled = time.monotonic() - started
        limit = self.tick_seconds * self.cfg.election_ticks
        if stalled < limit:
            return
        self._slow_sync_reported = True
        raft = self.replica.raft
        log.warning(
            "node=%s event=slow_fsync term=%d index=%d stalled_ms=%.0f",
            self.node_id,
            raft.term,
            raft.log.last_index(),
            stalled * 1000,
        )
        if raft.role == Role.LEADER:
            # A transfer would wait for the successor to receive entries this
            # node cannot release before its fsync returns: step down instead.
            # Its Readies are blocked, so it cannot win an election meanwhile.
            log.warning("node=%s event=step_down term=%d reason=slow_disk", self.node_id, raft.term)
            self.replica.node.step_down()

    def _best_successor(self) -> str | None:
        raft = self.replica.raft
        voters = [v for v in raft.tracker.voters if v != self.node_id]
        if raft.role != Role.LEADER or not voters:
            return None
        return min(voters, key=lambda v: (not raft.tracker.progress[v].recent_active, -raft.tracker.progress[v].match))

    def _on_peer_message(self, m: PeerPayload) -> None:
        if self._stopping:
            return
        if isinstance(m, Message):
            self.replica.step(m)
            self._sync_members()
        elif isinstance(m, ForwardRequest):
            self._serve_forward(m)
        else:
            fut = self._forwards.pop(m.id, None)
            if fut is not None and not fut.done():
                fut.set_result(m)
        self._kick()

    def _on_unreachable(self, peer: str) -> None:
        self.replica.raft.report_unreachable(peer)

    def _on_snapshot_status(self, peer: str, ok: bool) -> None:
        if self._stopping:
            return
        self.replica.node.report_snapshot(peer, ok)
        self._kick()

    def _sync_members(self) -> None:
        """Tell the transport whom to dial: the members of the applied
        configuration plus the leader we follow (a follower whose
        configuration is behind must still answer it); a node that is not a
        member itself (joining) dials every address it knows. Cheap enough
        for every message: the tracker replaces its sets only on a change."""
        raft = self.replica.raft
        tracker = raft.tracker
        seen = self._dial_key
        if seen is not None and seen[0] is tracker.voters and seen[1] is tracker.learners and seen[2] == raft.lead:
            return
        self._dial_key = (tracker.voters, tracker.learners, raft.lead)
        members = set(tracker.voters | tracker.learners)
        if self.node_id not in members:
            self.transport.set_members(None)
            return
        if raft.lead is not None:
            members.add(raft.lead)
        members.discard(self.node_id)
        self.transport.set_members(members)

    def _send_urgent(self) -> None:
        msgs = self.replica.raft.msgs
        if not msgs:
            return
        keep = []
        for m in msgs:
            if m.type in URGENT:
                self.transport.send(m)
            else:
                keep.append(m)
        if len(keep) != len(msgs):
            self.replica.raft.msgs = keep

    # -- the ready loop ------------------------------------------------------------

    async def _ready_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.replica.has_ready():
                    await self._handle_ready()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A failed write or fsync leaves the disk in an unknown state: the
            # node must not go on (it would heartbeat while committing
            # nothing). Stop, loudly; a restart recovers from what is on disk.
            log.critical("node=%s event=fatal_storage_error error=%r", self.node_id, exc, exc_info=True)
            self.fatal = exc
            self.failed.set()

    async def _handle_ready(self) -> None:
        rd = self.replica.node.ready()
        self._sync_members()
        for lost in rd.lost_logs:
            self._lost_logs.inc()
            log.error(
                "node=%s event=follower_lost_log peer=%s term=%d match=%d hint=%d action=%r",
                self.node_id,
                lost.node,
                self.replica.raft.term,
                lost.match,
                lost.hint,
                "the member lost entries it had acknowledged (data directory deleted or damaged?); it is being "
                "caught up by appends or a snapshot. A voter that loses its data can leave committed writes on "
                "fewer than a majority: remove such a voter and add it back as a learner instead of restarting "
                "it empty",
            )
        # A leader's appends and heartbeats go out now, so the followers write
        # while we fsync; acknowledgements and votes wait for our fsync.
        for m in self.replica.persist(rd):
            self.transport.send(m)
        if rd.must_sync:
            started = time.perf_counter()
            self._sync_started = time.monotonic()
            try:
                await asyncio.to_thread(self.replica.sync)
            finally:
                self._sync_started = None
                self._slow_sync_reported = False
            self.metrics.fsync_seconds.observe(time.perf_counter() - started)
        out = self.replica.finish(rd)
        for m in out.messages:
            self.transport.send(m)
        if rd.soft_state is not None:
            self._on_soft_state()
        for e in out.applied:
            waiter = self._waiters.pop(e.index, None)
            if waiter is None:
                continue
            self.sm.wanted.discard(e.index)
            result = self.sm.results.pop(e.index, None)
            if waiter.future.done():
                continue
            if e.term == waiter.term and result is not None:
                waiter.future.set_result(result)  # type: ignore[arg-type]
            else:
                waiter.future.set_exception(NoLeader(f"entry {e.index} was replaced after a leader change; retry"))
        if out.installed is not None:
            meta = out.installed.meta
            log.info(
                "node=%s event=snapshot_installed term=%d index=%d snapshot_term=%d bytes=%d",
                self.node_id,
                self.replica.raft.term,
                meta.index,
                meta.term,
                len(out.installed.data),
            )
            for index in [i for i in self._waiters if i <= out.installed.meta.index]:
                waiter = self._waiters.pop(index)
                self.sm.wanted.discard(index)
                if not waiter.future.done():
                    waiter.future.set_exception(Timeout("state replaced by a snapshot; the outcome is unknown"))
        for read in out.reads:
            fut = self._reads.pop(read.context, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        for p in out.proposals:
            if not p.ok:
                self.metrics.proposals.labels(result="failed").inc()
        if out.snapshot_taken is not None:
            log.info(
                "node=%s event=snapshot_taken term=%d index=%d bytes=%d",
                self.node_id,
                self.replica.raft.term,
                out.snapshot_taken.meta.index,
                len(out.snapshot_taken.data),
            )
        if out.applied or out.installed is not None:
            async with self._applied:
                self._applied.notify_all()

    def _on_soft_state(self) -> None:
        raft = self.replica.raft
        if raft.role != self._last_role or raft.lead != self._last_leader:
            log.info(
                "node=%s event=role_change role=%s term=%d leader=%s commit=%d",
                self.node_id,
                raft.role,
                raft.term,
                raft.lead,
                raft.log.committed,
            )
            if raft.role == Role.LEADER and self._last_role != Role.LEADER:
                self.metrics.leader_changes.inc()
            leader_moved = raft.lead != self._last_leader
            self._last_role = raft.role
            self._last_leader = raft.lead
            self._leader_changed.set()
            if leader_moved:
                # Writes forwarded to the old leader will get no answer:
                # retry them with the new one now rather than at a timeout.
                for req_id, fut in list(self._forwards.items()):
                    if not fut.done():
                        fut.set_exception(ProposalDropped("the leader changed", raft.lead))
                    self._forwards.pop(req_id, None)
            if raft.role != Role.LEADER:
                for rid, fut in list(self._reads.items()):
                    if not fut.done():
                        fut.set_exception(NoLeader("leadership changed during a read; retry"))
                    self._reads.pop(rid, None)

    # -- proposals -------------------------------------------------------------------

    def _stamp(self, command: dict[str, Any]) -> bytes:
        command.setdefault("node", self.node_id)
        command.setdefault("time", time.time_ns() // 1_000_000)
        # A request id, unique across restarts of this node: if a forwarded
        # copy is retried after a leader change, the state machine applies it
        # once and answers the retry with the first result.
        command["rid"] = f"{self.node_id}.{self._boot_id}.{next(self._request_seq)}"
        return orjson.dumps(command)

    def _stamp_hlc(self, data: bytes) -> bytes:
        """The leader stamps each command with its hybrid logical clock as it
        appends it: the leader has applied every committed change, so its
        stamps follow the log order and last-writer-wins means "the later
        decision wins", whatever the clocks of the nodes that forwarded them.

        Commands are compact orjson objects (`{...}` with no trailing space),
        so the stamp is spliced in before the closing brace instead of
        decoding and re-encoding every write on the controller's hot path."""
        now = time.time_ns() // 1_000_000
        self._hlc = self._hlc.receive(self._kv.clock, now, self.node_id)
        stamp = orjson.dumps(self._hlc.encode())
        if len(data) > 2 and data[:1] == b"{" and data[-1:] == b"}":
            return data[:-1] + b',"hlc":' + stamp + b"}"
        return data  # not an object: the state machine rejects it, identically everywhere

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        data = self._stamp(command)
        if len(data) > MAX_COMMAND_BYTES:
            raise TooLarge(
                f"the command is {len(data)} bytes encoded, over the limit of {MAX_COMMAND_BYTES} bytes; "
                "send smaller values or split the change",
                limit=MAX_COMMAND_BYTES,
            )
        deadline = time.monotonic() + self.cfg.request_timeout
        attempt = _Attempt()
        try:
            return await self._propose_until_done(data, deadline, attempt)
        except NoLeader as exc:
            if not attempt.maybe_appended:
                raise
            # An earlier forward went unanswered: the controller may have
            # appended it, and it may yet commit. Saying "nothing happened"
            # (503) would be a lie; the client must treat it as unknown.
            raise Timeout(f"{exc}; an earlier attempt may have been applied, so the outcome is unknown") from None

    async def _propose_until_done(self, data: bytes, deadline: float, attempt: _Attempt) -> dict[str, Any]:
        while True:
            raft = self.replica.raft
            tried = raft.lead
            if self.node_id not in raft.tracker.progress and not attempt.maybe_appended:
                # The controller serves forwarded writes from members only: a
                # node not (yet, or no longer) in the configuration says so
                # at once rather than waiting for answers that never come.
                raise NoLeader(
                    "this node is not a member of the mesh (not added yet, or removed); "
                    "write through a member, or wait until the controller adds this node"
                )
            try:
                if raft.role == Role.LEADER:
                    index = self.replica.propose(self._stamp_hlc(data))
                    term = raft.term
                    self._kick()
                elif raft.lead is not None:
                    try:
                        index, term = await self._forward(raft.lead, data, deadline)
                    except _Rejected as rejected:
                        return rejected.result
                else:
                    await self._await_leader(deadline)
                    continue
            except ProposalDropped as exc:
                if isinstance(exc, ForwardUnanswered):
                    attempt.maybe_appended = True
                # A transfer in progress or a leader change: retry at once if
                # a new leader is already known, else wait for one. A retry
                # carries the same request id: applied at most once.
                if self.replica.raft.lead in (None, tried):
                    await self._await_leader(deadline, reason=exc.reason)
                continue
            self.metrics.proposals.labels(result="appended").inc()
            return await self._await_applied(index, term, deadline)

    async def _await_leader(self, deadline: float, reason: str = "no controller known") -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoLeader(f"no controller reachable ({reason})")
        self._leader_changed.clear()
        # Either a leader appears or we look again after two ticks.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._leader_changed.wait(), min(remaining, self.tick_seconds * 2))
        if time.monotonic() >= deadline:
            raise NoLeader(f"no controller reachable ({reason})")

    async def _forward(self, leader: str, data: bytes, deadline: float) -> tuple[int, int]:
        req_id = next(self._ids)
        fut: asyncio.Future[ForwardResponse] = asyncio.get_running_loop().create_future()
        self._forwards[req_id] = fut
        request = ForwardRequest(leader, self.node_id, req_id, data)
        self.transport.send(request)
        try:
            resp = await asyncio.wait_for(fut, max(0.01, min(deadline - time.monotonic(), 1.0)))
        except (ProposalDropped, TimeoutError) as exc:
            # No answer: the controller timed out or changed meanwhile.
            self._forwards.pop(req_id, None)
            reason = exc.reason if isinstance(exc, ProposalDropped) else "forward timed out"
            if self.transport.withdraw(request):
                # Never written to a connection: certainly not appended.
                if time.monotonic() >= deadline:
                    raise NoLeader(f"controller {leader} unreachable; the write was not sent") from None
                raise ProposalDropped(f"{reason}; not sent", leader) from None
            # It may have reached the controller's log, and a successor
            # may commit it.
            if time.monotonic() >= deadline:
                raise Timeout(f"controller {leader} did not answer; the outcome of this write is unknown") from None
            raise ForwardUnanswered(reason, leader) from None
        if resp.rejection is not None:
            raise _Rejected({"error": dict(resp.rejection)})
        if resp.error:
            raise ProposalDropped(resp.error, resp.leader)
        return resp.index, resp.term

    def _serve_forward(self, req: ForwardRequest) -> None:
        raft = self.replica.raft
        if req.frm not in raft.tracker.progress:
            # Only members of the applied configuration may write through the
            # controller; anyone else with the secret gets nothing, not even
            # an answer.
            self._refuse_forward(req, "not_member")
            return
        rejection = self._check_forwarded(req)
        if rejection is not None:
            self._refuse_forward(req, rejection["code"])
            self.transport.send(ForwardResponse(req.frm, self.node_id, req.id, rejection=rejection))
            return
        try:
            index = self.replica.propose(self._stamp_hlc(req.data))
            resp = ForwardResponse(req.frm, self.node_id, req.id, index=index, term=raft.term)
        except ProposalDropped as exc:
            resp = ForwardResponse(req.frm, self.node_id, req.id, error=exc.reason, leader=exc.leader)
        self.transport.send(resp)

    def _check_forwarded(self, req: ForwardRequest) -> dict[str, str] | None:
        """The state machine's own stateless checks, on the controller too:
        a member's API checked the command already, but nothing invalid
        reaches the log whoever sent it."""
        if len(req.data) > MAX_COMMAND_BYTES:
            return {"code": "too_large", "message": f"command of {len(req.data)} bytes exceeds {MAX_COMMAND_BYTES}"}
        try:
            self._kv.prevalidate(orjson.loads(req.data))
        except orjson.JSONDecodeError as exc:
            return {"code": "invalid_command", "message": f"command is not JSON: {exc}"}
        except CommandError as exc:
            return {"code": exc.code, "message": str(exc)[:4096] or exc.code}
        return None

    def _refuse_forward(self, req: ForwardRequest, reason: str) -> None:
        self._forwards_refused.labels(reason=reason).inc()
        self._rlog.warning(
            f"fwd:{reason}",  # not per sender: ids are the sender's to choose
            "node=%s event=forward_refused reason=%s from=%s bytes=%d term=%d",
            self.node_id,
            reason,
            req.frm,
            len(req.data),
            self.replica.raft.term,
        )

    async def _await_applied(self, index: int, term: int, deadline: float) -> dict[str, Any]:
        if index <= self.replica.applied:
            # Applied before we could wait (a forwarded write whose entry
            # arrived with or before the controller's answer).
            entry_term = self.replica.raft.log.zero_term_on_error(index)
            if entry_term and entry_term != term:
                raise NoLeader(f"entry {index} was replaced after a leader change; retry")
            recent = self.sm.recent.get(index)
            if entry_term == term and recent is not None:
                return recent  # type: ignore[no-any-return]
            raise Timeout(f"entry {index} was applied before its result could be collected; the outcome is unknown")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[index] = _Waiter(term, fut)
        self.sm.wanted.add(index)
        try:
            # asyncio.timeout, not wait_for: no extra task per write.
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await fut
        except TimeoutError:
            raise Timeout(f"write not applied within {self.cfg.request_timeout}s; the outcome is unknown") from None
        finally:
            if self._waiters.get(index) is not None and self._waiters[index].future is fut:
                del self._waiters[index]
                self.sm.wanted.discard(index)
                self.sm.results.pop(index, None)

    # -- membership ----------------------------------------------------------------

    async def change_membership(self, cc: ConfChange) -> dict[str, Any]:
        """Propose one membership change on the controller and wait until it
        is committed and applied here. Raises NotLeader (with the leader's id)
        on a follower, Conflict if the change is refused (one already
        pending, a no-op, removing the last voter), Timeout if unknown."""
        raft = self.replica.raft
        if raft.role != Role.LEADER:
            raise NotLeader(f"membership changes go to the controller ({raft.lead or 'unknown'})", leader=raft.lead)
        try:
            index = self.replica.propose_conf_change(cc)
        except ProposalDropped as exc:
            raise Conflict(exc.reason, code="membership_refused") from exc
        term = raft.term
        self._kick()
        log.info(
            "node=%s event=membership_proposed term=%d index=%d change=%s member=%s",
            self.node_id,
            term,
            index,
            cc.type,
            cc.node,
        )
        deadline = time.monotonic() + self.cfg.request_timeout
        try:
            async with self._applied, asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._applied.wait_for(lambda: self.replica.applied >= index or self._stopping)
        except TimeoutError:
            raise Timeout(f"membership change at {index} not applied in time; the outcome is unknown") from None
        if self.replica.raft.log.zero_term_on_error(index) not in (0, term):
            raise NoLeader(f"membership change at {index} was replaced after a leader change; retry")
        return {"index": index, "term": term, "conf": self.replica.raft.conf_state().to_dict()}

    def peer_health(self) -> dict[str, tuple[float | None, int]]:
        """For the autopilot, on the leader: per member, the monotonic time a
        frame last arrived from it (None: never) and its match index."""
        raft = self.replica.raft
        out: dict[str, tuple[float | None, int]] = {}
        for nid, pr in raft.tracker.progress.items():
            heard = time.monotonic() if nid == self.node_id else self.transport.last_heard.get(nid)
            out[nid] = (heard, pr.match)
        return out

    # -- reads -------------------------------------------------------------------

    async def read_barrier(self, linearizable: bool) -> None:
        if not linearizable or self.cfg.inject_bug == "stale_reads":
            return
        deadline = time.monotonic() + self.cfg.request_timeout
        while True:
            ctx = f"{self.node_id}:{next(self._read_seq)}".encode()
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._reads[ctx] = fut
            try:
                self.replica.read_index(ctx)
            except ProposalDropped as exc:
                self._reads.pop(ctx, None)
                await self._await_leader(deadline, reason=exc.reason)
                continue
            self._kick()
            try:
                await asyncio.wait_for(fut, max(0.0, min(deadline - time.monotonic(), self.tick_seconds * 10)))
                return
            except NoLeader:
                await self._await_leader(deadline)
            except TimeoutError:
                self._reads.pop(ctx, None)
                if time.monotonic() >= deadline:
                    raise NoLeader("could not confirm the controller for a linearizable read") from None

    # -- watch -------------------------------------------------------------------

    async def watch(self, prefix: str, since: int) -> AsyncIterator[ChangeRecord]:
        next_rev = max(since, 1)
        while not self._stopping:
            # Take the batch and the revision it covers together: more may be
            # applied while the consumer works through the batch (every
            # `yield` can wait on a slow client), and those come next time.
            covered = self._kv.revision
            try:
                records = self._kv.changes_since(next_rev, prefix)
            except Compacted as exc:
                raise Gone(str(exc), oldest=exc.oldest) from exc
            for rec in records:
                yield rec
            next_rev = max(next_rev, covered + 1)
            wanted = next_rev
            async with self._applied:
                await self._applied.wait_for(lambda: self._kv.revision >= wanted or self._stopping)  # noqa: B023

    # -- status ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        raft = self.replica.raft
        conf = raft.conf_state()
        now = time.monotonic()
        members = []
        for nid in conf.members():
            pr = raft.tracker.progress.get(nid) if raft.role == Role.LEADER else None
            if nid == self.node_id:
                raft_addr = f"{self.raft_address[0]}:{self.raft_address[1]}"
                api = self.cfg.api_address
                last_contact = 0.0
            else:
                addr = self.transport.peers().get(nid)
                raft_addr = f"{addr[0]}:{addr[1]}" if addr else None
                api = self.transport.peer_api.get(nid) or None
                heard = self.transport.last_heard.get(nid)
                last_contact = round((now - heard) * 1000, 1) if heard is not None else None
            if nid == raft.lead:
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
            "id": self.node_id,
            "cluster": self.cluster,
            "role": "learner" if raft.is_learner() else str(raft.role),
            "term": raft.term,
            "leader": raft.lead,
            "commit_index": raft.log.committed,
            "applied_index": self.replica.applied,
            "revision": self._kv.revision,
            "members": members,
        }

    def metrics_text(self) -> bytes:
        self.metrics.observe(self.replica)
        self.metrics.observe_transport(self.transport)
        st = self.transport.stats
        for outcome, n in (
            ("sent", st.snapshots_sent),
            ("send_failed", st.snapshots_failed),
            ("received", st.snapshots_received),
            ("refused", st.snapshots_refused),
        ):
            self._snapshot_stats.labels(outcome=outcome).set(n)
        return self.metrics.render()
