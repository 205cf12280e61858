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
