"""Prometheus metrics of one node (prometheus_client, one registry per node
so that several nodes can live in one test process). `NodeMetrics` is the
node core's `CoreMetrics` too (proposal, leader_elected, lost_log,
forward_refused)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from mesh.replica import Replica
    from mesh.transport.tcp import TcpTransport

ROLES = ("follower", "pre_candidate", "candidate", "leader", "learner")


class NodeMetrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.term = Gauge("hana_raft_term", "Current Raft term", registry=r)
        self.role = Gauge("hana_raft_role", "1 for the role this node has", ["role"], registry=r)
        self.commit_index = Gauge("hana_raft_commit_index", "Highest committed log index", registry=r)
        self.applied_index = Gauge("hana_raft_applied_index", "Highest applied log index", registry=r)
        self.apply_lag = Gauge("hana_raft_apply_lag", "Committed but not yet applied entries", registry=r)
        self.leader_changes = Counter("hana_raft_leader_elected", "Times this node became leader", registry=r)
        self.connection_lost_campaigns = Counter(
            "hana_raft_campaigns_on_connection_lost",
            "Elections this node started at once because its controller closed every connection (its process "
            "died), instead of after the election timeout",
            registry=r,
        )
        self._connection_lost_seen = 0
        self.proposals = Counter("hana_proposals", "Proposals by outcome", ["result"], registry=r)
        self.fsync_seconds = Histogram(
            "hana_fsync_seconds",
            "Duration of each log fsync (group commit)",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.peer_rtt = Gauge("hana_peer_rtt_seconds", "Handshake round trip to each peer", ["peer"], registry=r)
        self.peer_sent = Counter("hana_peer_messages_sent", "Messages sent to peers", registry=r)
        self.peer_dropped = Gauge(
            "hana_peer_frames_dropped", "Inbound frames dropped by reason", ["reason"], registry=r
        )
        self.lost_logs = Counter(
            "hana_raft_follower_lost_log", "Followers found to have lost acknowledged entries", registry=r
        )
        self.forwards_refused = Counter(
            "hana_forwards_refused", "Forwarded writes the controller refused", ["reason"], registry=r
        )
        self.snapshot_stats = Gauge(
            "hana_peer_snapshots", "Snapshot streams by outcome (transport counters)", ["outcome"], registry=r
        )
        self.peer_bans = Counter("hana_peer_bans", "Peer addresses banned for failing authentication", registry=r)
        self.peer_banned = Gauge("hana_peer_banned", "Peer addresses banned now", registry=r)
        self._sent_seen = 0
        self._bans_seen = 0
        # Live parameters (mesh/node/live.py, observe_live).
        self.live_values = Gauge(
            "hana_live_values", "Live parameter values by what happened to them (counts)", ["kind"], registry=r
        )
        self.live_keys = Gauge("hana_live_keys", "Keys with a live value in this node's live view", registry=r)
        self.live_gestures = Gauge("hana_live_gestures_open", "Gestures open on this node (origin)", registry=r)
        # Issue 14: conflicts and the offline outbox.
        self.conflicts_open = Gauge("hana_conflicts_open", "Conflicts kept for a person, not resolved", registry=r)
        self.conflicts_total = Counter(
            "hana_conflicts", "Conflicts opened (critical: of a critical component)", ["critical"], registry=r
        )
        self.outbox_queued = Gauge("hana_outbox_queued", "Offline writes queued on this node", registry=r)
        self._conflicts_seen = {False: 0, True: 0}

    # -- the node core's counts (CoreMetrics) --------------------------------------

    def proposal(self, result: str) -> None:
        self.proposals.labels(result=result).inc()

    def leader_elected(self) -> None:
        self.leader_changes.inc()

    def lost_log(self) -> None:
        self.lost_logs.inc()

    def forward_refused(self, reason: str) -> None:
        self.forwards_refused.labels(reason=reason).inc()

    def observe(self, replica: Replica) -> None:
        raw = replica.node
        self.term.set(raw.term)
        current = "learner" if raw.is_learner() else str(raw.role)
        for role in ROLES:
            self.role.labels(role=role).set(1 if role == current else 0)
        self.commit_index.set(raw.committed)
        self.applied_index.set(replica.applied)
        self.apply_lag.set(raw.committed - replica.applied)
        campaigns = raw.connection_lost_campaigns
        if campaigns > self._connection_lost_seen:
            self.connection_lost_campaigns.inc(campaigns - self._connection_lost_seen)
            self._connection_lost_seen = campaigns

    def observe_transport(self, transport: TcpTransport) -> None:
        for peer, rtt in transport.peer_rtt_ms().items():
            if rtt is not None:
                self.peer_rtt.labels(peer=peer).set(rtt / 1000)
        sent = transport.stats.sent
        if sent > self._sent_seen:
            self.peer_sent.inc(sent - self._sent_seen)
            self._sent_seen = sent
        for reason, n in transport.stats.dropped_bad_frame.items():
            self.peer_dropped.labels(reason=reason).set(n)
        bans = transport.bans
        if bans.bans_total > self._bans_seen:
            self.peer_bans.inc(bans.bans_total - self._bans_seen)
            self._bans_seen = bans.bans_total
        self.peer_banned.set(bans.banned())
        st = transport.stats
        for outcome, n in (
            ("sent", st.snapshots_sent),
            ("send_failed", st.snapshots_failed),
            ("received", st.snapshots_received),
            ("refused", st.snapshots_refused),
        ):
            self.snapshot_stats.labels(outcome=outcome).set(n)

    def observe_live(self, counts: dict[str, int], keys: int, gestures: int) -> None:
        """The live table's counters (mesh/node/live.py) and sizes."""
        for kind, n in counts.items():
            self.live_values.labels(kind=kind).set(n)
        self.live_keys.set(keys)
        self.live_gestures.set(gestures)

    def observe_offline(self, conflicts_open: int, opened: dict[bool, int], queued: int) -> None:
        """Issue 14: open conflicts, conflicts opened so far (by critical), queued offline writes."""
        self.conflicts_open.set(conflicts_open)
        self.outbox_queued.set(queued)
        for critical in (False, True):
            n = opened.get(critical, 0)
            if n > self._conflicts_seen[critical]:
                self.conflicts_total.labels(critical="true" if critical else "false").inc(
                    n - self._conflicts_seen[critical]
                )
                self._conflicts_seen[critical] = n

    def render(self) -> bytes:
        return generate_latest(self.registry)
