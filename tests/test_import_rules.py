"""The layering of DESIGN.md, checked by parsing imports with `ast`.

- mesh/raft: the pure core. Only an allow-list of standard-library modules
  without IO, clocks or concurrency, plus mesh.raft itself. `random` only as
  a type / for `random.Random(seed)`: no use of the global generator.
- mesh/state: pure and deterministic: no clock, IO, network, concurrency or
  global randomness (it may use serializers such as orjson and hashlib).
- mesh/storage/memory.py and mesh/replica.py: no asyncio (the simulator runs
  them as they are).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MESH = ROOT / "mesh"

RAFT_ALLOWED = {
    "__future__",
    "base64",
    "binascii",
    "collections",
    "dataclasses",
    "enum",
    "json",
    "random",
    "typing",
    "abc",
    "functools",
    "itertools",
    "bisect",
    "heapq",
    "operator",
}
IMPURE = {"time", "datetime", "os", "socket", "asyncio", "threading", "subprocess", "io", "pathlib", "select"}
IMPURE |= {"multiprocessing", "concurrent", "signal", "shutil", "tempfile", "uuid", "secrets", "selectors", "ssl"}
RAFT_FORBIDDEN = IMPURE | {"orjson", "aiohttp", "zeroconf", "uvloop"}
# The functions of the module-global generator.
GLOBAL_RANDOM = {
    "random",
    "randint",
    "randrange",
    "choice",
    "choices",
    "shuffle",
    "sample",
    "seed",
    "uniform",
    "getrandbits",
    "gauss",
    "randbytes",
    "betavariate",
    "expovariate",
    "triangular",
}


def imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, absolute dotted module) of every import, also inside functions."""
    out: list[tuple[int, str]] = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            if name == "random":
                out += [(node.lineno, f"random.{a.name}") for a in node.names if a.name != "Random"]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__") or (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
        ):
            out.append((node.lineno, "<dynamic import>"))
    return out


def global_random_uses(tree: ast.AST) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "random"
        and node.attr in GLOBAL_RANDOM
    ]


def violations(source: str, module: str, allowed: set[str] | None, forbidden: set[str], own: str) -> list[str]:
    """Problems in one module's source. `allowed` None: anything not forbidden."""
    tree = ast.parse(source)
    out = []
    for line, name in imports(tree, module):
        top = name.split(".")[0]
        if name == "<dynamic import>":
            out.append(f"{module}:{line}: dynamic import")
        elif name.startswith("random."):
            out.append(f"{module}:{line}: imports {name} (the global generator)")
        elif name == own or name.startswith(own + "."):
            continue
        elif top in forbidden or (allowed is not None and top not in allowed):
            out.append(f"{module}:{line}: imports {name}")
    out += [f"{module}:{line}: uses the global random generator" for line in global_random_uses(tree)]
    return out


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = [*parts[:-1], "__init__"]
    return ".".join(parts)


def files(pkg: str) -> list[Path]:
    return sorted((MESH / pkg).rglob("*.py"))


def test_raft_core_imports_only_pure_stdlib() -> None:
    found = files("raft")
    assert len(found) >= 5
    problems = []
    for path in found:
        problems += violations(path.read_text(), module_name(path), RAFT_ALLOWED, RAFT_FORBIDDEN, "mesh.raft")
    assert problems == []


def test_state_machine_is_pure() -> None:
    if not (MESH / "state").is_dir():
        pytest.skip("mesh/state does not exist")
    problems = []
    for path in files("state"):
        problems += violations(path.read_text(), module_name(path), None, IMPURE, "mesh.state")
    # mesh.state may only reach down into mesh.raft types, never up.
    for path in files("state"):
        for line, name in imports(ast.parse(path.read_text()), module_name(path)):
            if name.startswith("mesh.") and not name.startswith(("mesh.state", "mesh.raft", "mesh.errors")):
                problems.append(f"{module_name(path)}:{line}: imports {name} (a higher layer)")
    assert problems == []


@pytest.mark.parametrize("rel", ["storage/memory.py", "replica.py"])
def test_synchronous_layers_do_not_import_asyncio(rel: str) -> None:
    path = MESH / rel
    if not path.exists():
        pytest.skip(f"mesh/{rel} does not exist")
    problems = violations(path.read_text(), module_name(path), None, {"asyncio", "uvloop"}, "mesh")
    assert problems == []


# -- the checker itself must be able to fail ----------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time\n", "imports time"),
        ("from time import monotonic\n", "imports time"),
        ("import os.path\n", "imports os.path"),
        ("def f():\n    import asyncio\n", "imports asyncio"),
        ("import orjson\n", "imports orjson"),
        ("import hashlib\n", "imports hashlib"),  # not on the allow-list
        ("import random\nx = random.randint(1, 6)\n", "global random generator"),
        ("import random\nrandom.seed(4)\n", "global random generator"),
        ("from random import choice\n", "imports random.choice"),
        ("__import__('socket')\n", "dynamic import"),
        ("from .. import cli\n", "imports mesh"),
        ("from mesh.node import runtime\n", "imports mesh.node"),
    ],
)
def test_checker_flags_synthetic_violations(source: str, expected: str) -> None:
    problems = violations(source, "mesh.raft.fake", RAFT_ALLOWED, RAFT_FORBIDDEN, "mesh.raft")
    assert any(expected in p for p in problems), problems


def test_checker_accepts_a_clean_module() -> None:
    source = (
        "from __future__ import annotations\nimport random\nfrom dataclasses import dataclass\n"
        "from mesh.raft.messages import Entry\nfrom .log import RaftLog\n"
        "def f(rng: random.Random) -> int:\n    return rng.randrange(10)\n"
    )
    assert violations(source, "mesh.raft.fake", RAFT_ALLOWED, RAFT_FORBIDDEN, "mesh.raft") == []
