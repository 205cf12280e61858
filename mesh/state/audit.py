"""The audit trail, kept apart from the routine history. Pure.

Routine writes (put, delete, txn) are in the history (which carries author,
node and time); the audit trail holds every other event: saves, restores
(with their recovery points), imports, deleted saves, undo and redo,
resolved conflicts, compactions, membership changes and security events
(failed logins). So ten thousand routine writes never push a membership
change or a restore out of it.

Entries: {"seq","revision","op","author","node","time","hlc", ...op fields},
in log order. `seq` numbers entries 1, 2, 3, ... without gaps, so a reader
sees exactly what it missed: many entries can share a revision (a save, a
failed login or a membership change does not make one). Retention,
deterministic on every node:
- by count: at most `limit` entries (oldest dropped first);
- by age: an entry is dropped once the audit clock has moved more than
  `max_age_ms` past it. The audit clock is a time read from the log, never a
  clock: the largest `min(time, hlc wall)` of the applied commands that
  carry a controller's stamp (`hlc`, which the controller splices into every
  command it appends): the origin node's time bounded by the controller's
  clock, so neither one machine with a clock far ahead nor a forged `time`
  alone can age out the trail. It never goes back, so entries are in clock
  order and the oldest are always at the front.
A query for revisions below what is held raises `Compacted` (HTTP 410):
once anything was dropped, the floor is the revision of the oldest entry
held (entries of that revision dropped before it show as a gap in `seq`).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from mesh.state.commands import Meta, SecurityEvent
from mesh.state.kv import Compacted
from mesh.state.values import clip

if TYPE_CHECKING:
    from mesh.state.model import HanaState

DEFAULT_AUDIT_LIMIT = 10_000
DEFAULT_AUDIT_MAX_AGE_MS = 90 * 24 * 3600 * 1000


class AuditTrail:
    def __init__(self, limit: int = DEFAULT_AUDIT_LIMIT, max_age_ms: int = DEFAULT_AUDIT_MAX_AGE_MS) -> None:
        if limit < 1 or max_age_ms < 1:
            raise ValueError("audit limit and max age must be at least 1")
        self.limit = limit
        self.max_age_ms = max_age_ms
        # (audit clock when recorded, entry), oldest first.
        self.entries: deque[tuple[int, dict[str, Any]]] = deque()
        self.floor = 0  # entries below this revision are gone
        self.clock = 0
        self.seq = 0

    def observe(self, time_ms: int) -> None:
        """A command's time (see the module docstring) moves the clock on."""
        if time_ms > self.clock:
            if self.clock == 0 and self.entries:
                # Entries recorded before the log told any time (the
                # bootstrap membership, say) age from the first time it
                # tells, not from 1970.
                self.entries = deque((at or time_ms, e) for at, e in self.entries)
            self.clock = time_ms

    def record(self, entry: dict[str, Any]) -> None:
        self.seq += 1
        self.entries.append((self.clock, {"seq": self.seq, **entry}))
        self._expire()

    def _expire(self) -> None:
        cutoff = self.clock - self.max_age_ms
        dropped = False
        while self.entries and (len(self.entries) > self.limit or self.entries[0][0] < cutoff):
            _, gone = self.entries.popleft()
            dropped = True
            if not self.entries:
                self.floor = max(self.floor, gone["revision"] + 1)
        if dropped and self.entries:
            self.floor = max(self.floor, self.entries[0][1]["revision"])

    def query(self, since: int, limit: int | None, revision: int) -> dict[str, Any]:
        if since < self.floor:
            raise Compacted(since, self.floor)
        out = []
        for _, e in self.entries:
            if e["revision"] >= since:
                out.append(e)
                if limit is not None and len(out) >= limit:
                    break
        return {"revision": revision, "oldest": self.floor, "entries": out}

    # -- snapshots ----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": [[at, e] for at, e in self.entries],
            "floor": self.floor,
            "clock": self.clock,
            "seq": self.seq,
        }

    def load_json(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise ValueError("audit must be an object")
        entries: deque[tuple[int, dict[str, Any]]] = deque()
        for item in raw["entries"]:
            at, e = item
            if type(at) is not int or not isinstance(e, dict) or type(e.get("revision")) is not int:
                raise ValueError("invalid audit entry")
            entries.append((at, e))
        floor, clock, seq = raw["floor"], raw["clock"], raw["seq"]
        if type(floor) is not int or type(clock) is not int or type(seq) is not int:
            raise ValueError("audit floor, clock and seq must be integers")
        self.entries, self.floor, self.clock, self.seq = entries, floor, clock, seq

    def load_v1(self, entries: Any, floor: Any) -> None:
        """A version-1 snapshot's audit (every change, routine writes too):
        kept as it is (without `seq`), recorded at each entry's own time."""
        if not isinstance(entries, list) or type(floor) is not int:
            raise ValueError("invalid audit")
        out: deque[tuple[int, dict[str, Any]]] = deque()
        clock = 0
        for e in entries:
            if not isinstance(e, dict) or type(e.get("revision")) is not int:
                raise ValueError("invalid audit entry")
            t = e.get("time")
            clock = max(clock, t if type(t) is int else 0)
            out.append((clock, e))
        self.entries, self.floor, self.clock = out, floor, clock


# -- what goes into it ------------------------------------------------------------------


def op_security_event(state: HanaState, body: SecurityEvent, meta: Meta) -> dict[str, Any]:
    """One audit entry (e.g. failed logins from one address, aggregated by
    the node that saw them); changes no key and makes no revision."""
    state._audit(meta, "security_event", event=body.event, address=body.address, count=body.count, path=body.path)
    return {"revision": state.revision, "recorded": body.event}


def membership_entry(cc: Any, revision: int, index: int, clock: int) -> dict[str, Any]:
    """The audit entry of a committed membership change (a
    mesh.raft.ConfChange): {"revision","op":"membership","index","author",
    "role","node","time","hlc","change","member", "voters"/"learners" for the
    bootstrap, ...the rest of cc.context}. The context (who asked, from
    where, why) never overrides the fixed fields. Never raises: whatever the
    change holds, every node records the same."""
    base: dict[str, Any] = {"revision": revision, "op": "membership", "index": index}
    try:
        context = getattr(cc, "context", None) or {}
        ctx = {
            clip(k, 64): clip(v, 1024)
            for k, v in list(context.items())[:16]
            if isinstance(k, str) and isinstance(v, str)
        }
        entry = {
            **base,
            "author": ctx.pop("author", ""),
            "role": ctx.pop("role", ""),
            "node": ctx.pop("node", ""),
            "time": clock,
            "hlc": "",
            "change": str(cc.type),
            "member": str(cc.node),
        }
        conf = getattr(cc, "conf", None)
        if conf is not None:
            entry["voters"] = [str(v) for v in conf.voters]
            entry["learners"] = [str(v) for v in conf.learners]
        for k, v in ctx.items():
            entry.setdefault(k, v)
        return entry
    except Exception as exc:  # recorded as such, identically on every node
        return {**base, "change": "unknown", "error": clip(f"{type(exc).__name__}: {exc}")}
