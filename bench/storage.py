"""Durable storage throughput and start-up, next to the disk's own limits.

    python bench/storage.py [--quick] [--dir DIR] [--seconds S] [--entries N]

1. Physical limits of the disk holding DIR, measured in the same run: raw
   fsync rate (256-byte write + fdatasync), raw write + fdatasync rate at the
   byte size of each batch below, and raw sequential write bandwidth (1 MiB
   writes, one fsync at the end).
2. `DiskStorage` group commit: entries of 256 bytes appended in batches of
   1, 16 and 256, one `sync()` (one fsync) per batch: appends per second and
   MB/s (payload and on-disk bytes), with `durability="fsync"`; plus the same
   with `unsafe_no_fsync` to show the CPU cost alone.
3. Start-up (open + recovery: validate every record, rebuild the index) of a
   log of N entries (default one million), without and with a snapshot
   (snapshot near the end, log compacted behind it).
4. The cost of encryption at rest (`serve --encrypt-at-rest`, issue 18),
   before and after in one run: group commit at each batch size, start-up
   of a log of N/10 entries (an encrypted store authenticates every live
   entry at open) and a 4 MiB snapshot written and read, each in clear and
   encrypted. `--encryption-only` runs just this part.

Figures are printed with the machine noted; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mesh.raft.messages import ConfState, Entry
from mesh.storage.disk import DiskStorage

PAYLOAD = 256
MB = 1e6


def filesystem_of(path: Path) -> str:
    """fstype and device of the mount holding `path` (from /proc/mounts)."""
    best, found = "", "unknown"
    target = str(path.resolve())
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, found = mnt, f"{fstype} on {mnt} ({dev})"
    except OSError as exc:
        return f"unknown ({exc})"
    return found


def raw_fsync_rate(directory: Path, size: int, seconds: float) -> float:
    """Writes of `size` bytes, each followed by fdatasync, per second."""
    path = directory / "raw-fsync"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    block = os.urandom(size)
    n = 0
    try:
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            os.write(fd, block)
            os.fdatasync(fd)
            n += 1
    finally:
        os.close(fd)
        path.unlink()
    return n / elapsed


def raw_sequential(directory: Path, total: int) -> float:
    """Sequential write bandwidth in bytes/s (1 MiB writes, fsync at the end)."""
    path = directory / "raw-seq"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    block = os.urandom(1 << 20)
    try:
        start = time.perf_counter()
        written = 0
        while written < total:
            written += os.write(fd, block)
        os.fsync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return written / elapsed


def group_commit(
    directory: Path, batch: int, seconds: float, durability: str, key: bytes | None = None
) -> tuple[float, float, float]:
    """(entries/s, payload bytes/s, on-disk bytes/s) appending `batch` entries per sync."""
    path = directory / f"gc-{batch}-{durability}-{'enc' if key else 'clear'}"
    data = os.urandom(PAYLOAD)
    store = DiskStorage(path, durability=durability, key=key)  # type: ignore[arg-type]
    try:
        index = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            store.append([Entry(i, 1, data) for i in range(index + 1, index + batch + 1)])
            store.sync()
            index += batch
        on_disk = sum(p.stat().st_size for p in (path / "wal").iterdir())
    finally:
        store.close()
        shutil.rmtree(path)
    return index / elapsed, index * PAYLOAD / elapsed, on_disk / elapsed


def build_log(path: Path, entries: int, key: bytes | None = None) -> None:
    data = os.urandom(PAYLOAD)
    with DiskStorage(path, durability="unsafe_no_fsync", key=key) as store:
        for lo in range(1, entries + 1, 1000):
            hi = min(entries, lo + 999)
            store.append([Entry(i, 1 + i // 100_000, data) for i in range(lo, hi + 1)])
            store.sync()


def time_open(path: Path, repeat: int, key: bytes | None = None) -> tuple[float, int]:
    best = float("inf")
    last = 0
    for _ in range(repeat):
        start = time.perf_counter()
        store = DiskStorage(path, key=key)
        best = min(best, time.perf_counter() - start)
        last = store.last_index()
        store.close()
    return best, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs and a 100k-entry log")
    ap.add_argument("--dir", type=Path, default=None, help="data directory parent (default: a temp dir)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per throughput measurement")
    ap.add_argument("--entries", type=int, default=None, help="entries of the start-up log")
    ap.add_argument("--encryption-only", action="store_true", help="only part 4: the cost of encryption at rest")
    args = ap.parse_args()
    seconds = args.seconds or (0.5 if args.quick else 2.0)
    entries = args.entries or (100_000 if args.quick else 1_000_000)
    seq_bytes = (64 if args.quick else 512) << 20
    parent = args.dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hana-bench-storage-", dir=parent))
    try:
        if not args.encryption_only:
            run(work, seconds, entries, seq_bytes)
        encryption(work, seconds, max(1000, entries // 10))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, seconds: float, entries: int, seq_bytes: int) -> None:
    print("hana mesh storage bench")
    print(f"  machine : {os.cpu_count()} cpus, {platform.platform()}, Python {platform.python_version()}")
    print(f"  data dir: {work} -- {filesystem_of(work)}")
    print(f"  entries : {PAYLOAD}-byte payloads; {seconds:g} s per throughput figure")
    print()
    print("physical limits (same disk, same run)")
    fsync_rate = raw_fsync_rate(work, 256, seconds)
    seq = raw_sequential(work, seq_bytes)
    print(f"  raw fsync rate (256 B write + fdatasync)   {fsync_rate:12,.0f} /s")
    print(f"  raw sequential write ({seq_bytes >> 20} MiB, one fsync) {seq / MB:12,.1f} MB/s")
    print()
    header = (
        f"  {'batch':>5} {'mode':<16} {'appends/s':>12} {'syncs/s':>9} {'payload MB/s':>13} "
        f"{'disk MB/s':>10} {'raw w+fsync MB/s':>17} {'vs raw seq':>10}"
    )
    print("group commit: append(batch) + sync() per batch")
    print(header)
    for batch in (1, 16, 256):
        # The physical limit at this batch's byte size: write + fdatasync.
        batch_bytes = batch * (PAYLOAD + 33)
        raw_rate = raw_fsync_rate(work, batch_bytes, seconds / 2)
        for durability in ("fsync", "unsafe_no_fsync"):
            if durability == "unsafe_no_fsync" and batch == 1:
                continue
            eps, pps, dps = group_commit(work, batch, seconds, durability)
            print(
                f"  {batch:>5} {durability:<16} {eps:>12,.0f} {eps / batch:>9,.0f} {pps / MB:>13,.1f} "
                f"{dps / MB:>10,.1f} {raw_rate * batch_bytes / MB:>17,.1f} {dps / seq:>9.2f}x"
            )
    print()
    print(f"start-up: open + recovery of a {entries:,}-entry log")
    path = work / "startup"
    start = time.perf_counter()
    build_log(path, entries)
    build = time.perf_counter() - start
    size = sum(p.stat().st_size for p in (path / "wal").iterdir())
    t_plain, last = time_open(path, 3)
    with DiskStorage(path) as store:
        snap_at = last - 1000
        store.create_snapshot(snap_at, ConfState.of(["n1", "n2", "n3"]), os.urandom(4 << 20))
        store.compact(snap_at)
        store.sync()
    size_after = sum(p.stat().st_size for p in (path / "wal").iterdir())
    t_snap, last2 = time_open(path, 3)
    assert last2 == last
    print(f"  built in {build:.1f} s ({entries / build:,.0f} entries/s, unsafe_no_fsync), {size / MB:,.0f} MB of log")
    print(f"  no snapshot                              {t_plain:8.3f} s  ({entries / t_plain:,.0f} entries/s replayed)")
    print(
        f"  snapshot at {snap_at:,} (4 MiB), compacted   {t_snap:8.3f} s  "
        f"({size_after / MB:,.1f} MB of log left, {len(os.listdir(path / 'wal'))} segment(s))"
    )
    print()
    print("goals: group commit within 2x of raw sequential bandwidth for large batches; start-up < 2 s with a snapshot")


def snapshot_round_trip(path: Path, key: bytes | None, repeat: int = 5) -> tuple[float, float]:
    """(seconds to write and sync a 4 MiB snapshot, seconds to open the store holding it), best of `repeat`."""
    data = os.urandom(4 << 20)
    best_w = best_r = float("inf")
    for i in range(repeat):
        p = path / f"snap-{i}-{'enc' if key else 'clear'}"
        with DiskStorage(p, durability="unsafe_no_fsync", key=key) as store:
            store.append([Entry(1, 1, b"x")])
            start = time.perf_counter()
            store.create_snapshot(1, ConfState.of(["n1"]), data)
            store.sync()
            best_w = min(best_w, time.perf_counter() - start)
        start = time.perf_counter()
        DiskStorage(p, key=key).close()
        best_r = min(best_r, time.perf_counter() - start)
        shutil.rmtree(p)
    return best_w, best_r


def encryption(work: Path, seconds: float, entries: int) -> None:
    key = os.urandom(32)
    print()
    print("encryption at rest (--encrypt-at-rest): before (clear) and after (AES-256-GCM), same run")
    print(f"  machine : {os.cpu_count()} cpus, {platform.platform()}; data dir {filesystem_of(work)}")
    print(f"  {'what':<52} {'clear':>14} {'encrypted':>14} {'cost':>8}")

    def row(what: str, clear: float, enc: float, unit: str, higher_is_better: bool) -> None:
        # Throughput lost, or time added: positive is what encryption costs.
        cost = (1 - enc / clear) if higher_is_better else (enc / clear - 1)
        print(f"  {what:<52} {clear:>10,.0f} {unit:<3} {enc:>10,.0f} {unit:<3} {cost:>+7.1%}")

    for batch, durability in (
        (1, "fsync"),
        (16, "fsync"),
        (256, "fsync"),
        (16, "unsafe_no_fsync"),
        (256, "unsafe_no_fsync"),
    ):
        clear = group_commit(work, batch, seconds, durability)[0]
        enc = group_commit(work, batch, seconds, durability, key)[0]
        row(f"group commit, batch {batch}, {durability} (appends/s)", clear, enc, "/s", True)
    for name, k in (("clear", None), ("enc", key)):
        build_log(work / f"open-{name}", entries, k)
    t_clear, _ = time_open(work / "open-clear", 3)
    t_enc, _ = time_open(work / "open-enc", 3, key)
    row(f"start-up, {entries:,}-entry log (ms)", t_clear * 1000, t_enc * 1000, "ms", False)
    w_clear, r_clear = snapshot_round_trip(work, None)
    w_enc, r_enc = snapshot_round_trip(work, key)
    row("4 MiB snapshot written + synced (ms)", w_clear * 1000, w_enc * 1000, "ms", False)
    row("store holding it opened (ms)", r_clear * 1000, r_enc * 1000, "ms", False)
    print("  cost: throughput lost (appends/s) or time added (ms); on disk 28 bytes more per entry (nonce + tag)")


if __name__ == "__main__":
    main()
