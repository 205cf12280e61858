"""The audit trail's hash chain (issue 18): each entry carries the hash of the
one before it; the chain survives snapshots and retention (the hash at the
cut is kept); it is the same on every node; an altered entry is named."""

from __future__ import annotations

import itertools

import orjson

from mesh.state.audit import entry_hash, hash_at, verify_chain
from mesh.state.model import HanaState
from tests.state.helpers import Driver


def _events(d: Driver, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        d("security_event", event="login_failed", address=f"10.0.0.{i}", count=1, path="/v1/kv")


def test_each_entry_carries_the_hash_of_the_one_before() -> None:
    d = Driver()
    d("put", key="parameters/p", value=1)
    d("save", name="s1")
    _events(d, 3)
    entries = [e for _, e in d.hs.audit_trail.entries]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert entries[0]["prev"] == ""
    for before, after in itertools.pairwise(entries):
        assert after["prev"] == entry_hash(before)
    assert d.hs.audit_trail.head == entry_hash(entries[-1])
    report = d.hs.audit_trail.verify()
    assert report["ok"] and report["breaks"] == [] and report["seq"] == 4 and report["chained"] == 4


def test_an_altered_entry_is_named() -> None:
    d = Driver()
    d("save", name="s1")
    _events(d, 4)
    trail = d.hs.audit_trail
    entries = [e for _, e in trail.entries]
    entries[2]["address"] = "10.9.9.9"  # seq 3
    report = trail.verify()
    assert not report["ok"]
    assert [b["seq"] for b in report["breaks"]] == [3]
    # The newest entry altered: the head says so.
    entries[2]["address"] = "10.0.0.1"
    assert trail.verify()["ok"]
    entries[-1]["author"] = "mallory"
    assert [b["seq"] for b in trail.verify()["breaks"]] == [5]
    # A dropped entry in the middle is a break too.
    entries[-1]["author"] = "alice"
    doc = verify_chain(entries[:2] + entries[3:], trail.head, trail.cut, trail.seq)
    assert not doc["ok"]


def test_the_chain_survives_snapshots_and_retention() -> None:
    d = Driver(HanaState(audit_limit=3))
    _events(d, 5)
    trail = d.hs.audit_trail
    # Retention dropped seq 1 and 2; the oldest held names the hash at the cut.
    held = [e for _, e in trail.entries]
    assert [e["seq"] for e in held] == [3, 4, 5]
    assert held[0]["prev"] == trail.cut != ""
    other = HanaState(audit_limit=3)
    other.restore(d.hs.snapshot())
    assert (other.audit_trail.head, other.audit_trail.cut) == (trail.head, trail.cut)
    assert other.audit_trail.verify()["ok"]
    # Both go on with the same chain.
    replica = Driver(other)
    replica.index, replica.time = d.index, d.time
    _events(d, 2, start=10)
    _events(replica, 2, start=10)
    assert other.audit_trail.head == trail.head
    assert other.audit_trail.verify()["ok"]
    # The oldest held altered: its hash no longer matches the next one's prev.
    doc = orjson.loads(d.hs.snapshot())
    doc["audit"]["entries"][0][1]["author"] = "mallory"
    tampered = HanaState(audit_limit=3)
    tampered.restore(orjson.dumps(doc))
    assert [b["seq"] for b in tampered.audit_trail.verify()["breaks"]] == [5]


def test_same_hashes_on_every_node() -> None:
    a, b = Driver(node="n1"), Driver(node="n1")
    for d in (a, b):
        d("save", name="s1")
        _events(d, 3)
    assert a.hs.audit_trail.head == b.hs.audit_trail.head
    entries = [e for _, e in a.hs.audit_trail.entries]
    assert hash_at(entries, 2) == entry_hash(entries[1])
    assert hash_at(entries, 99) is None


def test_a_snapshot_from_before_the_chain_still_loads() -> None:
    d = Driver()
    _events(d, 2)
    doc = orjson.loads(d.hs.snapshot())
    # What a node before issue 18 wrote: no head or cut, no prev in entries.
    del doc["audit"]["head"], doc["audit"]["cut"]
    for _, e in doc["audit"]["entries"]:
        del e["prev"]
    old = HanaState()
    old.restore(orjson.dumps(doc))
    report = old.audit_trail.verify()
    assert report["ok"] and report["legacy"] == 2 and report["chained"] == 0
    after = Driver(old)
    after.index, after.time = d.index, d.time
    _events(after, 2, start=5)
    report = old.audit_trail.verify()
    assert report["ok"] and report["legacy"] == 2 and report["chained"] == 2 and report["first_seq"] == 3


def test_a_context_field_named_seq_or_prev_never_overrides_the_chain() -> None:
    hs = HanaState()
    hs.audit_trail.record({"revision": 0, "op": "membership", "seq": 99, "prev": "x"})
    ((_, e),) = hs.audit_trail.entries
    assert e["seq"] == 1 and e["prev"] == ""
    assert hs.audit_trail.verify()["ok"]
