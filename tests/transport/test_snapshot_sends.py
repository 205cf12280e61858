"""Snapshots to many lagging learners at once (TransportConfig
max_snapshot_sends): at most that many stream at a time, the others wait
their turn while counted in flight (so the core does not give up on them),
and every one of them arrives."""

from __future__ import annotations

import pytest

from mesh.raft.messages import MessageType
from mesh.transport.tcp import TcpTransport, TransportConfig
from tests.transport.kit import Inbox
from tests.transport.test_hardening import SECRET, make, snap_message, until


async def one_stream_sender(statuses: list[tuple[str, bool]]) -> TcpTransport:
    """Transport "a", listening, that streams one snapshot at a time and
    records each snapshot outcome in `statuses`."""
    a = TcpTransport(
        TransportConfig("a", "hana", SECRET, snapshot_chunk=4096, max_snapshot_sends=1),
        Inbox(),
        on_snapshot_status=lambda p, ok: statuses.append((p, ok)),
    )
    await a.listen("127.0.0.1", 0)
    return a


async def test_snapshot_streams_are_limited_and_the_rest_wait_their_turn(tmp_path) -> None:  # type: ignore[no-untyped-def]
    statuses: list[tuple[str, bool]] = []
    a = await one_stream_sender(statuses)
    peers = ["b", "c", "d"]
    inboxes = {p: Inbox() for p in peers}
    receivers: dict[str, TcpTransport] = {}
    try:
        for p in peers:
            (tmp_path / p).mkdir()
            receivers[p], port = await make(p, inboxes[p], spool_dir=str(tmp_path / p))
            a.set_peer(p, ("127.0.0.1", port))
        for p in peers:
            a.send(snap_message(2_000_000, to=p))
        assert sorted(a.snapshots_in_flight()) == peers  # waiting ones count as in flight
        most = 0

        def streaming() -> bool:
            nonlocal most
            busy = sum(1 for r in receivers.values() if r._snapshot_receives > 0)
            most = max(most, busy)
            return len(statuses) == len(peers)

        await until(streaming, timeout=60)
        assert sorted(statuses) == [(p, True) for p in peers]
        assert most == 1
        for p in peers:
            assert [m.type for m in inboxes[p].messages] == [MessageType.SNAP]
        assert a.snapshots_in_flight() == [] and a.snapshot_progress == {}
    finally:
        await a.close()
        for r in receivers.values():
            await r.close()


async def test_a_waiting_snapshot_superseded_by_a_newer_one_reports_only_the_newer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    statuses: list[tuple[str, bool]] = []
    a = await one_stream_sender(statuses)
    ib, ic = Inbox(), Inbox()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    b, pb = await make("b", ib, spool_dir=str(tmp_path / "b"))
    c, pc = await make("c", ic, spool_dir=str(tmp_path / "c"))
    try:
        a.set_peer("b", ("127.0.0.1", pb))
        a.set_peer("c", ("127.0.0.1", pc))
        a.send(snap_message(3_000_000, to="b"))  # streams
        a.send(snap_message(1000, to="c"))  # waits
        a.send(snap_message(2000, to="c"))  # replaces the waiting one
        await until(lambda: len(statuses) == 2, timeout=60)
        assert sorted(statuses) == [("b", True), ("c", True)]
        snaps = [m for m in ic.messages if m.type == MessageType.SNAP]
        assert len(snaps) == 1 and snaps[0].snapshot is not None and len(snaps[0].snapshot.data) == 2000
        assert a.snapshots_in_flight() == []
    finally:
        await a.close()
        await b.close()
        await c.close()


@pytest.mark.parametrize("limit", [0, -3])
def test_a_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="max_snapshot_sends"):
        TcpTransport(TransportConfig("a", "hana", SECRET, max_snapshot_sends=limit), Inbox())
