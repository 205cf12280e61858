"""The chaos runner's command line: bad flags are refused before anything
starts, and `hana-node chaos` passes its flags through."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.cli import main as hana_node
from simulations.chaos import main as chaos


@pytest.mark.parametrize(
    "argv",
    [
        ["--nodes", "2"],
        ["--nodes", "9"],
        ["--duration", "0"],
        ["--keys", "1"],
        ["--think", "-1"],
        ["--snapshot-every", "0"],
    ],
)
def test_out_of_range_values_exit_2_and_start_nothing(argv: list[str], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    assert chaos([*argv, "--out", str(out)]) == 2
    assert "chaos:" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["--faults", "kill,meteor"], ["--gap", "3:1"], ["--hold", "x"], ["--nodes", "x"]])
def test_malformed_flags_are_usage_errors(argv: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        chaos(argv)
    assert exc.value.code == 2
    assert "chaos: error" in capsys.readouterr().err


def test_hana_node_chaos_passes_its_flags_through(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert hana_node(["chaos", "--nodes", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--nodes must be between 3 and 7" in capsys.readouterr().err
