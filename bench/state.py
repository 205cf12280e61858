"""Benchmark of the state machine alone (no Raft, no disk): apply rate with
history on, snapshot size and time, save / export / import / restore of a
show of 10,000 keys. Run: `python bench/state.py [--keys N] [--writes N]`."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.state.model import HanaState


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()} ({platform.system()})"


def show_value(i: int) -> tuple[str, Any]:
    kind = i % 4
    if kind == 0:
        return f"displays/d{i}", {"name": f"display {i}", "width": 1920, "height": 1080, "enabled": True}
    if kind == 1:
        return f"windows/w{i}", {"display": f"d{i - 1}", "x": 0.0, "y": 0.0, "width": 1920.0, "height": 1080.0}
    if kind == 2:
        return f"parameters/p{i}/level", i / 10_000
    return f"modulation/m{i}", {"source": f"lfo{i % 8}", "target": f"parameters/p{i - 1}/level", "amount": 0.5}


class Log:
    def __init__(self, hs: HanaState) -> None:
        self.hs, self.index, self.time = hs, 0, 1_714_564_800_000

    def __call__(self, **cmd: Any) -> dict[str, Any]:
        self.index += 1
        self.time += 1
        return self.hs.apply(self.index, orjson.dumps({"author": "bench", "node": "n1", "time": self.time, **cmd}))


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--writes", type=int, default=50_000)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"history_limit=10000 undo_limit=100 audit_limit=10000; show of {args.keys} keys\n")

    hs = HanaState(max_recovery_points=4)
    log = Log(hs)
    cmds = [orjson.dumps({"op": "put", "key": k, "value": v, "author": "bench", "node": "n1", "time": i})
            for i, (k, v) in enumerate(map(show_value, range(args.keys)))]  # fmt: skip
    _, dt = timed(lambda: [hs.apply(i, c) for i, c in enumerate(cmds, 1)])
    log.index = len(cmds)
    print(f"load show (puts, new keys):        {len(cmds) / dt:>10,.0f} changes/s  ({dt * 1000:.0f} ms)")

    upd = [orjson.dumps({"op": "put", "key": f"parameters/p{(i * 4 + 2) % args.keys}/level", "value": i / 7,
                         "author": "bench", "node": "n1", "time": 10**7 + i}) for i in range(args.writes)]  # fmt: skip
    base = log.index
    _, dt = timed(lambda: [hs.apply(base + i, c) for i, c in enumerate(upd, 1)])
    log.index += len(upd)
    print(f"parameter updates (put):           {len(upd) / dt:>10,.0f} changes/s")

    txns = [orjson.dumps({"op": "txn", "author": "bench", "node": "n1", "time": 2 * 10**7 + i, "ops": [
        {"op": "put", "key": f"parameters/p{(i * 4 + 2 + 4 * j) % args.keys}/level", "value": j} for j in range(10)]})
        for i in range(args.writes // 10)]  # fmt: skip
    base = log.index
    _, dt = timed(lambda: [hs.apply(base + i, c) for i, c in enumerate(txns, 1)])
    log.index += len(txns)
    print(f"txn of 10 puts:                    {len(txns) / dt:>10,.0f} txns/s ({10 * len(txns) / dt:,.0f} keys/s)")

    n_undo = 50
    _, dt = timed(lambda: [log(op="undo") for _ in range(n_undo)])
    print(f"undo of a 10-key txn:              {dt / n_undo * 1e6:>10,.0f} us each")
    _, dt = timed(lambda: [log(op="redo") for _ in range(n_undo)])
    print(f"redo of a 10-key txn:              {dt / n_undo * 1e6:>10,.0f} us each")

    res, dt = timed(lambda: log(op="save", name="show"))
    assert "error" not in res, res
    print(f"\nsave (whole show, {res['keys']} keys, {res['bytes'] / 1e6:.2f} MB): {dt * 1000:>8.1f} ms")
    blob, dt = timed(lambda: hs.export_save("show"))
    print(f"export to .hana file ({len(blob) / 1e6:.2f} MB):     {dt * 1000:>8.1f} ms")
    for i in range(0, args.keys, 2):  # change half the show
        k, v = show_value(i)
        log(op="put", key=k, value=v if not isinstance(v, dict) else {**v, "edited": True})
    res, dt = timed(lambda: log(op="restore", name="show", role="admin"))
    assert "error" not in res, res
    print(f"restore (recovery point + {res['changed']} changes, one revision): {dt * 1000:>6.1f} ms")
    res, dt = timed(lambda: log(op="undo", role="admin"))
    assert "error" not in res, res
    print(f"undo of that restore:              {dt * 1000:>10.1f} ms")
    other = HanaState()
    res, dt = timed(
        lambda: other.apply(1, orjson.dumps({"op": "import_save", "file": blob.decode(), "time": 1, "role": "admin"}))
    )
    assert "error" not in res, res
    print(f"import (verify, validate) on a fresh node: {dt * 1000:>5.1f} ms")
    res, dt = timed(lambda: other.apply(2, orjson.dumps({"op": "restore", "name": "show", "time": 2, "role": "admin"})))
    print(f"restore of the import ({res['changed']} new keys): {dt * 1000:>9.1f} ms")

    snap, dt = timed(hs.snapshot)
    print(f"\nsnapshot: {len(snap) / 1e6:.2f} MB ({len(hs.saves_store)} saves held) in {dt * 1000:.1f} ms")
    fresh = HanaState()
    _, dt = timed(lambda: fresh.restore(snap))
    print(f"snapshot restore (load):           {dt * 1000:>10.1f} ms")
    assert fresh.snapshot() == snap


if __name__ == "__main__":
    main()
