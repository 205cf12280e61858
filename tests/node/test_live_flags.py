"""`serve --settle-ms`, `--merge-ms` and `--coalesce-history` reach the node's configuration
(defaults 250 and 500), and out-of-range values are refused before
anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.cli import build_parser
from mesh.node.flags import CliError
from mesh.serve import build


@pytest.fixture(autouse=True)
def private_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("HANA_SECRET", raising=False)


def config(*extra: str):  # type: ignore[no-untyped-def]
    args = build_parser().parse_args(["serve", "--id", "n1", "--no-mdns", "--peers", "n1=127.0.0.1:7071", *extra])
    return build(args)[0]


def test_live_flags_reach_the_node() -> None:
    cfg = config()
    assert (cfg.settle_ms, cfg.merge_ms, cfg.live_fanout) == (250, 500, "direct")
    assert cfg.coalesce_history is False
    cfg = config("--settle-ms", "40", "--merge-ms", "0", "--live-fanout", "relay", "--coalesce-history")
    assert (cfg.settle_ms, cfg.merge_ms, cfg.live_fanout, cfg.coalesce_history) == (40, 0, "relay", True)


@pytest.mark.parametrize("flags", [("--settle-ms", "0"), ("--settle-ms", "60001"), ("--merge-ms", "-1")])
def test_out_of_range_live_flags_are_refused(flags: tuple[str, str]) -> None:
    with pytest.raises(CliError, match=flags[0]):
        config(*flags)
