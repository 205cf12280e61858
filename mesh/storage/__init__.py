"""Durable state of a node: the write-ahead log, hard state and snapshots.

`memory` is the in-memory twin used by the simulator and tests; it models
what has been made durable, so a simulated crash loses exactly the unsynced
tail. `disk.DiskStorage` is the durable store (segmented WAL, atomic hard
state, checksummed snapshots, directory lock, crash recovery).
"""
