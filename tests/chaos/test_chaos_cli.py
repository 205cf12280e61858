"""The chaos runner's command line: bad flags are refused before anything
starts, and `hana-node chaos` passes its flags through. `hana-node chaos`
and `hana-node simulate` are the entry points of group hana_node.commands
(pyproject.toml): mesh finds them by name and never imports simulations."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import orjson
import pytest

from mesh import cli
from mesh.cli import main as hana_node
from simulations.chaos import main as chaos
from tests.chaos.test_checks import good_history


@pytest.mark.parametrize(
    "argv",
    [
        ["--nodes", "2"],
        ["--nodes", "9"],
        ["--duration", "0"],
        ["--keys", "1"],
        ["--think", "-1"],
        ["--snapshot-every", "0"],
        ["--converge-timeout", "0"],
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


def test_hana_node_simulate_passes_its_flags_through() -> None:
    with pytest.raises(SystemExit, match="unknown mutation 'no_such_bug'"):
        hana_node(["simulate", "--seeds", "1", "--mutation", "no_such_bug"])


def test_the_dev_commands_are_registered_entry_points() -> None:
    assert {name: ep.value for name, ep in cli.plugin_commands().items()} == {
        "simulate": "simulations.deterministic:main",
        "chaos": "simulations.chaos:main",
    }


def test_a_plugin_gets_its_arguments_and_one_that_cannot_load_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plugins = {
        "echo": EntryPoint("echo", "tests.chaos.test_chaos_cli:_echo", cli.PLUGIN_GROUP),
        "gone": EntryPoint("gone", "no_such_package.anywhere:main", cli.PLUGIN_GROUP),
        # A plugin never shadows a command of hana-node's own.
        "status": EntryPoint("status", "tests.chaos.test_chaos_cli:_echo", cli.PLUGIN_GROUP),
    }
    monkeypatch.setattr(cli, "plugin_commands", lambda: plugins)
    assert hana_node(["echo", "--nodes", "5", "x"]) == 7
    assert capsys.readouterr().out == "echo ['--nodes', '5', 'x']\n"
    assert hana_node(["gone", "--x"]) == 2
    assert "hana-node gone: cannot load no_such_package.anywhere:main" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        hana_node(["status", "--help"])
    assert "echo" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        hana_node(["--help"])
    listed = capsys.readouterr().out
    assert "echo" in listed and "gone" in listed


def _echo(argv: list[str]) -> int:
    print("echo", argv)
    return 7


def test_hana_node_does_not_import_simulations() -> None:
    """Not for its own commands, not for --help (which lists the plugins)."""
    probe = (
        "import sys\nfrom mesh.cli import main\n"
        "for argv in (['--help'], ['serve', '--help'], ['get', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('simulations', 'tests', 'bench')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert "simulate" in out.stdout and "chaos" in out.stdout  # listed by --help
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _write_history(path: Path, records: list[dict]) -> None:  # type: ignore[type-arg]
    meta = {"type": "meta", "seed": 5, "nodes": ["n1", "n2"], "duration": 10.0, "started_at": "x", "args": {}}
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [meta, *records]))


def test_check_only_checks_a_saved_history_again(tmp_path: Path) -> None:
    _write_history(tmp_path / "history.jsonl", good_history())
    assert chaos(["--check-only", str(tmp_path)]) == 0
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["anomaly_count"] == 0 and summary["ops"]["total"]["total"] == 9
    assert (tmp_path / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    # The same history with an acknowledged write missing from n2's log.
    records = good_history()
    final = next(r for r in records if r["type"] == "final" and r["node"] == "n2")
    final["records"] = final["records"][1:]
    _write_history(tmp_path / "history.jsonl", records)
    assert chaos(["--check-only", str(tmp_path)]) == 1
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert "acknowledged_writes" in {a["check"] for a in summary["anomalies"]}


def test_check_only_refuses_a_missing_or_foreign_history(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert chaos(["--check-only", str(tmp_path)]) == 2
    (tmp_path / "history.jsonl").write_text('{"type": "op"}\nnot json\n')
    assert chaos(["--check-only", str(tmp_path)]) == 2
    assert "not a chaos history" in capsys.readouterr().err
