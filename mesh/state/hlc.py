"""Hybrid logical clock (Kulkarni et al.), pure: the caller passes physical
milliseconds in; nothing here reads a clock.

An `HLC` is `(wall, logical, node)`: `wall` is the largest physical time (ms)
seen, `logical` counts events within that millisecond, `node` breaks ties so
two different nodes never produce equal stamps. Ordering is by that tuple.

The node keeps one `HLC`: before stamping a command it calls
`clock = clock.tick(physical_ms)` and, on seeing the applied state's clock
(`HanaState.clock`) or a peer's stamp, `clock = clock.receive(other, physical_ms)`.
So a change made after seeing another change always carries a larger stamp,
whatever the machines' clock skew; that is what makes last-writer-wins by HLC
mean "the later decision wins" rather than "the faster clock wins".

Encoding: `"WWWWWWWWWWWWWWW.LLLLLL.node"` (15 and 6 zero-padded digits), so the
string order equals the HLC order for any real time and fewer than a million
events per millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass

_WALL_DIGITS = 15
_LOGICAL_DIGITS = 6


@dataclass(frozen=True, order=True, slots=True)
class HLC:
    wall: int = 0
    logical: int = 0
    node: str = ""

    def __post_init__(self) -> None:
        if type(self.wall) is not int or type(self.logical) is not int or self.wall < 0 or self.logical < 0:
            raise ValueError("HLC wall and logical must be non-negative integers")
        if not isinstance(self.node, str):
            raise ValueError("HLC node must be a string")

    def tick(self, physical_ms: int, node: str | None = None) -> HLC:
        """A local or send event at `physical_ms`."""
        node = self.node if node is None else node
        if physical_ms > self.wall:
            return HLC(physical_ms, 0, node)
        return HLC(self.wall, self.logical + 1, node)

    def receive(self, remote: HLC, physical_ms: int, node: str | None = None) -> HLC:
        """Merge a stamp seen from elsewhere; the result is after both."""
        node = self.node if node is None else node
        wall = max(self.wall, remote.wall, physical_ms)
        if wall == self.wall == remote.wall:
            logical = max(self.logical, remote.logical) + 1
        elif wall == self.wall:
            logical = self.logical + 1
        elif wall == remote.wall:
            logical = remote.logical + 1
        else:
            logical = 0
        return HLC(wall, logical, node)

    def encode(self) -> str:
        return f"{self.wall:0{_WALL_DIGITS}d}.{self.logical:0{_LOGICAL_DIGITS}d}.{self.node}"

    @classmethod
    def decode(cls, text: object) -> HLC:
        if not isinstance(text, str):
            raise ValueError("an HLC stamp is a string")
        parts = text.split(".", 2)
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            raise ValueError(f"invalid HLC stamp {text!r}")
        return cls(int(parts[0]), int(parts[1]), parts[2])


def compare(a: HLC, b: HLC) -> int:
    """-1, 0 or 1 as a is before, equal to or after b."""
    return (a > b) - (a < b)


def encode(h: HLC) -> str:
    return h.encode()


def decode(text: object) -> HLC:
    return HLC.decode(text)
