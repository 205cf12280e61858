"""The seeded world: one PRNG, a virtual clock and an event heap.

Every choice of a run comes from `World.rng` (seeded once), and time moves
only when the next event is popped, so a run is a pure function of its seed
and options. Time is an integer number of microseconds.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from typing import Any

MS = 1000
SECOND = 1000 * MS


class Trace:
    """One line per event: time, node, term, index, text. Keeps the last
    `keep` lines (all of them when `full`)."""

    def __init__(self, keep: int = 40, full: bool = False) -> None:
        self.full = full
        self.lines: deque[tuple[int, str, int, int, str]] = deque(maxlen=None if full else keep)

    def add(self, now: int, node: str, term: int, index: int, text: str) -> None:
        self.lines.append((now, node, term, index, text))

    def render(self, last: int | None = None) -> list[str]:
        lines = list(self.lines)
        if last is not None:
            lines = lines[-last:]
        return [format_line(*line) for line in lines]


def format_line(now: int, node: str, term: int, index: int, text: str) -> str:
    return f"{now / MS:10.3f}ms {node:>5} term={term:<3} idx={index:<5} {text}"


class BudgetExhausted(Exception):
    """The run processed more events than its budget (a message storm)."""


class World:
    def __init__(self, seed: int, trace: Trace, max_events: int = 500_000) -> None:
        self.max_events = max_events
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0
        self.trace = trace
        self._heap: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.events = 0

    def at(self, when: int, fn: Callable[..., None], *args: Any) -> None:
        if when < self.now:
            when = self.now
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, fn, args))

    def after(self, delay: int, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + max(0, int(delay)), fn, *args)

    def run_until(self, deadline: int, stop: Callable[[], bool] | None = None) -> None:
        """Pop events up to `deadline` (or until `stop()` holds)."""
        heap = self._heap
        while heap and heap[0][0] <= deadline:
            when, _, fn, args = heapq.heappop(heap)
            self.now = when
            self.events += 1
            if self.events > self.max_events:
                raise BudgetExhausted(f"more than {self.max_events} events by {when / MS:.1f} ms (a message storm?)")
            fn(*args)
            if stop is not None and stop():
                return
        self.now = max(self.now, deadline)

    def fork_rng(self) -> random.Random:
        """A child PRNG (for a node's election jitter), drawn from the world's."""
        return random.Random(self.rng.getrandbits(64))
