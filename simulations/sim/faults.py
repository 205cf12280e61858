"""Fault injection for the safety phase: each enabled kind fires as a
Poisson process drawn from the world's PRNG."""

from __future__ import annotations

from collections.abc import Callable

from mesh.raft import ConfChange, ConfChangeType, ProposalDropped
from simulations.sim.cluster import CRASHED, PAUSED, REMOVED, Cluster, SimNode
from simulations.sim.options import Options
from simulations.sim.world import MS, SECOND, World


class FaultInjector:
    def __init__(self, world: World, cluster: Cluster, opts: Options) -> None:
        self.world = world
        self.cluster = cluster
        self.opts = opts
        self.active = True
        self.max_extra_nodes = 6

    def start(self) -> None:
        o = self.opts
        kinds: list[tuple[float, Callable[[], None]]] = [
            (o.crash_rate, self._crash),
            (o.pause_rate, self._pause),
            (o.partition_rate, self._partition),
            (o.churn_rate, self._churn),
            (o.transfer_rate, self._transfer),
            (o.reconnect_rate, self._reconnect),
        ]
        for rate, fn in kinds:
            if rate > 0:
                self._schedule(rate, fn)

    def _schedule(self, rate: float, fn: Callable[[], None]) -> None:
        self.world.after(int(self.world.rng.expovariate(rate) * SECOND), self._fire, rate, fn)

    def _fire(self, rate: float, fn: Callable[[], None]) -> None:
        if not self.active:
            return
        fn()
        self._schedule(rate, fn)

    def _candidates(self) -> list[SimNode]:
        """Nodes that may be taken down now, keeping most of the time a
        majority of the original size up."""
        nodes = [n for n in self.cluster.nodes.values() if n.state != REMOVED]
        down = sum(1 for n in nodes if n.state in (CRASHED, PAUSED))
        limit = (len(nodes) - 1) // 2 + (1 if self.world.rng.random() < 0.25 else 0)
        if down >= limit:
            return []
        return [n for n in nodes if n.state == "up"]

    def _crash(self) -> None:
        cands = self._candidates()
        if not cands:
            return
        # Crashes are likelier while writes are pending.
        busy = [n for n in cands if n.ready_pending or n.storage.unsynced()]
        rng = self.world.rng
        leader = self.cluster.leader()
        roll = rng.random()
        if leader is not None and leader in cands and roll < 0.3:
            pick = leader
        elif busy and roll < 0.7:
            pick = rng.choice(busy)
        else:
            pick = rng.choice(cands)
        self.cluster.crash(pick, "crash")

    def _pause(self) -> None:
        cands = self._candidates()
        if cands:
            self.cluster.pause(self.world.rng.choice(cands))

    def _partition(self) -> None:
        rng = self.world.rng
        ids = sorted(nid for nid, n in self.cluster.nodes.items() if n.state != REMOVED)
        if len(ids) < 2:
            return
        kinds = [k for k in ("partition", "asymmetric") if k in self.opts.faults]
        kind = rng.choice(kinds)
        links: set[tuple[str, str]] = set()
        leader = self.cluster.leader()
        if kind == "partition":
            if leader is not None and rng.random() < 0.5:
                # The classic nemesis: the leader (and maybe a few others)
                # cut off from the majority.
                others = [i for i in ids if i != leader.id]
                side = {leader.id, *rng.sample(others, rng.randrange(0, (len(ids) - 1) // 2 + 1))}
            else:
                side = set(rng.sample(ids, rng.randrange(1, len(ids))))
            other = [i for i in ids if i not in side]
            for a in sorted(side):
                for b in other:
                    links.add((a, b))
                    links.add((b, a))
            label = f"{sorted(side)} | {other}"
        else:
            mode = rng.randrange(3)
            victim = leader.id if leader is not None and rng.random() < 0.5 else rng.choice(ids)
            others = [i for i in ids if i != victim]
            if mode == 0:  # hears nobody, is heard by all
                links = {(o, victim) for o in others}
                label = f"nobody -> {victim}"
            elif mode == 1:  # is heard by nobody, hears all
                links = {(victim, o) for o in others}
                label = f"{victim} -> nobody"
            else:  # random one-way links
                pairs = [(a, b) for a in ids for b in ids if a != b]
                links = set(rng.sample(pairs, rng.randrange(1, len(pairs) // 2 + 1)))
                label = "one-way " + ",".join(f"{a}>{b}" for a, b in sorted(links))
        self.cluster.faults[kind] += 1
        cut = self.cluster.network.cut(kind, links, label)
        self.world.trace.add(self.world.now, "net", 0, 0, f"PARTITION {kind}: {label}")
        self.world.after(rng.randrange(50 * MS, 1500 * MS), self._heal, cut)

    def _heal(self, cut: object) -> None:
        self.cluster.network.heal(cut)  # type: ignore[arg-type]
        self.world.trace.add(self.world.now, "net", 0, 0, f"heal {cut.label}")  # type: ignore[attr-defined]

    def _churn(self) -> None:
        leader = self.cluster.leader()
        if leader is None or leader.replica is None:
            return
        rng = self.world.rng
        conf = leader.replica.raft.conf_state()
        voters, learners = list(conf.voters), list(conf.learners)
        extra = len(self.cluster.nodes) - self.opts.nodes
        options: list[tuple[ConfChangeType, str]] = []
        if extra < self.max_extra_nodes:
            options.append((ConfChangeType.ADD_LEARNER, ""))
            if len(voters) < 7:
                options.append((ConfChangeType.ADD_VOTER, ""))
        for n in learners:
            if len(voters) < 7:
                options.append((ConfChangeType.PROMOTE_LEARNER, n))
                options.append((ConfChangeType.ADD_VOTER, n))
            options.append((ConfChangeType.REMOVE_NODE, n))
        if len(voters) > 3:
            for n in voters:
                options.append((ConfChangeType.DEMOTE_VOTER, n))
                options.append((ConfChangeType.REMOVE_NODE, n))
        if not options:
            return
        kind, node = rng.choice(options)
        if not node:
            node = self.cluster.new_node_id()
        try:
            index = self.cluster.propose_conf_change(leader, ConfChange(kind, node))
        except ProposalDropped as exc:
            self.cluster.trace(leader, f"conf change {kind} {node} refused: {exc.reason}")
            return
        self.cluster.faults["churn"] += 1
        self.cluster.trace(leader, f"propose conf change {kind} {node} at {index}")
        self.cluster.kick(leader)

    def _reconnect(self) -> None:
        """A follower is told that its live leader closed every connection
        with it (as if the leader redialed both ways at once): it campaigns
        or takes its turn, and must not depose the leader (the others are
        in its lease)."""
        leader = self.cluster.leader()
        if leader is None:
            return
        followers = sorted(n.id for n in self.cluster.up() if n is not leader)
        if not followers:
            return
        self.cluster.faults["reconnect"] += 1
        self.cluster.report_closed(self.cluster.nodes[self.world.rng.choice(followers)], leader.id)

    def _transfer(self) -> None:
        leader = self.cluster.leader()
        if leader is None or leader.replica is None:
            return
        voters = [v for v in leader.replica.raft.conf_state().voters if v != leader.id]
        if not voters:
            return
        to = self.world.rng.choice(voters)
        self.cluster.faults["transfer"] += 1
        self.cluster.transfer_leader(leader, to)
