"""The layering of DESIGN.md, checked over the whole import graph of mesh/.

Every rule is a function of a source tree (`load_tree`): the real one must
obey it, and a copy of it with one planted violation must not (`PLANTS`:
at least one per rule, so that no rule can pass by checking nothing).

- mesh/raft: the pure core. Only an allow-list of standard-library modules
  without IO, clocks or concurrency, plus mesh.raft itself. `random` only as
  a type / for `random.Random(seed)`: no use of the global generator.
- mesh/state: pure and deterministic: no clock, IO, network, concurrency or
  global randomness (it may use serializers such as orjson and hashlib), and
  nothing of mesh above it.
- mesh/storage/memory.py and mesh/replica.py: no asyncio (the simulator runs
  them as they are).
- The node core (mesh/node/core.py, config, live, autopilot, bootstrap), mesh/clock.py
  and the transport protocol with its in-memory twin: no clock, IO, network,
  concurrency or global randomness (the simulator runs the node's logic).
- mesh/api never imports mesh/node or the composition root (mesh/serve.py,
  mesh/adapter.py, mesh/cli.py): it sees a node only as a `NodeHandle`.
- mesh/node never imports mesh/api or the composition root.
- mesh never imports simulations, tests or bench (dev tooling).
- Only mesh/api, the composition root mesh/serve.py, mesh/client.py and mesh/osc
  import aiohttp; only mesh/discovery/mdns.py imports zeroconf.
- No dynamic imports (`__import__`, `importlib.import_module`) in mesh:
  they would hide an edge from every rule here.
- No import cycles between the modules of mesh. Every import counts (also
  inside functions: a lazy import is still a dependency) except those under
  `if TYPE_CHECKING:` (annotations only; mesh/state types its helpers'
  back-references that way).

An own `ast` walk rather than import-linter (PyPI): the purity rules look at
more than imports (the global random generator) and at standard-library
modules, which import-linter's contracts do not express, and a rule here is
a plain function of a graph, which a test can feed a planted violation.
"""

from __future__ import annotations

import ast
import functools
import itertools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import pytest

ROOT = Path(__file__).resolve().parents[1]
MESH = ROOT / "mesh"
# The composition root: above both the API and the node.
COMPOSITION_ROOT = ("mesh.cli", "mesh.serve", "mesh.adapter")
AIOHTTP_USERS = ("mesh.api", "mesh.serve", "mesh.client", "mesh.osc")
ZEROCONF_USERS = ("mesh.discovery.mdns",)
DEV_TOOLING = {"simulations", "tests", "bench"}

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
            name = _absolute(node, package)
            out.append((node.lineno, name))
            if name == "random":
                out += [(node.lineno, f"random.{a.name}") for a in node.names if a.name != "Random"]
        elif _is_dynamic_import(node):
            out.append((node.lineno, "<dynamic import>"))
    return out


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a `from … import` names, relative imports resolved
    against `package` (the importing module's package)."""
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _is_dynamic_import(node: ast.AST) -> TypeGuard[ast.Call]:
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Name) and node.func.id == "__import__")
        or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
        or (isinstance(node.func, ast.Name) and node.func.id == "import_module")
    )


def global_random_uses(tree: ast.AST) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "random"
        and node.attr in GLOBAL_RANDOM
    ]


@functools.lru_cache(maxsize=1024)
def parse(source: str) -> ast.Module:
    """The syntax tree of `source` (cached: the planted copies differ from
    the real tree in one file; never modify the tree)."""
    return ast.parse(source)


def violations(source: str, module: str, allowed: set[str] | None, forbidden: set[str], own: str) -> list[str]:
    """Problems in one module's source. `allowed` None: anything not forbidden."""
    tree = parse(source)
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


# -- the graph ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Import:
    target: str  # a module of the tree (a submodule for `from pkg import submodule`), else as written
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


@dataclass(frozen=True, slots=True)
class Tree:
    """The modules of one copy of the mesh package: source text, path
    (relative to the tree's root) and imports of each."""

    sources: dict[str, str]
    paths: dict[str, str]
    graph: dict[str, tuple[Import, ...]]

    def where(self, module: str, line: int) -> str:
        return f"{self.paths[module]}:{line}"


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = [*parts[:-1], "__init__"]
    return ".".join(parts)


