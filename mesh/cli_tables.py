"""Tables and one-line summaries of the API's documents, for people.

Every function takes a document exactly as the API answers it and returns
something rich prints (a Table, a Group, a Text). Scripts get the
documents themselves with `--json`; nothing here is parsed by a program.

Data never goes through rich's markup: every cell is a `Text`, so a key or
value that contains `[red]` is printed as it is.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

# Fields every audit entry has; the rest are the op's own, shown as details.
AUDIT_COMMON = ("seq", "revision", "op", "author", "role", "node", "time", "hlc")
VALUE_WIDTH = 60


def console(stderr: bool = False) -> Console:
    """A console for tables: the terminal's width (or COLUMNS; 80 when not
    a terminal), no syntax highlighting of numbers and strings in data."""
    return Console(stderr=stderr, highlight=False)


def human_time(ms: Any, now: float | None = None) -> str:
    """Epoch milliseconds as local time: `14:03:07` today, else
    `2026-12-01 14:03`; `-` for none (0 or missing: entries made before
    the log carried times)."""
    if not isinstance(ms, int | float) or isinstance(ms, bool) or ms <= 0:
        return "-"
    try:
        when = _dt.datetime.fromtimestamp(ms / 1000.0)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    today = _dt.datetime.fromtimestamp(time.time() if now is None else now).date()
    if when.date() == today:
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M")


def human_duration_ms(ms: Any) -> str:
    """A time since or between, for people: `<1 ms`, `12 ms`, `3.2 s`, `4 min`, `2 h`, `3 d`."""
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return "-"
    if ms < 1:
        return "<1 ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    s = ms / 1000.0
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def human_bytes(n: Any) -> str:
    if not isinstance(n, int) or isinstance(n, bool):
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} {unit}" if unit == "B" else f"{n / 1024:.1f} {unit}"
        n = n / 1024
    return str(n)  # pragma: no cover - the loop returns


def short_json(value: Any, width: int = VALUE_WIDTH) -> str:
    """A JSON value on one line, cut to `width` characters with `…`."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def _table(*columns: str, right: Iterable[str] = ()) -> Table:
    """Columns fold long text onto more lines, except values, which are
    cut with `…` on one line (--json has them whole)."""
    table = Table(show_edge=False, header_style="bold", box=None, pad_edge=False, collapse_padding=True)
    right = set(right)
    for col in columns:
        clip = col in ("value", "current", "proposed")
        table.add_column(
            col,
            justify="right" if col in right else "left",
            overflow="ellipsis" if clip else "fold",
            no_wrap=clip,
            min_width=12 if clip else None,
        )
    return table


def _who(author: Any, node: Any, role: Any = None) -> Text:
    text = Text(str(author or "-"))
    if node:
        text.append(f"@{node}", style="dim")
    if role:
        text.append(f" ({role})", style="dim")
    return text


def history_table(doc: Mapping[str, Any]) -> RenderableType:
    """GET /v1/history: one row per change record, oldest first."""
    records = doc.get("records") or []
    table = _table("rev", "time", "op", "key", "value", "by", right=("rev",))
    for r in records:
        value = Text("(deleted)", style="dim") if r.get("op") == "delete" else Text(short_json(r.get("value"), 40))
        table.add_row(
            Text(str(r.get("revision"))),
            Text(human_time(r.get("time"))),
            Text(str(r.get("op"))),
            Text(str(r.get("key"))),
            value,
            _who(r.get("author"), r.get("node")),
        )
    head = Text(
        f"{len(records)} change(s); revision now {doc.get('revision')}, oldest held {doc.get('oldest', '-')}",
        style="dim",
    )
    return Group(table, head) if records else Text("no changes in that range", style="dim")


