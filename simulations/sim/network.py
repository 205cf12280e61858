"""The simulated network: drops, delays (hence reorders), duplicates, and
partitions of any subset of nodes, symmetric or one-way.

Messages go through `Message.to_dict()` / `Message.from_dict()` with
probability `p_codec`, so the wire codec is exercised by every run.

`send` is the Raft-level simulator's; `carry` is the whole-node simulator's
link under `mesh.transport.memory.MemoryTransport` (every peer payload:
Raft messages, forwarded writes and their answers). It keeps what the TCP
transport promises and nothing more: a cut link refuses at once (False: the
transport knows it was never written), a random loss happens after the
message was accepted (written, then lost: the sender cannot tell), forwarded
writes and answers are never duplicated (a frame is delivered at most once;
Raft messages are, to stress the core), forwards go through the real frame
codec (MAC and all), and every snapshot stream ends with a report to its
sender.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from mesh.raft import Message, MessageType
from mesh.transport.codec import FrameDecoder, PeerPayload, SnapshotHeader, SnapshotResult, encode_message
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
    # Whole-node mode: told when a snapshot stream to `to` ended (from, to, ok).
    on_snapshot_done: Callable[[str, str, bool], None] | None = None

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

    def carry(self, m: PeerPayload) -> bool:
        """The whole-node link (see the module docstring)."""
        st = self.stats
        st.sent += 1
        rng = self.world.rng
        o = self.opts
        if (m.frm, m.to) in self.blocked:
            st.blocked += 1
            return False
        snapshot = type(m) is Message and m.type == MessageType.SNAP
        if self.faulty and o.p_drop and rng.random() < o.p_drop:
            st.dropped += 1
            if snapshot:
                self.world.after(self._delay(), self._snapshot_done, m, False)
            return True
        if rng.random() < o.p_codec:
            m = _through_codec(m)
        self.world.after(self._delay(), self._arrive, m)
        if type(m) is Message and not snapshot and self.faulty and o.p_duplicate and rng.random() < o.p_duplicate:
            st.duplicated += 1
            self.world.after(self._delay(), self._arrive, m)
        return True

    def _snapshot_done(self, m: Message, ok: bool) -> None:
        if self.on_snapshot_done is not None:
            self.on_snapshot_done(m.frm, m.to, ok)

    def latency(self) -> int:
        """How long something sent now takes to arrive (a draw, with the
        long delays of the faulty phase)."""
        return self._delay()

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
            if type(m) is Message and m.type == MessageType.SNAP:
                self._snapshot_done(m, False)
            return
        self.stats.delivered += 1
        self.deliver(m)
        if type(m) is Message and m.type == MessageType.SNAP and self.on_snapshot_done is not None:
            self.world.after(self.opts.delay_min_us, self._snapshot_done, m, True)

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


_SIM_SECRET = b"simulated-cluster-secret"


def _through_codec(m: PeerPayload) -> PeerPayload:
    """`m` as the receiver decodes it: a Raft message through its dict form
    (as `send` does), anything else through a whole authenticated frame."""
    if type(m) is Message:
        return Message.from_dict(orjson.loads(orjson.dumps(m.to_dict())))
    decoder = FrameDecoder(_SIM_SECRET, "sim")
    decoder.feed(encode_message(_SIM_SECRET, "sim", 1, m))
    frame = decoder.next_frame()
    assert frame is not None
    out = frame.message()
    assert not isinstance(out, (SnapshotHeader, SnapshotResult))
    return out
