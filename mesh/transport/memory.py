"""The in-memory twin of `TcpTransport` (see mesh/transport/base.py for the
contract both keep): no sockets, no asyncio, no clock of its own.

A `MemoryTransport` hands every outbound message to a `Link`, which carries
it to the destination's `deliver()` (now or later, or never) or refuses it
at once. The simulator's faulty network is one link; `MemoryNetwork` below
is a lossless one for unit tests. What the twin keeps of TCP's behaviour:

- only members are dialled once `set_members` named them: a message to
  anyone else is dropped and reported unreachable;
- a refused message is reported unreachable (a snapshot: a failed stream);
- a forwarded write refused at once was certainly never written anywhere,
  so `withdraw` says True for it; one the link accepted may have arrived
  (even if the link loses it later), so `withdraw` says False;
- `last_heard` is stamped with the given clock when a message arrives;
- a snapshot is "in flight" from its send until the link reports its
  outcome (`snapshot_done`);
- a node that goes down (a crash, a stop) closes its connections: the link
  reports it to each peer it was connected to (`peer_closed`), which tells
  its node (`on_peer_closed`) as TcpTransport does once a peer closed every
  connection; a partition or a paused node closes nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from mesh.clock import Clock
from mesh.raft.messages import Message, MessageType
from mesh.transport.codec import ForwardRequest, LiveFrame, LiveInterest, PeerPayload

# Forwarded writes remembered as never sent (as TcpTransport keeps them).
UNDELIVERED_KEPT = 4096


class Link(Protocol):
    def send(self, m: PeerPayload) -> bool:
        """Carry `m` towards `m.to`; False if refused at once (nothing was
        written: the peer is unreachable). Accepted messages are delivered
        later by calling the destination transport's `deliver`, or lost."""
        ...


class MemoryTransport:
    def __init__(self, node_id: str, link: Link, clock: Clock, api_address: str = "") -> None:
        self.node_id = node_id
        self.link = link
        self.clock = clock
        self.api_address = api_address
        self.on_message: Callable[[PeerPayload], None] = lambda m: None
        self.on_unreachable: Callable[[str], None] = lambda peer: None
        self.on_snapshot_status: Callable[[str, bool], None] = lambda peer, ok: None
        self.on_peer_closed: Callable[[str], None] = lambda peer: None
        self.last_heard: dict[str, float] = {}
        self.peer_api: dict[str, str] = {}
        self.closed = False
        self.sent = 0
        self.refused = 0
        self._addresses: dict[str, tuple[str, int]] = {}
        self._members: frozenset[str] | None = None
        self._undelivered: dict[tuple[str, int], None] = {}
        self._snapshots: dict[str, None] = {}

    # -- who is dialled --------------------------------------------------------

    def set_members(self, members: Iterable[str] | None) -> None:
        self._members = frozenset(members) if members is not None else None

    def dialable(self, peer: str) -> bool:
        return self._members is None or peer in self._members

    def set_peer(self, peer: str, address: tuple[str, int]) -> None:
        if peer != self.node_id:
            self._addresses[peer] = address

    def peers(self) -> dict[str, tuple[str, int]]:
        return dict(self._addresses)

    def snapshots_in_flight(self) -> list[str]:
        return list(self._snapshots)

    # -- sending ---------------------------------------------------------------

    def send(self, m: PeerPayload) -> None:
        if self.closed:
            return
        if m.to == self.node_id:
            raise ValueError(f"{self.node_id} sends a message to itself")
        if not self.dialable(m.to) or not self.link.send(m):
            self.refused += 1
            self._refuse(m)
            return
        self.sent += 1
        if type(m) is Message and m.type == MessageType.SNAP:
            self._snapshots[m.to] = None

    def _refuse(self, m: PeerPayload) -> None:
        if type(m) is LiveFrame or type(m) is LiveInterest:
            return  # best effort: never a reason to tell Raft a peer is unreachable
        if isinstance(m, ForwardRequest):
            self._undelivered[(m.frm, m.id)] = None
            while len(self._undelivered) > UNDELIVERED_KEPT:
                del self._undelivered[next(iter(self._undelivered))]
        if type(m) is Message and m.type == MessageType.SNAP:
            self.on_snapshot_status(m.to, False)
        else:
            self.on_unreachable(m.to)

    def withdraw(self, m: ForwardRequest) -> bool:
        key = (m.frm, m.id)
        if key in self._undelivered:
            del self._undelivered[key]
            return True
        return False

    def snapshot_done(self, peer: str, ok: bool) -> None:
        """The link's report: the snapshot stream to `peer` ended."""
        if self.closed:
            return
        self._snapshots.pop(peer, None)
        self.on_snapshot_status(peer, ok)

    def peer_closed(self, peer: str) -> None:
        """The link's report: `peer` closed every connection with this node
        (its process went down)."""
        if self.closed:
            return
        self.on_peer_closed(peer)

    # -- receiving ---------------------------------------------------------------

    def deliver(self, m: PeerPayload) -> None:
        """A message arrived for this node (called by the link)."""
        if self.closed:
            return
        self.last_heard[m.frm] = self.clock.monotonic()
        self.on_message(m)

    def close(self) -> None:
        self.closed = True


class MemoryNetwork:
    """A lossless link for unit tests: messages wait in one queue, in send
    order, until `deliver_all()`; `cut(a, b)` refuses a->b until `heal()`.
    A snapshot is reported delivered when it arrives."""

    def __init__(self) -> None:
        self.nodes: dict[str, MemoryTransport] = {}
        self.queue: deque[PeerPayload] = deque()
        self.blocked: set[tuple[str, str]] = set()

    def transport(self, node_id: str, clock: Clock, api_address: str = "") -> MemoryTransport:
        t = MemoryTransport(node_id, self, clock, api_address)
        self.nodes[node_id] = t
        return t

    def send(self, m: PeerPayload) -> bool:
        if (m.frm, m.to) in self.blocked or m.to not in self.nodes or self.nodes[m.to].closed:
            return False
        self.queue.append(m)
        return True

    def cut(self, a: str, b: str, both: bool = True) -> None:
        self.blocked.add((a, b))
        if both:
            self.blocked.add((b, a))

    def heal(self) -> None:
        self.blocked.clear()

    def close_links(self, node_id: str) -> None:
        """`node_id` went down (a crashed process): every peer it can reach
        hears that it closed its connections, at once (not across a cut)."""
        for nid, t in self.nodes.items():
            if nid != node_id and (node_id, nid) not in self.blocked:
                t.peer_closed(node_id)

    def deliver_all(self, limit: int = 100_000) -> int:
        """Deliver queued messages (and what they cause) until none is left;
        returns how many. Messages on a cut link are lost."""
        n = 0
        while self.queue:
            n += 1
            if n > limit:
                raise RuntimeError(f"more than {limit} messages: a message storm?")
            m = self.queue.popleft()
            dest = self.nodes.get(m.to)
            if dest is None or (m.frm, m.to) in self.blocked:
                continue
            dest.deliver(m)
            if type(m) is Message and m.type == MessageType.SNAP:
                sender = self.nodes.get(m.frm)
                if sender is not None:
                    sender.snapshot_done(m.to, True)
        return n
