"""Automatic membership (autopilot): what configuration change to propose next.

PURE: no asyncio, no clock reads, no IO. Time is the `now` argument (any
monotonic seconds, the same clock as the contact times). The leader (the
"controller") calls `decide()` periodically (say once a second) and after
each configuration change commits, and proposes the change it returns with
`propose_conf_change`; Raft accepts one pending change at a time, so
`decide()` returns at most one change and nothing while one is pending.

Health of a member, as the leader observes it:
- *unreachable for* `now - last_contact` (or `now - known_since` if never
  heard since this leader started tracking it);
- *healthy*: heard within `contact_timeout` and at most `max_lag` entries
  behind the leader's last index;
- *stable*: healthy without a break since `healthy_since`, for at least
  `stabilization` seconds (`HealthTracker` keeps `healthy_since`).

Rules, in priority order (the leader itself is never demoted or removed):
1. Over the cap (more voters than `max_voters`, e.g. --voters was lowered):
   demote the least healthy other voter.
2. Even voter count (the middle of a two-step change): demote a voter
   unreachable past `replace_after` if that leaves at least the floor; else
   promote the best stable learner if under the cap.
3. Replace: a voter unreachable past `replace_after` and a stable learner
   exists: promote the learner first if under the cap (rule 2 then demotes
   the voter), else demote the voter first (rule 2 then promotes the
   learner). Demoting first at the cap may go down to `max_voters - 1` for
   that one step even below `min_quorum`, because a learner is ready.
4. Gone for good (unreachable past `remove_after` and no longer
   discovered): remove a learner; remove a voter only if at least
   `min_quorum` voters remain. A node that discovery still sees is kept
   (removing it would only re-add it by rule 5).
5. Add every discovered node that is not a member as a learner.
6. Grow: with an odd count and two stable learners, promote one if the
   count can reach `current + 2 <= max_voters` (rule 2 promotes the next).

Guarantees (tests/discovery/test_autopilot.py checks them over generated
health): the voter count never exceeds `max_voters` (unless it already
did); a demotion or removal never leaves fewer than
`min(min_quorum, current)` voters except the replacement step of rule 3;
a learner is promoted only when stable; an unreachable voter is replaced
only when a stable learner exists; with health unchanged, repeated
decisions reach an odd count again whenever a stable learner or a
removable dead voter allows it.

mDNS keeps a SIGKILLed peer's record for about 20 minutes, so the default
`remove_after` (30 minutes) is longer than that: a removed node is not
re-added at once from a stale record. The caller may also filter
`discovered` to peers it heard from recently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mesh.raft.messages import ConfChange, ConfChangeType, ConfState

NodeId = str


@dataclass(slots=True, frozen=True)
class Limits:
    max_voters: int = 5
    # Autopilot never removes voters below this many on its own.
    min_quorum: int = 3
    # Seconds a learner must stay healthy before promotion.
    stabilization: float = 10.0
    # Seconds a voter may be unreachable before a stable learner replaces it.
    replace_after: float = 30.0
    # Seconds a member may be unreachable before it is removed.
    remove_after: float = 1800.0
    # Healthy: heard within this many seconds ...
    contact_timeout: float = 2.0
    # ... and at most this many entries behind the leader.
    max_lag: int = 250

    def __post_init__(self) -> None:
        if self.max_voters < 1 or self.min_quorum < 1:
            raise ValueError("max_voters and min_quorum must be at least 1")
        if not 0 <= self.replace_after <= self.remove_after:
            raise ValueError("need 0 <= replace_after <= remove_after")
        if self.stabilization < 0 or self.contact_timeout <= 0 or self.max_lag < 0:
            raise ValueError("negative stabilization / lag or non-positive contact_timeout")


@dataclass(slots=True, frozen=True)
class MemberHealth:
    """What the leader knows about one member."""

    # When the leader last heard from it (None: not since tracking began).
    last_contact: float | None
    # Its replicated log's match index.
    match: int
    # When this leader started tracking it.
    known_since: float
    # Start of its current healthy streak (None: not healthy now).
    healthy_since: float | None = None


def unreachable_for(h: MemberHealth, now: float) -> float:
    return now - (h.last_contact if h.last_contact is not None else h.known_since)


def is_healthy(h: MemberHealth, leader_last_index: int, limits: Limits, now: float) -> bool:
    return (
        h.last_contact is not None
        and now - h.last_contact <= limits.contact_timeout
        and leader_last_index - h.match <= limits.max_lag
    )


def is_stable(h: MemberHealth, leader_last_index: int, limits: Limits, now: float) -> bool:
    return (
        is_healthy(h, leader_last_index, limits, now)
        and h.healthy_since is not None
        and now - h.healthy_since >= limits.stabilization
    )


class HealthTracker:
    """Keeps `known_since` and `healthy_since` across observations. Pure:
    the caller passes `now`. Create a new one (or `reset`) when this node
    becomes leader, so that members are not judged by a stale past."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._known: dict[NodeId, float] = {}
        self._healthy: dict[NodeId, float] = {}

    def reset(self) -> None:
        self._known.clear()
        self._healthy.clear()

    def observe(
        self,
        now: float,
        leader_last_index: int,
        contacts: Mapping[NodeId, tuple[float | None, int]],
    ) -> dict[NodeId, MemberHealth]:
        """`contacts`: member -> (last contact time or None, match index)."""
        out: dict[NodeId, MemberHealth] = {}
        for nid in list(self._known):
            if nid not in contacts:
                del self._known[nid]
                self._healthy.pop(nid, None)
        for nid, (last, match) in contacts.items():
            known = self._known.setdefault(nid, now)
            probe = MemberHealth(last, match, known)
            if is_healthy(probe, leader_last_index, self.limits, now):
                since = self._healthy.setdefault(nid, now)
            else:
                self._healthy.pop(nid, None)
                since = None
            out[nid] = MemberHealth(last, match, known, since)
        return out


