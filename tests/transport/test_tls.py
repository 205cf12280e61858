"""Peer links over mutual TLS 1.3, and the AEAD of pre-shared-secret links
(issue 18): what crosses the wire, and every bad peer refused with a clear,
rate-limited log line, changing nothing."""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mesh.raft.messages import ConfState, Entry, Message, MessageType, Snapshot, SnapshotMeta
from mesh.transport.codec import FrameError
from mesh.transport.tcp import HandshakeRefused, TcpTransport, TransportConfig
from mesh.transport.tls import DevCa, PeerRefused, PeerTls, tls_paths
from simulations.chaoskit.proxy import FaultProxy
from tests.transport.kit import Inbox, leaked

SECRET = b"test-secret-of-the-cluster"
MARK_KEY = b"scene/secret-key-7f3a"
MARK_VALUE = b"value-that-must-not-leak-91c2"


def app(i: int, to: str = "b", frm: str = "a") -> Message:
    payload = b'{"op":"put","key":"' + MARK_KEY + b'","value":"' + MARK_VALUE + b'"}'
    return Message(MessageType.APP, to, frm, term=1, index=i, entries=[Entry(i + 1, 1, payload)])


def snap(to: str = "b", frm: str = "a") -> Message:
    meta = SnapshotMeta(index=42, term=3, conf=ConfState.of(["a", "b"]))
    return Message(MessageType.SNAP, to, frm, term=3, snapshot=Snapshot(meta, MARK_VALUE * 3000))


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
def ca(tmp_path: Path) -> DevCa:
    return DevCa.make("hana")


def creds(tmp_path: Path, ca: DevCa, node: str, **kw: Any) -> Path:
    d = tmp_path / node
    ca.write_node(d, "hana", node, **kw)
    return d


async def make(
    node: str,
    data_dir: Path | None,
    inbox: Inbox | None = None,
    *,
    cert_node: str | None = None,
    allowed: Callable[[str, int], bool] | None = None,
    pending: list[tuple[str, str, str]] | None = None,
    **kw: Any,
) -> tuple[TcpTransport, int]:
    tls = None
    if data_dir is not None:
        tls = PeerTls(
            data_dir,
            "hana",
            cert_node or node,
            peer_allowed=allowed,
            note_pending=(lambda *a: pending.append(a)) if pending is not None else None,
        )
    t = TcpTransport(TransportConfig(node, "hana", SECRET, tls=tls, **kw), inbox or Inbox())
    _, port = await t.listen("127.0.0.1", 0)
    return t, port


class Capture:
    """Every byte through a chaos-proxy link, both directions."""

    def __init__(self) -> None:
        self.data = bytearray()

    def __call__(self, src: str, dst: str, direction: str, chunk: bytes) -> None:
        self.data += chunk

    def leaks(self) -> list[bytes]:
        return leaked(self.data, [MARK_KEY, MARK_VALUE])


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    p = FaultProxy(seed=1)
    yield p
    await p.close()


async def linked_through_proxy(
    proxy: FaultProxy, a_dir: Path | None, b_dir: Path | None
) -> tuple[TcpTransport, TcpTransport, Inbox, Capture, list[tuple[str, bool]]]:
    cap = Capture()
    proxy.on_bytes = cap
    ib = Inbox()
    statuses: list[tuple[str, bool]] = []
    a, _ = await make("a", a_dir)
    a.on_snapshot_status = lambda p, ok: statuses.append((p, ok))
    b, pb = await make("b", b_dir, ib)
    port = await proxy.add_link("a", "b", ("127.0.0.1", pb))
    a.set_peer("b", ("127.0.0.1", port))
    return a, b, ib, cap, statuses


async def exchange(a: TcpTransport, ib: Inbox, statuses: list[tuple[str, bool]]) -> None:
    for i in range(1, 6):
        a.send(app(i))
    await ib.wait_for(5)
    a.send(snap())
    await until(lambda: statuses)
    assert statuses == [("b", True)]
    assert [m.type for m in ib.messages][-1] == MessageType.SNAP


async def test_tls_link_carries_frames_and_snapshots_and_no_plaintext(
    tmp_path: Path, ca: DevCa, proxy: FaultProxy
) -> None:
    a, b, ib, cap, statuses = await linked_through_proxy(proxy, creds(tmp_path, ca, "a"), creds(tmp_path, ca, "b"))
    try:
        await exchange(a, ib, statuses)
        assert ib.messages[0] == app(1)
        assert len(cap.data) > 3 * len(MARK_VALUE) * 1000  # the snapshot went through the capture
        assert cap.leaks() == []
    finally:
        await a.close()
        await b.close()


