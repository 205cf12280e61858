"""bench/live.py: the statistics its verdict rests on (the share of the
PUT rate the live load leaves, with a bootstrap interval over rounds or
pairs) and its flags, so that a broken bench fails CI rather than the
night it is run. (Its real runs take minutes: bench/, not tests.)"""

from __future__ import annotations

import argparse
import random

import pytest

from tests.bench.kit import load_bench

L = load_bench("live")


def test_the_interval_of_rounds_that_agree_is_their_ratio() -> None:
    pairs = [(1000.0, 900.0), (1500.0, 1350.0), (800.0, 720.0)]
    low, high = L.ratio_interval(pairs)
    assert low == pytest.approx(0.9) and high == pytest.approx(0.9)


def test_the_interval_holds_the_ratio_and_narrows_with_more_rounds() -> None:
    # Rounds whose speed drifts 2x and whose ratio scatters +-20 % around
    # 0.9: the all-rounds ratio lies inside the interval, and 16 times the
    # rounds give an interval about 4 times narrower.
    rng = random.Random(7)

    def rounds(n: int) -> list[tuple[float, float]]:
        out = []
        for _ in range(n):
            alone = rng.uniform(800, 1600)
            out.append((alone, alone * rng.uniform(0.7, 1.1)))
        return out

    few, many = rounds(10), rounds(160)
    for pairs in (few, many):
        low, high = L.ratio_interval(pairs)
        ratio = sum(b for _, b in pairs) / sum(a for a, _ in pairs)
        assert low < ratio < high
    width_few = L.ratio_interval(few)[1] - L.ratio_interval(few)[0]
    width_many = L.ratio_interval(many)[1] - L.ratio_interval(many)[0]
    assert 2.5 < width_few / width_many < 6.5
    # Seeded: the same rounds, the same interval.
    assert L.ratio_interval(few) == L.ratio_interval(few)


def test_arms_need_live_and_alone_and_the_twins_follow_a_live_arm() -> None:
    assert L.arms_flag("live,alone") == ("live", "alone")
    assert L.arms_flag("alone,live") == ("alone", "live")
    assert L.arms_flag("alone,twin,live") == ("live", "alone", "twin")
    for bad in ("alone", "live", "live,alone,burn", "twin,fader"):
        with pytest.raises(argparse.ArgumentTypeError):
            L.arms_flag(bad)


def test_pairs_count_each_window_after_its_margin() -> None:
    # Completions every 10 ms from 0 to 8 s; windows of 2 s, the first
    # 0.5 s of each not counted; in the "on" windows every other one is
    # missing (half the rate).
    done = [i / 100 for i in range(800) if not (200 <= i < 400 or 400 <= i < 600) or i % 2 == 0]
    windows = [("off", 0.0, 2.0), ("on", 2.0, 4.0), ("on", 4.0, 6.0), ("off", 6.0, 8.0)]
    pairs = L.pair_rates(done, windows, 0.5)
    assert pairs == [(pytest.approx(100), pytest.approx(50)), (pytest.approx(100), pytest.approx(50))]
    # Counted from the margin on: completions only in the first 0.5 s count for nothing.
    early = [0.6] + [2.0 + i / 100 for i in range(50)]
    assert L.pair_rates(early, windows[:2], 0.5) == [(pytest.approx(1 / 1.5), 0.0)]
    with pytest.raises(ValueError):
        L.pair_rates(done, [("on", 0.0, 2.0), ("on", 2.0, 4.0)], 0.5)