def decide(
    *,
    leader: NodeId,
    voters: Iterable[NodeId],
    learners: Iterable[NodeId],
    health: Mapping[NodeId, MemberHealth],
    leader_last_index: int,
    discovered: Iterable[NodeId],
    limits: Limits,
    now: float,
    pending: bool = False,
) -> list[ConfChange]:
    """The next configuration change(s) to propose: a list of at most one.

    `voters`/`learners`: the current configuration. `health`: per member
    (a member missing from it counts as unknown: neither healthy nor
    unreachable). `discovered`: node ids of this cluster that discovery
    sees. `pending`: a change is proposed but not yet committed.
    """
    voter_set, learner_set = set(voters), set(learners)
    if pending or leader not in voter_set:
        return []
    n = len(voter_set)

    def h(nid: NodeId) -> MemberHealth:
        return health.get(nid) or MemberHealth(None, 0, now)

    def lag(nid: NodeId) -> int:
        return leader_last_index - h(nid).match

    others = sorted(voter_set - {leader})
    dead = sorted(
        (v for v in others if unreachable_for(h(v), now) >= limits.replace_after),
        key=lambda v: (-unreachable_for(h(v), now), v),
    )
    stable = sorted(
        (x for x in learner_set if is_stable(h(x), leader_last_index, limits, now)),
        key=lambda x: (lag(x), x),
    )

    def promote(x: NodeId) -> list[ConfChange]:
        return [ConfChange(ConfChangeType.PROMOTE_LEARNER, x)]

    def demote(v: NodeId) -> list[ConfChange]:
        return [ConfChange(ConfChangeType.DEMOTE_VOTER, v)]

    # 1. Over the cap.
    if n > limits.max_voters and others:
        worst = max(
            others,
            key=lambda v: (not is_healthy(h(v), leader_last_index, limits, now), unreachable_for(h(v), now), lag(v), v),
        )
        return demote(worst)

    floor = min(limits.min_quorum, n)
    # 2. Even count: finish the two-step change.
    if n % 2 == 0:
        if dead and n - 1 >= floor:
            return demote(dead[0])
        if stable and n + 1 <= limits.max_voters:
            return promote(stable[0])

    # 3. Replace an unreachable voter by a stable learner.
    if n % 2 == 1 and dead and stable:
        if n + 1 <= limits.max_voters:
            return promote(stable[0])
        if n - 1 >= min(limits.min_quorum, limits.max_voters - 1):
            return demote(dead[0])

    # 4. Gone for good.
    seen = set(discovered)
    for x in sorted(learner_set - seen):
        if unreachable_for(h(x), now) >= limits.remove_after:
            return [ConfChange(ConfChangeType.REMOVE_NODE, x)]
    if n - 1 >= limits.min_quorum:
        for v in dead:
            if v not in seen and unreachable_for(h(v), now) >= limits.remove_after:
                return [ConfChange(ConfChangeType.REMOVE_NODE, v)]

    # 5. Discovered nodes join as learners.
    for nid in sorted(seen - voter_set - learner_set - {leader}):
        return [ConfChange(ConfChangeType.ADD_LEARNER, nid)]

    # 6. Grow by two stable learners.
    if n % 2 == 1 and len(stable) >= 2 and n + 2 <= limits.max_voters:
        return promote(stable[0])
    return []


def describe(cc: ConfChange, conf: ConfState, h: MemberHealth | None, now: float, limits: Limits) -> str:
    """A short human reason for a decision (for the log line and the audit
    trail; the decision itself is `decide`)."""
    kind = str(cc.type)
    n_voters = len(conf.voters)
    if kind == "add_learner":
        return "discovered"
    if kind == "promote_learner":
        return f"stable_learner voters={n_voters}"
    away = unreachable_for(h, now) if h is not None else 0.0
    if kind == "demote_voter":
        if n_voters > limits.max_voters:
            return f"over_cap voters={n_voters} max={limits.max_voters}"
        return f"unreachable_s={away:.1f} voters={n_voters}"
    return f"gone_s={away:.1f}"
