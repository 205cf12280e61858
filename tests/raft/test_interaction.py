"""Runs every transcript in testdata/ (see harness.py for the commands)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .harness import run_transcript

TESTDATA = Path(__file__).parent / "testdata"
FILES = sorted(TESTDATA.glob("*.txt"))
# Transcripts that show a known core bug: file stem -> bug report.
XFAIL: dict[str, str] = {}


def _rewrite(config: pytest.Config) -> bool:
    return bool(config.getoption("--rewrite", default=False)) or os.environ.get("HANA_REWRITE") == "1"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=f"core bug: {XFAIL[p.stem]}"))
        if p.stem in XFAIL
        else p
        for p in FILES
    ],
    ids=[p.stem for p in FILES],
)
def test_transcript(path: Path, request: pytest.FixtureRequest) -> None:
    text, actual = run_transcript(path)
    if _rewrite(request.config) and actual != text:
        path.write_text(actual)
        return
    assert actual == text, f"{path.name} differs; rerun with --rewrite and review the git diff"


def test_transcripts_exist() -> None:
    assert len(FILES) >= 15
