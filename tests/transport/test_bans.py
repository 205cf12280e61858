"""Peers failing authentication repeatedly are banned for a while, per
address, in a bounded table, counted and audited (issue 18)."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.api.guard import LoginGuard
from mesh.node.metrics import NodeMetrics
from mesh.state.model import HanaState
from mesh.transport.bans import BanTable
from tests.state.helpers import cmd
from tests.transport.test_hardening import capture_hello, connect_and, make


@dataclass
class Cfg:
    ban_after: int = 3
    ban_seconds: float = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_repeated_failures_ban_an_address_for_a_while() -> None:
    clock = Clock()
    t = BanTable(Cfg(), clock=clock)
    assert not t.failed("10.0.0.1") and not t.failed("10.0.0.1")
    assert not t.refused("10.0.0.1")
    assert t.failed("10.0.0.1")
    assert t.refused("10.0.0.1") and t.banned() == 1 and t.bans_total == 1
    assert not t.refused("10.0.0.2")
    clock.now += 31
    assert not t.refused("10.0.0.1") and t.banned() == 0
    # Failures spread wider than the window never add up to a ban.
    for _ in range(5):
        assert not t.failed("10.0.0.3")
        clock.now += 20
    assert t.bans_total == 1


def test_a_trusted_address_is_never_banned() -> None:
    t = BanTable(Cfg(ban_after=1))
    assert not t.failed("127.0.0.1", trusted=True)
    assert not t.refused("127.0.0.1")


def test_the_tables_are_bounded() -> None:
    t = BanTable(Cfg(ban_after=1), max_addresses=8, max_events=4)
    for i in range(100):
        t.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(t.failures) <= 8 and len(t.until) <= 8
    assert t.bans_total == 100
    events = t.take_events()
    assert len(events) == 4 and t.events_dropped == 96
    assert t.take_events() == []


def test_a_ban_is_an_audited_security_event() -> None:
    t = BanTable(Cfg(ban_after=2))
    t.failed("192.0.2.7")
    t.failed("192.0.2.7")
    guard = LoginGuard()
    guard.sources.append(t.take_events)
    (event,) = guard.take()
    assert (event["event"], event["address"], event["count"]) == ("peer_banned", "192.0.2.7", 2)
    # The state machine takes it as it is proposed and audits it.
    hs = HanaState()
    fields = {k: v for k, v in event.items() if k != "op"}
    hs.apply(1, cmd(op="security_event", node="n1", time=1, role="admin", **fields))
    ((_, entry),) = hs.audit_trail.entries
    assert entry["op"] == "security_event" and entry["event"] == "peer_banned" and entry["address"] == "192.0.2.7"


async def test_a_peer_failing_authentication_is_banned_counted_and_refused() -> None:
    b, pb = await make("b", ban_after=3)
    try:
        hello = await capture_hello("a", "b")
        for _ in range(3):
            await connect_and(pb, hello + b"sneaky bytes riding on the hello")
        assert b.bans.refused("127.0.0.1")
        # Refused: the connection closes without even a hello answer.
        assert await connect_and(pb, hello) == b""
        m = NodeMetrics("b")
        m.observe_transport(b)
        text = m.render().decode()
        assert "hana_peer_bans_total 1.0" in text and "hana_peer_banned 1.0" in text
        assert [e["event"] for e in b.bans.take_events()] == ["peer_banned"]
    finally:
        await b.close()