async def test_psk_link_is_sealed(proxy: FaultProxy) -> None:
    a, b, ib, cap, statuses = await linked_through_proxy(proxy, None, None)
    try:
        await exchange(a, ib, statuses)
        assert len(cap.data) > 3 * len(MARK_VALUE) * 1000
        assert cap.leaks() == []
    finally:
        await a.close()
        await b.close()


async def test_the_wire_check_finds_plaintext(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the same capture of an unsealed PSK link (protocol 2's
    wire) finds the key and the value, so the checks above can fail."""
    monkeypatch.setattr(TcpTransport, "_seal", lambda self, r, w, c, dialer: (r, w))
    a, b, ib, cap, statuses = await linked_through_proxy(proxy, None, None)
    try:
        await exchange(a, ib, statuses)
        assert cap.leaks() == [MARK_KEY, MARK_VALUE]
    finally:
        await a.close()
        await b.close()


def refusals(caplog: pytest.LogCaptureFixture, reason: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if "event=peer_auth_failed from=" in r.getMessage() and f"reason={reason}" in r.getMessage()
    ]


async def refused_twice(
    caplog: pytest.LogCaptureFixture, b: TcpTransport, ib: Inbox, attempt: Callable[[], Any], reason: str
) -> str:
    """Two bad attempts in a row: both refused and counted, one log line
    (rate limit), nothing delivered. Returns the line."""
    caplog.set_level(logging.WARNING, logger="mesh.transport")
    before = b.stats.dropped_bad_frame.get(reason, 0)
    for n in (1, 2):
        await attempt()
        await until(lambda n=n: b.stats.dropped_bad_frame.get(reason, 0) >= before + n)
    lines = refusals(caplog, reason)
    assert len(lines) == 1, lines
    assert ib.messages == []
    return lines[0]


async def test_plaintext_peer_on_a_tls_port_is_refused(
    tmp_path: Path, ca: DevCa, caplog: pytest.LogCaptureFixture
) -> None:
    ib = Inbox()
    b, pb = await make("b", creds(tmp_path, ca, "b"), ib)
    try:

        async def attempt() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", pb)
            writer.write(b"\x00\x00\x00\x10HANA\x03 plaintext hello")
            await writer.drain()
            assert await reader.read() == b""  # closed on us
            writer.close()

        line = await refused_twice(caplog, b, ib, attempt, "tls_failed")
        assert "does not speak TLS" in line and "action=" in line
    finally:
        await b.close()


async def test_tls_client_without_a_certificate_is_refused(
    tmp_path: Path, ca: DevCa, caplog: pytest.LogCaptureFixture
) -> None:
    ib = Inbox()
    b_dir = creds(tmp_path, ca, "b")
    b, pb = await make("b", b_dir, ib)
    ctx = ssl.create_default_context(cafile=str(tls_paths(b_dir)[0]))
    ctx.check_hostname = False
    try:

        async def attempt() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", pb, ssl=ctx)
            with pytest.raises((ssl.SSLError, ConnectionError)):
                writer.write(b"hello?")
                await writer.drain()
                if await reader.read() == b"":
                    raise ConnectionResetError("closed")
            writer.close()

        line = await refused_twice(caplog, b, ib, attempt, "tls_failed")
        assert "certificate" in line
    finally:
        await b.close()


async def test_a_node_of_another_ca_is_refused_both_ways(
    tmp_path: Path, ca: DevCa, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS 1.3: the dialer checks the listener's certificate first, so each
    side refuses the other's CA when it dials; the listener sees only a
    dropped handshake (not counted as an authentication failure: a dialer
    that gave up looks the same). Nothing is delivered either way."""
    caplog.set_level(logging.WARNING, logger="mesh.transport")
    ib, iforeign = Inbox(), Inbox()
    b, pb = await make("b", creds(tmp_path, ca, "b"), ib)
    foreign, pf = await make("a", creds(tmp_path, DevCa.make("hana"), "a"), iforeign)
    try:
        foreign.set_peer("b", ("127.0.0.1", pb))
        b.set_peer("a", ("127.0.0.1", pf))
        foreign.send(app(1))
        b.send(app(1, to="a", frm="b"))

        def dial_refusals() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if "event=peer_auth_failed addr=" in r.getMessage() and "certificate refused" in r.getMessage()
            ]

        await until(lambda: {"node=a peer=b", "node=b peer=a"} <= {" ".join(m.split()[:2]) for m in dial_refusals()})
        await until(lambda: b.stats.connect_failures >= 3 and foreign.stats.connect_failures >= 3)
        # Retried with backoff, logged once per second per peer.
        assert len([m for m in dial_refusals() if m.startswith("node=b")]) <= 2
        assert ib.messages == [] and iforeign.messages == []
        assert "action=" in dial_refusals()[0]
    finally:
        await foreign.close()
        await b.close()


