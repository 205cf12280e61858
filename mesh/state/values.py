"""JSON values: the one check every value passes before it may enter the
state, and a canonical encoder that cannot fail on what is in the state.

`check_value(value)` walks a value with an explicit stack (no recursion, so
no input can exhaust Python's stack) and refuses, with a `CommandError`:
- `too_deep` (400): containers nested more than `MAX_DEPTH` deep;
- `invalid_value` (400): anything that is not JSON (a non-string object key,
  NaN or an infinity, an integer outside 64 bits, another Python type);
- `too_large` (413): more than `MAX_VALUE_BYTES` encoded.

Why the depth limit matters: orjson *reads* up to 1024 levels but *writes*
at most 254, and a snapshot wraps each value in a few levels of its own. A
value between those limits was accepted, committed, and then made every
snapshot fail on every node, for good (issue 12, finding 1). orjson.loads
accepts nothing else that orjson.dumps refuses: it refuses lone surrogates,
invalid UTF-8, NaN and infinities (1e400) itself, and reads integers beyond
64 bits as floats.

`canonical(doc)` is orjson with sorted keys; should orjson ever refuse (a
value deeper than it can write, loaded from an old snapshot written before
this check existed), it falls back to an iterative encoder giving the same
bytes, so `snapshot()` always succeeds.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from mesh.state.kv import CommandError
from mesh.state.limits import MAX_DEPTH, MAX_MESSAGE_CHARS, MAX_VALUE_BYTES

_SCALARS = (str, int, bool, type(None))
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1


def _scalar_problem(x: Any) -> str | None:
    t = type(x)
    if t is str or t is bool or x is None:
        return None
    if t is int:
        return None if _INT_MIN <= x <= _INT_MAX else "an integer outside 64 bits"
    if t is float:
        return None if math.isfinite(x) else "NaN or an infinity"
    return f"a {t.__name__}, which is not JSON"


def _text_ok(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def json_depth(value: Any, stop_above: int | None = None) -> int:
    """Containers nested in `value` (a scalar: 0). Iterative. With
    `stop_above`, returns as soon as the depth is known to exceed it."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        t = type(v)
        if t is dict:
            children: Any = v.values()
        elif t is list:
            children = v
        else:
            continue
        if d > deepest:
            deepest = d
            if stop_above is not None and d > stop_above:
                return d
        for x in children:
            tx = type(x)
            if tx is dict or tx is list:
                stack.append((x, d + 1))
    return deepest


def check_value(
    value: Any,
    where: str = "value",
    max_bytes: int | None = MAX_VALUE_BYTES,
    max_depth: int = MAX_DEPTH,
    strings: bool = False,
) -> int:
    """Refuse what must not enter the state; return the encoded size (0
    when `max_bytes` is None: then the size is not measured). With
    `strings`, also refuse strings that are not Unicode text (lone
    surrogates): orjson.loads never makes one, a Python caller can."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    problem = None
    while stack:
        v, d = stack.pop()
        t = type(v)
        if t is dict:
            if d > max_depth:
                raise CommandError("too_deep", f"{where} is nested more than {max_depth} deep")
            for k, x in v.items():
                if type(k) is not str or (strings and not _text_ok(k)):
                    raise CommandError("invalid_value", f"{where} has an object key that is not a string of text")
                tx = type(x)
                if tx is dict or tx is list:
                    stack.append((x, d + 1))
                elif tx is str:
                    if strings and not _text_ok(x):
                        raise CommandError("invalid_value", f"{where} holds a string that is not text")
                elif (problem := _scalar_problem(x)) is not None:
                    raise CommandError("invalid_value", f"{where} holds {problem}")
        elif t is list:
            if d > max_depth:
                raise CommandError("too_deep", f"{where} is nested more than {max_depth} deep")
            for x in v:
                tx = type(x)
                if tx is dict or tx is list:
                    stack.append((x, d + 1))
                elif tx is str:
                    if strings and not _text_ok(x):
                        raise CommandError("invalid_value", f"{where} holds a string that is not text")
                elif (problem := _scalar_problem(x)) is not None:
                    raise CommandError("invalid_value", f"{where} holds {problem}")
        elif t is str:
            if strings and not _text_ok(v):
                raise CommandError("invalid_value", f"{where} is a string that is not text")
        elif (problem := _scalar_problem(v)) is not None:
            raise CommandError("invalid_value", f"{where} is {problem}")
    if max_bytes is None:
        return 0
    size = len(orjson.dumps(value))
    if size > max_bytes:
        raise CommandError("too_large", f"{where} is {size} bytes encoded (limit {max_bytes})")
    return size


# -- canonical encoding ------------------------------------------------------------


def canonical(doc: Any) -> bytes:
    """Compact JSON with sorted keys (orjson's OPT_SORT_KEYS bytes), for any
    JSON document however deep."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return _canonical_iterative(doc)


def _canonical_iterative(doc: Any) -> bytes:
    out: list[bytes] = []
    # A work stack of things to emit: a value to encode, or literal bytes.
    work: list[Any] = [(doc,)]
    while work:
        item = work.pop()
        if type(item) is bytes:
            out.append(item)
            continue
        v = item[0]
        t = type(v)
        if t is dict:
            keys = sorted(v)
            if not keys:
                out.append(b"{}")
                continue
            out.append(b"{")
            work.append(b"}")
            for i in range(len(keys) - 1, -1, -1):
                k = keys[i]
                work.append((v[k],))
                work.append((b"," if i else b"") + orjson.dumps(k) + b":")
        elif t is list:
            if not v:
                out.append(b"[]")
                continue
            out.append(b"[")
            work.append(b"]")
            for i in range(len(v) - 1, -1, -1):
                work.append((v[i],))
                if i:
                    work.append(b",")
        elif t is int and not _INT_MIN <= v <= _INT_MAX:
            out.append(str(v).encode())
        else:
            out.append(orjson.dumps(v))
    return b"".join(out)


# -- text for messages ------------------------------------------------------------------


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(x: Any, limit: int = 80) -> str:
    """A short, safe description of any input for an error message: a
    string or number as it is (cut), anything else by its JSON type. Never
    repr() of a container (which recurses, and can be huge)."""
    if isinstance(x, str):
        return repr(clip(x, limit))
    if x is None or isinstance(x, (bool, int, float)):
        return clip(repr(x), limit)
    if isinstance(x, dict):
        return "an object"
    if isinstance(x, list):
        return "a list"
    return f"a {type(x).__name__}"
