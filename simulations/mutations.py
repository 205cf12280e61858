"""Deliberately injected bugs, to prove the simulator catches them.

Each mutation monkeypatches a class of the Raft core, the replica, the node
core or the simulated clients in this process only; nothing is edited on
disk. `apply_mutation(name)` returns a function that undoes it. Those in
`WHOLE_NODE` live above the Raft core and need whole-node runs
(`RunConfig(whole_node=True)`, `--whole-node`); those in `INJECTED` are the
product's own deliberate bugs (`serve --inject-bug`), which patch nothing:
the whole-node simulator gives them to every node's `NodeConfig.inject_bug`,
the one hook through which the product can be broken on purpose.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson

from mesh.errors import NoLeader
from mesh.node.core import NodeCore, Ticket, WatchCursor, _Write
from mesh.node.flags import INJECTABLE_BUGS
from mesh.node.live import LiveTable, LiveUpdate, _Gesture
from mesh.node.outbox import Item, Outbox
from mesh.raft import Role
from mesh.raft.core import Raft
from mesh.raft.log import RaftLog
from mesh.replica import ReadyOutcome, Replica
from simulations.sim.clients import Clients, Request
from simulations.sim.nodes import CRASHED, REMOVED


def _commit_old_term(self: RaftLog, index: int, term: int) -> bool:
    # Figure 8 bug: commit by counting replicas of an entry of an older term.
    if index > self.committed:
        self.commit_to(index)
        return True
    return False


_original_become_leader = Raft._become_leader


def _become_leader_without_noop(self: Raft) -> None:
    # The leader's no-op of its own term would mask the Figure 8 bug in this
    # core (every acknowledgement then covers a current-term entry), so the
    # mutation also drops it, as some implementations do. The core's own
    # _become_leader runs, with the append of the no-op suppressed.
    self._append_entries = lambda entries: None  # type: ignore[method-assign]
    try:
        _original_become_leader(self)
    finally:
        del self._append_entries


def _vote_ignores_log(self: RaftLog, last_index: int, term: int) -> bool:
    # Grant votes without the up-to-date check of Raft §5.4.1.
    return True


def _read_index_no_quorum(self: Raft, context: bytes, origin: str) -> None:
    # Answer ReadIndex at once, without the heartbeat round that proves the
    # leader is still the leader.
    self._answer_read(context, origin, self.log.committed)


def _skip_sync(self: Replica) -> None:
    # Send and acknowledge without making the writes durable first.
    return None


# -- above the Raft core (whole-node runs) ----------------------------------------------


def _forward_unanswered_is_refused(self: NodeCore, w: _Write, reason: str) -> None:
    # CHANGELOG "Fixed", the first bug: a forward that got no answer is
    # treated as one that never left, so when no controller is found until
    # the deadline the write is answered 503 ("nothing happened") although
    # the controller may have appended it and a successor may commit it.
    req = w.forward
    assert req is not None
    self._forwards.pop(req.id, None)
    w.forward = None
    self.transport.withdraw(req)
    if self.clock.monotonic() >= w.deadline:
        self._fail(w, NoLeader(f"controller {req.to} did not answer"))
    elif self._dropped(w, reason):
        self._attempt(w)


_original_forward = NodeCore._forward
_fresh = itertools.count(1)


def _forward_with_fresh_request_id(self: NodeCore, w: _Write, leader: str) -> None:
    # CHANGELOG "Fixed", the second bug, where the node is the client: a
    # retried forward goes out as a new request (a new request id), so a
    # first copy the controller appended without answering is applied too.
    command = orjson.loads(w.data)
    command["rid"] = f"{self.id}.{self.boot_id}.retry{next(_fresh)}"
    w.data = orjson.dumps(command)
    _original_forward(self, w, leader)


_original_replay_command = Outbox.replay_command


def _replay_ignores_hlc(self: Outbox, item: Item) -> dict[str, Any]:
    # Issue 14: the outbox replays a queued write as an ordinary write,
    # without the stamp of the moment it was made (nor its base version), so
    # the controller's stamp at replay decides: a write made before the
    # majority's edit wins over it (lww), and a manual write overwrites a
    # change made since its base without a conflict record.
    command = _original_replay_command(self, item)
    command.pop("made", None)
    command.pop("base_version", None)
    if command.get("op") == "txn":
        command["ops"] = [{k: v for k, v in op.items() if k != "base_version"} for op in command["ops"]]
    return command


_original_lost = Clients._lost
_retried: set[int] = set()


def _client_silent_retry(self: Clients, req: Request) -> None:
    # CHANGELOG "Fixed", the second bug as users met it: the HTTP client
    # (aiohttp) sent a PUT or DELETE again on a new connection when the node
    # dropped the first, and reported the retry's answer (a 409, a refused
    # connection) although the first may have been applied.
    if req.done or req.command is None or req.kind not in ("put", "delete") or req.id in _retried:
        _original_lost(self, req)
        return
    _retried.add(req.id)
    node = self.cluster.nodes.get(req.node)
    if node is None or node.state in (CRASHED, REMOVED):
        self.world.after(self._http_delay(), self._finish, req, "fail", None, None, "connect: refused")
        return
    self.world.after(self._http_delay(), self._arrive, req, node, node.epoch)


def _open_watch_at_current(self: NodeCore, prefix: str, since: int) -> WatchCursor:
    # A watch resumes from the node's current revision instead of the last
    # revision the watcher saw: what happened in between is never delivered.
    return WatchCursor(self.kv, prefix, max(since, self.kv.revision + 1))


_original_read = NodeCore.read


def _leader_reads_locally(self: NodeCore, linearizable: bool) -> Ticket:
    # The read barrier trusts this node's own belief that it leads, without
    # a ReadIndex round confirming its term with a quorum: a deposed leader
    # that has not noticed yet serves stale reads.
    if linearizable and self.raw.role == Role.LEADER:
        t = Ticket()
        t._resolve(None)
        return t
    return _original_read(self, linearizable)


def _release_reads_before_apply(self: Replica, out: ReadyOutcome) -> None:
    # A read is released when its read index is known, before this node has
    # applied up to it: a lagging follower answers from an older state.
    from mesh.replica import ReadOutcome

    out.reads.extend(ReadOutcome(ctx, index, self.applied) for ctx, index in self._reads)
    self._reads = []


_original_live_set = LiveTable.set


def _settle_each_value(
    self: LiveTable, values: dict[str, Any], gesture: str | None = None, *, author: str, role: str = "operator"
) -> LiveUpdate:
    # Every live value is committed as it comes (a settle per set), as if
    # the live path were the write path: many records and undo steps per
    # gesture.
    update = _original_live_set(self, values, gesture, author=author, role=role)
    g = self.gestures.get((author, gesture))
    if g is not None:
        each = _Gesture(g.gid, g.client_id, author, role, dict(values), dict.fromkeys(values, update.seq), update.seq)
        self._begin_settle(each, self.clock.monotonic())
    return update


Patch = tuple[type, str, Callable[..., Any]]

# name -> (patches, what it breaks)
MUTATIONS: dict[str, tuple[list[Patch], str]] = {
    "commit_old_term": (
        [(RaftLog, "maybe_commit", _commit_old_term), (Raft, "_become_leader", _become_leader_without_noop)],
        "commit an entry of an older term by counting replicas (Raft Figure 8)",
    ),
    "vote_ignores_log": ([(RaftLog, "is_up_to_date", _vote_ignores_log)], "grant votes to candidates with stale logs"),
    "read_index_no_quorum": (
        [(Raft, "_leader_read_index", _read_index_no_quorum)],
        "answer ReadIndex without the heartbeat round",
    ),
    "skip_sync": ([(Replica, "sync", _skip_sync)], "send and acknowledge without fsync"),
    # Above the Raft core (whole-node runs).
    "forward_unanswered_is_refused": (
        [(NodeCore, "_forward_unanswered", _forward_unanswered_is_refused)],
        "answer 503 after a forward that may have arrived (CHANGELOG Fixed)",
    ),
    "forward_retry_new_request_id": (
        [(NodeCore, "_forward", _forward_with_fresh_request_id)],
        "retry a forwarded write without its request id (applied twice)",
    ),
    "client_silent_retry": (
        [(Clients, "_lost", _client_silent_retry)],
        "the HTTP client retries a PUT/DELETE on a dropped connection and reports the retry (CHANGELOG Fixed)",
    ),
    "watch_resume_current": (
        [(NodeCore, "open_watch", _open_watch_at_current)],
        "a watch resumes from the current revision instead of the last delivered",
    ),
    "leader_reads_locally": (
        [(NodeCore, "read", _leader_reads_locally)],
        "the read barrier skips the ReadIndex round (no term check) on a node that believes it leads",
    ),
    "read_before_apply": (
        [(Replica, "_release_reads", _release_reads_before_apply)],
        "release a linearizable read before the state machine applied its index",
    ),
    "settle_each_value": (
        [(LiveTable, "set", _settle_each_value)],
        "commit every live value through the log as it comes, instead of a gesture's final values once",
    ),
    "replay_ignores_hlc": (
        [(Outbox, "replay_command", _replay_ignores_hlc)],
        "replay a queued offline write without the HLC stamp of the moment it was made (issue 14)",
    ),
    # The product's own deliberate bugs, through NodeConfig.inject_bug.
    "stale_reads": ([], "serve --inject-bug stale_reads: every node reads locally"),
    "ack_unreplicated": ([], "serve --inject-bug ack_unreplicated: commit on the leader's own copy"),
}

INJECTED = frozenset(INJECTABLE_BUGS)
WHOLE_NODE = frozenset(
    {
        "forward_unanswered_is_refused",
        "forward_retry_new_request_id",
        "client_silent_retry",
        "watch_resume_current",
        "leader_reads_locally",
        "read_before_apply",
        "settle_each_value",
        "replay_ignores_hlc",
    }
    | INJECTED
)
# Mutations only offline writers can catch (they need RunConfig(offline=True)).
OFFLINE = frozenset({"replay_ignores_hlc"})


def apply_mutation(name: str) -> Callable[[], None]:
    try:
        patches, _ = MUTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown mutation {name!r} (known: {', '.join(sorted(MUTATIONS))})") from None
    originals = [(cls, attr, cls.__dict__[attr]) for cls, attr, _ in patches]
    for cls, attr, replacement in patches:
        setattr(cls, attr, replacement)

    def undo() -> None:
        for cls, attr, original in originals:
            setattr(cls, attr, original)

    return undo
