"""Linearizability checker for key-value histories recorded against real nodes.

Each key is a register with versions, as in shared/API.md: `put` (optionally
conditional on `expected_version`, 0 meaning "must not exist"), `delete`, and
linearizable `get`. Keys are independent (linearizability is compositional),
so each key's sub-history is checked on its own.

An operation has an invocation time, and either a completion time with the
result the client saw, or no completion (timeout, 504, connection lost): its
outcome is unknown, so it may have taken effect at any point after its
invocation, or never. The search is Wing and Gong's, with Lowe's memoization
of (set of linearized operations, register state): repeatedly pick an
operation that could come first (invoked before every pending completed
operation's completion), apply it to the model, and check that the result
the client saw matches; backtrack on mismatch. A history is linearizable
when every completed operation can be placed this way.

Results compared per operation kind:
- put ok: the version the node answered; put conflict: the conditional check
  failed against the model's version at that point.
- delete ok / not_found.
- get: found with (value, version), or not_found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ABSENT: tuple[bool, Any, int] = (False, None, 0)


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation on one key.

    kind: "put" | "delete" | "get". `complete` None means the outcome is
    unknown. `result` is "ok", "conflict" or "not_found" for completed
    operations; `version`/`value` are what the node answered (put: the new
    version; get: the value and version read).
    """

    id: int
    key: str
    kind: str
    invoke: float
    complete: float | None = None
    value: Any = None
    expected_version: int | None = None
    result: str | None = None
    version: int | None = None


@dataclass(slots=True)
class Verdict:
    ok: bool
    key: str = ""
    detail: str = ""
    explored: int = 0
    # A linearization of the key's operations when ok (ids in order).
    order: list[int] = field(default_factory=list)


class SearchBudgetExceeded(Exception):
    """The history is too concurrent to decide within the budget."""


def _apply(state: tuple[bool, Any, int], op: Op) -> tuple[tuple[bool, Any, int], str, Any, int]:
    """The model: (new state, result, value, version) of `op` on `state`."""
    exists, value, version = state
    if op.kind == "get":
        return state, ("ok" if exists else "not_found"), value, version
    if op.kind == "put":
        if op.expected_version is not None and op.expected_version != version:
            return state, "conflict", value, version
        new_version = version + 1 if exists else 1
        return (True, op.value, new_version), "ok", op.value, new_version
    if op.kind == "delete":
        if op.expected_version is not None and op.expected_version != version:
            return state, "conflict", value, version
        if not exists:
            return state, "not_found", None, 0
        return ABSENT, "ok", None, 0
    raise ValueError(f"unknown operation kind {op.kind!r}")


def _matches(op: Op, result: str, value: Any, version: int) -> bool:
    if op.complete is None:
        return True  # unknown outcome: whatever happened is allowed
    if op.result != result:
        return False
    if result != "ok":
        return True
    if op.kind == "put":
        return op.version is None or op.version == version
    if op.kind == "get":
        return op.value == value and (op.version is None or op.version == version)
    return True


class _Entry:
    """A call or return event in the doubly linked list of the search."""

    __slots__ = ("is_call", "match", "next", "op", "prev")

    def __init__(self, op: int, is_call: bool) -> None:
        self.op = op
        self.is_call = is_call
        self.match: _Entry | None = None  # a call's return event
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _event_list(ops: list[Op]) -> _Entry:
    """Call and return events in time order behind a sentinel head. At equal
    times calls come first (touching intervals count as concurrent); an
    operation of unknown outcome returns after everything."""
    inf = float("inf")
    events: list[tuple[float, int, int]] = []
    for i, o in enumerate(ops):
        events.append((o.invoke, 0, i))
        events.append((o.complete if o.complete is not None else inf, 1, i))
    events.sort()
    head = _Entry(-1, False)
    calls: dict[int, _Entry] = {}
    prev = head
    for _, kind, i in events:
        e = _Entry(i, kind == 0)
        if kind == 0:
            calls[i] = e
        else:
            calls[i].match = e
        prev.next, e.prev = e, prev
        prev = e
    return head


