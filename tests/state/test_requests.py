"""A command proposed twice under one request id is applied once; the copy
answers the first result, also on a node restored from a snapshot."""

from __future__ import annotations

import orjson

from mesh.state.model import MAX_REMEMBERED_REQUESTS, HanaState


def cmd(**fields: object) -> bytes:
    return orjson.dumps(fields)


def test_duplicate_request_applies_once() -> None:
    a = HanaState()
    first = a.apply(1, cmd(op="put", key="parameters/x", value=1, expected_version=0, rid="n2.ab.1"))
    assert first["version"] == 1
    again = a.apply(2, cmd(op="put", key="parameters/x", value=1, expected_version=0, rid="n2.ab.1"))
    assert again == first  # not a version_conflict: it is the same request
    assert a.revision == 1 and a.get("parameters/x").version == 1  # type: ignore[union-attr]
    # Another request id is a new request.
    other = a.apply(3, cmd(op="put", key="parameters/x", value=2, expected_version=0, rid="n2.ab.2"))
    assert other["error"]["code"] == "version_conflict"


def test_request_memory_survives_snapshot_and_is_bounded() -> None:
    a = HanaState()
    res = a.apply(1, cmd(op="put", key="parameters/y", value=1, rid="r-1"))
    b = HanaState()
    b.restore(a.snapshot())
    assert b.apply(2, cmd(op="put", key="parameters/y", value=1, rid="r-1")) == res
    assert b.revision == 1
    for i in range(MAX_REMEMBERED_REQUESTS + 5):
        b.apply(10 + i, cmd(op="put", key="parameters/z", value=i, rid=f"bulk-{i}"))
    assert len(b.requests) == MAX_REMEMBERED_REQUESTS
    assert "r-1" not in b.requests