def _audit_details(entry: Mapping[str, Any]) -> str:
    parts = []
    for k, v in entry.items():
        if k in AUDIT_COMMON or v in (None, "", [], {}):
            continue
        if k == "keys" and isinstance(v, list):
            continue  # key_count says how many; the keys are in --json
        if k == "components" and isinstance(v, list):
            parts.append(f"components={len(v)}")
            continue
        if k == "group" and isinstance(v, Mapping):
            parts.append(f"group=rev {v.get('revision')} {v.get('op')} by {v.get('author')}")
            continue
        parts.append(f"{k}={v if isinstance(v, str | int | float) else short_json(v, 40)}")
    return " ".join(parts)


def audit_table(doc: Mapping[str, Any]) -> RenderableType:
    """GET /v1/audit: saves, restores, imports, undo/redo, membership and
    security events (routine writes are in history)."""
    entries = doc.get("entries") or []
    table = _table("seq", "rev", "time", "op", "by", "details", right=("seq", "rev"))
    for e in entries:
        table.add_row(
            Text(str(e.get("seq"))),
            Text(str(e.get("revision"))),
            Text(human_time(e.get("time"))),
            Text(str(e.get("op"))),
            _who(e.get("author"), e.get("node"), e.get("role")),
            Text(_audit_details(e)),
        )
    if not entries:
        return Text("no audit entries in that range", style="dim")
    return Group(table, Text(f"{len(entries)} entr(ies); oldest held {doc.get('oldest', '-')}", style="dim"))


def saves_table(saves: list[Mapping[str, Any]]) -> RenderableType:
    """GET /v1/saves: the saves, oldest first; recovery points marked."""
    if not saves:
        return Text("no saves (hana-node save NAME makes one)", style="dim")
    table = _table("name", "rev", "created", "by", "keys", "size", "kind", right=("rev", "keys", "size"))
    for s in saves:
        table.add_row(
            Text(str(s.get("name"))),
            Text(str(s.get("revision"))),
            Text(human_time(s.get("created"))),
            _who(s.get("author"), s.get("node")),
            Text(str(s.get("keys", "-"))),
            Text(human_bytes(s.get("bytes"))),
            Text("recovery point", style="dim") if s.get("auto") else Text("save"),
        )
    return table


def keys_table(doc: Mapping[str, Any]) -> RenderableType:
    """GET /v1/kv?prefix=P: one row per key."""
    items = doc.get("items") or []
    if not items:
        return Text(f"no keys (revision {doc.get('revision')})", style="dim")
    table = _table("key", "ver", "rev", "value", right=("ver", "rev"))
    for it in items:
        table.add_row(
            Text(str(it.get("key"))),
            Text(str(it.get("version"))) + (Text("*", style="bold yellow") if it.get("pending") else Text("")),
            Text(str(it.get("mod_revision"))),
            Text(short_json(it.get("value"))),
        )
    extra = " (stale: no controller heard lately)" if doc.get("stale") else ""
    if any(it.get("pending") for it in items):
        extra += " (*: pending, queued here)"
    return Group(table, Text(f"{len(items)} key(s) at revision {doc.get('revision')}{extra}", style="dim"))


