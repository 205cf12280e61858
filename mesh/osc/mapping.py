"""OSC mappings: the `input_mappings` records of kind "osc", read from state.

A mapping (key `input_mappings/<name>`) is

    {"kind": "osc", "address": "/mixer/fader1", "target": "parameters/master/brightness",
     "in_min": 0, "in_max": 1, "out_min": 0, "out_max": 100, "description": "master"}

- `address`: the OSC address (a plain path: no pattern characters);
- `target`: the key the value goes to (any registered component but
  input_mappings itself);
- range scaling: a number `x` received is clamped to [in_min, in_max] and
  mapped linearly onto [out_min, out_max]; values sent out are mapped back.
  in_* default to 0..1 when out_* are given; out_* default to in_* (clamping
  only). Without any of them numbers pass unchanged;
- `description` (optional): OSCQuery's DESCRIPTION.

The OSC type of a mapping (OSCQuery's TYPE) comes from the target's
component schema: integer "i", boolean "T", string "s", anything else "f".

Several mappings may share an address (one fader driving several keys) or
a target (a key reported at several addresses). A record that is not a
usable OSC mapping is left out of the table with a reason (`Table.refused`),
which the bridge logs once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mesh.state.components import Registry, UnknownComponent

PREFIX = "input_mappings/"
# Characters of OSC address patterns: never part of a method's address.
_PATTERN = frozenset(" #*,?[]{}")
MAX_ADDRESS = 256


class ValueRefused(ValueError):
    """An OSC argument a mapping cannot turn into a value."""


@dataclass(frozen=True, slots=True)
class OscMapping:
    name: str
    address: str
    target: str
    tag: str  # "f", "i", "T" or "s"
    in_min: float | None = None
    in_max: float | None = None
    out_min: float | None = None
    out_max: float | None = None
    description: str = ""
    minimum: float | None = None  # the target schema's bounds (for RANGE without scaling)
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None  # the target schema's enum

    @property
    def scaled(self) -> bool:
        return any(v is not None for v in (self.in_min, self.in_max, self.out_min, self.out_max))

    def _ranges(self) -> tuple[float, float, float, float]:
        lo = 0.0 if self.in_min is None else self.in_min
        hi = 1.0 if self.in_max is None else self.in_max
        if self.out_min is None and self.out_max is None:
            return lo, hi, lo, hi
        olo = lo if self.out_min is None else self.out_min
        ohi = hi if self.out_max is None else self.out_max
        return lo, hi, olo, ohi

    def osc_range(self) -> tuple[float | None, float | None]:
        """(MIN, MAX) of the values a client sends (OSCQuery RANGE)."""
        if self.scaled:
            lo, hi, _, _ = self._ranges()
            return min(lo, hi), max(lo, hi)
        return self.minimum, self.maximum

    def to_value(self, args: tuple[Any, ...]) -> Any:
        """The target's value for a message's arguments (the first one
        counts). Raises ValueRefused."""
        if not args:
            raise ValueRefused(f"{self.address} needs an argument")
        x = args[0]
        if self.tag == "s":
            if not isinstance(x, str):
                raise ValueRefused(f"{self.address} takes a string, got {_osc_kind(x)}")
            return x
        if self.tag == "T":
            if isinstance(x, bool):
                return x
            if isinstance(x, (int, float)) and math.isfinite(x):
                return x != 0
            raise ValueRefused(f"{self.address} takes T/F or a number, got {_osc_kind(x)}")
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ValueRefused(f"{self.address} takes a number, got {_osc_kind(x)}")
        if not math.isfinite(x):
            raise ValueRefused(f"{self.address}: {x} is not a finite number")
        value: float | int = x
        if self.scaled:
            lo, hi, olo, ohi = self._ranges()
            t = (min(max(x, min(lo, hi)), max(lo, hi)) - lo) / (hi - lo)
            value = float(f"{olo + t * (ohi - olo):.12g}")  # 0.26 * 100 is 26.0, not 26.000000000000004
        if self.tag == "i":
            return round(value)
        return float(value)

    def to_osc(self, value: Any) -> list[tuple[Any, str]] | None:
        """The OSC arguments (value, tag) that report `value` at this
        mapping's address, or None if the value does not fit it."""
        if self.tag == "s":
            return [(value, "s")] if isinstance(value, str) else None
        if self.tag == "T":
            if isinstance(value, bool):
                return [(value, "T" if value else "F")]
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        x: float = value
        if self.scaled:
            lo, hi, olo, ohi = self._ranges()
            if ohi == olo:
                x = lo
            else:
                t = (min(max(value, min(olo, ohi)), max(olo, ohi)) - olo) / (ohi - olo)
                x = float(f"{lo + t * (hi - lo):.12g}")
        if self.tag == "i":
            n = round(x)
            return [(n, "i" if -(2**31) <= n < 2**31 else "h")]
        return [(float(x), "f")]

    def osc_value(self, value: Any) -> Any:
        """The JSON form of `value` as a client of this address sees it."""
        args = self.to_osc(value)
        return None if args is None else args[0][0]


