"""`hana-node status` gathering at mesh scale (mesh/cli_status.py), over fake
member APIs (no processes): at most MAX_CONCURRENT members asked at once,
everything within one deadline however many members never answer, and
members that did not answer reported as such (unreachable, or healthy by the
controller's word, or not asked at all)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mesh import cli_status
from mesh.client import Unreachable
from mesh.status_view import NotAsked


def member(i: int, leader: int = 0) -> dict[str, Any]:
    return {
        "id": f"n{i}",
        "raft": f"127.0.0.1:{20000 + i}",
        "api": f"127.0.0.1:{30000 + i}",
        "voter": i < 5,
        "role": "leader" if i == leader else ("follower" if i < 5 else "learner"),
        "match_index": 10,
        "last_contact_ms": 5.0,
        "found": "mdns",
    }


def own_status(i: int, n: int) -> dict[str, Any]:
    return {
        "id": f"n{i}",
        "cluster": "hana",
        "role": "leader" if i == 0 else ("follower" if i < 5 else "learner"),
        "term": 2,
        "leader": "n0",
        "commit_index": 10,
        "applied_index": 10,
        "revision": 3,
        "members": [member(j) for j in range(n)],
    }


def members_view(n: int, unhealthy: set[str]) -> dict[str, Any]:
    return {
        "id": "n0",
        "cluster": "hana",
        "leader": "n0",
        "term": 2,
        "members": [{**member(j), "lag": 0, "healthy": f"n{j}" not in unhealthy} for j in range(n)],
        "discovered": [],
    }


class FakeApis:
    """A ClientFactory: member i answers its own status at once, unless its
    id is in `silent` (then it never answers, as a SIGSTOPped process) or in
    `refusing` (connection refused). Counts the requests in flight."""

    def __init__(
        self,
        n: int,
        silent: set[str] | None = None,
        refusing: set[str] | None = None,
        unhealthy: set[str] | None = None,
    ) -> None:
        self.n = n
        self.silent = silent or set()
        self.refusing = refusing or set()
        self.unhealthy = unhealthy or set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.asked: list[str] = []
        self.closed = 0
        self.never = asyncio.Event()

    def __call__(self, api: str, timeout: float) -> FakeClient:
        return FakeClient(self, int(api.rsplit(":", 1)[1]) - 30000)


class FakeClient:
    def __init__(self, apis: FakeApis, i: int) -> None:
        self.apis = apis
        self.i = i

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.apis.closed += 1

    async def request(self, method: str, path: str) -> dict[str, Any]:
        apis, nid = self.apis, f"n{self.i}"
        apis.in_flight += 1
        apis.most_in_flight = max(apis.most_in_flight, apis.in_flight)
        try:
            if path == "/v1/members":
                return members_view(apis.n, apis.unhealthy)
            apis.asked.append(nid)
            await asyncio.sleep(0)  # an answer takes a turn of the loop
            if nid in apis.refusing:
                raise Unreachable("Connect call failed")
            if nid in apis.silent:
                await apis.never.wait()  # never set: no answer, ever
            return own_status(self.i, apis.n)
        finally:
            apis.in_flight -= 1


async def gather_bounded(apis: FakeApis, asked: int, **kw: Any) -> Any:
    # The outer wait_for is a guard against a hang (the thing under test),
    # far above the deadline: it is not a timing assertion.
    return await asyncio.wait_for(cli_status.gather(apis, own_status(asked, apis.n), **kw), 30)


async def test_a_hundred_members_are_asked_with_bounded_concurrency() -> None:
    apis = FakeApis(100)
    # A deadline far beyond need: this test is about concurrency, and a
    # loaded CI machine once starved the loop past the 0.7 s default.
    report = await gather_bounded(apis, 99, deadline=30, concurrency=8)
    assert sorted(apis.asked) == sorted(f"n{i}" for i in range(99))  # everyone but the asked one
    assert 1 < apis.most_in_flight <= 8 + 1  # the members, plus the controller's view
    assert report.code == 0 and len(report.rows) == 100
    assert {r.health for r in report.rows} == {"ok"}
    assert apis.closed == 100  # every client closed


async def test_members_that_never_answer_do_not_hold_status_past_its_deadline() -> None:
    silent = {f"n{i}" for i in range(40, 100, 3)}
    apis = FakeApis(100, silent=silent, unhealthy={"n40"})
    report = await gather_bounded(apis, 1, deadline=1.0, concurrency=100)
    rows = {r.id: r for r in report.rows}
    # Silent and unhealthy by the controller's word: unreachable, down.
    assert (rows["n40"].role, rows["n40"].health) == ("unreachable", "down")
    assert rows["n40"].why == "no answer within 1 s"
    # Silent but replicating (the controller hears it): its API is slow, it is not down.
    assert rows["n43"].role == "learner" and rows["n43"].health == "ok"
    assert "healthy as the controller sees it" in rows["n43"].why
    assert all(rows[f"n{i}"].health == "ok" for i in range(100) if f"n{i}" not in silent)
    assert report.code == 0  # every voter is fine; silent learners do not make it degraded
    assert apis.in_flight == 0 and apis.closed == 100  # the late requests were cancelled and closed


async def test_a_silent_voter_makes_status_degraded_and_refused_is_down() -> None:
    apis = FakeApis(7, silent={"n2"}, refusing={"n3"}, unhealthy={"n2", "n3"})
    report = await gather_bounded(apis, 1, deadline=1.0)
    rows = {r.id: r for r in report.rows}
    assert (rows["n2"].role, rows["n2"].health, rows["n2"].why) == ("unreachable", "down", "no answer within 1 s")
    assert (rows["n3"].role, rows["n3"].health, rows["n3"].why) == ("unreachable", "down", "connection refused")
    assert report.code == 1 and "n2 down" in report.verdict


async def test_members_never_reached_before_the_deadline_are_not_asked_and_said_so() -> None:
    # Concurrency 2, and the first members asked all hang: the rest never get a turn.
    silent = {f"n{i}" for i in range(1, 10)}
    apis = FakeApis(10, silent=silent)
    report = await gather_bounded(apis, 0, deadline=0.2, concurrency=2)
    assert len(apis.asked) == 2
    rows = {r.id: r for r in report.rows}
    not_asked = [nid for nid, r in rows.items() if r.why.startswith("not asked")]
    assert len(not_asked) == 7 and all(rows[n].role != "unreachable" for n in not_asked)
    assert all("healthy as the controller sees it" in rows[n].why for n in apis.asked)


async def test_a_silent_controller_leaves_health_to_each_members_own_status() -> None:
    apis = FakeApis(5, silent={"n0"})

    def make(api: str, timeout: float) -> Any:
        client = FakeClient(apis, int(api.rsplit(":", 1)[1]) - 30000)
        if client.i == 0:
            # The controller answers neither its status nor its members view.
            async def hang(method: str, path: str) -> dict[str, Any]:
                await apis.never.wait()
                raise AssertionError("unreachable")

            client.request = hang  # type: ignore[method-assign]
        return client

    report = await asyncio.wait_for(cli_status.gather(make, own_status(1, 5), deadline=0.2), 30)
    assert "the controller did not answer" in report.health_source
    assert next(r for r in report.rows if r.id == "n0").role == "unreachable"


async def test_a_bug_in_a_fetch_is_raised_not_reported_as_a_slow_member() -> None:
    apis = FakeApis(3)

    def make(api: str, timeout: float) -> Any:
        client = FakeClient(apis, int(api.rsplit(":", 1)[1]) - 30000)
        if client.i == 2:

            async def broken(method: str, path: str) -> dict[str, Any]:
                raise KeyError("a bug")

            client.request = broken  # type: ignore[method-assign]
        return client

    with pytest.raises(KeyError):
        await cli_status.gather(make, own_status(1, 3), deadline=5)


def test_late_view_and_bad_arguments() -> None:
    view = members_view(3, unhealthy={"n2"})
    assert isinstance(cli_status.late_view(member(1), view, 0.5), NotAsked)
    assert cli_status.late_view(member(2), view, 0.5) == "no answer within 0.5 s"
    assert cli_status.late_view(member(1), None, 0.5) == "no answer within 0.5 s"
    # A view from a node that is not the controller carries no health.
    assert cli_status.late_view(member(1), {**view, "leader": "n1"}, 0.5) == "no answer within 0.5 s"
    with pytest.raises(ValueError):
        asyncio.run(cli_status.gather(FakeApis(3), own_status(0, 3), deadline=0))
