"""The hybrid logical clock: monotonic, causal, encodes in order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.state.hlc import HLC, compare, decode, encode


def test_tick_follows_physical_time_and_counts_within_a_millisecond() -> None:
    c = HLC(0, 0, "a")
    c1 = c.tick(100)
    assert c1 == HLC(100, 0, "a")
    c2 = c1.tick(100)
    assert c2 == HLC(100, 1, "a")
    # The physical clock going backwards does not move the HLC back.
    c3 = c2.tick(50)
    assert c3 == HLC(100, 2, "a") and c3 > c2


def test_receive_is_after_both_even_with_a_slow_local_clock() -> None:
    fast = HLC(5_000, 3, "fast")
    slow = HLC(1_000, 0, "slow")
    merged = slow.receive(fast, 1_001)
    assert merged > fast and merged > slow
    assert merged == HLC(5_000, 4, "slow")
    # Then a local event on the slow node is still after the fast one's stamp.
    assert merged.tick(1_002) > fast
    # Physical time ahead of both: the logical counter resets.
    assert slow.receive(fast, 9_000) == HLC(9_000, 0, "slow")
    # Equal walls: max logical + 1.
    assert HLC(10, 4, "a").receive(HLC(10, 7, "b"), 3) == HLC(10, 8, "a")


def test_compare_and_node_tie_break() -> None:
    assert compare(HLC(1, 0, "a"), HLC(1, 0, "b")) == -1
    assert compare(HLC(2, 0, "a"), HLC(1, 9, "z")) == 1
    assert compare(HLC(1, 1, "a"), HLC(1, 1, "a")) == 0


@given(
    st.tuples(st.integers(0, 10**14), st.integers(0, 999_999), st.text(max_size=8)),
    st.tuples(st.integers(0, 10**14), st.integers(0, 999_999), st.text(max_size=8)),
)
def test_encoding_round_trips_and_sorts_like_the_clock(a: tuple[int, int, str], b: tuple[int, int, str]) -> None:
    ha, hb = HLC(*a), HLC(*b)
    assert decode(encode(ha)) == ha
    if ha.wall != hb.wall or ha.logical != hb.logical:
        assert (encode(ha) < encode(hb)) == (ha < hb)


@pytest.mark.parametrize("bad", [5, "", "1.2", "x.1.n", "1.y.n", "-1.0.n"])
def test_decode_rejects_garbage(bad: object) -> None:
    with pytest.raises(ValueError):
        decode(bad)


def test_a_commands_stamp_text_is_kept_only_when_it_is_what_encode_writes() -> None:
    """Issue 17: applying reuses the command's `hlc` text instead of encoding
    the parsed stamp again, but only when the text is exactly the encoding
    (15 wall and 6 logical digits); any other accepted form is encoded."""
    from mesh.state.commands import parse_meta

    texts = {
        "001714564800000.000000.h1": True,
        "001714564800000.000042.a.b": True,
        "001714564800000.000000.": True,
        "1.0.h1": False,
        "001714564800000.0.abcd.x": False,  # a dot at the 23rd character, inside the node
        "001714564800000.0000001.h": False,
        "0017145648000001.000000.h": False,
    }
    for text, kept in texts.items():
        meta = parse_meta({"hlc": text, "time": 1})
        assert meta.hlc == meta.stamp.encode(), text
        assert (meta.hlc_text is not None) == kept, text
