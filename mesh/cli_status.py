"""Fetching what `hana-node status` shows (mesh/status_view.py judges and
draws it): the asked member's status, every other member's own status, and
the controller's members view.

They are fetched concurrently, at most MAX_CONCURRENT member APIs at a time
(a mesh of 100 displays must not open 100 connections at once, nor ask them
one after another), the controller's view first, and all of it within one
overall DEADLINE: `status` answers within about a second whatever the mesh's
size and however many members are dead, stopped or slow. A member whose API
has not answered by then is reported as such ("no answer within …"); if
the controller's view says it is healthy (it replicates, only its API is
slow to answer), its health is the controller's word instead."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

from mesh.client import ApiError, MeshClient, Unreachable
from mesh.node.flags import CliError, parse_hostport
from mesh.status_view import NotAsked, StatusReport, View, assess

ASKED_TIMEOUT = 3.0
# One member's answer, and every answer together (a member still silent at
# the deadline is reported as not answering).
MEMBER_TIMEOUT = 1.0
DEADLINE = 0.7
# Member APIs asked at the same time.
MAX_CONCURRENT = 24

ClientFactory = Callable[[str, float], MeshClient]


def reason(exc: Exception, timeout: float) -> str:
    """Why a member's API gave no status, in a few words."""
    if isinstance(exc, ApiError):
        return f"answered {exc.status} {exc.code}"
    cause = exc.__cause__
    if isinstance(cause, TimeoutError) or isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    text = str(cause or exc)
    if "Connect call failed" in text or "Connection refused" in text:
        return "connection refused"
    return text[:100]


def _loopback(address: str) -> bool:
    try:
        host, _ = parse_hostport(address, "address")
    except CliError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def elsewhere_on_loopback(member: dict[str, Any]) -> bool:
    """The member's API listens on the loopback of another machine (its
    raft address is not loopback): asking that address here would reach
    whatever listens on this machine's loopback, not the member."""
    raft = member.get("raft")
    return _loopback(str(member.get("api") or "")) and bool(raft) and not _loopback(str(raft))


async def _fetch(make: ClientFactory, api: str, path: str, timeout: float) -> dict[str, Any] | str:
    try:
        async with make(api, timeout) as c:
            doc = await c.request("GET", path)
        return doc if isinstance(doc, dict) else f"answered {type(doc).__name__}, not a document"
    except (Unreachable, ApiError) as exc:
        return reason(exc, timeout)


async def _member_view(make: ClientFactory, member: dict[str, Any], timeout: float = MEMBER_TIMEOUT) -> View:
    mid = member.get("id")
    api = member.get("api")
    if not api:
        return None
    if elsewhere_on_loopback(member):
        return NotAsked(f"its API ({api}) listens on its own machine's loopback")
    got = await _fetch(make, str(api), "/v1/status", timeout)
    if isinstance(got, dict) and got.get("id") != mid:
        return NotAsked(f"{api} answers as {got.get('id')}, not as {mid}")
    return got


async def gather(
    make: ClientFactory,
    doc: dict[str, Any],
    *,
    deadline: float = DEADLINE,
    concurrency: int = MAX_CONCURRENT,
) -> StatusReport:
    """Given the asked member's status `doc`, ask everyone else: at most
    `concurrency` at a time, all within `deadline` seconds (see the module
    docstring)."""
    if deadline <= 0 or concurrency < 1:
        raise ValueError("deadline must be positive and concurrency at least 1")
    asked = doc.get("id")
    members = [m for m in doc.get("members") or [] if m.get("id") != asked]
    leader = doc.get("leader")
    lead = next((m for m in doc.get("members") or [] if leader and m.get("id") == leader), None)
    ask_leader = lead is not None and bool(lead.get("api")) and (leader == asked or not elsewhere_on_loopback(lead))
    timeout = min(MEMBER_TIMEOUT, deadline)
    room = asyncio.Semaphore(concurrency)
    asking: set[int] = set()  # members whose API was asked (by position)

    async def bounded(i: int, member: dict[str, Any]) -> View:
        async with room:
            asking.add(i)
            return await _member_view(make, member, timeout)

    # The controller's view first: it carries every member's health.
    controller_task: asyncio.Task[dict[str, Any] | str] | None = None
    if ask_leader and lead is not None:
        controller_task = asyncio.ensure_future(_fetch(make, str(lead["api"]), "/v1/members", timeout))
    tasks = [asyncio.ensure_future(bounded(i, m)) for i, m in enumerate(members)]
    everything: list[asyncio.Future[Any]] = [*tasks, *([controller_task] if controller_task else [])]
    late: set[asyncio.Future[Any]] = set(everything)
    try:
        if everything:
            _, late = await asyncio.wait(everything, timeout=deadline)
    finally:
        # Late ones (or all of them, if this call itself is cancelled).
        for t in late:
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    # A late task was cancelled; a finished one gives its answer (or raises
    # what _fetch does not expect: a bug, not a slow member).
    controller_view = None
    if controller_task is not None and not controller_task.cancelled():
        got = controller_task.result()
        controller_view = got if isinstance(got, dict) else None
    views: dict[str, View] = {}
    for i, (m, t) in enumerate(zip(members, tasks, strict=True)):
        if not t.cancelled():
            views[str(m.get("id"))] = t.result()
        elif i in asking:
            views[str(m.get("id"))] = late_view(m, controller_view, deadline)
        else:
            views[str(m.get("id"))] = NotAsked(f"not asked: {deadline:g} s passed before its turn")
    report = assess(doc, views, controller_view)
    if lead is not None and not ask_leader and lead.get("api"):
        report.health_source = (
            f"from each member's own status (the controller's API, {lead['api']}, listens on its own "
            "machine's loopback)"
        )
    return report


def late_view(member: dict[str, Any], controller_view: dict[str, Any] | None, deadline: float) -> View:
    """What a member whose API did not answer within the deadline shows:
    unreachable, unless the controller (answering as controller) says it is
    healthy: then its own status is missing but its health is known."""
    why = f"no answer within {deadline:g} s"
    if controller_view is not None and controller_view.get("leader") == controller_view.get("id"):
        seen = next((c for c in controller_view.get("members") or [] if c.get("id") == member.get("id")), None)
        if seen is not None and seen.get("healthy") is True:
            return NotAsked(f"its API gave no answer within {deadline:g} s; healthy as the controller sees it")
    return why


async def asked_status(make: ClientFactory, api: str) -> dict[str, Any]:
    """The asked member's status; Unreachable or ApiError if it gives none."""
    async with make(api, ASKED_TIMEOUT) as c:
        return await c.status()
