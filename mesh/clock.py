"""Time as the node core sees it: a protocol, and its in-memory twin.

The node core (mesh/node/core.py) reads no clock of its own: it asks the
`Clock` it was given. The asyncio runtime gives it the system's clocks
(`mesh.node.runtime.SystemClock`); the simulator gives it the simulated
world's time; tests give it a `ManualClock` and move time by hand. Nothing
here imports `time`, so the core stays a pure function of its inputs.
"""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (deadlines, the time
        a peer was last heard from). Only differences mean anything."""
        ...

    def wall_ms(self) -> int:
        """Wall-clock time in milliseconds since the epoch (the times stamped
        into commands and hybrid logical clocks). May jump, may be skewed
        between machines."""
        ...


class ManualClock:
    """The in-memory twin: time moves only when told (`advance`, `set`)."""

    def __init__(self, start: float = 0.0, wall_start_ms: int = 1_700_000_000_000) -> None:
        self._now = start
        self._wall_offset_ms = wall_start_ms - round(start * 1000)

    def monotonic(self) -> float:
        return self._now

    def wall_ms(self) -> int:
        return self._wall_offset_ms + round(self._now * 1000)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go backwards")
        self._now += seconds

    def set(self, now: float) -> None:
        if now < self._now:
            raise ValueError("a monotonic clock does not go backwards")
        self._now = now

    def skew_wall(self, ms: int) -> None:
        """Move the wall clock alone (as NTP or an operator may)."""
        self._wall_offset_ms += ms
