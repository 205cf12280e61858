"""`hana-node chaos` without matplotlib (issue 16): it used to run the whole
workload and then crash with exit 1, the code of "anomaly found". Now it
refuses before anything starts, with exit 2 and how to install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.chaos.test_checks import good_history

# matplotlib made unimportable, as on a machine without it: a finder ahead
# of every other that says no such module (what Python says when it is not
# installed), then hana-node as its console script runs it.
RUN_WITHOUT_MATPLOTLIB = """
import sys

class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoMatplotlib())
for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
    del sys.modules[name]
from mesh.cli import main
sys.exit(main(sys.argv[1:]))
"""


def hana_node_without_matplotlib(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_MATPLOTLIB, *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("extra", [[], ["--compare-hostile"]], ids=["run", "compare-hostile"])
def test_chaos_without_matplotlib_exits_2_before_starting_anything(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "out"
    proc = hana_node_without_matplotlib("chaos", "--nodes", "3", "--duration", "60", "--out", str(out), *extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "chaos: matplotlib cannot be imported (No module named 'matplotlib')" in proc.stderr
    assert "pip install -e '.[chaos]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # no node, no history: nothing ran


def test_check_only_without_matplotlib_exits_2_and_leaves_the_history(tmp_path: Path) -> None:
    meta = {"type": "meta", "seed": 5, "nodes": ["n1", "n2"], "duration": 10.0, "started_at": "x", "args": {}}
    (tmp_path / "history.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [meta, *good_history()]))
    before = (tmp_path / "history.jsonl").read_bytes()
    proc = hana_node_without_matplotlib("chaos", "--check-only", str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install -e '.[chaos]'" in proc.stderr
    assert (tmp_path / "history.jsonl").read_bytes() == before
    assert not (tmp_path / "summary.json").exists()


def test_the_blocker_blocks_only_matplotlib() -> None:
    """The same wrapper with matplotlib present runs chaos's help: the
    refusal above comes from the missing module, not from the wrapper."""
    proc = hana_node_without_matplotlib("chaos", "--help")
    assert proc.returncode == 0 and "--check-only" in proc.stdout
    import importlib.util

    assert importlib.util.find_spec("matplotlib") is not None