def members_table(doc: Mapping[str, Any]) -> RenderableType:
    """GET /v1/members: members (health as the node asked sees it: only
    the controller knows it) and nodes discovery sees that are not members."""
    table = _table("id", "role", "voter", "found", "healthy", "lag", "contact", "api", right=("lag", "contact"))
    for m in doc.get("members") or []:
        healthy = m.get("healthy")
        table.add_row(
            Text(str(m.get("id"))),
            Text(str(m.get("role"))),
            Text("yes" if m.get("voter") else "no"),
            Text(str(m.get("found") or "-")),
            Text("-") if healthy is None else (Text("yes") if healthy else Text("no", style="red")),
            Text("-" if m.get("lag") is None else str(m.get("lag"))),
            Text(human_duration_ms(m.get("last_contact_ms"))),
            Text(str(m.get("api") or "-")),
        )
    for p in doc.get("discovered") or []:
        table.add_row(
            Text(str(p.get("id"))),
            Text(f"not a member ({p.get('state')})", style="dim"),
            Text("no"),
            Text(str(p.get("found") or "-")),
            Text("-"),
            Text("-"),
            Text("-"),
            Text(str(p.get("api") or "-")),
        )
    for p in doc.get("pending") or []:  # machines waiting for `hana-node members approve ID`
        table.add_row(
            Text(str(p.get("id"))),
            Text(f"pending (key sha256 {str(p.get('fingerprint'))[:16]}…)", style="yellow"),
            Text("no"),
            Text(str(p.get("source") or "-")),
            Text("-"),
            Text("-"),
            Text("-"),
            Text(str(p.get("address") or "-")),
        )
    head = Text.assemble(
        ("cluster ", "dim"),
        (str(doc.get("cluster")), "bold"),
        ("  seen from ", "dim"),
        str(doc.get("id")),
        ("  controller ", "dim"),
        (str(doc.get("leader") or "none"), "bold green" if doc.get("leader") else "bold red"),
    )
    notes = []
    if doc.get("leader") != doc.get("id"):
        ask = f": hana-node members list --api {doc['leader_api']}" if doc.get("leader_api") else ""
        notes.append(Text(f"health and lag are known on the controller only{ask}", style="dim"))
    return Group(head, table, *notes)


def hlc_time(stamp: Any) -> str:
    """An HLC stamp (`WWW….LLL.node`) or epoch ms as local time."""
    if isinstance(stamp, str) and stamp[:15].isdigit():
        return human_time(int(stamp[:15]))
    return human_time(stamp)


def _critical(c: Mapping[str, Any]) -> bool:
    return c.get("critical") is True


def conflicts_table(doc: Mapping[str, Any]) -> RenderableType:
    """GET /v1/conflicts: critical ones marked `!` in red, first."""
    conflicts = [c for c in doc.get("conflicts") or [] if isinstance(c, Mapping)]
    if not conflicts:
        stale = " (stale: this node hears no controller)" if doc.get("stale") else ""
        return Text(f"no open conflicts{stale}", style="dim")
    # Values on one line each, who and when on the next: the key keeps its width.
    table = Table(show_edge=False, header_style="bold", box=None, pad_edge=False, collapse_padding=True)
    table.add_column("id", no_wrap=True)
    table.add_column("key", overflow="fold", min_width=16, ratio=2)
    table.add_column("status", no_wrap=True)
    for col in ("current", "proposed (offline edit)"):
        table.add_column(col, overflow="ellipsis", no_wrap=True, min_width=12, ratio=1)
    for c in sorted(conflicts, key=lambda x: (x.get("status") != "open", not _critical(x))):
        cur = c.get("current") or {}
        prop = c.get("proposed") or {}
        cid = Text(str(c.get("id")))
        if _critical(c):
            cid = Text("!", style="bold red") + cid
        current = Text(short_json(cur.get("value"), 40))
        current.append(f"\nv{cur.get('version')} by {cur.get('author')}", style="dim")
        proposed = Text(short_json(prop.get("value"), 40))
        proposed.append(f"\n{prop.get('author')}@{prop.get('node')} {hlc_time(prop.get('time'))}", style="dim")
        status = Text(str(c.get("status")), style="bold red" if c.get("status") == "open" and _critical(c) else "")
        table.add_row(cid, Text(str(c.get("key"))), status, current, proposed)
    opened = sum(1 for c in conflicts if c.get("status") == "open")
    crit = sum(1 for c in conflicts if c.get("status") == "open" and _critical(c))
    foot = f"{opened} open ({crit} critical, marked !); hana-node conflicts show ID for both sides"
    parts: list[RenderableType] = [table, Text(foot, style="dim")]
    if doc.get("stale"):
        parts.append(
            Text("stale: this node hears no controller; what others resolved may not show yet", style="yellow")
        )
    return Group(*parts)


