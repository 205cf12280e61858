"""Discovery wired to a running node: formation (--expect) and autopilot.

`DiscoveryAgent` has two phases, because a configuration decided by
discovery must be in the node's storage *before* its Raft starts:

1. `await agent.form(storage)` runs before the `MeshNode` exists. It
   starts discovery (advertising this node's bootstrap state), and:
   - if the data directory already holds a cluster (or --peers bootstraps
     it), advertises MEMBER and returns at once: such a node never
     bootstraps again;
   - else waits a browse window, then runs `mesh.node.bootstrap.decide`
     whenever the view changes: a LOCK is written to `discovery.json` in the
     data directory (temp file, fsync, rename, fsync directory) *before* it is
     advertised and re-read on restart; a BOOTSTRAP writes the single
     bootstrap entry through `mesh.replica.bootstrap` (fsynced) into the
     fresh storage, then records and advertises MEMBER; a JOIN records and
     advertises MEMBER with the joined cluster's initial configuration (the
     node starts with an empty log and the controller adds it).
2. `agent.attach(node)`, `await agent.start()`: feeds every discovered
   peer's raft address to `node.transport.set_peer` (a --peers address wins
   over a discovered one: nodes may dial each other through proxies). That
   only fills the transport's address book: a sender runs only for members
   of the applied configuration (`MeshNode._sync_members`), so a discovered
   node is dialed once the autopilot's add_learner commits, and a removed
   member is no longer dialed even while discovery still sees it. And it
   on the controller runs the autopilot about once a second and at once
   after a discovery change or a committed change: the node core observes
   health and decides (`NodeCore.autopilot`, over `autopilot.decide`), the
   agent proposes the single change with `node.change_membership`, one
   logfmt line per decision.

mDNS is for finding peers only; the autopilot judges liveness from Raft
traffic (`peer_health`), never from mDNS records (they outlive a SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mesh.discovery.base import BootstrapState, Discovery, Peer
from mesh.node import autopilot, bootstrap
from mesh.raft import ConfState
from mesh.replica import ReplicaStorage
from mesh.replica import bootstrap as write_bootstrap

if TYPE_CHECKING:
    from mesh.node.runtime import MeshNode

log = logging.getLogger("mesh.discovery")

STATE_FILE = "discovery.json"
AUTOPILOT_INTERVAL = 1.0
# Re-evaluate the bootstrap decision at least this often even without a
# discovery change (a missed callback must not stall formation).
FORM_RECHECK = 1.0


@dataclass(slots=True, frozen=True)
class FormationRecord:
    """What `discovery.json` holds: this node's permanent bootstrap state."""

    state: BootstrapState
    conf: tuple[str, ...]
    # "lock", "bootstrap" or "join"
    how: str


