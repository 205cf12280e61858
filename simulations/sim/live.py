"""Live parameters in the whole-node simulator: a fader and its invariants.

During the safety phase a fader (one control surface, author "fader")
moves keys under `parameters/live/` in gestures: a gesture is a run of live
sets on one node (a WebSocket to it: in order, every `STEP_US`; a set that
finds its node down, or a later life of it, is lost with the connection),
each a higher value than the last, ended by `end` or by silence. Values
travel on the faulty network beside the Raft traffic (dropped, delayed,
reordered, cut by partitions, held by paused nodes).

After the mesh converged (the liveness phase), `LiveCheck.run`:
1. waits until no node has an open gesture, a settle on its way or a live
   value in its view (settled, or expired after its origin died);
2. checks every gesture that was settled: one history record per key of
   the gesture (`"gesture"` carried), holding the last value the fader set
   in it up to the live sequence number the settle covers, and on every
   member the key's value in the state and in the live view is the value
   of the last settled gesture of that key;
3. undoes the fader's last step once and checks that on every member every
   key of that gesture is back at its value before the gesture began, in
   the state and in the live view.

Subscribers (`Subscribers`) come and go on the nodes (a sink under a
prefix of the fader's keys, drawn per seed), so which values go where
(each node tells its peers what its subscribers watch) is exercised under
every fault; each checks, as values arrive, that per (source, key) it never
gets an older value after a newer one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mesh.errors import MeshError
from mesh.node.live import LiveSink
from mesh.state.errors import StateError
from simulations.sim.checkers import Violation
from simulations.sim.nodes import UP, NodeCluster, WholeNode
from simulations.sim.world import MS, World

PREFIX = "parameters/live/"
KEYS = [f"{PREFIX}f{i}" for i in range(4)]
AUTHOR = "fader"
STEP_US = 8 * MS  # 125 Hz
EXPIRE_MS = 2_000
_ABSENT = object()


@dataclass(slots=True)
class Gesture:
    gid: str
    node: str
    epoch: int
    finals: dict[str, Any] = field(default_factory=dict)
    # Per key, (live seq, value) of every set its origin took.
    history: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    sets: int = 0


class Fader:
    def __init__(self, world: World, cluster: NodeCluster) -> None:
        self.world = world
        self.cluster = cluster
        self.rng = world.fork_rng()
        self.active = True
        self.gestures: dict[str, Gesture] = {}
        self.refused = 0
        self._n = 0

    def start(self) -> None:
        self.world.after(self.rng.randrange(10 * MS, 300 * MS), self._gesture)

    def _gesture(self) -> None:
        if not self.active:
            return
        candidates = [n for n in self.cluster.nodes.values() if n.core is not None]
        if not candidates:
            self.world.after(100 * MS, self._gesture)
            return
        node = self.rng.choice(candidates)
        self._n += 1
        g = Gesture(f"sim-g{self._n}", node.id, node.epoch)
        self.gestures[g.gid] = g
        keys = self.rng.sample(KEYS, self.rng.randrange(1, 4))
        steps = self.rng.randrange(3, 60)
        at = 0
        for i in range(steps):
            at = i * STEP_US + self.rng.randrange(STEP_US // 2)
            values = {k: self._n * 1000 + i for k in keys if i == 0 or self.rng.random() < 0.8}
            if values:
                self.world.after(at, self._set, node, g, values)
        if self.rng.random() < 0.5:
            self.world.after(at + STEP_US, self._end, node, g)
        self.world.after(at + self.rng.randrange(20 * MS, 1000 * MS), self._gesture)

    def _set(self, node: WholeNode, g: Gesture, values: dict[str, Any]) -> None:
        def run() -> None:
            if node.epoch != g.epoch or node.core is None:
                return  # the connection dropped with the node
            try:
                update = node.core.live.set(values, g.gid, author=AUTHOR)
            except StateError:
                self.refused += 1
                return
            g.finals.update(values)
            for key, value in values.items():
                g.history.setdefault(key, []).append((update.seq, value))
            g.sets += 1
            self.cluster.kick(node)

        self.cluster.when_up(node, run)

    def _end(self, node: WholeNode, g: Gesture) -> None:
        def run() -> None:
            if node.epoch == g.epoch and node.core is not None:
                node.core.live.end(g.gid, author=AUTHOR)

        self.cluster.when_up(node, run)


class Subscribers:
    """Subscribers that come and go on the nodes; each one checks the order
    of what it receives (raises Violation at once)."""

    PREFIXES = ("parameters/", PREFIX, KEYS[0], KEYS[1])

    def __init__(self, world: World, cluster: NodeCluster) -> None:
        self.world = world
        self.cluster = cluster
        self.rng = world.fork_rng()
        # node id -> (the core it watches, its sink, per (source, key) the
        # highest live seq received)
        self.sinks: dict[str, tuple[object, LiveSink, dict[tuple[str, str], int]]] = {}
        self.received = 0
        self.changes = 0
        self.active = True

    def start(self) -> None:
        self.world.after(self.rng.randrange(10 * MS, 200 * MS), self._churn)

    def _churn(self) -> None:
        if not self.active:
            return
        for node in sorted(self.cluster.nodes.values(), key=lambda n: n.id):
            core = node.core
            held = self.sinks.get(node.id)
            if held is not None and held[0] is not core:
                del self.sinks[node.id]  # the node restarted: its subscribers went with it
                held = None
            if core is None or self.rng.random() >= 0.3:
                continue
            self.changes += 1
            if held is not None:
                del self.sinks[node.id]
                core.live.remove_sink(held[1])
            else:
                seen: dict[tuple[str, str], int] = {}
                sink = LiveSink(self.rng.choice(self.PREFIXES), lambda: None)
                sink.wake = lambda nid=node.id, sink=sink, seen=seen: self._arrived(nid, sink, seen)
                self.sinks[node.id] = (core, sink, seen)
                core.live.add_sink(sink)
            self.cluster.kick(node)
        self.world.after(self.rng.randrange(50 * MS, 600 * MS), self._churn)

    def _arrived(self, nid: str, sink: LiveSink, seen: dict[tuple[str, str], int]) -> None:
        items = list(sink.pending.values())
        sink.pending.clear()
        for item in items:
            self.received += 1
            slot = (item.source, item.key)
            if item.seq < seen.get(slot, -1):
                raise Violation(
                    "live: order",
                    f"a subscriber on {nid} got {item.key}={item.value} (seq {item.seq}) from {item.source} "
                    f"after seq {seen[slot]}",
                )
            seen[slot] = item.seq


class LiveCheck:
    """The invariants of the module docstring, run after convergence."""

    def __init__(self, world: World, cluster: NodeCluster, fader: Fader, subscribers: Subscribers) -> None:
        self.world = world
        self.cluster = cluster
        self.fader = fader
        self.subscribers = subscribers
        self.settled = 0
        self.undone = False

    def counts(self) -> dict[str, int]:
        f = self.fader
        return {
            "gestures made": len(f.gestures),
            "live sets": sum(g.sets for g in f.gestures.values()),
            "gestures settled (checked)": self.settled,
            "gestures undone (checked)": int(self.undone),
            "live values to subscribers (order checked)": self.subscribers.received,
            "subscribers come and gone": self.subscribers.changes,
        }

    def _members(self) -> list[WholeNode] | None:
        leader = self.cluster.leader()
        if leader is None or leader.core is None:
            return None
        out = []
        for nid in leader.core.raw.conf_state().members():
            n = self.cluster.nodes.get(nid)
            if n is None or n.state != UP or n.core is None:
                return None
            out.append(n)
        return out

    def _quiet(self) -> bool:
        members = self._members()
        if members is None:
            return False
        leader = self.cluster.leader()
        assert leader is not None and leader.core is not None
        revision, commit = leader.core.kv.revision, leader.core.raw.committed
        for n in members:
            core = n.core
            assert core is not None
            live = core.live
            if live.gestures or live.settles or live.view:
                return False
            if core.applied != commit or core.kv.revision != revision:
                return False
        return True

    def _wait(self, what: str, budget_us: int, also: Any = lambda: True) -> list[WholeNode]:
        def done() -> bool:
            return bool(also()) and self._quiet()

        self.world.run_until(self.world.now + budget_us, stop=done)
        if not done():
            raise Violation("live: liveness", f"{what}: {'; '.join(self._describe())}")
        members = self._members()
        assert members is not None
        return members

    def _describe(self) -> list[str]:
        out = []
        for n in self.cluster.nodes.values():
            if n.core is not None:
                live = n.core.live
                out.append(
                    f"{n.id}: open={len(live.gestures)} settles={len(live.settles)} view={sorted(live.view)} "
                    f"rev={n.core.kv.revision}"
                )
        return out + self.cluster.describe()

    def run(self) -> None:
        members = self._wait("live values did not settle after the network healed", 20_000 * MS)
        leader = self.cluster.leader()
        assert leader is not None and leader.core is not None
        kv = leader.core.kv
        records = [r for r in kv.history if r.key.startswith(PREFIX)]
        by_gesture: dict[tuple[str, str], list[Any]] = {}
        last: dict[str, Any] = {}
        for r in records:
            if not r.gesture:
                raise Violation("live: settle", f"a record of {r.key} without a gesture: {r.to_dict()}")
            by_gesture.setdefault((r.gesture, r.key), []).append(r)
            last[r.key] = r.value
        for (gid, key), recs in by_gesture.items():
            if len(recs) != 1:
                raise Violation(
                    "live: one record per key",
                    f"gesture {gid} left {len(recs)} history records of {key}: {[x.value for x in recs]}",
                )
            g = self.fader.gestures.get(gid)
            if g is None or key not in g.finals:
                raise Violation("live: settle", f"record of {key} for gesture {gid} the fader never made")
            # The value of the last set the settle covers (a node stopped
            # mid-gesture settles what it had; later sets are a gesture
            # that died with it).
            covered = [v for seq, v in g.history[key] if seq <= recs[0].gesture_seq]
            if not covered or recs[0].value != covered[-1]:
                raise Violation(
                    "live: settled value",
                    f"gesture {gid} settled {key}={recs[0].value} (seq {recs[0].gesture_seq}), the fader's last "
                    f"value by then was {covered[-1] if covered else None} (its last of all {g.finals[key]})",
                )
        self.settled = len({gid for gid, _ in by_gesture})
        self._check_values(members, last, "after settling")
        # One undo reverts the last gesture, whole, everywhere.
        top = kv.undo.peek(False, AUTHOR)
        if top is None:
            return
        if top.op != "settle":
            raise Violation("live: one undo step", f"the fader's top undo step is a {top.op}, not a settle")
        before = {key: (b[0] if b else _ABSENT) for key, b, _after, _at in top.changes}
        try:
            ticket = leader.core.propose({"op": "undo", "author": AUTHOR})
        except MeshError as exc:
            raise Violation("live: undo", f"undo refused: {exc}") from exc
        self.cluster.kick(leader)
        answer: list[Any] = []
        ticket.on_done = answer.append
        members = self._wait("the undo did not reach every member", 10_000 * MS, lambda: answer)
        if not answer or answer[0].error is not None or "error" in (answer[0].result or {}):
            got = answer[0].error or answer[0].result if answer else "no answer"
            raise Violation("live: undo", f"undo of the last gesture failed: {got}")
        self._check_values(members, before, "after one undo")
        self.undone = True

    def _check_values(self, members: list[WholeNode], expected: dict[str, Any], when: str) -> None:
        for n in members:
            core = n.core
            assert core is not None
            for key, want in expected.items():
                kv = core.kv.get(key)
                have = kv.value if kv is not None else _ABSENT
                view = core.live.value(key, _ABSENT)
                if have != want or view != want:
                    pairs = (("want", want), ("state", have), ("live", view))
                    show = {x: None if v is _ABSENT else v for x, v in pairs}
                    raise Violation("live: converged value", f"{when}, {n.id} holds {key}: {show}")
