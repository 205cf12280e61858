"""bench/live_path.py runs the live path end to end in one process: every
value a source sets reaches the subscriber's sink (a smoke test; the
figures it prints are not asserted)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "live_path.py"


def test_the_live_path_bench_delivers_every_value() -> None:
    spec = importlib.util.spec_from_file_location("live_path_bench", BENCH)
    assert spec is not None and spec.loader is not None
    path = list(sys.path)
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path  # the script rearranges sys.path for itself
    *figures, delivered = module.run(params=8, ticks=40)
    assert delivered == 8 * 40
    assert all(math.isfinite(f) and f > 0 for f in figures)
