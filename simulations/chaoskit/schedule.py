"""A fixed fault schedule for a chaos run (`--schedule FILE`).

Instead of drawing faults from the seed, a run can follow a list written
by hand (an installer's "pull this cable at 10 s for 5 s") or the
`schedule.json` an earlier run wrote, which holds the faults it actually
injected with every target and amount resolved: replaying it injects the
same faults even where the seed would now draw different ones (the seed's
draws depend on which node happened to be controller).

    {"faults": [
      {"at": 5, "kind": "isolate_leader", "hold": 4},
      {"at": 12, "kind": "latency", "hold": 5, "nodes": ["n1", "n2"], "delay_ms": 120, "jitter_ms": 20},
      {"at": 20, "kind": "kill", "hold": 3, "nodes": ["controller"]}
    ]}

`at` is seconds after the workload starts, `hold` how long the fault lasts.
Faults come one at a time, in order: a fault may not start before the one
before it has ended. Whatever an entry leaves out (a target, an amount) is
drawn from the seed. Per kind:

- kill, torn_tail, pause, membership, asymmetric, isolate_leader: `nodes`
  is one node id or "controller" (the controller when the fault starts).
  torn_tail takes `tear`: "record" (a record cut short) or "zeros";
  asymmetric takes `direction`: "cannot_send" or "cannot_hear".
- partition: `nodes` is one side (cut off, both ways, from the others).
- bridge: `nodes` is the bridge; `sides` optionally the two halves.
- latency, loss: `nodes` [] for every link, [a] for a's links, [a, b]
  for the two links between a and b; latency takes `delay_ms` and
  `jitter_ms`, loss takes `loss` (a fraction, 0 < loss < 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

CONTROLLER = "controller"

# Kinds whose `nodes` names exactly one node (or the controller).
ONE_NODE = frozenset({"kill", "torn_tail", "pause", "membership", "asymmetric", "isolate_leader", "bridge"})
LINK_SCOPED = frozenset({"latency", "loss"})

# Options each kind takes besides at, kind, hold and nodes.
OPTIONS: dict[str, frozenset[str]] = {
    "kill": frozenset(),
    "torn_tail": frozenset({"tear"}),
    "pause": frozenset(),
    "partition": frozenset(),
    "isolate_leader": frozenset(),
    "bridge": frozenset({"sides"}),
    "asymmetric": frozenset({"direction"}),
    "latency": frozenset({"delay_ms", "jitter_ms"}),
    "loss": frozenset({"loss"}),
    "membership": frozenset(),
}
# The kinds, as faults.FAULT_KINDS (a test keeps the two the same; this
# module cannot import faults, which imports it).
KINDS = tuple(OPTIONS)
# Kinds for a TLS run only (--tls), never drawn unless asked for: rotate_ca
# rolls the cluster CA on the signer and waits (at most `timeout` seconds,
# default faults.ROLL_TIMEOUT) for the roll to end; its `nodes` are ignored.
TLS_OPTIONS: dict[str, frozenset[str]] = {"rotate_ca": frozenset({"timeout"})}
ALL_OPTIONS = {**OPTIONS, **TLS_OPTIONS}
ALL_KINDS = tuple(ALL_OPTIONS)
TEARS = ("record", "zeros")
DIRECTIONS = ("cannot_send", "cannot_hear")


# Times are written to the millisecond; sums of them may be off by a float's
# last bit, which must not make two faults overlap.
EPSILON = 1e-6


class ScheduleError(ValueError):
    """A schedule file that cannot be followed; the message says where."""


@dataclass(frozen=True)
class ScheduledFault:
    at: float
    kind: str
    hold: float
    # None: drawn from the seed when the fault starts.
    nodes: tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"at": self.at, "kind": self.kind, "hold": self.hold}
        if self.nodes is not None:
            doc["nodes"] = list(self.nodes)
        doc.update(self.options)
        return doc


def load_schedule(path: Path, node_ids: list[str], duration: float) -> list[ScheduledFault]:
    """Read and check a schedule file; ScheduleError names the first problem."""
    try:
        doc = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ScheduleError(f"{path}: cannot read: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ScheduleError(f"{path}: not JSON: {exc}") from None
    return parse_schedule(doc, node_ids, duration, str(path))


def parse_schedule(doc: Any, node_ids: list[str], duration: float, source: str = "schedule") -> list[ScheduledFault]:
    if not isinstance(doc, dict) or set(doc) != {"faults"} or not isinstance(doc["faults"], list):
        raise ScheduleError(f'{source}: expected an object {{"faults": [...]}}')
    if not doc["faults"]:
        raise ScheduleError(f"{source}: the schedule has no faults")
    out: list[ScheduledFault] = []
    for i, entry in enumerate(doc["faults"], start=1):
        where = f"{source}: fault {i}"
        fault = _parse_entry(entry, node_ids, where)
        where = f"{where} ({fault.kind})"
        if fault.at + fault.hold > duration + EPSILON:
            raise ScheduleError(f"{where} ends at {fault.at + fault.hold:g} s, after the run's {duration:g} s")
        if out and fault.at < out[-1].at + out[-1].hold - EPSILON:
            prev = out[-1]
            raise ScheduleError(
                f"{where} starts at {fault.at:g} s, before fault {i - 1} ends ({prev.at + prev.hold:g} s):"
                " faults come one at a time"
            )
        out.append(fault)
    return out


def _parse_entry(entry: Any, node_ids: list[str], where: str) -> ScheduledFault:
    if not isinstance(entry, dict):
        raise ScheduleError(f"{where}: expected an object, got {type(entry).__name__}")
    kind = entry.get("kind")
    if kind not in ALL_KINDS:
        raise ScheduleError(f"{where}: kind must be one of {', '.join(ALL_KINDS)}, got {kind!r}")
    where = f"{where} ({kind})"
    unknown = set(entry) - {"at", "kind", "hold", "nodes"} - ALL_OPTIONS[kind]
    if unknown:
        raise ScheduleError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    at = _seconds(entry.get("at"), where, "at", allow_zero=True)
    hold = _seconds(entry.get("hold"), where, "hold", allow_zero=False)
    nodes = _nodes(entry.get("nodes"), kind, node_ids, where) if "nodes" in entry else None
    options = {k: entry[k] for k in ALL_OPTIONS[kind] if k in entry}
    _check_options(kind, options, nodes, node_ids, where)
    return ScheduledFault(at, kind, hold, nodes, options)


def _seconds(value: Any, where: str, name: str, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScheduleError(f"{where}: {name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ScheduleError(f"{where}: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _nodes(value: Any, kind: str, node_ids: list[str], where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise ScheduleError(f"{where}: nodes must be a list of node ids, got {value!r}")
    allowed = set(node_ids) | ({CONTROLLER} if kind in ONE_NODE else set())
    bad = [n for n in value if n not in allowed]
    if bad:
        raise ScheduleError(f"{where}: unknown node(s) {', '.join(bad)}; the run's nodes are {', '.join(node_ids)}")
    if len(set(value)) != len(value):
        raise ScheduleError(f"{where}: a node is named twice in {value!r}")
    if kind in ONE_NODE and len(value) != 1:
        raise ScheduleError(f'{where}: nodes must name exactly one node (or "{CONTROLLER}"), got {value!r}')
    if kind in LINK_SCOPED and len(value) > 2:
        raise ScheduleError(f"{where}: nodes must be [] (every link), [a] (a's links) or [a, b], got {value!r}")
    if kind == "partition" and not 0 < len(value) < len(node_ids):
        raise ScheduleError(f"{where}: nodes is one side of the partition: some nodes but not all, got {value!r}")
    return tuple(value)


def _check_options(
    kind: str, options: dict[str, Any], nodes: tuple[str, ...] | None, node_ids: list[str], where: str
) -> None:
    if "tear" in options and options["tear"] not in TEARS:
        raise ScheduleError(f"{where}: tear must be one of {', '.join(TEARS)}, got {options['tear']!r}")
    if "direction" in options and options["direction"] not in DIRECTIONS:
        raise ScheduleError(f"{where}: direction must be one of {', '.join(DIRECTIONS)}, got {options['direction']!r}")
    for name in ("delay_ms", "jitter_ms"):
        if name in options:
            value = options[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10_000:
                raise ScheduleError(f"{where}: {name} must be between 0 and 10000, got {value!r}")
    if "timeout" in options:
        value = options["timeout"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 600:
            raise ScheduleError(f"{where}: timeout must be between 0 and 600 seconds, got {value!r}")
    if "loss" in options:
        value = options["loss"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ScheduleError(f"{where}: loss is a fraction, 0 < loss < 1, got {value!r}")
    if "sides" in options:
        _check_sides(options["sides"], nodes, node_ids, where)


def _check_sides(sides: Any, nodes: tuple[str, ...] | None, node_ids: list[str], where: str) -> None:
    if nodes is None or nodes == (CONTROLLER,):
        raise ScheduleError(f"{where}: sides needs the bridge named in nodes (a node id)")
    ok_shape = (
        isinstance(sides, list)
        and len(sides) == 2
        and all(isinstance(s, list) and s and all(isinstance(n, str) for n in s) for s in sides)
    )
    if not ok_shape:
        raise ScheduleError(f"{where}: sides must be two non-empty lists of node ids, got {sides!r}")
    named = sides[0] + sides[1] + list(nodes)
    if sorted(named) != sorted(node_ids):
        raise ScheduleError(f"{where}: the bridge and the two sides must name every node once, got {sides!r}")
