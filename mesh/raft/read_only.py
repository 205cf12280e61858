"""ReadIndex bookkeeping on the leader (Raft thesis §6.4).

A linearizable read records the commit index when it arrives, then waits
until a quorum of voters has acknowledged a heartbeat sent after it: only
then is it certain that this node was still the leader when the read
arrived, so that the recorded index covers every acknowledged write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.raft.messages import NodeId


@dataclass(slots=True)
class ReadRequest:
    context: bytes
    # Who asked: this node, or the follower that forwarded the read.
    origin: NodeId
    index: int
    acks: set[NodeId] = field(default_factory=set)


class ReadOnly:
    __slots__ = ("pending", "queue")

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadRequest] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, context: bytes, origin: NodeId) -> None:
        if context in self.pending:
            return
        self.pending[context] = ReadRequest(context, origin, index)
        self.queue.append(context)

    def recv_ack(self, node: NodeId, context: bytes) -> set[NodeId] | None:
        req = self.pending.get(context)
        if req is None:
            return None
        req.acks.add(node)
        return req.acks

    def advance(self, context: bytes) -> list[ReadRequest]:
        """Release `context` and every read queued before it: a quorum that
        acknowledged a later heartbeat also confirms the earlier reads."""
        if context not in self.pending:
            return []
        pos = self.queue.index(context)
        released = [self.pending.pop(c) for c in self.queue[: pos + 1]]
        del self.queue[: pos + 1]
        return released

    def last_pending(self) -> bytes:
        return self.queue[-1] if self.queue else b""
