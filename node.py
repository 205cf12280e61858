#!/usr/bin/env python3
"""hana mesh node: `python node.py serve …` is the same as `hana-node serve …`."""

from mesh.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
