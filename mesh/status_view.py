"""`hana-node status`: the mesh as one node sees it, judged and drawn for
an 80-column terminal, with the exit status of shared/API.md.

Three sources, fetched by the CLI (mesh/cli_status.py):
- the status document of the member asked (`GET /v1/status`);
- each other member's own status document, or why it could not be had
  (a member whose API does not answer is *unreachable*, never a follower);
- the controller's members view (`GET /v1/members` on the controller: only
  the controller hears every member, so only it knows their lag, last
  contact and health). Asked from a follower, the CLI asks the controller.

`assess` turns them into rows and a verdict (pure: unit-tested with
fabricated documents); `render_status` draws them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mesh.cli_tables import human_duration_ms

# The controller's own thresholds (mesh/adapter.py), used only when the
# controller's view cannot be had: a member is behind when its log lags by
# more than this many entries, and down when not heard for this long.
BEHIND_ENTRIES = 250
SILENT_MS = 2000.0

EXIT_HEALTHY = 0
EXIT_DEGRADED = 1
EXIT_NO_CONTROLLER = 2

ROLE_STYLE = {
    "leader": "bold green",
    "follower": "cyan",
    "learner": "magenta",
    "candidate": "yellow",
    "unreachable": "bold red",
}
HEALTH_STYLE = {"ok": "green", "behind": "yellow", "down": "bold red", "cut off": "bold red", "no ctrl": "red"}


@dataclass(frozen=True)
class NotAsked:
    """A member whose own status cannot be had from here for a reason other
    than it being down: its API listens on its own machine's loopback, or
    its address answers as another node. Its health is then the
    controller's word, or unknown."""

    why: str


View = Mapping[str, Any] | str | NotAsked | None


@dataclass
class MemberRow:
    id: str
    asked: bool
    voter: bool
    role: str
    health: str
    lag: int | None = None
    contact_ms: float | None = None
    applied: int | None = None
    term: int | None = None
    found: str | None = None
    raft: str | None = None
    api: str | None = None
    why: str = ""


@dataclass
class StatusReport:
    asked: str
    doc: dict[str, Any]
    controller: str | None
    rows: list[MemberRow] = field(default_factory=list)
    code: int = EXIT_HEALTHY
    verdict: str = ""
    # Where health came from: the controller's members view, or (when it
    # could not be had) each member's own status.
    health_source: str = ""


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def assess(
    doc: Mapping[str, Any],
    views: Mapping[str, View],
    controller_view: Mapping[str, Any] | None,
) -> StatusReport:
    """`doc`: the asked member's status. `views`: other member ids to their
    own status document, or why its API did not answer (a str: it is
    unreachable), or NotAsked, or None when no API address is known for it.
    `controller_view`: the controller's `GET /v1/members` document, or None."""
    asked = str(doc.get("id"))
    connected = doc.get("connected", True) is not False
    controller = doc.get("leader") if connected else None
    controller = str(controller) if controller else None
    report = StatusReport(asked=asked, doc=dict(doc), controller=controller)
    cv: dict[str, Mapping[str, Any]] = {}
    if controller_view is not None and controller_view.get("leader") == controller_view.get("id") == controller:
        cv = {str(m.get("id")): m for m in controller_view.get("members") or []}
        report.health_source = f"as the controller {controller} sees it"
    else:
        report.health_source = (
            "from each member's own status (the controller did not answer)"
            if controller
            else "from each member's own status"
        )
    commits = [_int(doc.get("commit_index"))]
    commits += [_int(v.get("commit_index")) for v in views.values() if isinstance(v, Mapping)]
    top = max((c for c in commits if c is not None), default=0)
    asked_view = {str(m.get("id")): m for m in doc.get("members") or []}
    for m in doc.get("members") or []:
        mid = str(m.get("id"))
        own: View = doc if mid == asked else views.get(mid)
        c = cv.get(mid)
        row = MemberRow(
            id=mid,
            asked=mid == asked,
            voter=bool(m.get("voter")),
            role=str(m.get("role") or "?"),
            health="?",
            found=m.get("found"),
            raft=m.get("raft"),
            api=m.get("api"),
        )
        if isinstance(own, Mapping):
            row.role = str(own.get("role") or row.role)
            row.applied = _int(own.get("applied_index"))
            row.term = _int(own.get("term"))
        elif isinstance(own, str):
            row.role = "unreachable"
            row.why = own
        elif isinstance(own, NotAsked):
            row.why = own.why
        if c is not None:
            row.lag = _int(c.get("lag"))
            if mid != controller:
                row.contact_ms = c.get("last_contact_ms")
        elif isinstance(own, Mapping) and row.applied is not None:
            row.lag = max(0, top - row.applied)
        if mid == controller and mid != asked:
            row.contact_ms = asked_view.get(mid, {}).get("last_contact_ms")
        row.health = _health(row, own, c)
        report.rows.append(row)
    report.code, report.verdict = _verdict(report)
    return report


