"""OSCQuery's mDNS advertisement (`_oscjson._tcp`, as the proposal asks)
through the node's own zeroconf (MdnsDiscovery.advertise_extra), bound to
127.0.0.1 only (never the default interfaces: NOTES-network.md)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from zeroconf import DNSQuestionType, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from mesh.discovery.mdns import MdnsDiscovery
from mesh.osc.service import OSCQUERY_SERVICE


async def test_an_extra_service_needs_a_started_discovery() -> None:
    d = MdnsDiscovery("c", "n1", ("127.0.0.1", 7071), "", ["127.0.0.1"])
    with pytest.raises(RuntimeError, match="not started"):
        await d.advertise_extra(OSCQUERY_SERVICE, "x", "127.0.0.1", 1234)


@pytest.mark.slow
async def test_a_browser_finds_the_oscquery_service_and_sees_it_go() -> None:
    cluster = f"t{uuid.uuid4().hex[:8]}"
    label = f"hana-{cluster}-n1"
    d = MdnsDiscovery(cluster, "n1", ("127.0.0.1", 17171), "", ["127.0.0.1"])
    browser_zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    seen: dict[str, ServiceStateChange] = {}
    changed = asyncio.Event()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        seen[name] = state_change
        changed.set()

    browser = AsyncServiceBrowser(
        browser_zc.zeroconf, [OSCQUERY_SERVICE], handlers=[on_change], question_type=DNSQuestionType.QM
    )
    try:
        try:
            await d.start()
        except OSError as exc:
            pytest.skip(f"cannot bind mDNS to 127.0.0.1: {exc}")
        name = await d.advertise_extra(OSCQUERY_SERVICE, label, "127.0.0.1", 45678)
        assert name.startswith(label) and name.endswith(OSCQUERY_SERVICE)
        async with asyncio.timeout(10):
            while seen.get(name) is not ServiceStateChange.Added:
                changed.clear()
                await changed.wait()
        info = AsyncServiceInfo(OSCQUERY_SERVICE, name)
        assert await info.async_request(browser_zc.zeroconf, 3000, question_type=DNSQuestionType.QM)
        assert info.port == 45678 and info.parsed_addresses() == ["127.0.0.1"]
        await d.stop()  # goodbyes for the extra service too
        async with asyncio.timeout(10):
            while seen.get(name) is not ServiceStateChange.Removed:
                changed.clear()
                await changed.wait()
    finally:
        await browser.async_cancel()
        await d.stop()
        await browser_zc.async_close()
