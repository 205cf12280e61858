"""What the node core needs of its peer links: the `Transport` protocol.

Two implementations: `mesh.transport.tcp.TcpTransport` (authenticated
frames over TCP, asyncio) and its in-memory twin
`mesh.transport.memory.MemoryTransport` (the simulator and unit tests).

Outbound, the core calls `send`, which never blocks and never raises: a
message that cannot go is dropped (Raft retransmits) and reported through
the inbound callback `on_unreachable(peer)`. Delivery is at most once, in
no particular order across messages, and a message may arrive late.
`withdraw(forward)` tells a forwarded write that certainly never reached
its peer (True: still queued and now removed, or dropped before it was
written to any connection) from one that may have (False).

Inbound, the transport calls back whoever owns it (the runtime, which
hands the calls to the core and wakes its loop): `on_message(payload)` for
every authenticated message, `on_unreachable(peer)`, and
`on_snapshot_status(peer, ok)` when a snapshot stream to `peer` ended.
Those callbacks are given to the implementation's constructor (TCP) or set
as attributes (memory); they are not part of this protocol.

`last_heard` (the `Clock.monotonic()` time a frame last arrived from each
peer) and `peer_api` (the API address each peer announced) feed `status`
and the autopilot.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from mesh.transport.codec import ForwardRequest, PeerPayload


class Transport(Protocol):
    last_heard: dict[str, float]
    peer_api: dict[str, str]

    def send(self, m: PeerPayload) -> None: ...

    def withdraw(self, m: ForwardRequest) -> bool: ...

    def set_members(self, members: Iterable[str] | None) -> None:
        """Dial only these peers (None: every known address)."""
        ...

    def set_peer(self, peer: str, address: tuple[str, int]) -> None: ...

    def peers(self) -> dict[str, tuple[str, int]]:
        """Every known peer address."""
        ...

    def snapshots_in_flight(self) -> list[str]:
        """Peers a snapshot is streaming to right now."""
        ...
