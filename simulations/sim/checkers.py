"""Invariant checkers, each its own small class, fed incrementally after every
step of the simulation (so that checking stays cheap)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.raft import CompactedError, Entry, EntryType, Role, UnavailableError
from mesh.replica import ReadyOutcome, Replica
from simulations.sim.statemachine import ZERO, ChainStateMachine, chain

if TYPE_CHECKING:
    from collections.abc import Iterable


class Violation(Exception):
    """An invariant does not hold. `invariant` names it."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


class ElectionSafety:
    """At most one leader per term."""

    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}

    def observe(self, node: str, replica: Replica) -> bool:
        """Returns True when `node` is a leader not seen before in its term."""
        raft = replica.raft
        if raft.role != Role.LEADER:
            return False
        known = self.leaders.get(raft.term)
        if known is None:
            self.leaders[raft.term] = node
            return True
        if known != node:
            raise Violation("election safety", f"two leaders in term {raft.term}: {known} and {node}")
        return False


class LogMatching:
    """Two entries with the same index and term hold the same data and follow
    entries of the same term: (index, term) -> (prev term, type, data),
    checked whenever entries are persisted."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], tuple[int, EntryType, bytes]] = {}

    def on_persist(self, node: str, replica: Replica, entries: list[Entry]) -> None:
        storage = replica.storage
        for e in entries:
            try:
                prev = storage.term(e.index - 1)
            except (CompactedError, UnavailableError):
                prev = -1
            key = (e.index, e.term)
            val = (prev, e.type, e.data)
            old = self.seen.get(key)
            if old is None:
                self.seen[key] = val
                continue
            if old[1:] != val[1:] or (old[0] != prev and old[0] != -1 and prev != -1):
                raise Violation(
                    "log matching",
                    f"{node} persisted entry {e.index}@{e.term} (prev term {prev}, {e.data!r}) but another node "
                    f"holds (prev term {old[0]}, {old[2]!r})",
                )


class LeaderCompleteness:
    """Every committed entry is in the log of every leader of a later term than
    the one in which its commit was first observed (entries covered by the
    leader's snapshot count as present)."""

    def __init__(self) -> None:
        # index -> (entry term, term of the node that first saw it committed)
        self.committed: dict[int, tuple[int, int]] = {}
        self.cursor: dict[str, int] = {}

    def reset(self, node: str) -> None:
        self.cursor.pop(node, None)

    def observe_commit(self, node: str, replica: Replica) -> None:
        raft = replica.raft
        log = raft.log
        lo = self.cursor.get(node, log.first_index() - 1)
        hi = log.committed
        if hi <= lo:
            return
        for i in range(max(lo + 1, log.first_index()), hi + 1):
            t = log.term(i)
            known = self.committed.get(i)
            if known is None:
                self.committed[i] = (t, raft.term)
            elif known[0] != t:
                raise Violation(
                    "committed entry agreement",
                    f"{node} has entry {i} committed with term {t}, but it was committed with term {known[0]}",
                )
        self.cursor[node] = hi

    def on_new_leader(self, node: str, replica: Replica) -> None:
        raft = replica.raft
        log = raft.log
        for i, (t, seen_in) in self.committed.items():
            if seen_in >= raft.term:
                continue
            try:
                have = log.term(i)
            except CompactedError:
                continue
            except UnavailableError:
                have = None
            if have != t:
                raise Violation(
                    "leader completeness",
                    f"{node} became leader in term {raft.term} without entry {i}@{t} "
                    f"(committed, observed in term {seen_in}); its log has term {have} there "
                    f"(last index {log.last_index()})",
                )


class StateMachineSafety:
    """Every node applies a prefix of one global history; after installing a
    snapshot (or restarting from one) the state equals the history prefix."""

    def __init__(self) -> None:
        # history[i] = (term, type, data) of entry i; digests[i] = chain after i.
        self.history: list[tuple[int, EntryType, bytes] | None] = [None]
        self.digests: list[bytes] = [ZERO]
        self.cursor: dict[str, int] = {}

    def _state_check(self, node: str, index: int, digest: bytes, how: str) -> None:
        if index >= len(self.digests):
            raise Violation(
                "state machine safety", f"{node} {how} at {index}, beyond any applied history ({len(self.digests) - 1})"
            )
        if digest != self.digests[index]:
            raise Violation("state machine safety", f"{node} state after {how} at {index} differs from the history")

    def on_start(self, node: str, index: int, sm: ChainStateMachine) -> None:
        self.cursor[node] = index
        self._state_check(node, index, sm.digest, "restart from snapshot")

    def on_ready(self, node: str, out: ReadyOutcome, sm: ChainStateMachine) -> None:
        cur = self.cursor.get(node, 0)
        if out.installed is not None:
            cur = out.installed.meta.index
            self._state_check(node, cur, ChainStateMachine.digest_of(out.installed.data), "snapshot install")
        if not out.applied:
            self.cursor[node] = cur
            if out.installed is not None:
                self._state_check(node, cur, sm.digest, "snapshot install")
            return
        hist = self.history
        for e in out.applied:
            if e.index != cur + 1:
                raise Violation("state machine safety", f"{node} applied {e.index} after {cur}: a gap")
            rec = (e.term, e.type, e.data)
            if e.index < len(hist):
                if hist[e.index] != rec:
                    raise Violation(
                        "state machine safety",
                        f"{node} applied {e.index}@{e.term} {e.data!r}, history has {hist[e.index]!r}",
                    )
            else:
                hist.append(rec)
                d = self.digests[-1]
                if e.type == EntryType.NORMAL and e.data:
                    d = chain(d, e.index, e.data)
                self.digests.append(d)
            cur = e.index
        self.cursor[node] = cur
        self._state_check(node, cur, sm.digest, "apply")


class AckedWrites:
    """No acknowledged proposal is ever lost: each one is in the history at its
    index when acknowledged, and in every member's final state."""

    def __init__(self) -> None:
        self.acked: dict[int, str] = {}
        self.max_index = 0

    def on_ack(self, node: str, index: int, op: str, smsafety: StateMachineSafety) -> None:
        rec = smsafety.history[index] if index < len(smsafety.history) else None
        if rec is None or rec[2].decode() != op:
            raise Violation("acknowledged write", f"{node} acknowledged {op} at {index} but history has {rec!r}")
        self.acked[index] = op
        self.max_index = max(self.max_index, index)

    def check_final(self, states: Iterable[tuple[str, ChainStateMachine, int]]) -> None:
        for node, sm, applied in states:
            ops = dict(sm.ops)
            for index, op in self.acked.items():
                if index > applied:
                    raise Violation("acknowledged write lost", f"{node} applied only {applied}, {op} acked at {index}")
                if ops.get(index) != op:
                    raise Violation("acknowledged write lost", f"{node} final state lacks {op} at {index}")


class LinearizableReads:
    """A read returning the state at applied index A includes every write
    acknowledged before the read was invoked, and reads ordered in real time
    never go backwards."""

    def __init__(self, acked: AckedWrites) -> None:
        self.acked = acked
        self.max_read = 0
        self.pending: dict[bytes, tuple[int, int, int]] = {}
        self.completed = 0

    def on_invoke(self, ctx: bytes, now: int) -> None:
        self.pending[ctx] = (now, self.acked.max_index, self.max_read)

    def on_complete(self, node: str, ctx: bytes, read_index: int, applied: int) -> bool:
        rec = self.pending.pop(ctx, None)
        if rec is None:
            return False
        _, acked, prev_read = rec
        if applied < acked:
            raise Violation(
                "linearizable read",
                f"read {ctx.decode()} on {node} returned the state at {applied} (read index {read_index}), "
                f"missing the write acknowledged at {acked} before it was invoked",
            )
        if applied < prev_read:
            raise Violation(
                "linearizable read",
                f"read {ctx.decode()} on {node} returned the state at {applied}, older than a read "
                f"completed before it was invoked (at {prev_read})",
            )
        self.max_read = max(self.max_read, applied)
        self.completed += 1
        return True
