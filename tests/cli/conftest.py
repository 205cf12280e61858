"""One 3-node mesh per test module; `healthy` puts it back together
(restarted, continued, settled) before each test that uses it, so that
tests that break it stay independent."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.kit import make_healthy, module_mesh
from tests.integration.harness import Cluster


@dataclass
class Settled:
    c: Cluster
    controller: str

    def api(self, nid: str) -> str:
        return self.c.nodes[nid].api

    def followers(self) -> list[str]:
        return [n for n in self.c.nodes if n != self.controller]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("mesh")
    yield from module_mesh(root)


@pytest.fixture
def healthy(mesh: Cluster) -> Settled:
    return Settled(mesh, make_healthy(mesh))
