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

The hash chain (issue 18). Every entry recorded carries `prev`: the hash of
the entry before it ("" for the first one ever, or the first after entries
from a snapshot that had no chain). The hash of an entry is SHA-256 (hex)
over its canonical encoding (`values.canonical`: sorted keys, compact), its
`prev` included, so each hash covers the whole history before it. The trail
keeps `head` (the hash of the newest entry) and `cut` (the hash of the
newest entry retention dropped: the `prev` the oldest held entry must
carry), and the snapshot carries both, so the chain survives snapshots and
compaction. Both are computed from the log alone: the same on every node at
the same `seq`. `verify_chain` checks a trail; a break names the entry
(`seq`). Entries from snapshots written before the chain (no `prev`) are
legacy: not chained, reported as such, never a break.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import TYPE_CHECKING, Any

from mesh.state.commands import Meta, SecurityEvent
from mesh.state.kv import Compacted
from mesh.state.values import canonical, clip

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
        self.head = ""  # hash of the newest entry ("" before the first chained one)
        self.cut = ""  # hash of the newest entry dropped by retention

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
        # seq and prev are the trail's own: whatever the entry holds (a
        # membership change's context, say) never overrides them.
        chained = {"seq": self.seq, **entry}
        chained["seq"], chained["prev"] = self.seq, self.head
        self.head = entry_hash(chained)
        self.entries.append((self.clock, chained))
        self._expire()

    def _expire(self) -> None:
        cutoff = self.clock - self.max_age_ms
        dropped = False
        while self.entries and (len(self.entries) > self.limit or self.entries[0][0] < cutoff):
            _, gone = self.entries.popleft()
            dropped = True
            if "prev" in gone:
                self.cut = entry_hash(gone)
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
            "head": self.head,
            "cut": self.cut,
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
        # Snapshots from before the chain have no head or cut: their entries
        # stay unchained and the chain starts at the next entry ("" prev).
        head, cut = raw.get("head", ""), raw.get("cut", "")
        if not _is_hash(head) or not _is_hash(cut):
            raise ValueError("audit head and cut must be SHA-256 hex digests or empty")
        self.entries, self.floor, self.clock, self.seq = entries, floor, clock, seq
        self.head, self.cut = head, cut

    def verify(self) -> dict[str, Any]:
        """This trail's chain checked (`verify_chain`)."""
        return verify_chain([e for _, e in self.entries], self.head, self.cut, self.seq)

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


# -- the chain ---------------------------------------------------------------------------


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 (hex) of an entry's canonical encoding, `prev` included."""
    return hashlib.sha256(canonical(entry)).hexdigest()


def _is_hash(v: Any) -> bool:
    return isinstance(v, str) and (v == "" or (len(v) == 64 and all(c in "0123456789abcdef" for c in v)))


def verify_chain(entries: list[dict[str, Any]], head: str, cut: str, seq: int) -> dict[str, Any]:
    """Check a trail's hash chain: each chained entry's `prev` is the hash of
    the entry before it (of `cut` for the oldest held one, when retention
    dropped some), `seq` grows by one, and the newest entry hashes to `head`.
    Returns {"ok", "seq", "head", "first_seq", "chained", "legacy", "breaks":
    [{"seq", "reason"}]}: a break names the entry found altered (the one
    whose hash no longer matches what the next one, or the head, says)."""
    breaks: list[dict[str, Any]] = []
    legacy = 0
    chained = [e for e in entries if isinstance(e, dict) and "prev" in e]
    legacy = len(entries) - len(chained)
    prev_hash: str | None = None
    prev_seq: int | None = None
    for i, e in enumerate(chained):
        s = e.get("seq")
        if type(s) is not int:
            breaks.append({"seq": None, "reason": f"entry {i} of the chain has no integer seq"})
            continue
        if prev_seq is not None and s != prev_seq + 1:
            breaks.append({"seq": s, "reason": f"seq {s} follows {prev_seq}: entries missing or reordered"})
        if prev_hash is not None and e["prev"] != prev_hash:
            # The entry before was altered (or this one's link was).
            breaks.append({"seq": prev_seq, "reason": f"hash of entry {prev_seq} differs from what entry {s} records"})
        elif prev_hash is None and cut and i == 0 and legacy == 0 and e["prev"] != cut:
            breaks.append({"seq": s, "reason": f"entry {s} does not follow the compaction cut"})
        prev_hash, prev_seq = entry_hash(e), s
    if prev_hash is not None and prev_hash != head:
        breaks.append({"seq": prev_seq, "reason": f"hash of entry {prev_seq} differs from the trail's head"})
    if prev_seq is not None and prev_seq != seq:
        breaks.append({"seq": prev_seq, "reason": f"newest entry is {prev_seq}, the trail says {seq}"})
    return {
        "ok": not breaks,
        "seq": seq,
        "head": head,
        "first_seq": chained[0].get("seq") if chained else None,
        "chained": len(chained),
        "legacy": legacy,
        "breaks": breaks,
    }


def hash_at(entries: list[dict[str, Any]], seq: int) -> str | None:
    """The hash of the entry numbered `seq`, if held."""
    for e in entries:
        if isinstance(e, dict) and e.get("seq") == seq and "prev" in e:
            return entry_hash(e)
    return None


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
