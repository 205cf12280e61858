"""The OSC bridge over a fake of the node's live stream (the end-to-end
tests in test_osc_mesh.py run the real one): packets in, values out, bad
packets dropped, counted, logged and changing nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pythonosc.udp_client import SimpleUDPClient

from mesh.osc.bridge import OscBridge
from mesh.state.components import DEFAULT_REGISTRY, Component, t
from tests.osc.kit import BAD_PACKETS, FakeLiveNode, Receiver, bundle, fader, message, until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def node() -> FakeLiveNode:
    n = FakeLiveNode()
    for key, doc in (
        fader("fader1", "parameters/brightness", out_min=0, out_max=100),
        fader("fader2", "parameters/speed"),
    ):
        n.put(key, doc)
    return n


@pytest.fixture
async def bridge(node: FakeLiveNode) -> AsyncIterator[OscBridge]:
    b = OscBridge(node, listen=("127.0.0.1", 0), registry=CollectorRegistry())
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


def metric(registry_text: bytes, result: str) -> float:
    for line in registry_text.decode().splitlines():
        if line.startswith(f'hana_osc_packets_total{{result="{result}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no hana_osc_packets_total{{result={result}}} in /metrics")


async def test_a_python_osc_client_moves_a_mapped_parameter(node: FakeLiveNode, bridge: OscBridge) -> None:
    assert bridge.bound is not None
    client = SimpleUDPClient(*bridge.bound)
    client.send_message("/fader1", 0.25)
    await until(lambda: len(node.sets) == 1)
    values, gesture, author = node.sets[0]
    assert values == {"parameters/brightness": 25.0}
    assert author == "osc" and gesture
    assert bridge.counts["ok"] == 1


async def test_a_bundle_is_one_step_and_a_burst_is_one_gesture(node: FakeLiveNode, bridge: OscBridge) -> None:
    assert bridge.bound is not None
    client = SimpleUDPClient(*bridge.bound)
    client._sock.sendto(bundle(message("/fader1", 1.0), message("/fader2", 0.5)), bridge.bound)
    client.send_message("/fader2", 0.75)
    await until(lambda: len(node.sets) == 2)
    assert node.sets[0][0] == {"parameters/brightness": 100.0, "parameters/speed": 0.5}
    assert node.sets[0][1] == node.sets[1][1]  # the same gesture


async def test_silence_starts_a_new_gesture(node: FakeLiveNode) -> None:
    clock = Clock()
    b = OscBridge(node, listen=None, settle_ms=250, registry=CollectorRegistry(), clock=clock)
    assert b.handle_packet(message("/fader2", 0.1), "h:1") == "ok"
    clock.now += 0.2
    assert b.handle_packet(message("/fader2", 0.2), "h:1") == "ok"
    assert b.handle_packet(message("/fader2", 0.3), "other:2") == "ok"
    clock.now += 0.3
    assert b.handle_packet(message("/fader2", 0.4), "h:1") == "ok"
    g = [s[1] for s in node.sets]
    assert g[0] == g[1] and g[2] != g[0] and g[3] not in (g[0], g[2])


@pytest.mark.parametrize("name", sorted(BAD_PACKETS))
async def test_bad_packets_are_dropped_counted_and_change_nothing(
    node: FakeLiveNode, bridge: OscBridge, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    data, result = BAD_PACKETS[name]
    registry = CollectorRegistry()
    b = OscBridge(node, listen=None, registry=registry)
    before = node.kv.revision
    with caplog.at_level(logging.INFO, logger="mesh.osc"):
        assert b.handle_packet(data, "127.0.0.1:9") == result
    assert node.sets == [] and node.kv.revision == before
    assert metric(generate_latest(registry), result) == 1.0
    assert f"event=osc_packet_dropped result={result}" in caplog.text


async def test_over_udp_too_bad_packets_change_nothing_and_a_good_one_after_them_counts(
    node: FakeLiveNode, bridge: OscBridge
) -> None:
    assert bridge.bound is not None
    client = SimpleUDPClient(*bridge.bound)
    for data, _ in BAD_PACKETS.values():
        if len(data) < 60_000:
            client._sock.sendto(data, bridge.bound)
    client.send_message("/fader2", 0.5)
    await until(lambda: bridge.counts["ok"] == 1)
    assert node.sets == [({"parameters/speed": 0.5}, node.sets[0][1], "osc")]
    expected: dict[str, int] = {}
    for _, result in BAD_PACKETS.values():
        expected[result] = expected.get(result, 0) + 1
    assert {k: v for k, v in bridge.counts.items() if k != "ok" and v} == expected


async def test_a_value_the_state_refuses_drops_the_whole_bundle() -> None:
    node = FakeLiveNode(registry=DEFAULT_REGISTRY.with_component(Component("levels", 9, t("integer", maximum=10))))
    node.put(*fader("fader2", "parameters/speed"))
    node.put(*fader("level", "levels/a", out_min=0, out_max=20))  # 0..20 onto a key that holds at most 10
    node.put("input_mappings/bad", {"kind": "osc", "address": "/strict", "target": "plugins/p"})  # object values
    b = OscBridge(node, listen=None, registry=CollectorRegistry())
    assert "input_mappings/bad" in b.table.refused
    assert b.handle_packet(bundle(message("/fader2", 0.5), message("/level", 0.25)), "h:1") == "ok"
    assert node.sets[-1][0] == {"parameters/speed": 0.5, "levels/a": 5}
    assert b.handle_packet(bundle(message("/fader2", 0.7), message("/level", 0.75)), "h:1") == "bad"
    assert b.handle_packet(bundle(message("/fader2", 0.7), message("/fader2", "x")), "h:1") == "bad"
    assert len(node.sets) == 1 and b.counts["bad"] == 2


async def test_floods_are_rate_limited_before_parsing_and_logged_once(
    node: FakeLiveNode, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    b = OscBridge(node, listen=None, registry=CollectorRegistry(), rate=100, burst=10, clock=clock)
    with caplog.at_level(logging.INFO, logger="mesh.osc"):
        results = [b.handle_packet(message("/fader2", i / 1000), "h:1") for i in range(1000)]
    assert results.count("ok") == 10 and results.count("rate_limited") == 990
    assert len(node.sets) == 10
    assert caplog.text.count("result=rate_limited") == 1  # rate-limit logged
    clock.now += 1.0  # the bucket refills
    assert b.handle_packet(message("/fader2", 0.9), "h:1") == "ok"


async def test_changes_of_mapped_keys_go_out_as_osc(node: FakeLiveNode) -> None:
    rx = await Receiver().start()
    b = OscBridge(node, listen=None, send=[("127.0.0.1", rx.port)], registry=CollectorRegistry())
    await b.start()
    try:
        await until(lambda: bool(node.subs))
        node.publish({"parameters/brightness": 50.0, "parameters/speed": 0.25, "parameters/unmapped": 1})
        await rx.wait_for(lambda got: len(got) >= 2)
        assert sorted(rx.got) == [("/fader1", (0.5,)), ("/fader2", (0.25,))]  # scaled back into 0..1
        node.put("parameters/speed", 0.75)  # a committed change (a PUT, an undo, a settled gesture)
        await rx.wait_for(lambda got: ("/fader2", (0.75,)) in got)
        node.put("parameters/speed", 0.75, author="bob")  # the same value again: not sent twice
        node.put("parameters/brightness", 10.0)
        await rx.wait_for(lambda got: ("/fader1", (pytest.approx(0.1),)) in got)
        assert rx.got.count(("/fader2", (0.75,))) == 1
    finally:
        await b.stop()
        rx.close()


async def test_mapping_edits_take_effect_without_a_restart(node: FakeLiveNode, bridge: OscBridge) -> None:
    assert bridge.handle_packet(message("/new", 0.5), "h:1") == "unmapped"
    node.put(*fader("new", "parameters/new"))
    await until(lambda: "/new" in bridge.table.by_address)
    assert bridge.handle_packet(message("/new", 0.5), "h:1") == "ok"
    assert node.sets[-1][0] == {"parameters/new": 0.5}


async def test_the_monitor_shows_what_came_in_and_what_it_mapped_to(node: FakeLiveNode, bridge: OscBridge) -> None:
    q = bridge.monitor()
    bridge.handle_packet(message("/fader1", 0.5), "h:1")
    bridge.handle_packet(message("/nope", 1), "h:1")
    bridge.handle_packet(b"junk", "h:1")
    events: list[dict[str, Any]] = [q.queue.get_nowait() for _ in range(3)]
    assert events[0]["result"] == "ok"
    assert events[0]["messages"] == [{"address": "/fader1", "args": [0.5], "maps_to": {"parameters/brightness": 50.0}}]
    assert events[1]["result"] == "unmapped" and events[1]["messages"][0]["address"] == "/nope"
    assert events[2]["result"] == "bad" and events[2]["reason"]
    bridge.unmonitor(q)
    bridge.handle_packet(message("/fader1", 0.5), "h:1")
    assert q.queue.empty()


async def test_a_slow_monitor_drops_its_oldest_events_and_is_told(node: FakeLiveNode, bridge: OscBridge) -> None:
    q = bridge.monitor()
    for _ in range(q.queue.maxsize + 5):
        bridge.handle_packet(message("/nope", 1), "h:1")
    assert q.queue.qsize() == q.queue.maxsize and q.dropped == 5
    bridge.handle_packet(message("/nope", 2), "h:1")
    assert asyncio.Queue.qsize(q.queue) == q.queue.maxsize
