"""Renders `GET /v1/status` documents as a table an operator reads at a glance."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

ROLE_STYLE = {"leader": "bold green", "follower": "cyan", "learner": "magenta", "candidate": "yellow"}


def render_status(doc: dict[str, Any], views: dict[str, dict[str, Any] | str] | None = None) -> Group:
    """`doc` is the status of the node asked; `views` optionally maps other
    member ids to their own status document (or an error text)."""
    views = views or {}
    head = Text.assemble(
        ("cluster ", "dim"), (str(doc.get("cluster")), "bold"),
        ("  seen from ", "dim"), (str(doc.get("id")), "bold"),
        ("  leader ", "dim"), (str(doc.get("leader") or "none"), "bold green" if doc.get("leader") else "bold red"),
        ("  term ", "dim"), str(doc.get("term")),
        ("  commit ", "dim"), str(doc.get("commit_index")),
        ("  applied ", "dim"), str(doc.get("applied_index")),
        ("  revision ", "dim"), str(doc.get("revision")),
    )  # fmt: skip
    table = Table(show_edge=False, header_style="bold")
    columns: tuple[str, ...]
    columns = ("id", "role", "voter", "found", "term", "leader", "commit", "applied", "lag", "last contact")
    columns += ("raft", "api")
    for col in columns:
        table.add_column(col, justify="right" if col in ("term", "commit", "applied", "lag") else "left")
    commit = doc.get("commit_index") or 0
    for m in doc.get("members", []):
        mid = m.get("id")
        own = doc if mid == doc.get("id") else views.get(mid)
        role = m.get("role", "?")
        if isinstance(own, dict):
            role = own.get("role", role)
            term, leader = str(own.get("term")), str(own.get("leader") or "-")
            m_commit, m_applied = own.get("commit_index"), own.get("applied_index")
        else:
            term = leader = "?"
            m_commit = m_applied = None
        match = m.get("match_index")
        if match is not None:
            lag = str(max(0, commit - match))
        elif isinstance(m_applied, int):
            lag = str(max(0, commit - m_applied))
        else:
            lag = "?"
        contact = m.get("last_contact_ms")
        contact_text = "-" if contact is None else f"{contact:.0f} ms"
        if isinstance(own, str):
            contact_text = f"[red]{own}[/red]"
        table.add_row(
            Text(str(mid), style="bold" if mid == doc.get("id") else ""),
            Text(str(role), style=ROLE_STYLE.get(str(role), "")),
            "yes" if m.get("voter") else "no",
            str(m.get("found") or "-"),
            term,
            leader,
            "?" if m_commit is None else str(m_commit),
            "?" if m_applied is None else str(m_applied),
            lag,
            contact_text,
            str(m.get("raft") or "-"),
            str(m.get("api") or "-"),
        )
    return Group(head, table)
