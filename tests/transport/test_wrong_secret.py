"""A node with the wrong secret (or cluster name) used to log only
`IncompleteReadError` on the dialling side. Now both sides say what
happened and what to check, once per rate-limit interval (issue 16)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mesh.raft.messages import Message, MessageType
from mesh.transport.tcp import RateLimitedLog, TcpTransport, TransportConfig
from tests.transport.kit import Inbox

ADVICE = "check that every node has the same --secret-file (or HANA_SECRET) and --cluster"


@pytest.mark.parametrize(
    ("dialler", "reason"),
    [({"secret": b"another-secret-entirely"}, "bad_mac"), ({"cluster": "another-show"}, "wrong_cluster")],
    ids=["wrong-secret", "wrong-cluster"],
)
async def test_both_sides_log_the_refusal_and_what_to_check(
    caplog: pytest.LogCaptureFixture, dialler: dict[str, object], reason: str
) -> None:
    caplog.set_level(logging.WARNING, logger="mesh.transport")
    inbox = Inbox()
    b = TcpTransport(TransportConfig(node_id="b", cluster="hana", secret=b"the-cluster-secret"), inbox)
    settings: dict[str, object] = {"cluster": "hana", "secret": b"the-cluster-secret", **dialler}
    a = TcpTransport(TransportConfig(node_id="a", backoff_min=0.01, backoff_max=0.05, **settings), Inbox())  # type: ignore[arg-type]
    # One line per side for the whole test, however many attempts: the
    # logs are rate-limited (an hour here, a second in production).
    a._rlog = RateLimitedLog(3600.0)
    b._rlog = RateLimitedLog(3600.0)
    try:
        _, port = await b.listen("127.0.0.1", 0)
        a.set_peer("b", ("127.0.0.1", port))
        async with asyncio.timeout(10):
            while b.stats.dropped_bad_frame.get(reason, 0) < 3:
                a.send(Message(MessageType.HEARTBEAT, "b", "a", term=1))
                await asyncio.sleep(0.01)
    finally:
        await a.close()
        await b.close()
    assert inbox.messages == []
    lines = [r.getMessage() for r in caplog.records]
    assert not any("IncompleteReadError" in line for line in lines), lines
    listener = [line for line in lines if line.startswith("node=b ") and "event=peer_auth_failed" in line]
    dialling = [line for line in lines if line.startswith("node=a ") and "event=handshake_refused" in line]
    assert len(listener) == 1, lines
    assert len(dialling) == 1, lines
    assert f"reason={reason} " in listener[0] and "from=127.0.0.1" in listener[0]
    assert f"addr=127.0.0.1:{port}" in dialling[0] and "peer=b" in dialling[0]
    for line in (listener[0], dialling[0]):
        assert ADVICE in line
    assert "b's log says why (event=peer_auth_failed" in dialling[0]