def read_record(data_dir: Path) -> FormationRecord | None:
    """The persisted lock or membership, or None (never written). A damaged
    file is an error: guessing could let a locked node lock again."""
    path = Path(data_dir) / STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        state = BootstrapState(doc["state"])
        conf = tuple(str(c) for c in doc["conf"])
        how = str(doc["how"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is damaged ({exc}); remove it only if this node never formed a cluster") from None
    if state == BootstrapState.FRESH:
        raise ValueError(f"{path}: a FRESH state is never persisted")
    return FormationRecord(state, conf, how)


def write_record(data_dir: Path, record: FormationRecord) -> None:
    """Atomically and durably: temp file, fsync, rename, fsync directory."""
    data_dir = Path(data_dir)
    path = data_dir / STATE_FILE
    tmp = data_dir / (STATE_FILE + ".tmp")
    body = json.dumps({"state": str(record.state), "conf": list(record.conf), "how": record.how}).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def storage_is_fresh(storage: ReplicaStorage) -> bool:
    return storage.last_index() == 0 and storage.snapshot().is_empty()


class DiscoveryAgent:
    """See the module docstring. `static_peers`: the --peers map (its
    addresses win; those ids are reported as found "static")."""

    def __init__(
        self,
        node_id: str,
        discovery: Discovery,
        data_dir: Path,
        expect: int = 1,
        limits: autopilot.Limits | None = None,
        browse_window: float = 2.0,
        static_peers: Mapping[str, tuple[str, int]] | None = None,
    ) -> None:
        if expect < 1:
            raise ValueError("expect must be at least 1")
        self.node_id = node_id
        self.discovery = discovery
        self.data_dir = Path(data_dir)
        self.expect = expect
        self.limits = limits or autopilot.Limits()
        self.browse_window = browse_window
        self.static_peers = dict(static_peers or {})
        self.node: MeshNode | None = None
        self.own = bootstrap.Seen(BootstrapState.FRESH, ())
        self.formed: bootstrap.Decision | None = None
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started_discovery = False
        # Every id ever seen through discovery, with how (for status "found").
        self._found: dict[str, str] = {nid: "static" for nid in self.static_peers}
        # With cluster credentials (issue 18) only a machine holding a
        # certificate of this cluster is added by the autopilot (serve sets it).
        self.admissible: Callable[[str], bool] = lambda node_id: True
        discovery.on_change(self._on_change)

    # -- phase 1: formation ---------------------------------------------------

    async def form(self, storage: ReplicaStorage) -> bootstrap.Decision:
        """Decide this node's cluster before its Raft starts (see module
        docstring). Returns the final decision: MEMBER, BOOTSTRAP or JOIN."""
        record = read_record(self.data_dir)
        fresh = storage_is_fresh(storage)
        if not fresh or self.static_peers:
            # A cluster on disk (or --peers, which bootstraps from its list):
            # never bootstrap from discovery.
            conf: tuple[str, ...] = ()
            if record is not None and record.state == BootstrapState.MEMBER:
                conf = record.conf
            elif record is not None and not self.static_peers:
                # Locked and the store holds entries: the crash came between
                # writing the bootstrap entry and recording MEMBER (a locked
                # node that joins records MEMBER before its store gets
                # anything). Finish that step, so the others of the lock can
                # still bootstrap the same configuration.
                conf = record.conf
                await asyncio.to_thread(
                    write_record, self.data_dir, FormationRecord(BootstrapState.MEMBER, conf, "bootstrap")
                )
            self.own = bootstrap.Seen(BootstrapState.MEMBER, conf)
        elif record is not None:
            # LOCKED (stays locked) or MEMBER (joined earlier, nothing
            # replicated yet: keep waiting to be added).
            self.own = bootstrap.Seen(record.state, record.conf)
        await self.discovery.advertise_state(self.own.state, self.own.conf)
        await self._start_discovery()
        if self.own.state == BootstrapState.MEMBER:
            self.formed = bootstrap.Decision(bootstrap.Action.MEMBER, self.own.conf)
            log.info("node=%s event=formation action=member conf=%s", self.node_id, ",".join(self.own.conf))
            return self.formed
        log.info(
            "node=%s event=formation_browse expect=%d window_s=%.1f state=%s",
            self.node_id,
            self.expect,
            self.browse_window,
            self.own.state,
        )
        # A settle time so that nodes started together see each other before
        # anyone decides (bootstrap.py: agreement with >= 2N fresh nodes).
        await asyncio.sleep(self.browse_window)
        last_logged: tuple[str, tuple[str, ...]] | None = None
        while True:
            self._changed.clear()
            seen = self._seen()
            d = bootstrap.decide(self.node_id, self.own, seen, self.expect)
            if (d.action, d.conf) != last_logged:
                last_logged = (d.action, d.conf)
                log.info(
                    "node=%s event=formation action=%s conf=%s seen=%s",
                    self.node_id,
                    d.action,
                    ",".join(d.conf),
                    ",".join(f"{nid}:{s.state}" for nid, s in sorted(seen.items())),
                )
            if d.action == bootstrap.Action.WAIT:
                if self.own.state == BootstrapState.FRESH and d.conf != self.own.conf:
                    self.own = bootstrap.Seen(BootstrapState.FRESH, d.conf)
                    await self.discovery.advertise_state(self.own.state, self.own.conf)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FORM_RECHECK):
                        await self._changed.wait()
                continue
            if d.action == bootstrap.Action.LOCK:
                # Durable first, advertised second (bootstrap.py's safety argument).
                await asyncio.to_thread(
                    write_record, self.data_dir, FormationRecord(BootstrapState.LOCKED, d.conf, "lock")
                )
                self.own = bootstrap.Seen(BootstrapState.LOCKED, d.conf)
                await self.discovery.advertise_state(self.own.state, self.own.conf)
                continue
            if d.action == bootstrap.Action.BOOTSTRAP:
                await asyncio.to_thread(write_bootstrap, storage, ConfState.of(d.conf))
                await self._become_member(d.conf, "bootstrap")
            elif d.action == bootstrap.Action.JOIN:
                await self._become_member(d.conf, "join")
            self.formed = d
            return d

    async def _become_member(self, conf: tuple[str, ...], how: str) -> None:
        await asyncio.to_thread(write_record, self.data_dir, FormationRecord(BootstrapState.MEMBER, conf, how))
        self.own = bootstrap.Seen(BootstrapState.MEMBER, conf)
        await self.discovery.advertise_state(self.own.state, self.own.conf)

    async def _start_discovery(self) -> None:
        if not self._started_discovery:
            await self.discovery.start()
            self._started_discovery = True
            self._on_change(self.discovery.peers())

    def _seen(self) -> dict[str, bootstrap.Seen]:
        return {
            nid: bootstrap.Seen(p.state, p.conf) for nid, p in self.discovery.peers().items() if nid != self.node_id
        }

    # -- phase 2: running with a node -----------------------------------------

    def attach(self, node: MeshNode) -> None:
        self.node = node
        self._feed_transport(self.discovery.peers())

    async def start(self) -> None:
        """Start discovery if `form` did not, and the autopilot task."""
        if self.node is None:
            raise RuntimeError("attach(node) first")
        if self.formed is None:
            self.own = bootstrap.Seen(BootstrapState.MEMBER, ())
            await self.discovery.advertise_state(self.own.state, self.own.conf)
        await self._start_discovery()
        self._feed_transport(self.discovery.peers())
        self._tasks.append(asyncio.get_running_loop().create_task(self._autopilot_loop(), name="autopilot"))

    async def stop(self) -> None:
        """Stop the autopilot and withdraw the advertisement (goodbyes)."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._started_discovery:
            self._started_discovery = False
            with contextlib.suppress(Exception):
                await self.discovery.stop()

    def found(self) -> dict[str, str]:
        """How each known node was found: "static" (--peers) or "mdns"."""
        return dict(self._found)

    def discovered_peers(self) -> dict[str, Peer]:
        return self.discovery.peers()

    def _on_change(self, view: dict[str, Peer]) -> None:
        for nid, p in view.items():
            if nid not in self.static_peers:
                self._found[nid] = p.source
        self._feed_transport(view)
        self._changed.set()

    def _feed_transport(self, view: Mapping[str, Peer]) -> None:
        node = self.node
        if node is None:
            return
        known = node.transport.peers()
        for nid, p in view.items():
            if nid == self.node_id or nid in self.static_peers:
                continue
            if known.get(nid) != p.raft_address:
                node.transport.set_peer(nid, p.raft_address)

    async def _autopilot_loop(self) -> None:
        while True:
            try:
                changed = await self.autopilot_step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node=%s event=autopilot_failed", self.node_id)
                changed = False
            if changed:
                continue  # decide again right after a committed change
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(AUTOPILOT_INTERVAL):
                    await self._changed.wait()

    async def autopilot_step(self) -> bool:
        """One observation and decision on the controller (the node core
        decides, `NodeCore.autopilot`); True if a change was proposed
        (committed or not)."""
        node = self.node
        assert node is not None
        peers = self.discovery.peers().items()
        discovered = [nid for nid, p in peers if p.state == BootstrapState.MEMBER and self.admissible(nid)]
        cc = node.core.autopilot(discovered, self.limits)
        if cc is None:
            return False
        try:
            await node.change_membership(cc)
        except Exception as exc:  # NotLeader, Conflict, NoLeader, Timeout: decide again later
            log.warning(
                "node=%s event=autopilot_change_failed change=%s member=%s error=%r",
                self.node_id,
                cc.type,
                cc.node,
                str(exc),
            )
            await asyncio.sleep(0.2)
        return True
