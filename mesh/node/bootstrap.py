"""Deterministic cluster formation from discovery (`--expect N`).

PURE: no IO, no clock, no asyncio. `decide()` maps what this node knows
(its own bootstrap state, the advertised state of every peer of its cluster
it has discovered) to one action. The node runs it whenever its discovery
view changes, carries out the action, and advertises its new state in its
TXT record (mesh/discovery/base.py: `state`, `conf`).

States a node advertises:

- FRESH, conf = its current *candidate* (may change, may be empty). The
  data directory holds nothing.
- LOCKED, conf = C: the node has committed to configuration C **for good**.
  The lock must be written to the data directory (fsynced) *before* it is
  advertised, and read back on restart (a node restarted while locked
  advertises the same lock). A lock ends only by bootstrapping C or, when C
  can provably never form, by joining another cluster.
- MEMBER, conf = the cluster's initial configuration if known: the node
  holds a cluster (bootstrapped, joined, or recovered from its data
  directory). MEMBER is also permanent. A MEMBER never bootstraps again.

The rules, for node x with expect N:

FRESH x
 1. A MEMBER peer is seen: JOIN (start with an empty log; the leader adds x
    as a learner, autopilot promotes it).
 2. A peer is seen LOCKED on some C with x in C and C *viable* (no member of
    C seen LOCKED or MEMBER on anything but C): adopt the smallest such C as
    candidate.
 3. Otherwise the candidate is the N lowest ids of the *pool*: x and the
    FRESH peers seen (LOCKED peers are already spoken for), if the pool has
    at least N ids; else no candidate (WAIT).
 4. If x is in the candidate C and every other member of C is seen FRESH
    with candidate C or LOCKED on C: LOCK C. Else WAIT (advertising C).
LOCKED x on C
 5. Every other member of C is seen LOCKED on C or MEMBER with initial
    configuration C: BOOTSTRAP C (write the one identical bootstrap entry,
    `mesh.raft.messages.bootstrap_entries`).
 6. C is dead (a member of C is seen LOCKED or MEMBER on something else):
    JOIN if a MEMBER is seen, else WAIT (stranded until a cluster exists).
 7. Otherwise WAIT.

Why two bootstraps never disagree (safety). Suppose x bootstraps C1 and y
bootstraps C2 != C1, and some z is in both. By rule 5, x saw z LOCKED on C1
(or MEMBER with initial configuration C1) and y saw z LOCKED on C2 (or
MEMBER with C2). A node locks at most once and the lock is permanent; a
MEMBER advertising an initial configuration that contains itself got there
by bootstrapping it, hence after locking it; a node that joins instead
advertises the configuration of the cluster it joined, which does not
contain it (it was never locked on it). So every advertisement of z that
names a configuration containing z names z's single lock: C1 = C2. This
holds for *any* order, delay, loss, duplication or staleness of discovery
updates, because only the permanent LOCKED/MEMBER states are used by rule 5.

So two different configurations could only both form if they are
*disjoint*, which needs two groups of N fresh nodes each locking without
any member of one group seeing the other group in time: at least 2N fresh
nodes started together. With fewer than 2N fresh nodes of the cluster
starting at once, any two N-sets intersect and exactly one initial
configuration exists, for every interleaving (tests/discovery checks this
with hypothesis). With 2N or more started at once, nodes that all see each
other before locking still agree (everyone computes the same N lowest ids);
give discovery a settle time before the first decision (the caller waits a
short browse window, e.g. 2 s, before acting), or set --expect to the
number of nodes started together, as Consul's bootstrap_expect requires.

Why a cluster forms (liveness, given all nodes stay up and discovery
eventually delivers every advertisement): locks can only strand nodes whose
configuration died because another member locked elsewhere; rules 2 and 3
route fresh nodes around locked ones, and a stranded node joins the cluster
that forms. This is checked in the tests by running adversarial schedules
followed by fair delivery; it is not proven here. A crashed fresh or locked
node can stall formation until it returns (its lock is on disk).

Determinism: the decision depends only on the ids and advertised states
seen, never on arrival order or time, so nodes that see the same peers
compute the same candidate.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mesh.discovery.base import BootstrapState

NodeId = str
Conf = tuple[NodeId, ...]


class Action(enum.StrEnum):
    # Nothing to do now; advertise FRESH with `conf` as candidate (if still
    # FRESH) or keep the current LOCKED advertisement.
    WAIT = "wait"
    # Persist the lock on `conf`, then advertise LOCKED `conf`.
    LOCK = "lock"
    # Write the bootstrap entry for voters `conf`, then advertise MEMBER `conf`.
    BOOTSTRAP = "bootstrap"
    # Start with an empty log and wait to be added; advertise MEMBER `conf`
    # (the initial configuration of the cluster joined, if known).
    JOIN = "join"
    # This node already holds a cluster: never bootstrap.
    MEMBER = "member"


@dataclass(slots=True, frozen=True)
class Seen:
    """One peer's advertised bootstrap state (from its TXT record)."""

    state: BootstrapState
    conf: Conf = ()