def key_view(doc: Mapping[str, Any]) -> RenderableType:
    """GET /v1/kv/{key}: the value as indented JSON, and where it stands."""
    value = orjson.dumps(doc.get("value"), option=orjson.OPT_INDENT_2).decode()
    meta = Text(
        f"{doc.get('key')}: version {doc.get('version')}, changed at revision {doc.get('mod_revision')} "
        f"(created at {doc.get('create_revision')}); mesh revision {doc.get('revision')}",
        style="dim",
    )
    if doc.get("pending"):
        what = "a delete" if doc.get("deleted") else "a write"
        meta.append(f" - pending: {what} queued on this node, not yet applied by the controller", style="yellow")
    if doc.get("stale"):
        contact = doc.get("controller_contact_ms")
        since = f"{contact / 1000:.1f} s ago" if isinstance(contact, int | float) else "never"
        meta.append(f" - stale: this node last heard a controller {since}", style="yellow")
    return Group(Text(value), meta)


def result_line(command: str, doc: Any) -> Text:
    """One line saying what a write did (put, delete, save, restore, undo,
    redo, import, saves delete, members changes)."""
    d = doc if isinstance(doc, Mapping) else {}
    if command == "put":
        return Text(f"{d.get('key')}: version {d.get('version')} at revision {d.get('revision')}")
    if command == "delete":
        return Text(f"{d.get('key')}: deleted at revision {d.get('revision')}")
    if command in ("save", "import"):
        kind = "saved" if command == "save" else "imported"
        comps = d.get("components")
        n = f", {len(comps)} components" if isinstance(comps, list) else ""
        return Text(f"{kind} {d.get('name')!r}: revision {d.get('revision')}, {d.get('keys', '?')} keys{n}")
    if command == "restore":
        return Text(
            f"restored {d.get('restored')!r}: revision {d.get('revision')}, {d.get('changed')} key(s) changed; "
            f"recovery point {d.get('recovery_point')!r} (undo reverts the restore)"
        )
    if command in ("undo", "redo"):
        group = d.get("undone") or d.get("redone") or {}
        verb = "undone" if command == "undo" else "redone"
        keys = group.get("keys") or []
        shown = ", ".join(str(k) for k in keys[:5]) + (" …" if len(keys) > 5 else "")
        return Text(
            f"{verb}: revision {group.get('revision')} ({group.get('op')} by {group.get('author')}; "
            f"{group.get('key_count', len(keys))} key(s): {shown}) as revision {d.get('revision')}"
        )
    if command == "saves delete":
        return Text(f"deleted save {d.get('name')!r}")
    if command == "members":
        conf = d.get("conf") or {}
        voters = ",".join(conf.get("voters") or []) or "-"
        learners = ",".join(conf.get("learners") or []) or "-"
        return Text(
            f"{d.get('action')} {d.get('id')}: committed at index {d.get('index')} (term {d.get('term')}); "
            f"voters {voters}; learners {learners}"
        )
    return Text(short_json(doc, 200))


def watch_line(rec: Mapping[str, Any], width: int | None = None) -> str:
    """One line per change record: `#12 14:03:07 put displays/a = {…}  by admin@n2`."""
    if rec.get("op") == "delete":
        what = f"delete {rec.get('key')}"
    else:
        what = f"{rec.get('op')} {rec.get('key')} = {short_json(rec.get('value'), 10**9)}"
    who = f"  by {rec.get('author') or '-'}@{rec.get('node') or '-'}"
    line = f"#{rec.get('revision')} {human_time(rec.get('time'))} {what}"
    if width is not None and len(line) + len(who) > width:
        line = line[: max(10, width - len(who) - 1)] + "…"
    return line + who


def terminal_width() -> int | None:
    """The width to cut watch lines to on a terminal; None (never cut) in a pipe."""
    try:
        if not os.isatty(1):
            return None
        return os.get_terminal_size(1).columns
    except OSError:
        return None
