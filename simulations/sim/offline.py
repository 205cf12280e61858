"""Offline writers of the whole-node simulator (issue 14), and the checks of
what became of their writes.

Each writer has a home node. While that node hears no controller (a
partition, a pause of the others, an election) the writer queues a write
there, as `?offline=queue` does (`NodeCore.queue_write` after `kv.prepare`);
while it hears one, the writer writes the same keys the ordinary way, so
that queued writes meet concurrent writes of the majority when they are
replayed. Keys: `parameters/off/*` (lww) and `settings/off/*` (manual,
critical). Every value is unique (`{"ow": n, "w": writer}`), so a value in
the history names the write that made it. A resolver resolves open
conflicts now and then (take current, proposed or a value of its own).

`check(...)`, once the run converged (every outbox empty), returns the
violated invariants:
- every queued write reached exactly one final fate (one fate record in its
  node's outbox store, the item final), and that fate is the one the state
  machine remembers under the write's request id;
- an applied write is in the history exactly once; a superseded or
  rejected one never; a conflict one only after a resolve that took it;
- lww picks the later HLC on every node: along each lww key's history the
  stamp of each edit (an offline write's: the moment it was made, as the
  simulator recorded it, not as the log says) never goes down, and a
  superseded write's stamp is below one of the key's edits;
- no manual write overwrites a newer one without a conflict record: an
  applied manual write found its key at the version it was made on (or
  that its own earlier queued write produced), and each conflict fate
  names a conflict every node holds;
- all nodes agree on the conflict set (open and resolved, with their keys).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from mesh.errors import MeshError
from mesh.node.outbox import FINAL, MemoryOutboxStore, fate_of
from mesh.state.hlc import HLC
from mesh.state.kv import CommandError
from simulations.sim.nodes import REMOVED, UP, NodeCluster, WholeNode
from simulations.sim.options import NodeOptions
from simulations.sim.world import World

LWW_KEYS = tuple(f"parameters/off/k{i}" for i in range(3))
MANUAL_KEYS = tuple(f"settings/off/k{i}" for i in range(2))


@dataclass(slots=True)
class Queued:
    node: str
    id: str
    key: str
    op: str
    value: Any
    made: str
    manual: bool


@dataclass(slots=True)
class OfflineStats:
    queued: int = 0
    ordinary: int = 0
    resolves: int = 0
    fates: dict[str, int] | None = None
    on_removed: int = 0
    # Conflicts dropped to keep at most max_conflicts open (the oldest first).
    evicted: int = 0


class OfflineWriters:
    def __init__(self, world: World, cluster: NodeCluster, opts: NodeOptions) -> None:
        self.world = world
        self.cluster = cluster
        self.opts = opts
        self.active = True
        # The resolver goes on into the liveness phase until then (simulated us).
        self.resolve_until = 0
        self.queued: list[Queued] = []
        self.stats = OfflineStats()
        self._values = itertools.count(1)

    def start(self) -> None:
        for w in range(self.opts.offline_writers):
            self.world.after(self._think(), self._act, w)
        self.world.after(self.opts.resolve_every_us, self._resolve)

    def _think(self) -> int:
        return int(self.world.rng.expovariate(1.0 / self.opts.offline_think_mean_us))

    def _home(self, w: int) -> WholeNode | None:
        ids = sorted((nid for nid, n in self.cluster.nodes.items() if n.state != REMOVED), key=lambda s: int(s[1:]))
        if not ids:
            return None
        node = self.cluster.nodes[ids[w % len(ids)]]
        return node if node.state == UP and node.core is not None else None

    def _act(self, w: int) -> None:
        if not self.active:
            return
        self.world.after(self._think(), self._act, w)
        node = self._home(w)
        if node is None or node.core is None:
            return
        rng = self.world.rng
        core = node.core
        key = rng.choice(LWW_KEYS + MANUAL_KEYS)
        manual = key in MANUAL_KEYS
        value = {"ow": next(self._values), "w": w}
        command: dict[str, Any] = {"op": "put", "key": key, "value": value}
        if not manual and rng.random() < 0.15 and core.kv.get(key) is not None:
            command = {"op": "delete", "key": key}
            value = None
        command.update(author=f"ow{w}", role="operator")
        try:
            command = core.kv.prepare(command)
            if core.connected():
                self.stats.ordinary += 1
                core.propose(command)
            else:
                answer = core.queue_write(command)
                self.stats.queued += 1
                self.queued.append(
                    Queued(node.id, answer["queued"], key, command["op"], value, command["made"], manual)
                )
                self.cluster.trace(node, f"offline write {answer['queued']} queued: {key}")
        except (CommandError, MeshError):
            return
        self.cluster.kick(node)

    def stop(self, resolve_for_us: int) -> None:
        """The writers stop; the resolver goes on for `resolve_for_us`."""
        self.active = False
        self.resolve_until = self.world.now + resolve_for_us

    def _resolve(self) -> None:
        if not self.active and self.world.now > self.resolve_until:
            return
        self.world.after(self.opts.resolve_every_us, self._resolve)
        rng = self.world.rng
        ups = [n for n in self.cluster.nodes.values() if n.state == UP and n.core is not None and n.core.connected()]
        if not ups:
            return
        node = rng.choice(ups)
        core = node.core
        assert core is not None
        if not core.kv.pending:
            return
        cid = rng.choice(sorted(core.kv.pending))
        take = rng.choice(("current", "proposed", "value"))
        command: dict[str, Any] = {"op": "resolve", "id": cid, "take": take, "author": "resolver", "role": "operator"}
        if take == "value":
            command["value"] = {"rv": next(self._values)}
        try:
            core.propose(core.kv.prepare(command))
        except (CommandError, MeshError):
            return
        self.stats.resolves += 1
        self.cluster.kick(node)

    def all_replayed(self, members: list[str]) -> bool:
        """Every member has nothing left to replay. A node removed from the
        configuration (churn) replays nothing: nobody answers it; its queued
        writes are counted apart (`OfflineStats.on_removed`)."""
        for nid in members:
            n = self.cluster.nodes.get(nid)
            if n is None or n.core is None or n.core.outbox.count():
                return False
        return True


def check(writers: OfflineWriters, cluster: NodeCluster, members: list[str]) -> list[str]:
    """The violated invariants (see the module docstring), each a sentence."""
    problems: list[str] = []
    leader = cluster.leader()
    assert leader is not None and leader.core is not None
    kv = leader.core.kv
    fates: dict[str, int] = {}
    resolved_proposed: set[int] = set()
    for rec in kv.resolved.values():
        if rec.get("resolution", {}).get("take") == "proposed":
            resolved_proposed.add(int(rec["id"]))
    # Where each queued write ended, from its node's outbox.
    items: dict[str, Any] = {}
    for nid, node in cluster.nodes.items():
        store = node.outbox_store
        assert isinstance(store, MemoryOutboxStore)
        q = [r for r in store.records if r.get("t") == "q"]
        f: dict[int, int] = {}
        for r in store.records:
            if r.get("t") == "f":
                f[int(r["seq"])] = f.get(int(r["seq"]), 0) + 1
        if node.state == REMOVED or nid not in members:
            writers.stats.on_removed += sum(1 for r in q if f.get(int(r["seq"]), 0) == 0)
            continue
        for r in q:
            n = f.get(int(r["seq"]), 0)
            if n != 1:
                problems.append(f"queued write {r['id']} on {nid} has {n} fate records (must be exactly one)")
        if node.core is not None:
            for item in node.core.outbox.items.values():
                items[item.id] = item
    history = list(kv.history)
    for w in writers.queued:
        node = cluster.nodes[w.node]
        if node.state == REMOVED or w.node not in members:
            continue
        item = items.get(w.id)
        if item is None or item.state not in FINAL:
            problems.append(f"queued write {w.id} ({w.key}) has no final fate")
            continue
        fates[item.state] = fates.get(item.state, 0) + 1
        remembered = kv.requests.get(item.rid)
        if remembered is not None and fate_of(remembered)[0] != item.state:
            problems.append(
                f"queued write {w.id}: fate {item.state} but the state machine answered {fate_of(remembered)[0]}"
            )
        if w.op == "put":
            seen = sum(1 for r in history if r.key == w.key and r.op == "put" and r.value == w.value)
            allowed = {"applied": {1}, "superseded": {0}, "rejected": {0}}.get(item.state)
            if item.state == "conflict":
                cid = (item.result or {}).get("conflict")
                allowed = {0, 1} if cid in resolved_proposed else {0}
            if allowed is not None and seen not in allowed:
                problems.append(f"queued write {w.id} ({w.key}) is {item.state} but in the history {seen} times")
    writers.stats.fates = fates
    made_of = {_value_key(w.value): w.made for w in writers.queued if w.op == "put"}
    problems += _check_lww(writers, items, history, made_of)
    problems += _check_manual(writers, items, history)
    problems += _check_conflict_sets(cluster, members, items, writers)
    return problems


def _value_key(value: Any) -> str:
    return repr(value)


def _check_lww(
    writers: OfflineWriters, items: dict[str, Any], history: list[Any], made_of: dict[str, str]
) -> list[str]:
    problems = []
    for key in LWW_KEYS:
        last: HLC | None = None
        stamps: list[HLC] = []
        for r in (r for r in history if r.key == key):
            # An offline write's edit stamp is the moment the simulator saw it made.
            text = made_of.get(_value_key(r.value), r.hlc) if r.op == "put" else r.hlc
            stamp = HLC.decode(text)
            if last is not None and stamp < last:
                problems.append(
                    f"lww {key}: revision {r.revision} ({r.op} {r.value!r}) was made at {stamp.encode()}, "
                    f"before the edit it replaced ({last.encode()}): the earlier edit won"
                )
                break
            last = stamp
            stamps.append(stamp)
        for w in writers.queued:
            item = items.get(w.id)
            if w.key != key or item is None or item.state != "superseded":
                continue
            made = HLC.decode(w.made)
            if not any(s > made for s in stamps):
                problems.append(f"lww {key}: {w.id} made at {w.made} was superseded by no later edit")
    return problems


def _check_manual(writers: OfflineWriters, items: dict[str, Any], history: list[Any]) -> list[str]:
    """An applied manual write found its key at the version it was made on
    (or at the version its node's earlier applied queued write produced)."""
    problems = []
    version_before: dict[str, int] = {}
    for key in MANUAL_KEYS:
        version = 0
        for r in (r for r in history if r.key == key):
            if r.op == "put":
                version_before[_value_key((key, r.value, r.revision))] = version
                version += 1
            else:
                version = 0
    after: dict[tuple[str, str], int] = {}
    for w in writers.queued:
        item = items.get(w.id)
        if not w.manual or item is None or w.op != "put":
            continue
        base = item.base[w.key]
        if w.key in item.chained:
            base = after.get((w.node, w.key), base)
        if item.state == "applied":
            res = item.result or {}
            version = res.get("version")
            if isinstance(version, int):
                after[(w.node, w.key)] = version
            rec = next((r for r in history if r.key == w.key and r.op == "put" and r.value == w.value), None)
            if rec is None:
                continue
            before = version_before.get(_value_key((w.key, rec.value, rec.revision)))
            if before is not None and before != base:
                problems.append(
                    f"manual {w.key}: {w.id} was made on version {base} but overwrote version {before} "
                    "without a conflict record"
                )
    return problems


def _check_conflict_sets(
    cluster: NodeCluster, members: list[str], items: dict[str, Any], writers: OfflineWriters
) -> list[str]:
    problems = []
    sets = {}
    for nid in members:
        core = cluster.nodes[nid].core
        assert core is not None
        kv = core.kv
        sets[nid] = {
            **{cid: ("open", rec.get("key")) for cid, rec in kv.pending.items()},
            **{cid: ("resolved", rec.get("key")) for cid, rec in kv.resolved.items()},
        }
    first = next(iter(sets.values()), {})
    for nid, s in sets.items():
        if s != first:
            problems.append(
                f"conflict sets differ: {nid} holds {sorted(s.items())[:6]}, another {sorted(first.items())[:6]}"
            )
            break
    leader = cluster.leader()
    assert leader is not None and leader.core is not None
    kv = leader.core.kv
    oldest_open = min(kv.pending, default=kv.next_conflict)
    for w in writers.queued:
        item = items.get(w.id)
        if item is not None and item.state == "conflict":
            cid = (item.result or {}).get("conflict")
            if cid in first:
                continue
            if isinstance(cid, int) and cid < oldest_open and kv.next_conflict - 1 > kv.max_conflicts:
                writers.stats.evicted += 1  # the oldest open conflicts go first past max_conflicts
                continue
            problems.append(f"queued write {w.id} is a conflict ({cid}) that no node holds")
    return problems
