"""The live frame decoder checks each distinct source and gesture of a
frame once: it takes exactly the frames the item-by-item check took, and
gives the same items."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.transport.codec import LiveItem, LiveMalformed, _live_from_dict


def _item_by_item(items: list[Any]) -> tuple[LiveItem, ...] | None:
    """The check of each item in full (main before the shortcut)."""
    out = []
    for item in items:
        if not isinstance(item, list) or len(item) != 5:
            return None
        key, value, source, seq, gesture = item
        if (
            not isinstance(key, str)
            or not 0 < len(key) <= 1024
            or not isinstance(source, str)
            or not 0 < len(source) <= 255
            or type(seq) is not int
            or not 0 <= seq < 1 << 63
            or not (gesture is None or (isinstance(gesture, str) and 0 < len(gesture) <= 256))
        ):
            return None
        out.append(LiveItem(key, value, source, seq, gesture))
    return tuple(out)


junk = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.just(""), st.just("x" * 300), st.just([]), st.just({})
)
text = st.sampled_from(["a", "b", "parameters/x"])
field = st.one_of(text, junk)
seq = st.one_of(st.integers(0, 10), st.just(-1), st.just(1 << 63), st.just(True), st.just(1.5), st.just("3"))
good_item = st.tuples(text, st.integers(), st.sampled_from(["a", "b"]), st.integers(0, 9), st.sampled_from([None, "g"]))
any_item = st.one_of(
    good_item.map(list),
    good_item.map(list),
    st.tuples(field, st.integers(), field, seq, st.one_of(st.none(), field)).map(list),
    st.lists(field, max_size=6),
    junk,
)


@settings(max_examples=500, deadline=None)
@given(st.lists(any_item, min_size=1, max_size=8))
def test_the_decoder_takes_what_the_item_by_item_check_takes(items: list[Any]) -> None:
    raw = {"type": "live", "to": "b", "from": "a", "items": items}
    expected = _item_by_item(items)
    try:
        got = _live_from_dict(raw).items
    except LiveMalformed:
        got = None
    assert got == expected
    assert got is None or all(type(i) is LiveItem for i in got)
