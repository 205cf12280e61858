"""The Raft protocol as a pure state machine.

Inputs: `tick()`, `step(message)`, `propose(data)`, `read_index(ctx)`,
`transfer_leader(node)`. Outputs accumulate in `msgs` and `read_states` and
in the log's unstable part; `RawNode` packages them into a `Ready`.

Nothing here reads a clock, a socket, a file or global random state: time is
the number of `tick()` calls and election jitter comes from the `rng` in the
config, so a run is a pure function of its inputs and seed.

Membership: a configuration change is a log entry. It takes effect on every
node when the entry is *committed* (scanned by `_apply_committed_confs`), so
membership is always a function of the committed log plus the snapshot, and
a restart replays it from disk without a separate file. The leader accepts a
new change only once everything in its log when it was elected is committed
(pending_conf_index = last index at election, as etcd does) and the previous
change is committed; since changes take effect at commit, a change left
uncommitted by a deposed leader never takes effect on anyone.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from mesh.raft.errors import (
    CompactedError,
    MessageDecodeError,
    ProposalDropped,
    RaftUsageError,
    SnapshotTemporarilyUnavailable,
)
from mesh.raft.log import RaftLog
from mesh.raft.messages import (
    CAMPAIGN_TRANSFER,
    COMMIT_ONLY,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    Snapshot,
)
from mesh.raft.progress import Progress, ProgressState, ProgressTracker
from mesh.raft.read_only import ReadOnly
from mesh.raft.storage import LogStorage

MT = MessageType

# Raft.quiet_ticks when no timer of the Raft core runs (a learner, a
# removed node): a bound, so that a driver still ticks now and then.
QUIET_TICKS_MAX = 1_000


class Role(enum.StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(slots=True)
class Config:
    id: NodeId
    rng: random.Random
    # Ticks without hearing from a leader before campaigning (randomized in
    # [election_tick, 2 * election_tick)); heartbeats every heartbeat_tick.
    election_tick: int = 10
    heartbeat_tick: int = 1
    check_quorum: bool = True
    pre_vote: bool = True
    # Appends in flight per follower in replicate state.
    max_inflight: int = 256
    # Upper bound of the entries carried by one append message.
    max_msg_bytes: int = 1 << 20
    # Check-quorum rounds a snapshot may stay unanswered before it is resent
    # (a fallback for transports that cannot report a lost snapshot).
    snapshot_timeout_rounds: int = 3
    # After the leader's connection closed (`leader_connection_lost`), the
    # follower of rank r among the remaining voters campaigns after
    # r * lost_leader_stagger_ticks ticks (rank 0 at once).
    lost_leader_stagger_ticks: int = 2
    # Learner feed pacing (0: off): a learner in replicate state gets at most
    # one append per this many ticks, unless `learner_batch` entries wait for
    # it or it is hurried (`hurry`). With 95 learners, one append per learner
    # per write would cost the leader 95 sends and 95 answers per write;
    # paced, each learner takes what a tick gathered in one append.
    learner_feed_ticks: int = 0
    learner_batch: int = 64

    def validate(self) -> None:
        if not self.id:
            raise RaftUsageError("config: id must not be empty")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise RaftUsageError("config: need 0 < heartbeat_tick < election_tick")
        if self.max_inflight <= 0 or self.max_msg_bytes <= 0:
            raise RaftUsageError("config: max_inflight and max_msg_bytes must be positive")
        if self.lost_leader_stagger_ticks <= 0:
            raise RaftUsageError("config: lost_leader_stagger_ticks must be positive")
        if self.learner_feed_ticks < 0 or self.learner_batch <= 0:
            raise RaftUsageError("config: learner_feed_ticks must be >= 0 and learner_batch positive")


@dataclass(slots=True, frozen=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied
    `index`. `context` is the caller's id for the read."""

    index: int
    context: bytes


@dataclass(slots=True, frozen=True)
class LostLog:
    """A follower said its log ends (at `hint`) below what it had
    acknowledged (`match`): its store was wiped or lost. The leader reset
    its progress; the driver should log it loudly."""

    node: NodeId
    match: int
    hint: int


@dataclass(slots=True)
class _PendingRead:
    context: bytes
    origin: NodeId


