"""The configuration of one mesh node (`hana-node serve` builds it from its
flags; tests and the simulator build it directly)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.state.audit import DEFAULT_AUDIT_LIMIT, DEFAULT_AUDIT_MAX_AGE_MS


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
    # A write with ?offline=queue waits this long for a controller before it
    # is kept in the outbox (issue 14).
    offline_wait: float = 1.0
    # How long a follower waits for the controller's answer to a forwarded
    # write before it tries again (capped by what is left of the request).
    forward_timeout: float = 1.0
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
    # Raft's flow control (mesh.raft.Config); the simulator varies them.
    max_inflight: int = 256
    max_msg_bytes: int = 1 << 20
    # Learners get appends at most once a heartbeat interval under load, in
    # place of their heartbeat (mesh.raft.Config learner_feed_ticks; 0: with
    # every write, as voters): the leader's cost per write stays flat with
    # many learners.
    learner_feed_ticks: int = 2
    # Live parameters (mesh/node/live.py): a gesture settles after this
    # long without a new value; successive writes of one key by one author
    # within merge_ms are one undo step (0 here: never merged; `serve
    # --merge-ms` defaults to 500); live values go straight to every peer
    # ("direct") or through the controller ("relay").
    settle_ms: int = 250
    merge_ms: int = 0
    # Merged writes also leave one history record (`serve --coalesce-history`).
    coalesce_history: bool = False
    live_fanout: str = "direct"
    # A live value not refreshed for this long leaves the live view (its
    # origin died mid-gesture).
    live_expire_ms: int = 10_000

    @property
    def tick(self) -> float:
        """Seconds between two ticks: `tick_seconds` times the multiplier."""
        return self.tick_seconds * self.timing_multiplier
