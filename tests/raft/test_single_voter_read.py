"""A single-voter leader holds a linearizable read until an entry of its own
term commits: after a restart its durable commit index may trail what it
acknowledged before the crash (found by review)."""

from __future__ import annotations

import random

from mesh.raft import Config, ConfState, Role
from mesh.replica import ReadyOutcome, Replica, bootstrap
from mesh.storage.memory import MemoryStorage


class ListMachine:
    def __init__(self) -> None:
        self.log: list[bytes] = []

    def apply(self, entry_index: int, data: bytes) -> object:
        self.log.append(data)
        return None

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes, index: int) -> None:
        self.log = []


def drain(r: Replica) -> list[ReadyOutcome]:
    outs = []
    while r.has_ready():
        outs.append(r.handle_ready())
    return outs


def test_read_after_restart_includes_every_acknowledged_write() -> None:
    store = MemoryStorage()
    bootstrap(store, ConfState.of({"a"}))
    r = Replica(Config("a", random.Random(1)), store, ListMachine())
    for _ in range(30):
        r.tick()
        drain(r)
    assert r.raft.role == Role.LEADER
    for i in range(3):
        r.propose(b"w%d" % i)
    acked = [p for o in drain(r) for p in o.proposals if p.ok]
    assert len(acked) == 3

    sm = ListMachine()
    r2 = Replica(Config("a", random.Random(2)), store.crash_image(), sm)
    drain(r2)
    for _ in range(40):
        r2.tick()
        if r2.raft.role == Role.LEADER:
            break
    assert r2.raft.role == Role.LEADER
    r2.read_index(b"ctx")
    reads = [rd for o in drain(r2) for rd in o.reads]
    assert len(reads) == 1
    # The read point covers every acknowledged write.
    assert reads[0].index >= acked[-1].index
    assert sm.log == [b"w0", b"w1", b"w2"]