class Raft:
    def __init__(self, config: Config, storage: LogStorage) -> None:
        config.validate()
        self.cfg = config
        self.id = config.id
        self.log = RaftLog(storage)
        hs, conf = storage.initial_state()
        self.tracker = ProgressTracker()
        self.tracker.apply_conf(conf, self.log.last_index() + 1)
        # Highest index whose configuration effect is in `tracker`.
        self.conf_index = self.log.first_index() - 1
        # (index, configuration from that index on), oldest first: lets the
        # driver snapshot at its applied index with the configuration of then.
        self.conf_history: list[tuple[int, ConfState]] = [(self.conf_index, conf)]

        self.term = hs.term
        self.vote: NodeId | None = hs.vote
        if hs.commit:
            if hs.commit > self.log.last_index():
                raise RaftUsageError(f"hard state commit {hs.commit} beyond last index {self.log.last_index()}")
            self.log.commit_to(hs.commit)

        self.role = Role.FOLLOWER
        self.lead: NodeId | None = None
        self.lead_transferee: NodeId | None = None
        self.pending_conf_index = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.read_only = ReadOnly()
        self.pending_reads: list[_PendingRead] = []
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        # Followers found to have lost their log (for the driver to report).
        self.lost_logs: list[LostLog] = []
        self._proposals_to_send = False
        # The leader's connection closed (leader_connection_lost): ticks left
        # before this follower campaigns (0: no such campaign pending).
        self.lost_leader_wait = 0
        # Pre-votes dropped because we were in the leader's lease, since we
        # last heard from it: answered after all when its connection closes
        # or the lease runs out (their senders may still be waiting).
        self._lease_dropped: dict[NodeId, Message] = {}
        # Why the last campaign started ("election_timeout", "connection_lost",
        # "transfer", "campaign"), and how many started on a closed connection.
        self.campaign_cause = ""
        self.connection_lost_campaigns = 0
        # Learner feed pacing (Config.learner_feed_ticks): ticks so far, the
        # tick of each learner's last append, learners owed one, and learners
        # hurried until an append carries a commit index up to the given one.
        self._ticks = 0
        self._fed: dict[NodeId, int] = {}
        self._owed: set[NodeId] = set()
        self._hurry: dict[NodeId, int] = {}
        self._apply_committed_confs()
        self.become_follower(self.term, None)

    # -- public inputs -------------------------------------------------------

    def tick(self) -> None:
        self._ticks += 1
        if self.role == Role.LEADER:
            if self._owed:
                # Before the heartbeat round: a learner fed now needs none.
                self._feed_owed()
            self._tick_heartbeat()
        else:
            self._tick_election()

    def quiet_ticks(self) -> int:
        """How many of the next ticks, with no other input between them,
        only count (change no role, send nothing, drop no lease): a driver
        may deliver them late, all at once before the next input, provided
        the tick after them comes on time. Never more than the truth (a
        test ticks through the quiet ticks and checks that nothing else
        changed); large (but finite) when no timer runs (a learner)."""
        if self.role == Role.LEADER:
            if self._owed:
                return 0
            return max(
                0,
                min(
                    self.cfg.heartbeat_tick - self.heartbeat_elapsed,
                    self.cfg.election_tick - self.election_elapsed,
                )
                - 1,
            )
        quiet = QUIET_TICKS_MAX
        if self._lease_dropped:
            quiet = min(quiet, self.cfg.election_tick - self.election_elapsed - 1)
        if self.lost_leader_wait:
            quiet = min(quiet, self.lost_leader_wait - 1)
        if self.promotable():
            quiet = min(quiet, self.randomized_election_timeout - self.election_elapsed - 1)
        return max(0, quiet)

    def campaign(self) -> None:
        """Start an election now (as if the election timer fired)."""
        self._hup(transfer=False, cause="campaign")

    def leader_connection_lost(self, node: NodeId) -> bool:
        """The transport saw `node` close its connections to this node (end
        of stream or reset from the peer, never a close of our own): a
        crashed process closes its sockets, a pulled cable does not. If
        `node` is the leader this voter follows, forget it and campaign
        (pre-vote) without waiting for the election timeout; True if so.

        Forgetting the leader ends our lease, so we grant the pre-votes of
        the others who noticed, and those we dropped in the lease since we
        last heard from it are granted now. Only a pre-vote: a leader that
        closed a connection on purpose (a reconnect) is still heard by the
        others, who are in its lease and refuse, so it is not deposed
        (needs pre-vote and check-quorum, else this does nothing).

        Every follower notices a crash at about the same moment; if all
        campaigned at once their votes would split and the election wait
        for the randomized timeout. So the remaining voters take turns, in
        their sorted order: rank 0 campaigns at once, rank r after
        r * lost_leader_stagger_ticks ticks (more than one tick, so that
        the pre-vote of rank 0 arrives first), unless it has granted
        someone's pre-vote meanwhile (its turn is void), or refused one from
        a voter whose log is behind and cannot win without it (it campaigns
        at once, see _handle_vote_request). The order is a pure function of
        the configuration: deterministic, and the same on every node."""
        if (
            self.role != Role.FOLLOWER
            or node != self.lead
            or node == self.id
            or not self.promotable()
            or not (self.cfg.pre_vote and self.cfg.check_quorum)
        ):
            return False
        self.lead = None
        survivors = sorted(v for v in self.tracker.voters if v != node)
        rank = survivors.index(self.id)
        self.lost_leader_wait = rank * self.cfg.lost_leader_stagger_ticks
        # A grant voids our turn (someone else campaigns already; the
        # election timer stays the fallback should it fail).
        granted = self._answer_lease_dropped()
        if rank == 0 and not granted and self.role == Role.FOLLOWER:
            self._campaign_on_lost_connection()
        return True

    def _answer_lease_dropped(self) -> bool:
        """Out of the lease now: answer the pre-votes dropped in it as if
        they came now (their senders are still waiting); True if one was
        granted."""
        dropped, self._lease_dropped = self._lease_dropped, {}
        granted = False
        for frm in sorted(dropped):
            m = dropped[frm]
            if m.term > self.term and self._handle_vote_request(m):
                granted = True
        return granted

    def _campaign_on_lost_connection(self) -> None:
        self.lost_leader_wait = 0
        self.connection_lost_campaigns += 1
        self._hup(transfer=False, cause="connection_lost")

    def propose(self, data: bytes) -> int:
        """Append a normal entry; returns its index. Raises ProposalDropped."""
        return self._propose([Entry(0, 0, data, EntryType.NORMAL)])[0]

    def propose_batch(self, datas: list[bytes]) -> list[int]:
        return self._propose([Entry(0, 0, d, EntryType.NORMAL) for d in datas])

    def propose_conf_change(self, cc: ConfChange) -> int:
        if self.role == Role.LEADER:
            reason = self._conf_change_refusal(cc)
            if reason:
                raise ProposalDropped(reason, self.lead)
        index = self._propose([Entry(0, 0, cc.encode(), EntryType.CONF_CHANGE)])[0]
        self.pending_conf_index = index
        return index

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; answered by a ReadState with the
        same context (or never, if leadership is lost: the caller times out)."""
        if not context:
            raise RaftUsageError("read_index needs a non-empty context")
        if self.role == Role.LEADER:
            self._leader_read_index(context, self.id)
        elif self.lead is not None:
            self._send(MT.READ_INDEX, self.lead, context=context)
        else:
            raise ProposalDropped("no leader known for a read", None)

    def transfer_leader(self, to: NodeId) -> None:
        if self.role == Role.LEADER:
            self._leader_transfer(to)
        elif self.lead is not None:
            self._send(MT.TRANSFER_LEADER, self.lead, context=to.encode())
        else:
            raise ProposalDropped("no leader to transfer from", None)

    def on_persisted(self, index: int, term: int) -> None:
        """The driver made entries up to `index` (of `term`) durable. For a
        leader this is its own acknowledgement, which may commit."""
        if self.role != Role.LEADER or self.log.zero_term_on_error(index) != term:
            return
        pr = self.tracker.progress.get(self.id)
        if pr is not None and pr.maybe_update(index) and self._maybe_commit() and self.role == Role.LEADER:
            self._bcast_append(commit_notice=True)

    def step_down(self) -> None:
        """Stop leading now (the driver found it cannot make progress, e.g.
        its disk hangs). The others elect a leader once their timers fire."""
        if self.role == Role.LEADER:
            self.become_follower(self.term, None)

    def hurry(self, node: NodeId, index: int) -> None:
        """Feed learner `node` without pacing until an append tells it that
        `index` is committed (it waits for that entry: a write it forwarded,
        a read point it asked for)."""
        if self.cfg.learner_feed_ticks and node in self.tracker.learners:
            self._hurry[node] = max(index, self._hurry.get(node, 0))

    def report_unreachable(self, node: NodeId) -> None:
        """The transport failed to deliver to `node`: stop streaming to it."""
        pr = self.tracker.progress.get(node)
        if self.role == Role.LEADER and pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot_progress(self, node: NodeId) -> None:
        """The transport is still streaming the snapshot to `node`: do not
        give up on it (`snapshot_timeout_rounds` is for transports that
        cannot report; restarting a transfer that is still moving would
        never let a large snapshot arrive)."""
        pr = self.tracker.progress.get(node)
        if self.role == Role.LEADER and pr is not None and pr.state == ProgressState.SNAPSHOT:
            pr.snapshot_rounds = 0

    def report_snapshot(self, node: NodeId, ok: bool) -> None:
        pr = self.tracker.progress.get(node)
        if self.role != Role.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for the next heartbeat response before probing again.
        pr.probe_sent = True

    def step(self, m: Message) -> None:
        if m.to != self.id:
            raise RaftUsageError(f"message for {m.to!r} stepped into {self.id!r}")
        if m.term == 0:
            raise MessageDecodeError("peer messages carry a term >= 1")
        if m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.cfg.check_quorum and self.lead is not None and self.election_elapsed < self.cfg.election_tick
                )
                if not force and in_lease:
                    # We heard from a live leader within the election timeout:
                    # a (pre-)candidate with a higher term must not depose it.
                    if m.type == MT.PRE_VOTE and m.frm in self.tracker.voters:
                        # Kept until we hear from the leader again: if its
                        # connection closes or the lease runs out first,
                        # this is answered then (leader_connection_lost,
                        # _tick_election).
                        self._lease_dropped[m.frm] = m
                    return
            if m.type == MT.PRE_VOTE:
                pass  # never change term for a pre-vote
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the term we *would* have
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, None)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # A stale leader (or a node that rejoined with a lower term):
                # answering lets it learn our term and step down.
                self._send(MT.APP_RESP, m.frm)
            elif m.type == MT.PRE_VOTE:
                self._send(MT.PRE_VOTE_RESP, m.frm, reject=True)
            return

        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    # -- state ---------------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def conf_state(self) -> ConfState:
        return self.tracker.conf_state()

    def promotable(self) -> bool:
        return self.id in self.tracker.voters

    def is_learner(self) -> bool:
        return self.id in self.tracker.learners

    def status(self) -> dict[str, object]:
        progress = {}
        if self.role == Role.LEADER:
            for nid, pr in self.tracker.progress.items():
                progress[nid] = {
                    "match": pr.match,
                    "next": pr.next,
                    "state": str(pr.state),
                    "recent_active": pr.recent_active,
                    "learner": pr.is_learner,
                }
        return {
            "id": self.id,
            "role": "learner" if self.is_learner() else str(self.role),
            "term": self.term,
            "vote": self.vote,
            "leader": self.lead,
            "commit": self.log.committed,
            "applied": self.log.applied,
            "last_index": self.log.last_index(),
            "conf": self.conf_state().to_dict(),
            "progress": progress,
            "lead_transferee": self.lead_transferee,
        }

    # -- role transitions ----------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = None
        self.lead = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.lost_leader_wait = 0
        self._lease_dropped = {}
        self._reset_randomized_election_timeout()
        self.lead_transferee = None
        self.tracker.votes.clear()
        last = self.log.last_index()
        durable = self.log.last_stable_index()
        for nid, pr in list(self.tracker.progress.items()):
            fresh = Progress(last + 1, pr.is_learner)
            if nid == self.id:
                # Only what is on disk counts as ours (see _append_entries).
                fresh.match = durable
            self.tracker.progress[nid] = fresh
        self.pending_conf_index = 0
        self.read_only = ReadOnly()
        self.pending_reads = []
        # The highest index this node acknowledged to the leader of this term
        # (an answer to a COMMIT_ONLY append up to it would be a repeat).
        self.acked = 0
        self._fed.clear()
        self._owed.clear()
        self._hurry.clear()

    def _reset_randomized_election_timeout(self) -> None:
        et = self.cfg.election_tick
        self.randomized_election_timeout = et + self.cfg.rng.randrange(et)

    def become_follower(self, term: int, lead: NodeId | None) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise RaftUsageError("leader cannot become pre-candidate")
        # Term and vote stay: a pre-vote changes nothing durable.
        self.tracker.votes.clear()
        self.lead = None
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise RaftUsageError("leader cannot become candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        if self.role == Role.FOLLOWER:
            raise RaftUsageError("follower cannot become leader directly")
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        me = self.tracker.progress[self.id]
        me.become_replicate()
        me.recent_active = True
        # No configuration change until an entry of this term commits.
        self.pending_conf_index = self.log.last_index()
        self._append_entries([Entry(0, 0, b"", EntryType.NORMAL)])
        self._bcast_append()

    # -- elections -----------------------------------------------------------

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._lease_dropped and self.election_elapsed >= self.cfg.election_tick:
            # The lease ran out (the leader was not heard for an election
            # timeout): a pre-candidate whose request we dropped a tick ago
            # need not wait for its next timeout, nor we for ours.
            self._answer_lease_dropped()
        if self.lost_leader_wait:
            # A turn after the leader's connection closed (see
            # leader_connection_lost); void once a leader is heard again.
            if self.role != Role.FOLLOWER or self.lead is not None:
                self.lost_leader_wait = 0
            else:
                self.lost_leader_wait -= 1
                if not self.lost_leader_wait:
                    self._campaign_on_lost_connection()
                    return
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._hup(transfer=False, cause="election_timeout")

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                if not self.tracker.quorum_active(self.id):
                    # Cut off from a majority: stop acting as leader.
                    self.become_follower(self.term, None)
                    return
                for nid, pr in self.tracker.progress.items():
                    if nid != self.id:
                        pr.recent_active = False
            self._expire_snapshots()
            if self.lead_transferee is not None:
                # A transfer that did not finish in one election timeout fails.
                self.lead_transferee = None
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _expire_snapshots(self) -> None:
        for pr in self.tracker.progress.values():
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_rounds += 1
                if pr.snapshot_rounds >= self.cfg.snapshot_timeout_rounds:
                    pr.pending_snapshot = 0
                    pr.become_probe()

    def _hup(self, transfer: bool, cause: str) -> None:
        if self.role == Role.LEADER or not self.promotable():
            return
        self.campaign_cause = cause
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre_vote=True, transfer=False)
        else:
            self._campaign(pre_vote=False, transfer=transfer)

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._become_pre_candidate()
            vote_type, term = MT.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, term = MT.VOTE, self.term
        self.tracker.record_vote(self.id, True)
        if self.tracker.vote_result() == "won":
            # Single voter: no one to ask.
            if pre_vote:
                self._campaign(pre_vote=False, transfer=False)
            else:
                self._become_leader()
            return
        last = self.log.last_index()
        last_term = self.log.last_term()
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for voter in sorted(self.tracker.voters):
            if voter != self.id:
                self._send(vote_type, voter, term=term, index=last, log_term=last_term, context=ctx)

    def _handle_vote_request(self, m: Message) -> bool:
        """Answer a (pre-)vote request; True if granted."""
        resp = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
        can_vote = (
            self.vote == m.frm
            or (self.vote is None and self.lead is None)
            or (m.type == MT.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(resp, m.frm, term=m.term)
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
            else:
                # Someone else campaigns: our own turn after a lost leader
                # connection would only split the votes.
                self.lost_leader_wait = 0
            return True
        self._send(resp, m.frm, reject=True)
        if (
            can_vote
            and m.type == MT.PRE_VOTE
            and self.lost_leader_wait
            and self.role == Role.FOLLOWER
            and self.lead is None
            and len(self.tracker.voters) - 2 < len(self.tracker.voters) // 2 + 1
        ):
            # Our turn after a lost leader connection is pending and we
            # refused a voter whose log is behind ours. With three or four
            # voters it cannot win without us (the others but the lost
            # leader and us are short of a quorum), so nobody else is on
            # the way: take our turn now instead of after the stagger (the
            # case of a voter that restarted just before the leader died).
            self._campaign_on_lost_connection()
        return False

    def _step_candidate(self, m: Message) -> None:
        my_resp = MT.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MT.VOTE_RESP
        t = m.type
        if t == MT.APP:
            self.become_follower(m.term, m.frm)
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t == my_resp:
            self.tracker.record_vote(m.frm, not m.reject)
            result = self.tracker.vote_result()
            if result == "won":
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(pre_vote=False, transfer=False)
                else:
                    self._become_leader()
            elif result == "lost":
                self.become_follower(self.term, None)
        # Anything else (timeout_now, reads, stray responses) is not for a candidate.

    # -- follower ------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            if self._lease_dropped:
                self._lease_dropped.clear()
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            if self._lease_dropped:
                self._lease_dropped.clear()
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            if self._lease_dropped:
                self._lease_dropped.clear()
            self._handle_snapshot(m)
        elif t == MT.TIMEOUT_NOW:
            # The leader hands over: campaign at once, skipping pre-vote.
            self._hup(transfer=True, cause="transfer")
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))
        elif t == MT.TRANSFER_LEADER and self.lead is not None:
            self._send(MT.TRANSFER_LEADER, self.lead, context=m.context)
        # READ_INDEX sent to a follower: the sender's idea of the leader is
        # stale; it times out and retries, so nothing is forwarded here.

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(MT.APP_RESP, m.frm, index=self.log.committed)
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._apply_committed_confs()
            if m.context == COMMIT_ONLY and not m.entries and self.acked >= last_new:
                return  # already acknowledged: the leader asked for no repeat (see COMMIT_ONLY)
            self.acked = max(self.acked, last_new)
            self._send(MT.APP_RESP, m.frm, index=last_new)
            return
        hint_index = min(m.index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.log_term)
        self._send(MT.APP_RESP, m.frm, index=m.index, reject=True, reject_hint=hint_index, log_term=hint_term)

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader sends min(match, commit): it never passes our log unless
        # we lost entries we acknowledged (a wiped store). Then say where our
        # log ends (reject + hint), or an idle leader would never notice.
        last = self.log.last_index()
        self.log.commit_to(min(m.commit, last))
        self._apply_committed_confs()
        if m.commit > last:
            self._send(MT.HEARTBEAT_RESP, m.frm, context=m.context, index=m.commit, reject=True, reject_hint=last)
        else:
            self._send(MT.HEARTBEAT_RESP, m.frm, context=m.context)

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        index = self.log.last_index() if self._restore(m.snapshot) else self.log.committed
        self.acked = max(self.acked, index)
        self._send(MT.APP_RESP, m.frm, index=index)

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.meta
        if meta.index <= self.log.committed:
            return False
        if self.log.match_term(meta.index, meta.term):
            # We already hold the snapshot's last entry: just commit up to it.
            self.log.commit_to(meta.index)
            self._apply_committed_confs()
            return False
        self.log.restore(snap)
        self.tracker.apply_conf(meta.conf, self.log.last_index() + 1)
        self.conf_index = meta.index
        self.conf_history = [(meta.index, meta.conf)]
        return True

    # -- leader --------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        pr = self.tracker.progress.get(m.frm)
        t = m.type
        if t == MT.READ_INDEX:
            if pr is not None:
                self._leader_read_index(m.context, m.frm)
            return
        if t == MT.TRANSFER_LEADER:
            try:
                target = m.context.decode()
            except UnicodeDecodeError:
                return
            self._leader_transfer(target)
            return
        if pr is None:
            return  # not a member (any more)
        if t == MT.APP_RESP:
            self._handle_append_response(m, pr)
        elif t == MT.HEARTBEAT_RESP:
            self._handle_heartbeat_response(m, pr)

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused(self.cfg.max_inflight)
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.free_inflights_to(m.index)
        if self._maybe_commit():
            if self.role != Role.LEADER:
                return  # a committed conf change removed us
            self._bcast_append(commit_notice=True)
        elif was_paused:
            self._send_append(m.frm)
        # Stream what is left while the window allows.
        while m.frm in self.tracker.progress and self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(MT.TIMEOUT_NOW, m.frm)

    def _follower_lost_log(self, nid: NodeId, pr: Progress, hint: int) -> None:
        self.lost_logs.append(LostLog(nid, pr.match, hint))
        pr.reset_lost_log(hint)
        self._send_append(nid)

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject and m.reject_hint < pr.match and pr.state != ProgressState.SNAPSHOT:
            # The follower's log ends below the commit we sent it, which we
            # only send up to its match (see _handle_heartbeat): it lost
            # entries it acknowledged in this term, which only a wiped store
            # explains (a reordered answer cannot: the commit we sent never
            # exceeds what it had acknowledged before). The reset sends the
            # first probe. A duplicated answer costs one probe, no more.
            self._follower_lost_log(m.frm, pr, m.reject_hint)
        else:
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and len(pr.inflights) >= self.cfg.max_inflight:
                # The follower is alive but acknowledged nothing: appends were
                # lost. Free one slot so an append goes out; if the follower lacks
                # the earlier ones it rejects it and we fall back to probing.
                pr.inflights.popleft()
            if pr.match < self.log.last_index():
                self._send_append(m.frm)
        if not m.context:
            return
        acks = self.read_only.recv_ack(m.frm, m.context)
        if acks is None or not self.tracker.has_quorum(acks):
            return
        for req in self.read_only.advance(m.context):
            self._answer_read(req.context, req.origin, req.index)

    def _leader_read_index(self, context: bytes, origin: NodeId) -> None:
        if not self._committed_in_current_term():
            # Our commit index may be behind the previous leader's (or, after
            # a restart, behind what we acknowledged before) until an entry of
            # this term commits; hold the read until then. This holds for a
            # single voter too.
            self.pending_reads.append(_PendingRead(context, origin))
            return
        if len(self.tracker.voters) == 1 and self.id in self.tracker.voters:
            self._answer_read(context, origin, self.log.committed)
            return
        self.read_only.add_request(self.log.committed, context, origin)
        self.read_only.recv_ack(self.id, context)
        self._bcast_heartbeat(context)

    def _answer_read(self, context: bytes, origin: NodeId, index: int) -> None:
        if origin == self.id:
            self.read_states.append(ReadState(index, context))
        else:
            self._send(MT.READ_INDEX_RESP, origin, index=index, context=context)
            if self.cfg.learner_feed_ticks and origin in self.tracker.learners:
                # A paced learner waits for `index` to apply: feed it now.
                self.hurry(origin, index)
                if origin in self.tracker.progress:
                    self._send_append(origin)

    def _release_pending_reads(self) -> None:
        if not self.pending_reads or not self._committed_in_current_term():
            return
        pending, self.pending_reads = self.pending_reads, []
        for p in pending:
            self._leader_read_index(p.context, p.origin)

    def _committed_in_current_term(self) -> bool:
        return self.log.zero_term_on_error(self.log.committed) == self.term

    def _leader_transfer(self, to: NodeId) -> None:
        pr = self.tracker.progress.get(to)
        if pr is None or pr.is_learner or to == self.id:
            return
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        # The transfer must finish within one election timeout.
        self.election_elapsed = 0
        if pr.match == self.log.last_index():
            self._send(MT.TIMEOUT_NOW, to)
        else:
            self._send_append(to)

    def _propose(self, entries: list[Entry]) -> list[int]:
        if self.role != Role.LEADER:
            raise ProposalDropped("not the leader", self.lead)
        if self.id not in self.tracker.progress:
            raise ProposalDropped("this node was removed from the cluster", None)
        if self.lead_transferee is not None:
            raise ProposalDropped("leadership transfer in progress", self.lead)
        self._append_entries(entries)
        self._proposals_to_send = True
        return [e.index for e in entries]

    def _conf_change_refusal(self, cc: ConfChange) -> str:
        if self.pending_conf_index > self.log.committed:
            return "a configuration change is already pending"
        voters, learners = self.tracker.voters, self.tracker.learners
        n = cc.node
        kind = cc.type
        if kind == ConfChangeType.BOOTSTRAP:
            return "bootstrap is not a runtime change"
        if kind == ConfChangeType.ADD_VOTER and n in voters:
            return f"{n} is already a voter"
        if kind == ConfChangeType.ADD_LEARNER and (n in voters or n in learners):
            return f"{n} is already a member"
        if kind == ConfChangeType.PROMOTE_LEARNER and n not in learners:
            return f"{n} is not a learner"
        if kind == ConfChangeType.DEMOTE_VOTER and n not in voters:
            return f"{n} is not a voter"
        if kind == ConfChangeType.REMOVE_NODE and n not in voters and n not in learners:
            return f"{n} is not a member"
        if kind in (ConfChangeType.DEMOTE_VOTER, ConfChangeType.REMOVE_NODE) and voters == {n}:
            return "cannot remove the last voter"
        return ""

    def _append_entries(self, entries: list[Entry]) -> None:
        last = self.log.last_index()
        for i, e in enumerate(entries):
            e.term = self.term
            e.index = last + 1 + i
        self.log.append(entries)
        # Our own copy counts toward the quorum only once it is on disk
        # (`on_persisted`), so the driver may send these appends to the
        # followers while it is still writing them locally (Raft thesis
        # 10.2.1): the leader's fsync and the followers' run in parallel.

    def flush_proposals(self) -> None:
        """Send appends for proposals made since the last Ready, one message
        per follower for the whole batch."""
        if self._proposals_to_send:
            self._proposals_to_send = False
            if self.role == Role.LEADER:
                self._bcast_append(send_if_empty=False)

    def _maybe_commit(self) -> bool:
        if self.log.maybe_commit(self.tracker.committed_index(), self.term):
            self._apply_committed_confs()
            if self.role == Role.LEADER:
                self._release_pending_reads()
            return True
        return False

    def _bcast_append(self, send_if_empty: bool = True, commit_notice: bool = False) -> None:
        for nid in list(self.tracker.progress):
            if nid != self.id and nid in self.tracker.progress:
                self._send_append(nid, send_if_empty, commit_notice)

    def _bcast_heartbeat(self, context: bytes | None = None) -> None:
        if context is None:
            context = self.read_only.last_pending()
        committed = self.log.committed
        paced = self.cfg.learner_feed_ticks > 0
        for nid, pr in self.tracker.progress.items():
            if nid != self.id:
                fed = self._fed.get(nid) if paced and pr.is_learner else None
                if fed is not None and self._ticks - fed < self.cfg.heartbeat_tick:
                    # A paced learner fed an append (with the commit index)
                    # within this heartbeat interval needs no heartbeat: its
                    # answer tells us it is alive, and its acks never count
                    # for a read's quorum.
                    continue
                self._send(MT.HEARTBEAT, nid, commit=min(pr.match, committed), context=context)

    def _send_append(self, to: NodeId, send_if_empty: bool = True, commit_notice: bool = False) -> bool:
        pr = self.tracker.progress[to]
        if pr.is_paused(self.cfg.max_inflight):
            return False
        if pr.is_learner and self.cfg.learner_feed_ticks and self._paced(to, pr):
            return False
        prev = pr.next - 1
        try:
            log_term = self.log.term(prev)
            ents = self.log.entries_from(pr.next, self.cfg.max_msg_bytes)
        except CompactedError:
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        # An empty append to a follower we stream to only moves its commit
        # index: the answer is a repeat when the follower acknowledged our
        # whole log, or (a commit notice) already sent the acknowledgement
        # now on its way; the follower, which knows what it sent, answers
        # only if it did not (COMMIT_ONLY). A rejection is always answered.
        # Asked as before: a probe, the appends a heartbeat's answer asks
        # for (how a lost acknowledgement is made up for), and a transfer's
        # target, whose answer starts the handover (TIMEOUT_NOW).
        quiet = (
            not ents
            and pr.state == ProgressState.REPLICATE
            and (pr.match == prev or commit_notice)
            and to != self.lead_transferee
        )
        self._send(
            MT.APP,
            to,
            index=prev,
            log_term=log_term,
            entries=ents,
            commit=self.log.committed,
            context=COMMIT_ONLY if quiet else b"",
        )
        pr.sent_entries(ents[-1].index if ents else None, self.cfg.max_inflight)
        if pr.is_learner and self.cfg.learner_feed_ticks:
            self._fed[to] = self._ticks
            self._owed.discard(to)
            if self._hurry.get(to, 0) <= self.log.committed:
                self._hurry.pop(to, None)
        return True

    def _paced(self, to: NodeId, pr: Progress) -> bool:
        """True if learner `to` waits for its next feed (and is owed one)."""
        if pr.state != ProgressState.REPLICATE or to in self._hurry:
            return False
        if self._ticks - self._fed.get(to, self._ticks - self.cfg.learner_feed_ticks) >= self.cfg.learner_feed_ticks:
            return False
        if self.log.last_index() - pr.next + 1 >= self.cfg.learner_batch:
            return False  # a full batch waits: stream it (catching up)
        self._owed.add(to)
        return True

    def _feed_owed(self) -> None:
        """Each tick: the appends that pacing held back, one per learner."""
        owed, self._owed = self._owed, set()
        for nid in sorted(owed):
            if nid in self.tracker.progress:
                self._send_append(nid)

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        if snap.is_empty():
            raise RaftUsageError("log compacted but the storage has no snapshot")
        pr.become_snapshot(snap.meta.index)
        self._send(MT.SNAP, to, snapshot=snap)
        return True

    # -- membership ----------------------------------------------------------

    def _apply_committed_confs(self) -> None:
        committed = self.log.committed
        if committed <= self.conf_index:
            return
        pending = self.log.conf_indices
        while pending and pending[0] <= committed:
            index = pending.pop(0)
            if index <= self.conf_index:
                continue
            (e,) = self.log.slice(index, index + 1)
            self._apply_conf_change(ConfChange.decode(e.data))
            self._record_conf(e.index)
        self.conf_index = committed

    def _record_conf(self, index: int) -> None:
        self.conf_history.append((index, self.tracker.conf_state()))
        # Keep the configurations the driver may still snapshot at: those
        # from the last one at or below the applied index on.
        applied = self.log.applied
        while len(self.conf_history) > 1 and self.conf_history[1][0] <= applied:
            self.conf_history.pop(0)

    def conf_state_at(self, index: int) -> ConfState:
        """The configuration in force after entry `index` was committed; for
        snapshots taken at the applied index, which may trail the commit."""
        if index < self.conf_history[0][0]:
            raise RaftUsageError(f"configuration at {index} is no longer known (oldest {self.conf_history[0][0]})")
        conf = self.conf_history[0][1]
        for at, c in self.conf_history:
            if at > index:
                break
            conf = c
        return conf

    def _apply_conf_change(self, cc: ConfChange) -> None:
        voters = set(self.tracker.voters)
        learners = set(self.tracker.learners)
        n = cc.node
        kind = cc.type
        # Applying is deterministic on every node; a change that makes no
        # sense against the current configuration is a no-op everywhere.
        if kind == ConfChangeType.BOOTSTRAP:
            if voters or learners or cc.conf is None:
                return
            voters, learners = set(cc.conf.voters), set(cc.conf.learners)
        elif kind == ConfChangeType.ADD_VOTER:
            learners.discard(n)
            voters.add(n)
        elif kind == ConfChangeType.ADD_LEARNER:
            if n in voters:
                return
            learners.add(n)
        elif kind == ConfChangeType.PROMOTE_LEARNER:
            if n not in learners:
                return
            learners.discard(n)
            voters.add(n)
        elif kind in (ConfChangeType.DEMOTE_VOTER, ConfChangeType.REMOVE_NODE):
            if voters == {n}:
                return
            voters.discard(n)
            learners.discard(n)
            if kind == ConfChangeType.DEMOTE_VOTER:
                learners.add(n)
        self.tracker.apply_conf(ConfState.of(voters, learners), self.log.last_index() + 1)
        if self.role != Role.LEADER:
            if self.role != Role.FOLLOWER and not self.promotable():
                self.become_follower(self.term, None)
            return
        if not self.promotable():
            self._step_down_after_removal()
            return
        if self.lead_transferee is not None and self.lead_transferee not in self.tracker.voters:
            self.lead_transferee = None
        # The quorum changed: more may be committed now.
        if self._maybe_commit():
            self._bcast_append()

    def _step_down_after_removal(self) -> None:
        # Hand over to the most up-to-date voter so the cluster does not wait
        # a whole election timeout.
        last = self.log.last_index()
        best = [v for v in sorted(self.tracker.voters) if self.tracker.progress[v].match == last]
        if best:
            self._send(MT.TIMEOUT_NOW, best[0])
        self.become_follower(self.term, None)

    # -- output --------------------------------------------------------------

    def _send(
        self,
        mtype: MessageType,
        to: NodeId,
        *,
        term: int | None = None,
        log_term: int = 0,
        index: int = 0,
        entries: list[Entry] | None = None,
        commit: int = 0,
        reject: bool = False,
        reject_hint: int = 0,
        snapshot: Snapshot | None = None,
        context: bytes = b"",
    ) -> None:
        self.msgs.append(
            Message(
                type=mtype,
                to=to,
                frm=self.id,
                term=self.term if term is None else term,
                log_term=log_term,
                index=index,
                entries=entries if entries is not None else [],
                commit=commit,
                reject=reject,
                reject_hint=reject_hint,
                snapshot=snapshot,
                context=context,
            )
        )