@dataclass(slots=True, frozen=True)
class Decision:
    action: Action
    conf: Conf = ()


def normalize(ids: Iterable[NodeId]) -> Conf:
    return tuple(sorted(set(ids)))


def _committed_to(seen: Seen) -> Conf | None:
    """The configuration a peer is permanently committed to, if any."""
    if seen.state in (BootstrapState.LOCKED, BootstrapState.MEMBER):
        return seen.conf
    return None


def _dead(conf: Conf, self_id: NodeId, peers: Mapping[NodeId, Seen]) -> bool:
    """Some member of `conf` is seen committed to something else."""
    for m in conf:
        if m == self_id or m not in peers:
            continue
        other = _committed_to(peers[m])
        if other is not None and other != conf:
            return True
    return False


def _member_conf(peers: Mapping[NodeId, Seen]) -> Conf | None:
    members = sorted(nid for nid, s in peers.items() if s.state == BootstrapState.MEMBER)
    return peers[members[0]].conf if members else None


def decide(
    self_id: NodeId,
    own: Seen,
    peers: Mapping[NodeId, Seen],
    expect: int,
) -> Decision:
    """The next bootstrap action of `self_id`.

    `own`: this node's current state (FRESH with its last advertised
    candidate, LOCKED with its persisted lock, or MEMBER if its data
    directory holds a cluster). `peers`: the peers of this cluster seen by
    discovery (never this node), keyed by id. `expect`: --expect N (>= 1).
    """
    if expect < 1:
        raise ValueError("expect must be at least 1")
    peers = {nid: s for nid, s in peers.items() if nid != self_id}
    if own.state == BootstrapState.MEMBER:
        return Decision(Action.MEMBER, own.conf)

    if own.state == BootstrapState.LOCKED:
        conf = normalize(own.conf)
        if self_id not in conf or not conf:
            raise ValueError(f"{self_id} is locked on {conf}, which does not contain it")
        others = [m for m in conf if m != self_id]
        if any(peers.get(m) == Seen(BootstrapState.MEMBER, conf) for m in others):
            return Decision(Action.BOOTSTRAP, conf)
        if all(m in peers and _committed_to(peers[m]) == conf for m in others):
            return Decision(Action.BOOTSTRAP, conf)
        if _dead(conf, self_id, peers):
            member = _member_conf(peers)
            if member is not None:
                return Decision(Action.JOIN, member)
        return Decision(Action.WAIT, conf)

    # FRESH
    member = _member_conf(peers)
    if member is not None:
        return Decision(Action.JOIN, member)
    adoptable = sorted(
        {
            s.conf
            for s in peers.values()
            if s.state == BootstrapState.LOCKED and self_id in s.conf and not _dead(s.conf, self_id, peers)
        }
    )
    if adoptable:
        cand = adoptable[0]
    else:
        pool = sorted({self_id} | {nid for nid, s in peers.items() if s.state == BootstrapState.FRESH})
        if len(pool) < expect:
            return Decision(Action.WAIT, ())
        cand = tuple(pool[:expect])
    if self_id not in cand:
        return Decision(Action.WAIT, cand)
    for m in cand:
        if m == self_id:
            continue
        s = peers.get(m)
        if s is None or s.conf != cand or s.state not in (BootstrapState.FRESH, BootstrapState.LOCKED):
            return Decision(Action.WAIT, cand)
    return Decision(Action.LOCK, cand)
