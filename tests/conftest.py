"""Shared pytest options."""

from __future__ import annotations

import os
import tempfile

import pytest

# Every process the suite starts (node processes inherit the environment)
# runs mDNS on loopback only: no test may send multicast out of the
# machine's network cards (shared/NOTES-network.md). The namespace test
# clears it on purpose inside its own namespaces.
os.environ["HANA_MDNS_INTERFACES"] = "127.0.0.1"
# Per-user files (the loopback cluster secret, the pointers the CLI follows
# to a node's admin token) go to a directory of this test session, never to
# the home directory of whoever runs the suite.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="hana-test-config-")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="rewrite golden transcript files with the actual output (also: HANA_REWRITE=1)",
    )


# The full suite (./scripts/test) runs on two pytest-xdist workers with
# --dist loadgroup. The slow tests that start real processes and judge them
# by the clock (chaos runs, browser, discovery, demo and other integration
# runs) share one group, so they run one at a time on one worker and never
# compete with each other for the two cores; everything else, the
# simulator's CPU-bound seed sweeps included, goes to whichever worker is
# free. Without xdist (-n 0) the marker does nothing.
_REAL_PROCESS_DIRS = ("chaos", "browser", "integration", "discovery")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") is None:
            continue
        top = item.path.relative_to(config.rootpath).parts[1:2]
        if item.get_closest_marker("integration") is not None or (top and top[0] in _REAL_PROCESS_DIRS):
            item.add_marker(pytest.mark.xdist_group("real-processes"))
