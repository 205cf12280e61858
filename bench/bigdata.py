"""A node's data directory as after a long life: a log of N entries (default
1,000,000), of which all but a tail of a few thousand are covered by a
snapshot, written by the node's own storage layer.

    python bench/bigdata.py DIR [--entries 1000000] [--tail 5000] [--voters h1,h2,h3]

How it is built (bench/mesh.py's restart figure says the same):
- `DiskStorage` (mesh/storage/disk.py) opens the empty directory and
  `mesh.replica.bootstrap` writes the initial configuration (entry 1, term 1),
  as `hana-node serve --peers` does on its first start.
- A `HanaState` (the node's state machine, mesh/state/model.py) applies the
  bootstrap's membership entry, then entries 3 .. N - tail through its own
  `apply`: each one the bytes the controller of term 2 would have appended
  for `PUT /v1/kv/parameters/big/kNNNNN` (the API's author and role, the
  node, time and request id the node stamps, its hybrid-clock stamp spliced
  in as mesh/node/core.py does). Entry 2 is the empty entry a new leader
  appends. So the snapshot is the real state after those writes: values,
  versions, revisions, the rolling history, undo stacks, audit trail and
  remembered request ids.
- `DiskStorage.apply_snapshot` stores that state (mesh/state/snapshot.py's
  format, in mesh/storage/snapshots.py's file) at index N - tail, as a
  follower installing a snapshot does; `append` writes the tail's entries
  (term 2, the same kind of writes, not applied here) and the hard state
  records term 2, the vote for the first voter and commit N; `sync` makes it
  durable. A node opening the directory restores the snapshot and applies the
  tail, exactly as after a restart.

Every voter of a cluster gets a copy of the same directory (their logs
agree, as Raft requires). Building 1,000,000 entries takes about half a
minute on one core (the state machine's apply is most of it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

# The repository's own package first (bench/ holds a mesh.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.raft import ConfChange, ConfState, Entry, EntryType, HardState, Snapshot
from mesh.raft.messages import SnapshotMeta
from mesh.replica import bootstrap
from mesh.state.audit import DEFAULT_AUDIT_MAX_AGE_MS
from mesh.state.hlc import HLC
from mesh.state.model import HanaState
from mesh.storage.disk import DiskStorage

# The node's defaults (mesh/cli.py serve: --history-limit, --audit-limit,
# --audit-max-age 90 days; --cluster hana): the state a node builds.
HISTORY_LIMIT = 10_000
AUDIT_LIMIT = 10_000
AUDIT_MAX_AGE_MS = DEFAULT_AUDIT_MAX_AGE_MS
CLUSTER = "hana"
TERM = 2
BOOT_ID = "b16da7a0"
# What the API stamps on a write from a loopback client without a token.
AUTHOR, ROLE = "anonymous", "operator"
KEY_PREFIX = "parameters/big/"


@dataclass(frozen=True)
class BigLog:
    """What was built: a log of `entries` entries, the snapshot at
    `snapshot_index` (its state file `snapshot_bytes` long), the tail after
    it; `key` holds `value` once the whole log is applied."""

    path: Path
    entries: int
    snapshot_index: int
    tail: int
    keys: int
    key: str
    value: Any
    snapshot_bytes: int
    seconds: float

    def describe(self) -> str:
        return (
            f"{self.entries:,} entries (term {TERM}, puts to {self.keys:,} keys of {KEY_PREFIX}) written by "
            f"mesh.storage.DiskStorage: snapshot of HanaState at index {self.snapshot_index:,} "
            f"({self.snapshot_bytes / 1e6:.1f} MB, every entry applied by the state machine's own apply) "
            f"plus a tail of {self.tail:,} committed log entries; built in {self.seconds:.1f} s"
        )


def key_of(index: int, keys: int) -> str:
    return f"{KEY_PREFIX}k{index % keys:05d}"


def value_of(index: int) -> str:
    # 64 characters, as bench/mesh.py's writes.
    return f"v{index:09d}".ljust(64, "x")


class _Commands:
    """The bytes the controller appends for each write (mesh/node/core.py
    `_stamp` then `_stamp_hlc`)."""

    def __init__(self, leader: str, keys: int, end_ms: int, entries: int) -> None:
        self.leader = leader
        self.keys = keys
        self.start_ms = end_ms - entries  # one write a millisecond, the last one now
        self.hlc = HLC(0, 0, leader)
        self.seq = 0

    def make(self, index: int, seen: HLC | None) -> bytes:
        self.seq += 1
        wall = self.start_ms + index
        command = {
            "op": "put",
            "key": key_of(index, self.keys),
            "value": value_of(index),
            "author": AUTHOR,
            "role": ROLE,
            "node": self.leader,
            "time": wall,
            "rid": f"{self.leader}.{BOOT_ID}.{self.seq}",
        }
        self.hlc = self.hlc.receive(seen if seen is not None else self.hlc, wall, self.leader)
        data = orjson.dumps(command)
        return data[:-1] + b',"hlc":' + orjson.dumps(self.hlc.encode()) + b"}"


def build(
    path: Path,
    voters: Sequence[str] = ("h1", "h2", "h3"),
    *,
    entries: int = 1_000_000,
    tail: int = 5_000,
    keys: int = 10_000,
    end_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> BigLog:
    """Write the data directory `path` (must not hold a log yet)."""
    if not voters:
        raise ValueError("at least one voter")
    if tail < 1 or keys < 1 or entries < tail + 3:
        raise ValueError("need entries >= tail + 3 (bootstrap, the leader's empty entry, one write), tail >= 1")
    t0 = time.monotonic()
    snap_index = entries - tail
    conf = ConfState.of(voters)
    leader = sorted(voters)[0]
    cmds = _Commands(leader, keys, end_ms if end_ms is not None else time.time_ns() // 1_000_000, entries)
    state = HanaState(
        history_limit=HISTORY_LIMIT, audit_limit=AUDIT_LIMIT, audit_max_age_ms=AUDIT_MAX_AGE_MS, cluster=CLUSTER
    )
    storage = DiskStorage(path)
    try:
        bootstrap(storage, conf)
        boot = storage.entries(1, 2)[0]
        state.apply_conf_change(1, ConfChange.decode(boot.data))
        # Index 2: the empty entry of the term-2 leader (nothing to apply).
        for i in range(3, snap_index + 1):
            result = state.apply(i, cmds.make(i, state.clock))
            if "error" in result:
                raise RuntimeError(f"entry {i} was refused by the state machine: {result}")
            if progress is not None and i % 100_000 == 0:
                progress(i)
        data = state.snapshot()
        storage.apply_snapshot(Snapshot(SnapshotMeta(snap_index, TERM, conf), data))
        batch: list[Entry] = []
        for i in range(snap_index + 1, entries + 1):
            batch.append(Entry(i, TERM, cmds.make(i, None), EntryType.NORMAL))
            if len(batch) == 1000:
                storage.append(batch)
                batch = []
        storage.append(batch)
        storage.set_hard_state(HardState(term=TERM, vote=leader, commit=entries))
        storage.sync()
    finally:
        storage.close()
    return BigLog(
        path=path,
        entries=entries,
        snapshot_index=snap_index,
        tail=tail,
        keys=keys,
        key=key_of(entries, keys),
        value=value_of(entries),
        snapshot_bytes=len(data),
        seconds=time.monotonic() - t0,
    )


def existing(path: Path, keys: int = 10_000) -> BigLog:
    """The BigLog of a directory `build` wrote before (with `keys` keys):
    read back from its storage."""
    t0 = time.monotonic()
    storage = DiskStorage(path)
    try:
        snap = storage.snapshot()
        last, first = storage.last_index(), storage.first_index()
        if snap.is_empty() or storage.hard_state().commit != last:
            raise ValueError(f"{path} is not a directory bench/bigdata.py built")
        tail = storage.entries(last, last + 1)[0]
        if orjson.loads(tail.data).get("key") != key_of(last, keys):
            raise ValueError(f"{path}: its last entry is not the write bench/bigdata.py makes with {keys} keys")
        return BigLog(
            path=path,
            entries=last,
            snapshot_index=snap.meta.index,
            tail=last - first + 1,
            keys=keys,
            key=key_of(last, keys),
            value=value_of(last),
            snapshot_bytes=len(snap.data),
            seconds=time.monotonic() - t0,
        )
    finally:
        storage.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--tail", type=int, default=5_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--voters", default="h1,h2,h3")
    args = parser.parse_args(argv)
    big = build(
        args.dir,
        [v for v in args.voters.split(",") if v],
        entries=args.entries,
        tail=args.tail,
        keys=args.keys,
        progress=lambda i: print(f"  {i:,} applied", flush=True),
    )
    print(big.describe())
    print(f"{big.key} = {big.value!r} once applied")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
