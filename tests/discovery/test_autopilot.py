"""Autopilot decisions as pure functions of observed health."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.node.autopilot import (
    HealthTracker,
    Limits,
    MemberHealth,
    decide,
    is_healthy,
    is_stable,
    unreachable_for,
)
from mesh.raft.messages import ConfChange, ConfChangeType

CT = ConfChangeType
NOW = 10_000.0
LIM = Limits(max_voters=5, min_quorum=3, stabilization=10, replace_after=30, remove_after=600)


def ok(last_index: int = 100) -> MemberHealth:
    """Healthy and stable."""
    return MemberHealth(NOW - 0.1, last_index, NOW - 1000, NOW - 100)


def down(seconds: float) -> MemberHealth:
    return MemberHealth(NOW - seconds, 0, NOW - 5000, None)


def run(
    voters: set[str], learners: set[str], health: dict[str, MemberHealth], discovered=(), limits=LIM, **kw
) -> list[ConfChange]:
    return decide(
        leader="a",
        voters=voters,
        learners=learners,
        health=health,
        leader_last_index=100,
        discovered=discovered,
        limits=limits,
        now=kw.pop("now", NOW),
        **kw,
    )


def apply(voters: set[str], learners: set[str], cc: ConfChange) -> tuple[set[str], set[str]]:
    v, lr = set(voters), set(learners)
    if cc.type == CT.ADD_LEARNER:
        lr.add(cc.node)
    elif cc.type == CT.PROMOTE_LEARNER:
        lr.discard(cc.node)
        v.add(cc.node)
    elif cc.type == CT.DEMOTE_VOTER:
        v.discard(cc.node)
        lr.add(cc.node)
    elif cc.type == CT.REMOVE_NODE:
        v.discard(cc.node)
        lr.discard(cc.node)
    return v, lr


def test_discovered_node_joins_as_learner_and_nothing_while_pending() -> None:
    health = {x: ok() for x in "abc"}
    assert run({"a", "b", "c"}, set(), health, discovered=["d", "a"]) == [ConfChange(CT.ADD_LEARNER, "d")]
    assert run({"a", "b", "c"}, set(), health, discovered=["d"], pending=True) == []


def test_promotion_waits_for_stabilization_and_grows_by_two() -> None:
    tracker = HealthTracker(LIM)
    voters, learners = {"a", "b", "c"}, {"d", "e"}
    t0 = 500.0

    def step(now: float) -> list[ConfChange]:
        contacts = {x: (now - 0.1, 100) for x in voters | learners}
        health = tracker.observe(now, 100, contacts)
        return decide(
            leader="a",
            voters=voters,
            learners=learners,
            health=health,
            leader_last_index=100,
            discovered=[],
            limits=LIM,
            now=now,
        )

    for t in (t0, t0 + 1, t0 + 9.9):
        assert step(t) == []
    assert step(t0 + 10) == [ConfChange(CT.PROMOTE_LEARNER, "d")]
    voters, learners = {"a", "b", "c", "d"}, {"e"}
    assert step(t0 + 11) == [ConfChange(CT.PROMOTE_LEARNER, "e")]
    voters, learners = voters | {"e"}, set()
    assert step(t0 + 12) == []


def test_one_stable_learner_does_not_make_the_count_even() -> None:
    health = {x: ok() for x in "abcd"}
    assert run({"a", "b", "c"}, {"d"}, health) == []


def test_a_health_break_restarts_stabilization() -> None:
    tracker = HealthTracker(LIM)
    tracker.observe(0, 100, {"d": (0, 100)})
    tracker.observe(5, 100, {"d": (0, 100)})  # 5 s silent: unhealthy
    h = tracker.observe(6, 100, {"d": (6, 100)})["d"]
    assert h.healthy_since == 6
    assert not is_stable(h, 100, LIM, 15.9)
    # Lagging counts as unhealthy too.
    assert not is_healthy(MemberHealth(NOW, 0, 0, 0), 1000, LIM, NOW)


def test_unreachable_voter_is_replaced_promote_first_under_the_cap() -> None:
    health = {"a": ok(), "b": ok(), "c": down(31), "d": ok()}
    voters, learners = {"a", "b", "c"}, {"d"}
    assert run(voters, learners, health) == [ConfChange(CT.PROMOTE_LEARNER, "d")]
    voters, learners = {"a", "b", "c", "d"}, set()
    assert run(voters, learners, health) == [ConfChange(CT.DEMOTE_VOTER, "c")]
    voters, learners = {"a", "b", "d"}, {"c"}
    assert run(voters, learners, health) == []
    health["c"] = down(601)
    assert run(voters, learners, health) == [ConfChange(CT.REMOVE_NODE, "c")]


def test_replacement_at_the_cap_demotes_first() -> None:
    health = {x: ok() for x in "abcdef"}
    health["e"] = down(31)
    assert run(set("abcde"), {"f"}, health) == [ConfChange(CT.DEMOTE_VOTER, "e")]
    assert run(set("abcd"), {"e", "f"}, health) == [ConfChange(CT.PROMOTE_LEARNER, "f")]
    # --voters 3: goes through 2 voters for one step.
    lim3 = Limits(max_voters=3, min_quorum=3, stabilization=10, replace_after=30, remove_after=600)
    assert run(set("abe"), {"f"}, health, limits=lim3) == [ConfChange(CT.DEMOTE_VOTER, "e")]


def test_no_replacement_without_a_stable_learner() -> None:
    health = {"a": ok(), "b": ok(), "c": down(100), "d": MemberHealth(NOW, 100, NOW - 5, NOW - 5)}
    assert run({"a", "b", "c"}, {"d"}, health) == []
    assert run({"a", "b", "c"}, set(), health) == []


def test_never_removes_voters_below_min_quorum() -> None:
    health = {"a": ok(), "b": ok(), "c": down(10**6)}
    assert run({"a", "b", "c"}, set(), health) == []
    # Five voters, one gone for good: removed (4 >= 3).
    health = {x: ok() for x in "abcd"} | {"e": down(601)}
    assert run(set("abcde"), set(), health) == [ConfChange(CT.REMOVE_NODE, "e")]


def test_a_node_still_discovered_is_not_removed() -> None:
    health = {x: ok() for x in "abc"} | {"d": down(10**5)}
    assert run({"a", "b", "c"}, {"d"}, health, discovered=["d"]) == []
    assert run({"a", "b", "c"}, {"d"}, health) == [ConfChange(CT.REMOVE_NODE, "d")]


def test_over_the_cap_demotes_the_least_healthy_voter_never_the_leader() -> None:
    health = {x: ok() for x in "abcde"} | {"d": MemberHealth(NOW - 5, 100, NOW - 100, None)}
    lim = Limits(max_voters=3, min_quorum=3)
    assert run(set("abcde"), set(), health, limits=lim) == [ConfChange(CT.DEMOTE_VOTER, "d")]


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        Limits(max_voters=0)
    with pytest.raises(ValueError):
        Limits(replace_after=100, remove_after=10)


# -- properties over generated health ----------------------------------------


@dataclass
class Case:
    voters: set[str]
    learners: set[str]
    health: dict[str, MemberHealth]
    discovered: list[str]
    limits: Limits


@st.composite
def cases(draw: st.DrawFn) -> Case:
    max_voters = draw(st.integers(1, 7))
    limits = Limits(
        max_voters=max_voters,
        min_quorum=draw(st.integers(1, 5)),
        stabilization=10,
        replace_after=30,
        remove_after=600,
    )
    ids = [f"n{k}" for k in range(10)]
    n_voters = draw(st.integers(1, max_voters + draw(st.sampled_from([0, 0, 0, 2]))))
    voters = {"a", *ids[: n_voters - 1]}
    rest = [x for x in ids if x not in voters]
    learners = set(draw(st.lists(st.sampled_from(rest), max_size=5, unique=True))) if rest else set()
    health: dict[str, MemberHealth] = {}
    for x in sorted(voters | learners):
        kind = draw(st.sampled_from(["stable", "young", "lagging", "slow", "dead", "gone", "unknown"]))
        if x == "a" or kind == "stable":
            health[x] = ok()
        elif kind == "young":
            health[x] = MemberHealth(NOW, 100, NOW - 3, NOW - draw(st.floats(0, 9.9)))
        elif kind == "lagging":
            health[x] = MemberHealth(NOW, 0, NOW - 3000, None)
        elif kind == "slow":
            health[x] = down(draw(st.floats(2.1, 29)))
        elif kind == "dead":
            health[x] = down(draw(st.floats(30, 599)))
        elif kind == "gone":
            health[x] = down(draw(st.floats(600, 10**5)))
    discovered = draw(st.lists(st.sampled_from([*ids, "a", "x", "y"]), max_size=4))
    return Case(voters, learners, health, discovered, limits)


def check_step(case: Case, voters: set[str], learners: set[str], out: list[ConfChange]) -> None:
    """The guarantees of one decision; raises AssertionError."""
    lim, n = case.limits, len(voters)
    assert len(out) <= 1
    if not out:
        return
    cc = out[0]
    h = case.health.get(cc.node) or MemberHealth(None, 0, NOW)
    stable = [x for x in learners if x in case.health and is_stable(case.health[x], 100, lim, NOW)]
    new_v, _ = apply(voters, learners, cc)
    assert cc.node != "a", "the leader never changes itself"
    if cc.type == CT.REMOVE_NODE:
        assert cc.node not in case.discovered, "removed a node discovery still sees"
    if cc.type == CT.ADD_LEARNER:
        assert cc.node not in voters | learners
    elif cc.type == CT.PROMOTE_LEARNER:
        assert cc.node in learners
        assert is_stable(h, 100, lim, NOW), "promoted before stabilization"
        assert len(new_v) <= max(lim.max_voters, n), "more voters than --voters"
    elif cc.type in (CT.DEMOTE_VOTER, CT.REMOVE_NODE) and cc.node in voters:
        if n > lim.max_voters:
            return
        assert unreachable_for(h, NOW) >= lim.replace_after, "a reachable voter was demoted"
        replacing = cc.type == CT.DEMOTE_VOTER and bool(stable) and n == lim.max_voters
        floor = min(lim.min_quorum, lim.max_voters - 1) if replacing else min(lim.min_quorum, n)
        assert len(new_v) >= floor, "voters removed below the minimum quorum"
        if n % 2 == 1 and cc.type == CT.DEMOTE_VOTER:
            assert stable, "an unreachable voter was replaced with no healthy learner"
    elif cc.type == CT.REMOVE_NODE:
        assert cc.node in learners
        assert unreachable_for(h, NOW) >= lim.remove_after
    else:
        raise AssertionError(f"unexpected change {cc}")


def converge(case: Case, rule=decide) -> tuple[set[str], set[str], list[ConfChange]]:
    voters, learners = set(case.voters), set(case.learners)
    done: list[ConfChange] = []
    for _ in range(40):
        out = rule(
            leader="a",
            voters=voters,
            learners=learners,
            health=case.health,
            leader_last_index=100,
            discovered=case.discovered,
            limits=case.limits,
            now=NOW,
        )
        check_step(case, voters, learners, out)
        if not out:
            return voters, learners, done
        done += out
        voters, learners = apply(voters, learners, out[0])
    raise AssertionError(f"no fixed point: {done}")


@settings(max_examples=600, deadline=None)
@given(cases())
def test_every_decision_keeps_the_guarantees_and_decisions_converge(case: Case) -> None:
    start = len(case.voters)
    voters, learners, _ = converge(case)
    lim = case.limits
    stable = [x for x in learners if x in case.health and is_stable(case.health[x], 100, lim, NOW)]
    if start <= lim.max_voters:
        assert len(voters) <= lim.max_voters
    else:
        assert len(voters) <= max(lim.max_voters, 1) or voters == {"a"}
    # At the fixed point the count is odd unless nothing allowed fixing it.
    if len(voters) % 2 == 0 and len(voters) <= lim.max_voters:
        assert not (stable and len(voters) + 1 <= lim.max_voters), "even count with a promotable learner"
    # Every discovered node is a member at the end (or was never eligible).
    for x in case.discovered:
        assert x in voters | learners | {"a"}


def test_the_checks_catch_a_rule_that_promotes_too_early() -> None:
    def eager(**kw) -> list[ConfChange]:
        out = decide(**kw)
        if out:
            return out
        young = sorted(x for x in kw["learners"] if x not in kw["voters"])
        return [ConfChange(CT.PROMOTE_LEARNER, young[0])] if young else []

    young = MemberHealth(NOW, 100, NOW - 3, NOW - 3)
    case = Case({"a", "b", "c"}, {"d"}, {"a": ok(), "b": ok(), "c": ok(), "d": young}, [], LIM)
    converge(case)
    with pytest.raises(AssertionError, match="stabilization"):
        converge(case, rule=eager)


def test_the_checks_catch_a_rule_that_replaces_without_a_learner() -> None:
    def hasty(**kw) -> list[ConfChange]:
        out = decide(**kw)
        if out:
            return out
        dead = [v for v in sorted(kw["voters"]) if v != "a" and unreachable_for(kw["health"][v], NOW) >= 30]
        return [ConfChange(CT.DEMOTE_VOTER, dead[0])] if dead else []

    case = Case(set("abcde"), set(), {x: ok() for x in "abcd"} | {"e": down(40)}, [], LIM)
    converge(case)
    with pytest.raises(AssertionError, match="no healthy learner"):
        converge(case, rule=hasty)