def _walk(node: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node, and whether it sits in the body of `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            yield child, type_only
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, type_only
                yield from _walk(stmt, type_only)
            continue
        yield child, type_only
        yield from _walk(child, type_only)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@functools.lru_cache(maxsize=1024)
def module_imports(source: str, module: str, is_package: bool, modules: frozenset[str]) -> tuple[Import, ...]:
    """The imports of one module; `from pkg import name` is an import of
    pkg.name where that is a module of `modules`, else of pkg."""
    package = module if is_package else module.rsplit(".", 1)[0]
    out: list[Import] = []
    for node, type_only in _walk(parse(source)):
        if isinstance(node, ast.Import):
            out += [Import(a.name, node.lineno, type_only) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            out += [Import(sub, node.lineno, type_only) for sub in subs]
            if len(subs) < len(node.names):
                out.append(Import(base, node.lineno, type_only))
        elif _is_dynamic_import(node):
            out.append(Import("<dynamic import>", node.lineno, type_only))
    return tuple(out)


def load_tree(root: Path, package: str = "mesh") -> Tree:
    """Parse every module of `root/package` (a package's __init__ is the
    package's module)."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    modules = frozenset(files)
    sources, paths, graph = {}, {}, {}
    for name, (path, is_package) in files.items():
        sources[name] = path.read_text()
        paths[name] = path.relative_to(root).as_posix()
        graph[name] = module_imports(sources[name], name, is_package, modules)
    return Tree(sources, paths, graph)


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


# -- the rules --------------------------------------------------------------------


def _pure_problems(
    tree: Tree, package: str, allowed: set[str] | None, forbidden: set[str], lower: tuple[str, ...]
) -> list[str]:
    problems = []
    for module, source in tree.sources.items():
        if not within(module, package):
            continue
        # `violations` names a package's __init__ as pkg.__init__ (for relative imports).
        name = module + ".__init__" if tree.paths[module].endswith("__init__.py") else module
        problems += [f"{tree.paths[module]}: {p}" for p in violations(source, name, allowed, forbidden, package)]
        problems += [
            f"{tree.where(module, i.line)}: imports {i.target} (a higher layer)"
            for i in tree.graph[module]
            if within(i.target, "mesh") and not within(i.target, package, *lower)
        ]
    return problems


def raft_is_pure(tree: Tree) -> list[str]:
    return _pure_problems(tree, "mesh.raft", RAFT_ALLOWED, RAFT_FORBIDDEN, ())


def state_is_pure(tree: Tree) -> list[str]:
    return _pure_problems(tree, "mesh.state", None, IMPURE, ("mesh.raft", "mesh.errors"))


# The node's own logic (issue 13): synchronous, clock-free and socket-free,
# so that the simulator runs it as production does. Logging is allowed (it
# reads a clock only to stamp lines, never to decide).
SANS_IO = (
    "mesh.node.core",
    "mesh.node.config",
    "mesh.node.live",
    "mesh.node.autopilot",
    "mesh.node.bootstrap",
    "mesh.node.offline",
    "mesh.node.outbox",
    "mesh.clock",
    "mesh.transport.base",
    "mesh.transport.memory",
)


def node_core_is_sans_io(tree: Tree) -> list[str]:
    problems = []
    for module in SANS_IO:
        source = tree.sources.get(module)
        if source is None:
            problems.append(f"{module}: missing (the rule would check nothing)")
            continue
        problems += [f"{tree.paths[module]}: {p}" for p in violations(source, module, None, IMPURE, "mesh")]
    return problems


def synchronous_layers_have_no_asyncio(tree: Tree) -> list[str]:
    return [
        f"{tree.where(module, i.line)}: imports {i.target}"
        for module in ("mesh.storage.memory", "mesh.replica")
        for i in tree.graph.get(module, ())
        if i.target.split(".")[0] in {"asyncio", "uvloop"}
    ]


def _edges(tree: Tree, sources: Callable[[str], bool], targets: Callable[[str], bool], why: str) -> list[str]:
    return [
        f"{tree.where(module, i.line)}: imports {i.target} ({why})"
        for module, found in tree.graph.items()
        if sources(module)
        for i in found
        if targets(i.target)
    ]


def api_never_imports_node(tree: Tree) -> list[str]:
    return _edges(
        tree,
        lambda m: within(m, "mesh.api"),
        lambda t: within(t, "mesh.node", *COMPOSITION_ROOT),
        "the API sees a node only as a NodeHandle",
    )


def node_never_imports_api(tree: Tree) -> list[str]:
    return _edges(
        tree,
        lambda m: within(m, "mesh.node"),
        lambda t: within(t, "mesh.api", *COMPOSITION_ROOT),
        "the node is below the API",
    )


def mesh_never_imports_dev_tooling(tree: Tree) -> list[str]:
    return _edges(tree, lambda m: True, lambda t: t.split(".")[0] in DEV_TOOLING, "dev tooling")


def aiohttp_only_in_api_serve_client(tree: Tree) -> list[str]:
    return _edges(
        tree,
        lambda m: not within(m, *AIOHTTP_USERS),
        lambda t: within(t, "aiohttp"),
        "only mesh/api, mesh/serve.py, mesh/client.py and mesh/osc",
    )


def zeroconf_only_in_mdns(tree: Tree) -> list[str]:
    return _edges(
        tree, lambda m: not within(m, *ZEROCONF_USERS), lambda t: within(t, "zeroconf"), "only mesh/discovery/mdns.py"
    )


def no_dynamic_imports(tree: Tree) -> list[str]:
    return _edges(tree, lambda m: True, lambda t: t == "<dynamic import>", "hidden from these rules")


def no_asyncio_wait_for(tree: Tree) -> list[str]:
    """On Python 3.11, asyncio.wait_for loses a cancellation that lands as
    the awaited thing completes: a cancelled task (Ctrl-C in a watching CLI,
    a node shutting down) then runs on. `async with asyncio.timeout(...)`
    does not."""
    out = []
    for name, source in tree.sources.items():
        for node in ast.walk(parse(source)):
            uses = (
                isinstance(node, ast.Attribute)
                and node.attr == "wait_for"
                and isinstance(node.value, ast.Name)
                and node.value.id == "asyncio"
            )
            uses = uses or (
                isinstance(node, ast.ImportFrom)
                and node.module == "asyncio"
                and any(a.name == "wait_for" for a in node.names)
            )
            if uses:
                out.append(f"{tree.where(name, getattr(node, 'lineno', 0))}: asyncio.wait_for (use asyncio.timeout)")
    return out


def no_import_cycles(tree: Tree) -> list[str]:
    """One line per strongly connected component of the runtime import
    graph of mesh's modules, with one cycle through it."""
    edges: dict[str, dict[str, int]] = {m: {} for m in tree.graph}
    for module, found in tree.graph.items():
        for i in found:
            if not i.type_only and i.target in edges:
                edges[module].setdefault(i.target, i.line)
    problems = []
    for component in strongly_connected(edges):
        start = min(component)
        if len(component) == 1 and start not in edges[start]:
            continue
        cycle = _cycle_through(edges, component, start)
        steps = " -> ".join(f"{a} ({tree.where(a, edges[a][b])})" for a, b in itertools.pairwise(cycle))
        problems.append(f"import cycle: {steps} -> {start}")
    return problems


def strongly_connected(edges: dict[str, dict[str, int]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out


def _cycle_through(edges: dict[str, dict[str, int]], component: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside `component` (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(edges[node]):
            if child == start:
                return [*paths[node], start]
            if child in component and child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")


RULES: dict[str, Callable[[Tree], list[str]]] = {
    "raft_is_pure": raft_is_pure,
    "state_is_pure": state_is_pure,
    "synchronous_layers_have_no_asyncio": synchronous_layers_have_no_asyncio,
    "node_core_is_sans_io": node_core_is_sans_io,
    "api_never_imports_node": api_never_imports_node,
    "node_never_imports_api": node_never_imports_api,
    "mesh_never_imports_dev_tooling": mesh_never_imports_dev_tooling,
    "aiohttp_only_in_api_serve_client": aiohttp_only_in_api_serve_client,
    "zeroconf_only_in_mdns": zeroconf_only_in_mdns,
    "no_dynamic_imports": no_dynamic_imports,
    "no_import_cycles": no_import_cycles,
    "no_asyncio_wait_for": no_asyncio_wait_for,
}


TREE = load_tree(ROOT)


def files(pkg: str) -> list[Path]:
    return sorted((MESH / pkg).rglob("*.py"))


# -- the real tree ------------------------------------------------------------------


@pytest.mark.parametrize("rule", sorted(RULES))
def test_mesh_obeys(rule: str) -> None:
    assert RULES[rule](TREE) == []


def test_the_graph_holds_every_layer() -> None:
    """The rules above see the modules they speak of (a rule over an empty
    or misnamed tree would pass)."""
    for module in (*COMPOSITION_ROOT, "mesh.api.app", "mesh.api.handle", "mesh.node.runtime", "mesh.client"):
        assert module in TREE.graph, module
    assert "mesh.discovery.mdns" in TREE.graph and "mesh.replica" in TREE.graph
    assert "mesh.storage.memory" in TREE.graph
    assert sum(within(m, "mesh.raft") for m in TREE.graph) >= 5
    assert sum(within(m, "mesh.state") for m in TREE.graph) >= 5
    # The composition root does see both sides, and the API its handle.
    serve = {i.target for i in TREE.graph["mesh.serve"]}
    assert {"mesh.api.app", "mesh.node.runtime", "mesh.adapter"} <= serve
    assert "mesh.api.handle" in {i.target for i in TREE.graph["mesh.api.members_routes"]}


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


# -- every rule must be able to fail ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plant:
    rule: str
    file: str  # where the violation is planted (appended), relative to the repository
    code: str
    expected: str  # in the problem the rule must report

    def __str__(self) -> str:
        return f"{self.rule}:{self.file}"


PLANTS = [
    Plant("raft_is_pure", "mesh/raft/log.py", "import time\n", "imports time"),
    Plant("raft_is_pure", "mesh/raft/progress.py", "def _d6(r):\n    import random\n    return random.randint(1, 6)\n",
          "global random generator"),
    Plant("raft_is_pure", "mesh/raft/core.py", "from mesh.state import kv\n", "imports mesh.state"),
    Plant("state_is_pure", "mesh/state/kv.py", "import asyncio\n", "imports asyncio"),
    Plant("state_is_pure", "mesh/state/model.py", "from mesh.node import runtime\n",
          "mesh.node.runtime (a higher layer)"),
    Plant("synchronous_layers_have_no_asyncio", "mesh/replica.py", "import asyncio\n", "imports asyncio"),
    Plant("synchronous_layers_have_no_asyncio", "mesh/storage/memory.py", "def _f():\n    import uvloop\n",
          "imports uvloop"),
    Plant("node_core_is_sans_io", "mesh/node/core.py", "import time\n", "imports time"),
    Plant("node_core_is_sans_io", "mesh/transport/memory.py", "def _f():\n    import asyncio\n", "imports asyncio"),
    Plant("node_core_is_sans_io", "mesh/clock.py", "def _now():\n    import random\n    return random.random()\n",
          "global random generator"),
    # What members_routes.py did before issue 12.
    Plant("api_never_imports_node", "mesh/api/members_routes.py", "from mesh.node.flags import CliError\n",
          "imports mesh.node.flags"),
    Plant("api_never_imports_node", "mesh/api/kv_routes.py",
          "import typing\nif typing.TYPE_CHECKING:\n    from mesh.node.runtime import MeshNode\n",
          "imports mesh.node.runtime"),
    Plant("api_never_imports_node", "mesh/api/handle.py", "from mesh.adapter import NodeAdapter\n",
          "imports mesh.adapter"),
    # What mesh/node/serve.py did before issue 13.
    Plant("node_never_imports_api", "mesh/node/discovery_glue.py", "from mesh.api.app import create_app\n",
          "imports mesh.api.app"),
    Plant("node_never_imports_api", "mesh/node/runtime.py", "from ..api import handle\n", "imports mesh.api.handle"),
    Plant("node_never_imports_api", "mesh/node/demo.py", "def _f():\n    from mesh import serve\n",
          "imports mesh.serve"),
    # What mesh/cli.py did before issue 13.
    Plant("mesh_never_imports_dev_tooling", "mesh/cli.py",
          "def _chaos(argv):\n    from simulations.chaos import main\n    return main(argv)\n",
          "imports simulations.chaos"),
    Plant("mesh_never_imports_dev_tooling", "mesh/node/demo.py", "import tests.conftest\n", "imports tests.conftest"),
    Plant("aiohttp_only_in_api_serve_client", "mesh/node/discovery_glue.py", "from aiohttp import web\n",
          "imports aiohttp"),
    Plant("aiohttp_only_in_api_serve_client", "mesh/adapter.py", "import aiohttp.web\n", "imports aiohttp.web"),
    Plant("aiohttp_only_in_api_serve_client", "mesh/cli.py", "def _f():\n    import aiohttp\n", "imports aiohttp"),
    Plant("zeroconf_only_in_mdns", "mesh/discovery/static.py", "from zeroconf import Zeroconf\n", "imports zeroconf"),
    Plant("zeroconf_only_in_mdns", "mesh/serve.py", "def _f():\n    import zeroconf.asyncio\n",
          "imports zeroconf.asyncio"),
    Plant("no_dynamic_imports", "mesh/cli.py", "import importlib\nsim = importlib.import_module('simulations')\n",
          "dynamic import"),
    Plant("no_dynamic_imports", "mesh/node/demo.py", "def _f():\n    return __import__('simulations')\n",
          "dynamic import"),
    # app.py and the route modules importing each other (before issue 12).
    Plant("no_import_cycles", "mesh/api/_http.py", "def _app():\n    from mesh.api import app\n    return app\n",
          "mesh/api/_http.py:"),
    Plant("no_import_cycles", "mesh/raft/messages.py", "from .core import Raft\n", "mesh/raft/messages.py:"),
    Plant("no_import_cycles", "mesh/errors.py", "from mesh import errors as _self\n", "import cycle: mesh.errors"),
    # What mesh/cli_live.py did before: Ctrl-C could be lost in `live watch`.
    Plant("no_asyncio_wait_for", "mesh/cli_live.py",
          "async def _f(q):\n    return await asyncio.wait_for(q.get(), 1)\n", "asyncio.wait_for"),
    Plant("no_asyncio_wait_for", "mesh/node/runtime.py",
          "def _f():\n    from asyncio import wait_for\n    return wait_for\n", "asyncio.wait_for"),
]  # fmt: skip


def test_every_rule_has_a_planted_violation() -> None:
    assert {p.rule for p in PLANTS} == set(RULES)


@pytest.fixture(scope="module")
def copy_of_mesh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    shutil.copytree(MESH, root / "mesh", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_a_copy_of_the_tree_is_clean(copy_of_mesh: Path) -> None:
    tree = load_tree(copy_of_mesh)
    assert tree.graph == TREE.graph
    assert {rule: check(tree) for rule, check in RULES.items()} == {key: [] for key in RULES}


@pytest.mark.parametrize("plant", PLANTS, ids=str)
def test_a_planted_violation_is_caught(plant: Plant, copy_of_mesh: Path) -> None:
    path = copy_of_mesh / plant.file
    clean = path.read_text()
    try:
        path.write_text(clean + "\n\n" + plant.code)
        problems = RULES[plant.rule](load_tree(copy_of_mesh))
    finally:
        path.write_text(clean)
    assert any(plant.expected in p and plant.file in p for p in problems), problems


def test_from_package_import_submodule_is_an_edge_to_the_submodule() -> None:
    modules = frozenset({"mesh.api", "mesh.api.app", "mesh.api.kv_routes", "mesh.raft"})
    source = (
        "from mesh.api import kv_routes, NODE\nfrom . import app\nfrom mesh.raft import ConfChange\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mesh.api import app\nelse:\n    import os\n"
    )
    found = module_imports(source, "mesh.api.members_routes", False, modules)
    assert [(i.target, i.type_only) for i in found] == [
        ("mesh.api.kv_routes", False),
        ("mesh.api", False),
        ("mesh.api.app", False),
        ("mesh.raft", False),
        ("typing", False),
        ("mesh.api.app", True),
        ("os", False),
    ]


def test_cycles_are_found_in_a_synthetic_graph() -> None:
    tree = Tree(
        sources={},
        paths={m: m.replace(".", "/") + ".py" for m in "abcde"},
        graph={
            "a": (Import("b", 1, False),),
            "b": (Import("c", 2, False),),
            "c": (Import("a", 3, False), Import("d", 4, False)),
            "d": (Import("e", 5, True),),
            "e": (Import("d", 6, False),),
        },
    )
    # a -> b -> c -> a is one; d <-> e is not (one side is type-only).
    assert no_import_cycles(tree) == ["import cycle: a (a.py:1) -> b (b.py:2) -> c (c.py:3) -> a"]


# -- the raft checker's source forms --------------------------------------------------


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
