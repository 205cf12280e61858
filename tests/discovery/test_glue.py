"""DiscoveryAgent's formation phase against a fake discovery: the lock is on
disk before it is advertised, a bootstrap writes the one entry, a data
directory holding a cluster never bootstraps, a restarted locked node stays
locked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mesh.discovery.base import BootstrapState, Peer
from mesh.node.bootstrap import Action
from mesh.node.discovery_glue import (
    STATE_FILE,
    DiscoveryAgent,
    FormationRecord,
    read_record,
    storage_is_fresh,
    write_record,
)
from mesh.raft import ConfState
from mesh.replica import bootstrap
from mesh.storage.memory import MemoryStorage


class FakeDiscovery:
    def __init__(self, data_dir: Path) -> None:
        self.changed = asyncio.Event()
        self.data_dir = data_dir
        self._peers: dict[str, Peer] = {}
        self._callbacks: list[Callable[[dict[str, Peer]], None]] = []
        self.adverts: list[tuple[BootstrapState, tuple[str, ...], dict | None]] = []
        self.started = False
        self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def peers(self) -> dict[str, Peer]:
        return dict(self._peers)

    def on_change(self, callback: Callable[[dict[str, Peer]], None]) -> None:
        self._callbacks.append(callback)

    async def advertise_state(self, state: BootstrapState, conf: tuple[str, ...]) -> None:
        path = self.data_dir / STATE_FILE
        on_disk = json.loads(path.read_text()) if path.exists() else None
        self.adverts.append((state, tuple(conf), on_disk))

    def set(self, nid: str, state: BootstrapState, conf: tuple[str, ...] = ()) -> None:
        self._peers[nid] = Peer(nid, "c", "127.0.0.1", 1, "", 1, "mdns", state, conf)
        self.changed.set()
        for cb in self._callbacks:
            cb(self.peers())


def agent(tmp_path: Path, expect: int, disc: FakeDiscovery, node_id: str = "a") -> DiscoveryAgent:
    return DiscoveryAgent(node_id, disc, tmp_path, expect=expect, browse_window=0.0)


def test_record_round_trip_and_damage(tmp_path: Path) -> None:
    assert read_record(tmp_path) is None
    write_record(tmp_path, FormationRecord(BootstrapState.LOCKED, ("a", "b"), "lock"))
    assert read_record(tmp_path) == FormationRecord(BootstrapState.LOCKED, ("a", "b"), "lock")
    assert not (tmp_path / (STATE_FILE + ".tmp")).exists()
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        read_record(tmp_path)


async def test_alone_with_expect_one_locks_on_disk_first_then_bootstraps(tmp_path: Path) -> None:
    disc = FakeDiscovery(tmp_path)
    storage = MemoryStorage()
    d = await agent(tmp_path, 1, disc).form(storage)
    assert d.action == Action.BOOTSTRAP and d.conf == ("a",)
    assert not storage_is_fresh(storage)
    states = [(s, c) for s, c, _ in disc.adverts]
    assert (BootstrapState.LOCKED, ("a",)) in states and states[-1] == (BootstrapState.MEMBER, ("a",))
    # LOCKED was advertised only once the lock was on disk.
    locked = next(on_disk for s, _, on_disk in disc.adverts if s == BootstrapState.LOCKED)
    assert locked == {"state": "locked", "conf": ["a"], "how": "lock"}
    assert read_record(tmp_path) == FormationRecord(BootstrapState.MEMBER, ("a",), "bootstrap")


async def test_waits_for_expect_then_agrees_with_peers(tmp_path: Path) -> None:
    disc = FakeDiscovery(tmp_path)
    storage = MemoryStorage()
    task = asyncio.ensure_future(agent(tmp_path, 3, disc).form(storage))
    await asyncio.sleep(0.05)
    assert not task.done() and read_record(tmp_path) is None
    disc.set("b", BootstrapState.FRESH, ("a", "b", "c"))
    disc.set("c", BootstrapState.FRESH, ("a", "b", "c"))
    async with asyncio.timeout(5):
        while read_record(tmp_path) is None:
            await asyncio.sleep(0.01)
    assert read_record(tmp_path) == FormationRecord(BootstrapState.LOCKED, ("a", "b", "c"), "lock")
    assert not task.done()
    disc.set("b", BootstrapState.LOCKED, ("a", "b", "c"))
    disc.set("c", BootstrapState.MEMBER, ("a", "b", "c"))
    d = await asyncio.wait_for(task, 5)
    assert d.action == Action.BOOTSTRAP and d.conf == ("a", "b", "c")


async def test_fresh_node_seeing_a_member_joins(tmp_path: Path) -> None:
    disc = FakeDiscovery(tmp_path)
    disc.set("b", BootstrapState.MEMBER, ("b", "c", "d"))
    storage = MemoryStorage()
    d = await agent(tmp_path, 3, disc, "a").form(storage)
    assert d.action == Action.JOIN
    assert storage_is_fresh(storage)
    assert read_record(tmp_path) == FormationRecord(BootstrapState.MEMBER, ("b", "c", "d"), "join")
    assert disc.adverts[-1][:2] == (BootstrapState.MEMBER, ("b", "c", "d"))


async def test_a_data_dir_holding_a_cluster_never_bootstraps(tmp_path: Path) -> None:
    disc = FakeDiscovery(tmp_path)
    storage = MemoryStorage()
    bootstrap(storage, ConfState.of(["a", "x"]))
    d = await agent(tmp_path, 1, disc).form(storage)
    assert d.action == Action.MEMBER
    assert [s for s, _, _ in disc.adverts] == [BootstrapState.MEMBER]


async def test_restarted_locked_node_stays_locked(tmp_path: Path) -> None:
    write_record(tmp_path, FormationRecord(BootstrapState.LOCKED, ("a", "b"), "lock"))
    disc = FakeDiscovery(tmp_path)
    # b is seen fresh with another candidate: a must not lock again.
    disc.set("b", BootstrapState.FRESH, ("b", "z"))
    task = asyncio.ensure_future(agent(tmp_path, 2, disc).form(MemoryStorage()))
    await asyncio.sleep(0.1)
    assert disc.adverts[0][:2] == (BootstrapState.LOCKED, ("a", "b"))
    assert all(s == BootstrapState.LOCKED for s, _, _ in disc.adverts)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_locked_node_whose_store_was_bootstrapped_reports_member(tmp_path: Path) -> None:
    # Crash between the bootstrap entry and the MEMBER record.
    write_record(tmp_path, FormationRecord(BootstrapState.LOCKED, ("a", "b"), "lock"))
    storage = MemoryStorage()
    bootstrap(storage, ConfState.of(["a", "b"]))
    disc = FakeDiscovery(tmp_path)
    d = await agent(tmp_path, 2, disc).form(storage)
    assert d.action == Action.MEMBER and d.conf == ("a", "b")
    assert read_record(tmp_path) == FormationRecord(BootstrapState.MEMBER, ("a", "b"), "bootstrap")
