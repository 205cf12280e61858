"""Fetching what `hana-node status` shows (mesh/status_view.py judges and
draws it): the asked member's status, every other member's own status, and
the controller's members view, all at once with short timeouts, so that a
dead or stopped member costs at most MEMBER_TIMEOUT."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

from mesh.client import ApiError, MeshClient, Unreachable
from mesh.node.flags import CliError, parse_hostport
from mesh.status_view import NotAsked, StatusReport, View, assess

ASKED_TIMEOUT = 3.0
MEMBER_TIMEOUT = 1.0

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


async def _member_view(make: ClientFactory, member: dict[str, Any]) -> View:
    mid = member.get("id")
    api = member.get("api")
    if not api:
        return None
    if elsewhere_on_loopback(member):
        return NotAsked(f"its API ({api}) listens on its own machine's loopback")
    got = await _fetch(make, str(api), "/v1/status", MEMBER_TIMEOUT)
    if isinstance(got, dict) and got.get("id") != mid:
        return NotAsked(f"{api} answers as {got.get('id')}, not as {mid}")
    return got


async def gather(make: ClientFactory, doc: dict[str, Any]) -> StatusReport:
    """Given the asked member's status `doc`, ask everyone else (in parallel)."""
    asked = doc.get("id")
    members = [m for m in doc.get("members") or [] if m.get("id") != asked]
    leader = doc.get("leader")
    lead = next((m for m in doc.get("members") or [] if leader and m.get("id") == leader), None)
    ask_leader = lead is not None and bool(lead.get("api")) and (leader == asked or not elsewhere_on_loopback(lead))
    jobs: list[Any] = [_member_view(make, m) for m in members]
    if ask_leader and lead is not None:
        jobs.append(_fetch(make, str(lead["api"]), "/v1/members", MEMBER_TIMEOUT))
    results = await asyncio.gather(*jobs)
    views: dict[str, View] = {str(m.get("id")): r for m, r in zip(members, results, strict=False)}
    controller_view = results[-1] if ask_leader and isinstance(results[-1], dict) else None
    report = assess(doc, views, controller_view)
    if lead is not None and not ask_leader and lead.get("api"):
        report.health_source = (
            f"from each member's own status (the controller's API, {lead['api']}, listens on its own "
            "machine's loopback)"
        )
    return report


async def asked_status(make: ClientFactory, api: str) -> dict[str, Any]:
    """The asked member's status; Unreachable or ApiError if it gives none."""
    async with make(api, ASKED_TIMEOUT) as c:
        return await c.status()