@pytest.mark.parametrize("case", ["expired", "id_differs", "not_admitted"])
async def test_a_bad_peer_certificate_is_refused(
    tmp_path: Path, ca: DevCa, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    pending: list[tuple[str, str, str]] = []
    b_dir = creds(tmp_path, ca, "b")
    a_kw: dict[str, Any] = {}
    reason = "tls_failed"
    if case == "expired":
        a_dir = creds(
            tmp_path, ca, "a", not_before=now - datetime.timedelta(days=10), not_after=now - datetime.timedelta(days=1)
        )
        expect = "expired"
    elif case == "id_differs":
        # A genuine member's certificate ("c"), a hello that claims "a".
        a_dir = creds(tmp_path, ca, "c")
        a_kw["cert_node"] = "c"
        reason, expect = "cert_mismatch", "certificate of 'c' on a connection that claims to be 'a'"
    else:
        a_dir = creds(tmp_path, ca, "a")
        reason, expect = "not_admitted", "approve it"
    ib = Inbox()
    b, pb = await make("b", b_dir, ib, allowed=lambda nid, serial: nid != "a", pending=pending)
    a, _ = await make("a", a_dir, **a_kw)
    errors: list[BaseException] = []

    async def attempt() -> None:
        """One dial by a's own code (no retries): refused."""
        try:
            reader, writer = await a._connect(("127.0.0.1", pb))
        except PeerRefused as exc:
            errors.append(exc)
            return
        try:
            with pytest.raises((FrameError, HandshakeRefused)) as info:
                await a._dial_handshake("b", reader, writer)
            errors.append(info.value)
        finally:
            writer.close()

    try:
        line = await refused_twice(caplog, b, ib, attempt, reason)
        assert expect in line, line
        if case == "not_admitted":
            assert pending and pending[0][0] == "a" and len(pending[0][2]) == 64
        else:
            assert pending == []
        assert len(errors) == 2
    finally:
        await a.close()
        await b.close()


async def test_renewed_credentials_are_used_without_dropping_links(tmp_path: Path, ca: DevCa) -> None:
    """A CA roll: b's files are rewritten (two CAs trusted, a certificate of
    the new CA); the link a -> b stays up, and a node of the new CA is then
    accepted on a new connection."""
    ib = Inbox()
    b_dir = creds(tmp_path, ca, "b")
    b, pb = await make("b", b_dir, ib)
    a, _ = await make("a", creds(tmp_path, ca, "a"))
    new = DevCa.make("hana")
    c, _ = await make("c", creds(tmp_path, new, "c"))
    try:
        a.set_peer("b", ("127.0.0.1", pb))
        a.send(app(1))
        await ib.wait_for(1)
        assert b.cfg.tls is not None and b.cfg.tls.reloads == 0
        # Before the roll, b refuses c.
        c.set_peer("b", ("127.0.0.1", pb))
        await until(lambda: c.stats.connect_failures >= 1)
        c.remove_peer("b")
        new.write_node(b_dir, "hana", "b")
        ca_pem, _, _ = tls_paths(b_dir)
        ca_pem.write_bytes(new.pem() + ca.pem())
        c.set_peer("b", ("127.0.0.1", pb))
        c.send(app(2, frm="c"))
        await ib.wait_for(2)
        assert b.cfg.tls.reloads == 1
        a.send(app(3))
        await ib.wait_for(3)
        assert a.stats.connects == 1  # the old link was never dropped
    finally:
        for t in (a, b, c):
            await t.close()


def test_the_api_context_follows_a_renewed_certificate(tmp_path: Path, ca: DevCa) -> None:
    from mesh.transport.tls import ApiTls

    d = creds(tmp_path, ca, "b")
    api = ApiTls(d)
    first = api.context()
    assert api.context() is first  # unchanged files: the same context
    ca.write_node(d, "hana", "b")  # renewed
    assert api.context() is not first


def test_the_listener_answers_every_dialer_under_uvloop(tmp_path: Path, ca: DevCa) -> None:
    """A dialer sends its ClientHello at once; under uvloop (what serve
    runs) the listener must never lose it (upgrading a plain stream with
    start_tls did, now and then: that link hung until the dialer gave up,
    and failovers took up to 90 s). Thirty fresh dials, each answered."""
    uvloop = pytest.importorskip("uvloop")
    a_dir, b_dir = creds(tmp_path, ca, "a"), creds(tmp_path, ca, "b")

    async def run() -> None:
        b, pb = await make("b", b_dir, Inbox())
        a, _ = await make("a", a_dir)
        try:
            for _ in range(30):
                async with asyncio.timeout(4):
                    reader, writer = await a._connect(("127.0.0.1", pb))
                    try:
                        await a._dial_handshake("b", reader, writer)
                    finally:
                        writer.close()
        finally:
            await a.close()
            await b.close()

    uvloop.run(run())
