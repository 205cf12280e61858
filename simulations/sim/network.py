"""The simulated network: drops, delays (hence reorders), duplicates, and
partitions of any subset of nodes, symmetric or one-way.

Messages go through `Message.to_dict()` / `Message.from_dict()` with
probability `p_codec`, so the wire codec is exercised by every run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from mesh.raft import Message
from simulations.sim.options import Options
from simulations.sim.world import World


@dataclass(slots=True)
class NetStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    delayed: int = 0
    blocked: int = 0


@dataclass(slots=True)
class Cut:
    """One active partition: a set of directed links that carry nothing."""

    kind: str
    links: frozenset[tuple[str, str]]
    label: str


@dataclass(slots=True)
class Network:
    world: World
    opts: Options
    deliver: Callable[[Message], None]
    stats: NetStats = field(default_factory=NetStats)
    cuts: list[Cut] = field(default_factory=list)
    blocked: set[tuple[str, str]] = field(default_factory=set)
    # Off during the liveness phase.
    faulty: bool = True

    def send(self, m: Message) -> bool:
        """Queue `m`; returns False if it was lost at once."""
        st = self.stats
        st.sent += 1
        rng = self.world.rng
        o = self.opts
        if (m.frm, m.to) in self.blocked:
            st.blocked += 1
            return False
        if self.faulty and o.p_drop and rng.random() < o.p_drop:
            st.dropped += 1
            return False
        if rng.random() < o.p_codec:
            # Through the wire codec, as bytes (orjson, as the transport does).
            m = Message.from_dict(orjson.loads(orjson.dumps(m.to_dict())))
        self.world.after(self._delay(), self._arrive, m)
        if self.faulty and o.p_duplicate and rng.random() < o.p_duplicate:
            st.duplicated += 1
            self.world.after(self._delay(), self._arrive, m)
        return True

    def _delay(self) -> int:
        o = self.opts
        rng = self.world.rng
        if self.faulty and o.p_long_delay and rng.random() < o.p_long_delay:
            self.stats.delayed += 1
            return rng.randrange(o.delay_min_us, o.long_delay_max_us)
        return o.delay_min_us + int(rng.expovariate(1.0 / o.delay_mean_us))

    def _arrive(self, m: Message) -> None:
        if (m.frm, m.to) in self.blocked:
            # The partition started while the message was in flight.
            self.stats.blocked += 1
            return
        self.stats.delivered += 1
        self.deliver(m)

    # -- partitions ------------------------------------------------------------

    def cut(self, kind: str, links: set[tuple[str, str]], label: str) -> Cut:
        c = Cut(kind, frozenset(links), label)
        self.cuts.append(c)
        self.blocked |= c.links
        return c

    def heal(self, c: Cut) -> None:
        if c in self.cuts:
            self.cuts.remove(c)
            self.blocked = set()
            for other in self.cuts:
                self.blocked |= other.links

    def heal_all(self) -> None:
        self.cuts.clear()
        self.blocked = set()
