"""Bootstrap decisions: unit cases, and hypothesis-generated discovery
interleavings in which no two nodes ever bootstrap different configurations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.discovery.base import BootstrapState as S
from mesh.node.bootstrap import Action, Decision, Seen, decide

F, L, M = S.FRESH, S.LOCKED, S.MEMBER


def test_waits_until_expect_nodes_are_seen() -> None:
    assert decide("b", Seen(F), {"a": Seen(F)}, 3) == Decision(Action.WAIT, ())
    # Three seen: candidate is the three ids, but the others have not agreed yet.
    assert decide("b", Seen(F), {"a": Seen(F), "c": Seen(F)}, 3) == Decision(Action.WAIT, ("a", "b", "c"))


def test_locks_once_all_members_advertise_the_candidate_then_bootstraps() -> None:
    cand = ("a", "b", "c")
    peers = {"a": Seen(F, cand), "c": Seen(F, cand)}
    assert decide("b", Seen(F, cand), peers, 3) == Decision(Action.LOCK, cand)
    # Locked, others only fresh: wait.
    assert decide("b", Seen(L, cand), peers, 3) == Decision(Action.WAIT, cand)
    peers = {"a": Seen(L, cand), "c": Seen(L, cand)}
    assert decide("b", Seen(L, cand), peers, 3) == Decision(Action.BOOTSTRAP, cand)
    # One member already bootstrapped C: the others bootstrap the same C.
    assert decide("b", Seen(L, cand), {"a": Seen(M, cand)}, 3) == Decision(Action.BOOTSTRAP, cand)


def test_candidate_is_the_n_lowest_ids_and_outsiders_do_not_lock() -> None:
    peers = {x: Seen(F, ("a", "b", "c")) for x in "abc"}
    d = decide("d", Seen(F), peers, 3)
    assert d == Decision(Action.WAIT, ("a", "b", "c"))


def test_expect_one_bootstraps_alone() -> None:
    assert decide("a", Seen(F), {}, 1) == Decision(Action.LOCK, ("a",))
    assert decide("a", Seen(L, ("a",)), {}, 1) == Decision(Action.BOOTSTRAP, ("a",))


def test_existing_cluster_is_joined_and_a_member_never_bootstraps_again() -> None:
    assert decide("z", Seen(F), {"a": Seen(M, ("a", "b", "c"))}, 3) == Decision(Action.JOIN, ("a", "b", "c"))
    # Even with N fresh peers agreeing on a candidate containing it.
    peers = {"a": Seen(L, ("a", "b")), "b": Seen(L, ("a", "b"))}
    assert decide("a", Seen(M, ("x",)), peers, 2).action == Action.MEMBER


def test_locked_node_of_a_dead_configuration_joins_the_cluster_that_formed() -> None:
    peers = {"a": Seen(M, ("a", "c")), "c": Seen(M, ("a", "c"))}
    # b locked on (a, b), but a is committed to (a, c): (a, b) can never form.
    assert decide("b", Seen(L, ("a", "b")), peers, 2) == Decision(Action.JOIN, ("a", "c"))
    # Dead but no cluster yet: stranded, waits.
    assert decide("b", Seen(L, ("a", "b")), {"a": Seen(L, ("a", "c"))}, 2) == Decision(Action.WAIT, ("a", "b"))


def test_fresh_node_adopts_a_viable_lock_that_names_it() -> None:
    peers = {"a": Seen(F, ("a", "b")), "c": Seen(L, ("b", "c"))}
    # c is locked on (b, c): b adopts it (and may lock at once: c agrees).
    assert decide("b", Seen(F), peers, 2) == Decision(Action.LOCK, ("b", "c"))
    # A dead lock is not adopted (d is locked elsewhere), and locked peers leave the pool.
    peers = {"a": Seen(F), "c": Seen(L, ("b", "c", "d")), "d": Seen(L, ("d", "e", "f")), "e": Seen(F)}
    assert decide("b", Seen(F), peers, 3) == Decision(Action.WAIT, ("a", "b", "e"))


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        decide("a", Seen(F), {}, 0)
    with pytest.raises(ValueError):
        decide("a", Seen(L, ("b", "c")), {}, 2)


# -- interleavings ------------------------------------------------------------


@dataclass
class Node:
    nid: str
    own: Seen
    # What this node has observed of each peer (any past advertisement).
    view: dict[str, Seen] = field(default_factory=dict)
    history: list[Seen] = field(default_factory=list)


class World:
    """Nodes whose views are updated by an adversary with *any* past
    advertisement of a peer (stale, reordered, repeated), as lossy mDNS
    could. Records every configuration bootstrapped."""

    def __init__(
        self,
        ids: list[str],
        expect: int,
        members: dict[str, tuple[str, ...]] | None = None,
        rule: Callable[[str, Seen, dict[str, Seen], int], Decision] = decide,
    ) -> None:
        self.expect = expect
        self.rule = rule
        self.nodes = {}
        for i in ids:
            own = Seen(M, members[i]) if members and i in members else Seen(F)
            self.nodes[i] = Node(i, own, history=[own])
        self.bootstrapped: dict[str, tuple[str, ...]] = {}
        self.joined: set[str] = set()

    def observe(self, i: str, j: str, age: int) -> None:
        if i == j:
            return
        hist = self.nodes[j].history
        self.nodes[i].view[j] = hist[max(0, len(hist) - 1 - age)]

    def act(self, i: str) -> None:
        n = self.nodes[i]
        d = self.rule(i, n.own, n.view, self.expect)
        if d.action == Action.WAIT:
            new = n.own if n.own.state == L else Seen(F, d.conf)
        elif d.action == Action.LOCK:
            assert n.own.state == F
            new = Seen(L, d.conf)
        elif d.action == Action.BOOTSTRAP:
            assert self.rule is not decide or n.own == Seen(L, d.conf), "bootstraps only its own lock"
            self.bootstrapped[i] = d.conf
            new = Seen(M, d.conf)
        elif d.action == Action.JOIN:
            self.joined.add(i)
            new = Seen(M, d.conf)
        else:
            new = n.own
        if n.own.state in (L, M) and new.state == F:
            raise AssertionError("a lock or membership was given up")
        if new != n.own:
            n.own = new
            n.history.append(new)

    def configurations(self) -> set[tuple[str, ...]]:
        return set(self.bootstrapped.values())

    def fair_rounds(self, limit: int = 50) -> None:
        ids = sorted(self.nodes)
        for _ in range(limit):
            before = {i: n.own for i, n in self.nodes.items()}
            for i in ids:
                for j in ids:
                    self.observe(i, j, 0)
                self.act(i)
            if before == {i: n.own for i, n in self.nodes.items()}:
                return


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], int, list[tuple[int, int, int]]]:
    expect = draw(st.integers(1, 5))
    # Fewer than 2N fresh nodes: every two N-sets intersect.
    count = draw(st.integers(expect, 2 * expect - 1))
    ids = [f"n{k}" for k in draw(st.permutations(range(count)))]
    steps = draw(
        st.lists(st.tuples(st.integers(0, count - 1), st.integers(0, count - 1), st.integers(0, 3)), max_size=300)
    )
    return ids, expect, steps


def _run(ids: list[str], expect: int, steps: list[tuple[int, int, int]], world: World) -> None:
    for i, j, age in steps:
        if i == j:
            world.act(ids[i])
        else:
            world.observe(ids[i], ids[j], age)
        assert len(world.configurations()) <= 1, world.bootstrapped


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_never_two_configurations_for_any_interleaving(case: tuple[list[str], int, list[tuple[int, int, int]]]) -> None:
    ids, expect, steps = case
    world = World(ids, expect)
    _run(ids, expect, steps, world)
    # Then discovery settles: everyone sees everyone's latest state.
    world.fair_rounds()
    confs = world.configurations()
    assert len(confs) == 1, (world.bootstrapped, {i: n.own for i, n in world.nodes.items()})
    (conf,) = confs
    assert len(conf) == expect
    # Everyone ends in the cluster: an initial voter that bootstrapped, or a joiner.
    for i, n in world.nodes.items():
        assert n.own.state == M, (i, n.own)
        assert (i in conf) == (i in world.bootstrapped)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 5), st.integers(0, 6), st.randoms(use_true_random=False))
def test_nodes_started_together_with_full_views_agree_even_beyond_2n(expect: int, extra: int, rnd) -> None:
    """With more than 2N fresh nodes that see each other before acting,
    exactly the N lowest ids form the cluster."""
    ids = [f"n{k:02d}" for k in range(expect + extra + expect)]
    world = World(ids, expect)
    for i in ids:
        for j in ids:
            world.observe(i, j, 0)
    order = list(ids)
    rnd.shuffle(order)
    for i in order:
        world.act(i)
    world.fair_rounds()
    assert world.configurations() == {tuple(sorted(ids)[:expect])}


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.integers(1, 3))
def test_late_nodes_join_an_existing_cluster_and_members_never_bootstrap(
    case: tuple[list[str], int, list[tuple[int, int, int]]], size: int
) -> None:
    ids, expect, steps = case
    existing = {f"m{k}": tuple(f"m{x}" for x in range(size)) for k in range(size)}
    all_ids = [*existing, *ids]
    world = World(all_ids, expect, members=existing)
    for i, j, age in steps:
        a, b = all_ids[i % len(all_ids)], all_ids[j % len(all_ids)]
        if a == b:
            world.act(a)
        else:
            world.observe(a, b, age)
    world.fair_rounds()
    assert not any(m in world.bootstrapped for m in existing)
    # Only a group that locked before seeing any member could form; fresh
    # nodes that saw a member joined. At most one new configuration.
    assert len(world.configurations()) <= 1
    for n in world.nodes.values():
        assert n.own.state == M


def _split_schedule(world: World) -> None:
    # b sees c and proposes (b, c); c agrees. b then sees a (and only an
    # old, fresh view of c) and proposes (a, b); a agrees.
    world.observe("b", "c", 0)
    world.act("b")
    world.observe("c", "b", 0)
    world.act("c")
    world.observe("b", "a", 0)
    world.act("b")
    world.observe("a", "b", 0)
    world.act("a")


def test_the_schedule_splits_a_rule_without_the_lock_round() -> None:
    """The checks must be able to fail: bootstrapping as soon as the
    candidate is agreed (no permanent lock) forms two clusters."""

    def eager(self_id: str, own: Seen, peers: dict[str, Seen], expect: int) -> Decision:
        d = decide(self_id, own, peers, expect)
        return Decision(Action.BOOTSTRAP, d.conf) if d.action == Action.LOCK else d

    broken = World(["a", "b", "c"], 2, rule=eager)
    _split_schedule(broken)
    assert broken.configurations() == {("a", "b"), ("b", "c")}

    world = World(["a", "b", "c"], 2)
    _split_schedule(world)
    assert len(world.configurations()) <= 1
    world.fair_rounds()
    assert len(world.configurations()) == 1
    assert all(n.own.state == M for n in world.nodes.values())
