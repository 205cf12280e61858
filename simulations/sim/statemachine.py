"""The simulated state machine: the ordered list of applied client commands
and a hash chain over them. Every command carries a unique client op id."""

from __future__ import annotations

import hashlib
import json

ZERO = b"\x00" * 8


def chain(digest: bytes, index: int, data: bytes) -> bytes:
    return hashlib.blake2b(digest + index.to_bytes(8, "big") + data, digest_size=8).digest()


class ChainStateMachine:
    """Implements `mesh.replica.StateMachine`."""

    __slots__ = ("digest", "index", "ops")

    def __init__(self) -> None:
        self.ops: list[tuple[int, str]] = []
        self.digest = ZERO
        self.index = 0

    def apply(self, entry_index: int, data: bytes) -> object:
        self.digest = chain(self.digest, entry_index, data)
        self.ops.append((entry_index, data.decode()))
        self.index = entry_index
        return len(self.ops)

    def snapshot(self) -> bytes:
        return json.dumps({"digest": self.digest.hex(), "index": self.index, "ops": self.ops}).encode()

    @staticmethod
    def digest_of(snapshot: bytes) -> bytes:
        return bytes.fromhex(json.loads(snapshot)["digest"])

    def restore(self, data: bytes, index: int) -> None:
        d = json.loads(data)
        self.digest = bytes.fromhex(d["digest"])
        self.ops = [(int(i), str(op)) for i, op in d["ops"]]
        self.index = int(d["index"])
