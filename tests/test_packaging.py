"""Quiet installs (issue 16): the package builds without setuptools'
license deprecation warning, and the README's scripts hide pip's output
unless an install fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QUIETLY = REPO / "scripts" / "quietly"


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it() -> None:
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert doc["project"]["license"] == "MIT"
    # PEP 639 license expressions: setuptools 77 and later.
    assert doc["build-system"]["requires"] == ["setuptools>=77"]


@pytest.mark.slow
def test_the_wheel_builds_without_a_deprecation_warning(tmp_path: Path) -> None:
    """Build as pip does on a fresh machine (isolated build environment,
    setuptools from the index), from a copy of the sources."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("mesh", "simulations"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "BuildBackendWarning" not in text and "is deprecated" not in text, text
    (wheel,) = (tmp_path / "dist").glob("hana_mesh-*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        assert "License-Expression: MIT" in z.read(meta).decode().splitlines()


def test_quietly_hides_the_output_of_a_command_that_works() -> None:
    out = subprocess.run(
        [str(QUIETLY), "sh", "-c", "echo lots of noise; echo more >&2"], capture_output=True, text=True
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_quietly_shows_everything_when_the_command_fails() -> None:
    out = subprocess.run(
        [str(QUIETLY), "sh", "-c", "echo collecting; echo 'ERROR: no such package' >&2; exit 3"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 3
    assert out.stdout == ""
    assert "collecting" in out.stderr and "ERROR: no such package" in out.stderr
    assert "scripts/quietly: exit status 3 from: sh -c" in out.stderr


def test_the_scripts_run_every_pip_command_quietly() -> None:
    for script in ("demo", "test"):
        pip_lines = [line for line in (REPO / "scripts" / script).read_text().splitlines() if "pip install" in line]
        assert pip_lines, script
        assert all("scripts/quietly .venv/bin/python -m pip install" in line for line in pip_lines), (script, pip_lines)


@pytest.mark.slow
def test_scripts_demo_prints_nothing_but_what_the_demo_prints() -> None:
    """The README's first command, with --help so that it ends at once: its
    pip steps (pip upgrade, the editable install) print nothing."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "PIP_VERBOSE")}
    out = subprocess.run(
        [str(REPO / "scripts" / "demo"), "--help"], capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == ""
    assert out.stdout.startswith("usage: hana-node demo")