def _health(row: MemberRow, own: View, c: Mapping[str, Any] | None) -> str:
    if isinstance(own, str):
        return "down"
    if c is not None and c.get("healthy") is not None:
        if c.get("healthy"):
            return "ok" if not isinstance(own, Mapping) or own.get("leader") else "no ctrl"
        contact = c.get("last_contact_ms")
        silent = contact is None or contact > SILENT_MS
        if silent:
            return "cut off" if isinstance(own, Mapping) else "down"
        return "behind"
    if isinstance(own, Mapping):
        if not own.get("leader") or own.get("connected", True) is False:
            return "no ctrl"
        if row.lag is not None and row.lag > BEHIND_ENTRIES:
            return "behind"
        return "ok"
    return "?"  # not asked (or no API address known), and no word from the controller


def _verdict(report: StatusReport) -> tuple[int, str]:
    if report.controller is None:
        return EXIT_NO_CONTROLLER, f"no controller: {report.asked} knows none (writes cannot commit)"
    bad = [r for r in report.rows if r.voter and r.health != "ok"]
    if bad:
        unknown = [r.id for r in bad if r.health == "?"]
        known = [f"{r.id} {r.health}" for r in bad if r.health != "?"]
        if unknown:
            known.append(f"{', '.join(unknown)} unknown from here (ask on the controller's machine)")
        return EXIT_DEGRADED, "degraded: " + ", ".join(known)
    return EXIT_HEALTHY, "healthy: a controller, and every voter answers and keeps up"


def unreachable_report(api: str, reason: str) -> tuple[int, Text]:
    return EXIT_NO_CONTROLLER, Text(f"cannot reach {api}: {reason}", style="bold red")


def _index(v: Any) -> str:
    return "?" if v is None else str(v)


def render_status(report: StatusReport, width: int = 80) -> RenderableType:
    """The report as a header and a table that fits `width` columns
    (term, found and raft appear from 110 columns on)."""
    doc = report.doc
    wide = width >= 110
    head = Text.assemble(
        ("cluster ", "dim"), (str(doc.get("cluster")), "bold"),
        ("  asked ", "dim"), (report.asked, "bold"),
        ("  controller ", "dim"),
        (report.controller or "none", "bold green" if report.controller else "bold red"),
        ("  term ", "dim"), str(doc.get("term")),
    )  # fmt: skip
    where = Text.assemble(
        (f"{report.asked}: ", "dim"),
        ("commit ", "dim"), _index(doc.get("commit_index")),
        ("  applied ", "dim"), _index(doc.get("applied_index")),
        ("  revision ", "dim"), _index(doc.get("revision")),
    )  # fmt: skip
    style = {0: "bold green", 1: "bold yellow"}.get(report.code, "bold red")
    verdict = Text(report.verdict, style=style)
    table = Table(show_edge=False, header_style="bold", box=None, pad_edge=False, collapse_padding=True)
    cols = ["member", "role", "v", "health", "lag", "contact", "applied"]
    if wide:
        cols += ["term", "found"]
    cols += ["api"]
    if wide:
        cols += ["raft"]
    for col in cols:
        table.add_column(
            col,
            justify="right" if col in ("lag", "contact", "applied", "term") else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=24 if col in ("member", "api", "raft") else None,
        )
    for r in report.rows:
        cells = [
            Text(r.id + ("*" if r.asked else ""), style="bold" if r.asked else ""),
            Text(r.role, style=ROLE_STYLE.get(r.role, "")),
            Text("v" if r.voter else ""),
            Text(r.health, style=HEALTH_STYLE.get(r.health, "")),
            Text("-" if r.lag is None else str(r.lag)),
            Text("-" if r.contact_ms is None else human_duration_ms(r.contact_ms)),
            Text(_index(r.applied)),
        ]
        if wide:
            cells += [Text(_index(r.term)), Text(str(r.found or "-"))]
        cells.append(Text(str(r.api or "-")))
        if wide:
            cells.append(Text(str(r.raft or "-")))
        table.add_row(*cells)
    notes = [Text(f"health {report.health_source}", style="dim")]
    for r in report.rows:
        if r.why:
            notes.append(Text(f"{r.id}: {r.why}", style="dim"))
    return Group(head, where, verdict, table, *notes)