def _osc_kind(x: Any) -> str:
    if isinstance(x, bool):
        return "T/F"
    if isinstance(x, int):
        return "an integer"
    if isinstance(x, float):
        return "a float"
    if isinstance(x, str):
        return "a string"
    if x is None:
        return "nil"
    if isinstance(x, list):
        return "an array"
    return type(x).__name__


def _number(doc: dict[str, Any], name: str) -> float | None:
    v = doc.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a number")
    return float(v)


def parse_mapping(name: str, doc: Any, registry: Registry) -> OscMapping | None:
    """The OSC mapping stored at `name`, None if it is of another kind.
    Raises ValueError saying why a record of kind "osc" is unusable."""
    if not isinstance(doc, dict) or doc.get("kind") != "osc":
        return None
    address = doc.get("address")
    if not isinstance(address, str) or not address.startswith("/") or len(address) > MAX_ADDRESS:
        raise ValueError("address must be an OSC address starting with / (at most 256 characters)")
    if _PATTERN & set(address) or "//" in address or (address.endswith("/") and address != "/"):
        raise ValueError(f"address {address!r} may not contain pattern characters, spaces or empty parts")
    if address == "/":
        raise ValueError("address may not be / (the root of the OSCQuery tree)")
    target = doc.get("target")
    if not isinstance(target, str):
        raise ValueError("target must be a key (component/name)")
    try:
        comp = registry.component_of(target)
    except UnknownComponent as exc:
        raise ValueError(str(exc)) from None
    if target.startswith(PREFIX):
        raise ValueError("target may not be an input mapping")
    in_min, in_max = _number(doc, "in_min"), _number(doc, "in_max")
    out_min, out_max = _number(doc, "out_min"), _number(doc, "out_max")
    lo = 0.0 if in_min is None else in_min
    hi = 1.0 if in_max is None else in_max
    if any(v is not None for v in (in_min, in_max, out_min, out_max)) and lo == hi:
        raise ValueError("in_min and in_max must differ")
    types = set(comp.schema.types)
    if types == {"integer"}:
        tag = "i"
    elif types == {"boolean"}:
        tag = "T"
    elif types == {"string"}:
        tag = "s"
    elif types <= {"number", "integer"} or "any" in types:
        tag = "f"
    else:
        raise ValueError(f"target component {comp.name} holds {'/'.join(sorted(types))} values, not one OSC value")
    description = doc.get("description")
    if not isinstance(description, str):
        description = f"{target}: {comp.description}" if comp.description else target
    return OscMapping(
        name,
        address,
        target,
        tag,
        in_min,
        in_max,
        out_min,
        out_max,
        description[:1024],
        comp.schema.minimum,
        comp.schema.maximum,
        comp.schema.enum,
    )


@dataclass(frozen=True)
class Table:
    """Every usable OSC mapping, by address and by target."""

    by_address: dict[str, tuple[OscMapping, ...]]
    by_target: dict[str, tuple[OscMapping, ...]]
    refused: dict[str, str]  # mapping key -> why it is left out

    @classmethod
    def build(cls, records: Iterable[tuple[str, Any]], registry: Registry) -> Table:
        by_address: dict[str, list[OscMapping]] = {}
        by_target: dict[str, list[OscMapping]] = {}
        refused: dict[str, str] = {}
        for name, doc in records:
            try:
                m = parse_mapping(name, doc, registry)
            except ValueError as exc:
                refused[name] = str(exc)
                continue
            if m is None:
                continue
            by_address.setdefault(m.address, []).append(m)
            by_target.setdefault(m.target, []).append(m)
        return cls(
            {k: tuple(v) for k, v in by_address.items()},
            {k: tuple(v) for k, v in by_target.items()},
            refused,
        )

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_address.values())
