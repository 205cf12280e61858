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


def check_key(ops: list[Op], initial: tuple[bool, Any, int] = ABSENT, budget: int = 2_000_000) -> Verdict:
    """Is this one key's history linearizable?"""
    key = ops[0].key if ops else ""
    ops = sorted(ops, key=lambda o: o.invoke)
    n = len(ops)
    inf = float("inf")
    completes = [o.complete if o.complete is not None else inf for o in ops]
    required = frozenset(i for i, o in enumerate(ops) if o.complete is not None)
    seen: set[tuple[frozenset[int], tuple[bool, Any, int]]] = set()
    explored = 0
    order: list[int] = []

    def freeze(state: tuple[bool, Any, int]) -> tuple[bool, Any, int]:
        exists, value, version = state
        return (exists, _hashable(value), version)

    def search(done: frozenset[int], state: tuple[bool, Any, int]) -> bool:
        nonlocal explored
        if required <= done:
            return True
        memo = (done, freeze(state))
        if memo in seen:
            return False
        explored += 1
        if explored > budget:
            raise SearchBudgetExceeded(f"key {key!r}: more than {budget} states")
        # Anything invoked before the earliest completion of a pending op
        # could be next; nothing invoked after it can precede that op.
        horizon = min(completes[i] for i in range(n) if i not in done)
        for i in range(n):
            if i in done or ops[i].invoke > horizon:
                continue
            new_state, result, value, version = _apply(state, ops[i])
            if not _matches(ops[i], result, value, version):
                continue
            order.append(ops[i].id)
            if search(done | {i}, new_state):
                return True
            order.pop()
        seen.add(memo)
        return False

    ok = search(frozenset(), initial)
    detail = "" if ok else _explain(ops)
    return Verdict(ok, key, detail, explored, list(order) if ok else [])


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


def _explain(ops: list[Op]) -> str:
    lines = ["no linearization exists for:"]
    for o in ops:
        done = "unknown" if o.complete is None else f"{o.complete:.3f} {o.result} v={o.version}"
        cond = "" if o.expected_version is None else f" if v={o.expected_version}"
        arg = "" if o.kind == "delete" else f" {o.value!r}"
        lines.append(f"  #{o.id} {o.kind}{arg}{cond} [{o.invoke:.3f} .. {done}]")
    return "\n".join(lines)
