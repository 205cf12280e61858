"""Fetching what `hana-node status` shows (mesh/status_view.py judges and
draws it): the asked member's status, every other member's own status, and
the controller's members view, all at once with short timeouts, so that a
dead or stopped member costs at most MEMBER_TIMEOUT."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mesh.client import ApiError, MeshClient, Unreachable
from mesh.status_view import StatusReport, assess

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


async def _fetch(make: ClientFactory, api: str, path: str, timeout: float) -> dict[str, Any] | str:
    try:
        async with make(api, timeout) as c:
            doc = await c.request("GET", path)
        return doc if isinstance(doc, dict) else f"answered {type(doc).__name__}, not a document"
    except (Unreachable, ApiError) as exc:
        return reason(exc, timeout)


async def gather(make: ClientFactory, doc: dict[str, Any]) -> StatusReport:
    """Given the asked member's status `doc`, ask everyone else (in parallel)."""
    asked = doc.get("id")
    members = [m for m in doc.get("members") or [] if m.get("id") != asked]
    with_api = [m for m in members if m.get("api")]
    leader = doc.get("leader")
    leader_api = doc.get("members") and next(
        (m.get("api") for m in doc["members"] if m.get("id") == leader and m.get("api")), None
    )
    jobs = [_fetch(make, str(m["api"]), "/v1/status", MEMBER_TIMEOUT) for m in with_api]
    if leader and leader_api:
        jobs.append(_fetch(make, str(leader_api), "/v1/members", MEMBER_TIMEOUT))
    results = await asyncio.gather(*jobs)
    views: dict[str, dict[str, Any] | str | None] = {str(m.get("id")): None for m in members}
    for m, r in zip(with_api, results, strict=False):
        views[str(m["id"])] = r
    controller_view = results[-1] if leader and leader_api and isinstance(results[-1], dict) else None
    return assess(doc, views, controller_view)


async def asked_status(make: ClientFactory, api: str) -> dict[str, Any]:
    """The asked member's status; Unreachable or ApiError if it gives none."""
    async with make(api, ASKED_TIMEOUT) as c:
        return await c.status()
