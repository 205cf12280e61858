"""mDNS discovery: TXT encoding, injected packets (no traffic needed), and
one real multicast exchange bound to 127.0.0.1 (never the default interfaces)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from zeroconf import DNSIncoming, DNSOutgoing, IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf
from zeroconf.const import _FLAGS_AA, _FLAGS_QR_RESPONSE

from mesh.discovery import SERVICE_TYPE, BootstrapState, Discovery, Peer, StaticDiscovery, decode_txt, encode_txt
from mesh.discovery.base import parse_interfaces
from mesh.discovery.mdns import MdnsDiscovery, instance_name, ip_version_for

LOOPBACK = ["127.0.0.1"]


async def until(event: asyncio.Event, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait on `event` until `predicate()` holds, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        event.clear()
        if predicate():
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("condition not reached in time")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), remaining)


# -- TXT and flags ------------------------------------------------------------


def test_txt_round_trip() -> None:
    props = encode_txt("n1", "show", ("10.0.0.5", 7071), "10.0.0.5:7070", 1, BootstrapState.LOCKED, ("n1", "n2"))
    raw = {k.encode(): v.encode() for k, v in props.items()}
    peer = decode_txt(raw)
    assert peer == Peer("n1", "show", "10.0.0.5", 7071, "10.0.0.5:7070", 1, "mdns", BootstrapState.LOCKED, ("n1", "n2"))
    assert peer.raft_address == ("10.0.0.5", 7071)


@pytest.mark.parametrize(
    "raw",
    [
        {b"cluster": b"c", b"raft": b"h:1", b"proto": b"1"},  # no id
        {b"id": b"x", b"cluster": b"c", b"raft": b"h", b"proto": b"1"},  # no port
        {b"id": b"x", b"cluster": b"c", b"raft": b"h:99999", b"proto": b"1"},
        {b"id": b"x", b"cluster": b"c", b"raft": b"h:1", b"proto": b"one"},
        {b"id": b"x", b"cluster": b"c", b"raft": b"h:1", b"proto": b"1", b"state": b"weird"},
        {b"id": b"\xff", b"cluster": b"c", b"raft": b"h:1", b"proto": b"1"},
        {b"id": None, b"cluster": b"c", b"raft": b"h:1", b"proto": b"1"},
    ],
)
def test_malformed_txt_is_refused(raw: dict[bytes, bytes | None]) -> None:
    with pytest.raises(ValueError):
        decode_txt(raw)


def test_unencodable_values_are_refused() -> None:
    with pytest.raises(ValueError):
        encode_txt("a,b", "c", ("h", 1), "", 1)
    with pytest.raises(ValueError):
        encode_txt("a", "c", ("h", 1), "", 1, BootstrapState.FRESH, tuple(f"node-{i:04d}" for i in range(40)))
    with pytest.raises(ValueError):
        instance_name("c" * 40, "n" * 30)


def test_interfaces_flag() -> None:
    assert parse_interfaces(None) is None
    assert parse_interfaces(" ") is None
    assert parse_interfaces("127.0.0.1, 10.0.0.2") == ["127.0.0.1", "10.0.0.2"]
    with pytest.raises(ValueError):
        parse_interfaces("eth0")
    assert ip_version_for(["127.0.0.1"]) == IPVersion.V4Only
    assert ip_version_for(["::1"]) == IPVersion.V6Only
    assert ip_version_for(["127.0.0.1", "::1"]) == IPVersion.All
    assert ip_version_for(None) is None


async def test_static_discovery() -> None:
    d = StaticDiscovery("show", "a", {"a": ("h", 1), "b": ("h", 2), "c": ("h", 3)})
    assert isinstance(d, Discovery)
    seen: list[dict[str, Peer]] = []
    d.on_change(seen.append)
    await d.start()
    assert sorted(d.peers()) == ["b", "c"]
    assert d.peers()["b"].raft_address == ("h", 2)
    assert d.peers()["b"].conf == ("a", "b", "c")
    assert d.changed.is_set() and len(seen) == 1
    d.set_seeds({"a": ("h", 1), "d": ("h", 4)})
    assert sorted(seen[-1]) == ["d"]
    await d.advertise_state(BootstrapState.MEMBER, ())
    await d.stop()


# -- injected packets ------------------------------------------------------------


def _info(node_id: str, cluster: str, port: int = 7071, **kw: object) -> ServiceInfo:
    props = encode_txt(node_id, cluster, ("127.0.0.1", port), f"127.0.0.1:{port - 1}", 1, **kw)  # type: ignore[arg-type]
    return ServiceInfo(
        SERVICE_TYPE,
        instance_name(cluster, node_id),
        port=port,
        properties=props,
        server=f"hana-{cluster}-{node_id}.local.",
        parsed_addresses=["127.0.0.1"],
    )


def _inject(aiozc: AsyncZeroconf, info: ServiceInfo, ttl: int | None = None) -> None:
    """Feed the records of `info` to zeroconf as if they came off the wire;
    ttl=0 is a goodbye. Nothing is sent."""
    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    out.add_answer_at_time(info.dns_pointer(override_ttl=ttl), 0)
    out.add_answer_at_time(info.dns_service(override_ttl=ttl), 0)
    out.add_answer_at_time(info.dns_text(override_ttl=ttl), 0)
    for rec in info.dns_addresses(override_ttl=ttl):
        out.add_answer_at_time(rec, 0)
    for packet in out.packets():
        aiozc.zeroconf.record_manager.async_updates_from_response(DNSIncoming(packet))


@pytest.fixture
async def browsing() -> AsyncIterator[tuple[AsyncZeroconf, MdnsDiscovery]]:
    try:
        aiozc = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
    except OSError as exc:
        pytest.skip(f"cannot bind mDNS to 127.0.0.1: {exc}")
    d = MdnsDiscovery("show", "me", ("127.0.0.1", 7071), "", LOOPBACK, zeroconf=aiozc, advertise=False)
    await d.start()
    try:
        yield aiozc, d
    finally:
        await d.stop()
        await aiozc.async_close()


async def test_injected_peer_appears_updates_and_leaves(browsing: tuple[AsyncZeroconf, MdnsDiscovery]) -> None:
    aiozc, d = browsing
    views: list[dict[str, Peer]] = []
    d.on_change(views.append)
    _inject(aiozc, _info("n2", "show", 8001))
    await until(d.changed, lambda: "n2" in d.peers())
    p = d.peers()["n2"]
    assert (p.raft_host, p.raft_port, p.api, p.protocol, p.source) == ("127.0.0.1", 8001, "127.0.0.1:8000", 1, "mdns")
    assert p.state == BootstrapState.FRESH
    assert views and "n2" in views[-1]

    # A TXT change (the peer locked a configuration) is seen.
    _inject(aiozc, _info("n2", "show", 8001, state=BootstrapState.LOCKED, conf=("me", "n2")))
    await until(d.changed, lambda: d.peers()["n2"].state == BootstrapState.LOCKED)
    assert d.peers()["n2"].conf == ("me", "n2")

    # Goodbye (TTL 0): removed.
    _inject(aiozc, _info("n2", "show", 8001, state=BootstrapState.LOCKED, conf=("me", "n2")), ttl=0)
    await until(d.changed, lambda: "n2" not in d.peers())


async def test_other_clusters_and_junk_are_ignored(browsing: tuple[AsyncZeroconf, MdnsDiscovery]) -> None:
    aiozc, d = browsing
    _inject(aiozc, _info("x1", "other", 8101))
    junk = ServiceInfo(SERVICE_TYPE, f"junk.{SERVICE_TYPE}", port=1, properties={"id": "j"}, server="junk.local.")
    junk.addresses = [bytes([127, 0, 0, 1])]
    _inject(aiozc, junk)
    # Our own instance name coming back is not a peer either.
    _inject(aiozc, _info("me", "show", 7071))
    # A marker peer injected last: once it is seen, the others were processed.
    _inject(aiozc, _info("marker", "show", 8201))
    await until(d.changed, lambda: "marker" in d.peers())
    assert set(d.peers()) == {"marker"}


# -- real multicast on loopback ------------------------------------------------


@pytest.mark.slow
async def test_two_nodes_find_each_other_over_loopback_multicast() -> None:
    cluster = f"t{uuid.uuid4().hex[:8]}"
    a = MdnsDiscovery(cluster, "a", ("127.0.0.1", 17071), "127.0.0.1:17070", LOOPBACK)
    b = MdnsDiscovery(cluster, "b", ("127.0.0.1", 17072), "127.0.0.1:17073", LOOPBACK)
    try:
        await a.start()
        await b.start()
    except OSError as exc:
        await a.stop()
        pytest.skip(f"cannot bind mDNS to 127.0.0.1: {exc}")
    try:
        await until(a.changed, lambda: "b" in a.peers(), timeout=10)
        await until(b.changed, lambda: "a" in b.peers(), timeout=10)
        assert a.peers()["b"].raft_address == ("127.0.0.1", 17072)
        assert b.peers()["a"].api == "127.0.0.1:17070"
        # A bootstrap state change travels in the TXT record.
        await b.advertise_state(BootstrapState.LOCKED, ("a", "b"))
        await until(a.changed, lambda: a.peers()["b"].state == BootstrapState.LOCKED, timeout=10)
        # Clean stop sends goodbyes.
        await b.stop()
        await until(a.changed, lambda: "b" not in a.peers(), timeout=10)
    finally:
        await b.stop()
        await a.stop()
