"""Undo/redo bookkeeping: change groups and bounded per-author stacks. Pure.

A change group is what one command changed (a put, a txn, a restore, an
undo/redo, a resolved conflict): `Group(revision, op, author, changes)` where
`revision` is the revision at which the group's *after* state was written
(`origin`: the revision of the original change, kept through undo/redo) and
`changes` is a list of `[key, before, after]`, `before`/`after` being `[]` when
the key was absent and `[value]` when present (so a JSON null value is not
confused with absence). A key appears once per group (first before, last
after); keys whose before equals after are left out.

An undo writes every `before` back as a new change (history is never
rewritten) and moves the group to the redo stack with the undo's revision; a
redo writes every `after` back and moves it to the undo stack again. A group
conflicts when a key in it was changed since (its current value is not the
group's after, or its mod_revision is not the group's revision); the model
refuses it unless forced.

Stacks are per author (`UndoStacks.undo[author]`), each at most `limit` groups
(the oldest fall off). A new change by an author clears that author's redo
stack.

Command merging (`record(group, merge_ms)`): a single-key put or delete
joins the author's top group instead of becoming a step of its own when
that group is a single-key put or delete of the same key, its after-value
is the new change's before-value (nothing changed the key in between), and
it was made at most `merge_ms` before (by the `time` of the groups: the
wall part of the controller's HLC stamp, so every node decides alike). The
merged group keeps the first before-value and takes the new after-value,
revision and time (a sliding window: a fader moved for ten seconds in
writes 100 ms apart is one step).

`op_undo` is the undo/redo command over a HanaState.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mesh.state.commands import ADMIN_GROUPS, Meta, Undo
from mesh.state.errors import StateError

if TYPE_CHECKING:
    from mesh.state.model import HanaState

Slot = list[Any]  # [] absent, [value] present
Change = list[Any]  # [key, before: Slot, after: Slot, at: revision that wrote after]


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values that tells 1, 1.0 and true apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@dataclass(slots=True)
class Group:
    revision: int
    op: str
    author: str
    changes: list[Change]
    origin: int = 0  # the revision of the original change (kept through undo and redo)
    time: int = 0  # ms: the wall part of the HLC stamp of its (last) change, for command merging

    def __post_init__(self) -> None:
        if not self.origin:
            self.origin = self.revision

    def keys(self) -> list[str]:
        return [c[0] for c in self.changes]

    def to_json(self) -> list[Any]:
        if self.time:
            return [self.revision, self.op, self.author, self.changes, self.origin, self.time]
        return [self.revision, self.op, self.author, self.changes, self.origin]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Group:
        if len(raw) == 6:
            revision, op, author, changes, origin, time = raw
        else:
            (revision, op, author, changes, origin), time = raw, 0
        if (
            type(revision) is not int
            or type(time) is not int
            or type(origin) is not int
            or not isinstance(op, str)
            or not isinstance(author, str)
        ):
            raise ValueError("invalid undo group")
        for c in changes:
            if len(c) != 4 or not isinstance(c[0], str) or len(c[1]) > 1 or len(c[2]) > 1 or type(c[3]) is not int:
                raise ValueError("invalid undo change")
        return cls(revision, op, author, changes, origin, time)

    def inverted(self, revision: int) -> Group:
        changes = [[k, a, b, revision] for k, b, a, _at in self.changes]
        return Group(revision, self.op, self.author, changes, self.origin, self.time)

    def summary(self) -> dict[str, Any]:
        keys = self.keys()
        return {
            "revision": self.origin,
            "op": self.op,
            "author": self.author,
            "keys": keys[:32],
            "key_count": len(keys),
        }


class GroupBuilder:
    """Collects the changes of one command as they are made."""

    def __init__(self) -> None:
        self._order: list[str] = []
        self._before: dict[str, Slot] = {}
        self._after: dict[str, Slot] = {}

    def note(self, key: str, before: Slot, after: Slot) -> None:
        if key not in self._before:
            self._order.append(key)
            self._before[key] = before
        self._after[key] = after

    def changes(self, revision: int) -> list[Change]:
        return [
            [k, self._before[k], self._after[k], revision]
            for k in self._order
            if not json_equal(self._before[k], self._after[k])
        ]

    def touched(self) -> list[str]:
        return list(self._order)


class UndoStacks:
    def __init__(self, limit: int = 100) -> None:
        if limit < 1:
            raise ValueError("undo limit must be at least 1")
        self.limit = limit
        self.undo: dict[str, list[Group]] = {}
        self.redo: dict[str, list[Group]] = {}

    def record(self, group: Group, merge_ms: int = 0) -> int | None:
        """A new change by group.author: push it (or merge it into the top
        group, see the module docstring), forget that author's redo. Returns
        the revision of the write it merged into (None: not merged)."""
        stack = self.undo.get(group.author)
        merged = None
        if merge_ms > 0 and stack and _merges(stack[-1], group, merge_ms):
            top = stack[-1]
            merged = top.revision
            top.changes[0][2] = group.changes[0][2]
            top.changes[0][3] = group.changes[0][3]
            top.revision = group.revision
            top.origin = group.origin
            top.time = group.time
        else:
            self._push(self.undo, group.author, group)
        self.redo.pop(group.author, None)
        return merged

    def _push(self, stacks: dict[str, list[Group]], author: str, group: Group) -> None:
        stack = stacks.setdefault(author, [])
        stack.append(group)
        if len(stack) > self.limit:
            del stack[: len(stack) - self.limit]

    def peek(self, redo: bool, author: str) -> Group | None:
        stack = (self.redo if redo else self.undo).get(author)
        return stack[-1] if stack else None

    def move(self, redo: bool, author: str, new_revision: int) -> Group:
        """Pop the top of author's undo (or redo) stack and push its inverse,
        stamped `new_revision`, onto the other stack. The next group down
        that touches a key and left it at the value just written back now
        finds that value at `new_revision` (so consecutive undos of one
        author's edits to one key do not conflict with each other)."""
        src, dst = (self.redo, self.undo) if redo else (self.undo, self.redo)
        group = src[author].pop()
        pending = {c[0]: c[1] for c in group.changes}
        for lower in reversed(src[author]):
            if not pending:
                break
            for c in lower.changes:
                if c[0] in pending:
                    before = pending.pop(c[0])
                    if json_equal(c[2], before):
                        c[3] = new_revision
        if not src[author]:
            del src[author]
        self._push(dst, author, group.inverted(new_revision))
        return group

    def to_json(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "undo": {a: [g.to_json() for g in s] for a, s in sorted(self.undo.items())},
            "redo": {a: [g.to_json() for g in s] for a, s in sorted(self.redo.items())},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> UndoStacks:
        out = cls(int(raw["limit"]))
        out.undo = {a: [Group.from_json(g) for g in s] for a, s in sorted(raw["undo"].items())}
        out.redo = {a: [Group.from_json(g) for g in s] for a, s in sorted(raw["redo"].items())}
        return out

    def status(self) -> dict[str, dict[str, int]]:
        authors = sorted(set(self.undo) | set(self.redo))
        return {a: {"undo": len(self.undo.get(a, [])), "redo": len(self.redo.get(a, []))} for a in authors}


_MERGED_OPS = frozenset({"put", "delete"})


def _merges(top: Group, group: Group, merge_ms: int) -> bool:
    if top.op not in _MERGED_OPS or group.op not in _MERGED_OPS:
        return False
    if len(top.changes) != 1 or len(group.changes) != 1 or top.changes[0][0] != group.changes[0][0]:
        return False
    if not 0 <= group.time - top.time <= merge_ms or top.origin != top.revision:
        return False  # too late, or a group that was undone and redone
    return json_equal(top.changes[0][2], group.changes[0][1])


# -- the undo and redo ops ------------------------------------------------------------------


def op_undo(state: HanaState, body: Undo, meta: Meta) -> dict[str, Any]:
    """Undo (or redo) the top group of one author's stack as a new change.
    Undoing or redoing a restore needs the admin role (issue 12, finding 5)."""
    stack = meta.author if body.stack is None else body.stack
    word = "redo" if body.redo else "undo"
    group = state.undo.peek(body.redo, stack)
    if group is None:
        raise StateError(f"nothing_to_{word}", f"{stack!r} has nothing to {word}", stack=stack)
    if group.op in ADMIN_GROUPS and not meta.is_admin:
        raise StateError(
            "forbidden", f"{word} of a {group.op} needs the admin role", role=meta.role, group=group.summary()
        )
    if not body.force:
        changed = [k for k, _before, after, at in group.changes if not state._holds(k, after, at)]
        if changed:
            raise StateError(
                "undo_conflict",
                f"cannot {word} revision {group.revision}: {', '.join(changed[:8])} changed since "
                f"(force to {word} anyway)",
                keys=changed[:32],
                key_count=len(changed),
                group=group.summary(),
            )
    if any(not state._holds(k, before, -1) for k, before, _after, _at in group.changes):
        state._begin()
        for key, before, _after, _at in group.changes:
            state._set(key, before, meta)
        state.undo.move(body.redo, stack, state.revision)
        state._finish(meta, word, undoable=False, audit={"group": group.summary()})
    else:
        state.undo.move(body.redo, stack, state.revision)
        state._audit(meta, word, keys=[], group=group.summary())
    return {"revision": state.revision, f"{word}ne": group.summary()}
