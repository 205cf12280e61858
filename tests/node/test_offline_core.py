"""The node core's side of issue 14, sans-IO on a manual clock: knowing it
is cut off (contact, status events), the outbox replay (in order, chained
bases, fates) and a crash mid-replay applying each queued write once."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from mesh.node.core import NodeCore
from mesh.node.outbox import MemoryOutboxStore
from mesh.raft import Role
from tests.node.test_core import Mesh


def cut_off(m: Mesh, nid: str) -> None:
    for other in m.cores:
        if other != nid:
            m.net.cut(nid, other)


def statuses(core: NodeCore, since: int = 0) -> list[dict[str, Any]]:
    return [e for _, e in core.events.since(since) if e["type"] == "status"]


def replay_all(m: Mesh, nid: str, ticks: int = 400) -> None:
    for _ in range(ticks):
        if m.cores[nid].outbox.count() == 0:
            return
        m.tick()
    raise AssertionError("the outbox never emptied")


def test_a_cut_off_follower_knows_it_and_says_so_on_its_event_log() -> None:
    m = Mesh(["a", "b", "c"])
    f = m.follower()
    core = m.cores[f]
    m.tick(3)
    assert core.connected() and core.controller_contact_ms() is not None
    assert core.status(("127.0.0.1", 1))["connected"] is True
    seen = core.events.seq
    cut_off(m, f)
    m.tick(core.cfg.election_ticks + 3)
    assert not core.connected() and core.controller_contact_ms() >= 100  # type: ignore[operator]
    assert statuses(core, seen) == [{"type": "status", "connected": False, "leader": None}]
    seen = core.events.seq
    m.net.heal()
    m.tick(30)
    regained = statuses(core, seen)
    assert regained and regained[0]["connected"] is True and regained[0]["leader"] is not None


def test_queued_writes_replay_in_order_with_chained_bases() -> None:
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    m.until(m.cores[lead].propose({"op": "put", "key": "settings/mode", "value": "v0"}))
    f = m.follower()
    m.tick(5)
    core = m.cores[f]
    cut_off(m, f)
    m.tick(core.cfg.election_ticks + 3)
    first = core.queue_write(core.kv.prepare({"op": "put", "key": "settings/mode", "value": "v1", "author": "x"}))
    second = core.queue_write(core.kv.prepare({"op": "put", "key": "settings/mode", "value": "v2", "author": "x"}))
    assert first["base_version"] == second["base_version"] == 1 and second["outbox"] == 2
    assert first["queued"] == f"{f}.1" and second["queued"] == f"{f}.2"
    assert core.outbox.overlay("settings/") == {"settings/mode": ("put", "v2")}
    # Nothing replays while cut off.
    m.tick(20)
    assert core.outbox.count() == 2 and core.kv.get("settings/mode").value == "v0"  # type: ignore[union-attr]
    m.net.heal()
    replay_all(m, f)
    states = [i.state for i in core.outbox.items.values()]
    assert states == ["applied", "applied"]  # the second is based on the first's version: no conflict
    for c in m.cores.values():
        m.tick(3)
        kv = c.kv.get("settings/mode")
        assert kv is not None and kv.value == "v2" and kv.version == 3
    events = [e for _, e in core.events.since(0) if e["type"] == "outbox"]
    assert [(e["id"], e["state"]) for e in events] == [
        (first["queued"], "queued"),
        (second["queued"], "queued"),
        (first["queued"], "applied"),
        (second["queued"], "applied"),
    ]


def test_a_crash_mid_replay_applies_each_queued_write_once() -> None:
    m = Mesh(["a", "b", "c"])
    f = m.follower()
    m.tick(5)
    core = m.cores[f]
    store = core.outbox.store
    assert isinstance(store, MemoryOutboxStore)
    cut_off(m, f)
    m.tick(core.cfg.election_ticks + 3)
    queued = core.queue_write(core.kv.prepare({"op": "put", "key": "parameters/once", "value": 1, "author": "x"}))
    m.net.heal()
    replay_all(m, f)
    result = core.outbox.items[1].result
    revision = core.kv.revision
    # Crash after the write applied but before its fate reached the outbox:
    # the node restarts with the fate record lost.
    records = [r for r in store.records if r.get("t") != "f"]
    core.shutdown()
    again = MemoryOutboxStore()
    again.records = records
    t = m.net.transport(f, m.clock)
    restarted = NodeCore(core.cfg, m.stores[f], t, m.clock, rng=random.Random(7), boot_id="boot-again", outbox=again)
    t.on_message = restarted.receive
    t.on_unreachable = restarted.report_unreachable
    t.on_snapshot_status = restarted.report_snapshot
    m.cores[f] = restarted
    assert restarted.outbox.count() == 1  # queued again
    m.tick(5)
    replay_all(m, f)
    item = restarted.outbox.items[1]
    assert item.id == queued["queued"] and item.state == "applied" and item.result == result
    m.tick(5)
    for c in m.cores.values():
        assert [r.value for r in c.kv.changes_since(1, "parameters/once")] == [1]
        assert c.kv.revision == revision
    # The next queued write of this node gets a new id (unique across restarts).
    nxt = restarted.queue_write(restarted.kv.prepare({"op": "delete", "key": "parameters/once", "author": "x"}))
    assert nxt["queued"] == f"{f}.2"


def test_a_critical_conflict_is_raised_loudly(caplog: pytest.LogCaptureFixture) -> None:
    m = Mesh(["a", "b", "c"])
    lead = m.leader()
    m.until(m.cores[lead].propose({"op": "put", "key": "settings/mode", "value": "v0"}))
    f = m.follower()
    m.tick(5)
    core = m.cores[f]
    cut_off(m, f)
    m.tick(core.cfg.election_ticks + 3)
    queued = core.queue_write(core.kv.prepare({"op": "put", "key": "settings/mode", "value": "off", "author": "x"}))
    lead = next(n for n, c in m.cores.items() if n != f and c.role == Role.LEADER)
    m.until(m.cores[lead].propose({"op": "put", "key": "settings/mode", "value": "majority"}))
    with caplog.at_level(logging.WARNING, logger="mesh.node"):
        m.net.heal()
        replay_all(m, f)
        m.tick(5)
    item = core.outbox.items[1]
    assert item.id == queued["queued"] and item.state == "conflict"
    cid = item.result["conflict"]  # type: ignore[index]
    assert f"event=critical_conflict id={cid} key=settings/mode" in caplog.text
    for c in m.cores.values():
        opened = [e for _, e in c.events.since(0) if e["type"] == "conflict"]
        assert opened == [
            {
                "type": "conflict",
                "id": cid,
                "key": "settings/mode",
                "component": "settings",
                "status": "open",
                "critical": True,
            }
        ]
        assert c.conflicts_opened[True] == 1 and list(c.kv.pending) == [cid]
    assert m.cores[f].kv.get("settings/mode").value == "majority"  # type: ignore[union-attr]
