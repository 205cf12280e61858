"""Recovery point names are formatted without clock modules; check them
against the standard library's calendar."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from mesh.state.model import recovery_name


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_recovery_name_matches_datetime(ms: int) -> None:
    dt = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(milliseconds=ms)
    assert recovery_name(ms) == f"recovery-{dt:%Y%m%dT%H%M%S}.{ms % 1000:03d}Z"


def test_known_instants() -> None:
    assert recovery_name(0) == "recovery-19700101T000000.000Z"
    assert recovery_name(951_782_400_000) == "recovery-20000229T000000.000Z"
