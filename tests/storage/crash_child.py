"""Child process of the crash tests: appends batches to a `DiskStorage` for
ever, printing one line per durable (synced) batch, until it is killed.

    python crash_child.py DIR SEED

Lines (stdout, flushed after each):
    ready LAST
    ack FIRST LAST TERM COMMIT SNAP_INDEX

`ack` is printed only after `sync()` returned: entries FIRST..LAST (term
TERM) are durable, replacing anything from FIRST on. Like Raft, the child
truncates only above COMMIT (the last index of the previous acknowledged
batch) and a replacing batch always ends beyond the old last index.
Entry data is `helpers.payload(index, term, size_for(index, term))`;
a snapshot at index i holds `snap_data(i, term)`.
"""

from __future__ import annotations

import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from mesh.raft.messages import ConfState, Entry, HardState
from mesh.storage.disk import DiskStorage
from tests.storage.helpers import payload

SEGMENT_BYTES = 8192


def size_for(index: int, term: int) -> int:
    return (index * 7 + term * 13) % 300 + 1


def snap_data(index: int, term: int) -> bytes:
    return f"snap:{index}:{term}".encode() * 20


def main() -> None:
    directory, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    store = DiskStorage(directory, segment_bytes=SEGMENT_BYTES)
    last = store.last_index()
    term = max(store.hard_state().term, store.term(last), 1)
    commit = max(store.hard_state().commit, store.first_index() - 1)
    print(f"ready {last}", flush=True)
    batches = 0
    while True:
        batches += 1
        count = rng.choice((1, 2, 5, 16, 64))
        first = last + 1
        if last > commit and rng.random() < 0.15:
            # A new leader replaces the uncommitted suffix.
            term += 1
            first = max(commit + 1, last + 1 - rng.randint(1, 5))
            count = max(count, last + 2 - first)
        ents = [Entry(i, term, payload(i, term, size_for(i, term))) for i in range(first, first + count)]
        store.append(ents)
        store.set_hard_state(HardState(term, "n1", commit))
        snap_index = store.snapshot().meta.index
        if batches % 7 == 0 and commit > snap_index:
            snap = store.create_snapshot(commit, ConfState.of(["n1"]), snap_data(commit, store.term(commit)))
            snap_index = snap.meta.index
            if snap_index > 3:
                store.compact(snap_index - 3)
        store.sync()
        print(f"ack {first} {first + count - 1} {term} {commit} {snap_index}", flush=True)
        # The next batch may replace this one's entries, never those before.
        commit = max(commit, first - 1)
        last = first + count - 1


if __name__ == "__main__":
    main()