def _lift(call: _Entry) -> None:
    """Take a call and its return out of the list (they stay linked to their
    neighbours, so `_unlift` can put them back in LIFO order)."""
    ret = call.match
    assert call.prev is not None and ret is not None and ret.prev is not None
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Entry) -> None:
    ret = call.match
    assert call.prev is not None and ret is not None and ret.prev is not None
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


def check_key(ops: list[Op], initial: tuple[bool, Any, int] = ABSENT, budget: int = 2_000_000) -> Verdict:
    """Is this one key's history linearizable?

    The search walks a linked list of call and return events (Porcupine's
    formulation of Wing and Gong): at a call, try to linearize that
    operation next (it must match the model, and the pair (set of
    linearized operations, state) must be new); at a return, the operation
    it closes was not linearized in time, so undo the last choice. The set
    of linearized operations is a bit set (a Python int). Iterative, so a
    history of any length fits in the stack."""
    key = ops[0].key if ops else ""
    ops = sorted(ops, key=lambda o: o.invoke)
    head = _event_list(ops)
    required_left = sum(1 for o in ops if o.complete is not None)
    seen: set[tuple[int, tuple[bool, Any, int]]] = set()
    stack: list[tuple[_Entry, tuple[bool, Any, int]]] = []
    state = initial
    linearized = 0
    steps = 0
    best_depth, best_set = -1, 0
    entry = head.next
    ok = required_left == 0
    while not ok:
        if entry is None:
            break  # only reachable with an empty list
        if entry.is_call:
            steps += 1
            if steps > budget:
                raise SearchBudgetExceeded(f"key {key!r}: more than {budget} search steps")
            op = ops[entry.op]
            new_state, result, value, version = _apply(state, op)
            if _matches(op, result, value, version):
                new_set = linearized | (1 << entry.op)
                memo = (new_set, _freeze(new_state))
                if memo not in seen:
                    seen.add(memo)
                    stack.append((entry, state))
                    state, linearized = new_state, new_set
                    if op.complete is not None:
                        required_left -= 1
                    _lift(entry)
                    if required_left == 0:
                        ok = True
                        break
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # A return before its call was linearized: backtrack.
            if len(stack) > best_depth:
                best_depth, best_set = len(stack), linearized
            if not stack:
                break
            entry, state = stack.pop()
            linearized &= ~(1 << entry.op)
            if ops[entry.op].complete is not None:
                required_left += 1
            _unlift(entry)
            entry = entry.next
    order = [ops[e.op].id for e, _ in stack] if ok else []
    detail = "" if ok else _explain(ops, best_set)
    return Verdict(ok, key, detail, len(seen), order)


def _freeze(state: tuple[bool, Any, int]) -> tuple[bool, Any, int]:
    exists, value, version = state
    return (exists, _hashable(value), version)


def check(ops: Iterable[Op], budget: int = 2_000_000) -> list[Verdict]:
    """Check every key; returns one verdict per key (failures first)."""
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    verdicts = [check_key(key_ops, budget=budget) for _, key_ops in sorted(by_key.items())]
    return sorted(verdicts, key=lambda v: (v.ok, v.key))


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def _explain(ops: list[Op], best_set: int = 0, context: int = 12) -> str:
    """The operations around the first completed operation that no
    linearization could place (after the deepest partial linearization
    the search found), at most `context` on each side."""
    stuck = next(
        (i for i, o in sorted(enumerate(ops), key=lambda p: p[1].complete or 0.0)
         if o.complete is not None and not best_set >> i & 1),
        0,
    )  # fmt: skip
    lo, hi = max(0, stuck - context), min(len(ops), stuck + context + 1)
    lines = [f"no linearization exists; stuck at #{ops[stuck].id} (ops {lo}..{hi - 1} of {len(ops)} by invocation):"]
    for i in range(lo, hi):
        o = ops[i]
        done = "unknown" if o.complete is None else f"{o.complete:.3f} {o.result} v={o.version}"
        cond = "" if o.expected_version is None else f" if v={o.expected_version}"
        arg = "" if o.kind == "delete" else f" {o.value!r}"
        mark = "  <-" if i == stuck else ""
        lines.append(f"  #{o.id} {o.kind}{arg}{cond} [{o.invoke:.3f} .. {done}]{mark}")
    return "\n".join(lines)
