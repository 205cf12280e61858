"""OSCQuery served by the bridge, checked with a client written from the
proposal (tests/osc/oscquery_client.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import NamedTuple

import orjson
import pytest
from prometheus_client import CollectorRegistry

from mesh.osc.bridge import OscBridge
from mesh.osc.oscquery import OscQueryServer
from mesh.state.components import DEFAULT_REGISTRY, Component, t
from tests.osc.kit import FakeLiveNode, fader, message, until
from tests.osc.oscquery_client import OscQueryClient

REG = DEFAULT_REGISTRY.with_component(Component("levels", 9, t("integer", minimum=0, maximum=10), description="lv"))


class Served(NamedTuple):
    node: FakeLiveNode
    bridge: OscBridge
    client: OscQueryClient
    server: OscQueryServer


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    node = FakeLiveNode(registry=REG)
    node.put(*fader("mixer/fader1", "parameters/brightness", out_min=0, out_max=100, description="master"))
    node.put(*fader("mixer/fader2", "parameters/speed"))
    node.put(*fader("level", "levels/a"))
    node.put("parameters/brightness", 50.0)
    bridge = OscBridge(node, listen=("127.0.0.1", 0), registry=CollectorRegistry())
    await bridge.start()
    server = OscQueryServer(bridge, "127.0.0.1", 0, "hana-test-n1")
    await server.start()
    assert server.bound is not None
    client = OscQueryClient(*server.bound)
    try:
        yield Served(node, bridge, client, server)
    finally:
        await client.close()
        await server.stop()
        await bridge.stop()


async def test_host_info_says_where_osc_goes_and_what_is_supported(
    served: Served,
) -> None:
    _, bridge, client, _ = served
    info = await client.host_info()
    assert bridge.bound is not None
    assert info["NAME"] == "hana-test-n1"
    assert (info["OSC_IP"], info["OSC_PORT"], info["OSC_TRANSPORT"]) == (*bridge.bound, "UDP")
    ext = info["EXTENSIONS"]
    assert all(ext[k] for k in ("ACCESS", "VALUE", "RANGE", "DESCRIPTION", "LISTEN", "PATH_CHANGED"))
    assert await client.get("/mixer/fader1", "HOST_INFO") == (200, info)  # the path does not matter


async def test_the_tree_walks_from_the_root_to_every_mapped_address(
    served: Served,
) -> None:
    _, _, client, _ = served
    status, root = await client.get("/")
    assert status == 200 and root["FULL_PATH"] == "/" and root["ACCESS"] == 0
    found = {m["FULL_PATH"]: m for m in client.methods(root)}
    assert set(found) == {"/mixer/fader1", "/mixer/fader2", "/level"}
    mixer = root["CONTENTS"]["mixer"]
    assert mixer["FULL_PATH"] == "/mixer" and "TYPE" not in mixer  # a container
    f1 = found["/mixer/fader1"]
    assert f1["TYPE"] == "f" and f1["ACCESS"] == 3
    assert f1["VALUE"] == [0.5]  # 50 of 0..100, in the fader's own 0..1
    assert f1["RANGE"] == [{"MIN": 0.0, "MAX": 1.0}] and f1["CLIPMODE"] == ["both"]
    assert f1["DESCRIPTION"] == "master"
    level = found["/level"]
    assert level["TYPE"] == "i" and level["RANGE"] == [{"MIN": 0, "MAX": 10}]  # from the component schema
    assert level["DESCRIPTION"] == "levels/a: lv" and "VALUE" not in level  # no value yet
    # Each node is also reachable on its own, and equal to its part of the tree.
    for path, node in found.items():
        assert await client.get(path) == (200, node)
    assert await client.get("/mixer") == (200, mixer)


async def test_single_attributes_and_errors(served: Served) -> None:
    _, _, client, _ = served
    assert await client.get("/mixer/fader1", "VALUE") == (200, {"VALUE": [0.5]})
    assert await client.get("/mixer/fader1", "TYPE") == (200, {"TYPE": "f"})
    assert await client.get("/mixer", "TYPE") == (200, {})  # a container has no type
    assert (await client.get("/nowhere"))[0] == 404
    assert (await client.get("/mixer/fader1", "GABBAGABBAHEY"))[0] == 400
    assert (await client.get("/mixer/fader1", "UNIT"))[0] == 204  # known to the proposal, not provided


async def test_listen_streams_value_changes_and_ignore_stops_them(
    served: Served,
) -> None:
    node, _bridge, client, server = served
    await client.connect(await client.host_info())
    await client.command("LISTEN", "/mixer/fader1")
    await client.command("LISTEN", "/mixer/fader2")
    await until(lambda: bool(node.subs) and len(server.listeners()) == 2)
    node.publish({"parameters/brightness": 75.0})
    assert await asyncio.wait_for(client.next_value(), 5) == ("/mixer/fader1", [0.75])
    node.put("parameters/speed", 0.25)  # committed changes too
    assert await asyncio.wait_for(client.next_value(), 5) == ("/mixer/fader2", [0.25])
    await client.command("IGNORE", "/mixer/fader1")
    await client.command("LISTEN", "/level")
    await until(lambda: set(server.listeners()) == {"/mixer/fader2", "/level"})
    node.publish({"parameters/brightness": 10.0})  # ignored now
    node.publish({"levels/a": 3})
    assert await asyncio.wait_for(client.next_value(), 5) == ("/level", [3])


async def test_a_mapping_change_is_announced_with_path_changed(
    served: Served,
) -> None:
    node, _, client, server = served
    await client.connect(await client.host_info())
    await client.command("LISTEN", "/mixer/fader2")
    await until(lambda: bool(node.subs) and bool(server.listeners()))
    node.put(*fader("extra", "parameters/extra"))
    node.publish({"parameters/speed": 0.5})
    assert await asyncio.wait_for(client.next_value(), 5) == ("/mixer/fader2", [0.5])
    assert {"COMMAND": "PATH_CHANGED", "DATA": "/"} in client.notes
    status, doc = await client.get("/extra")
    assert status == 200 and doc["TYPE"] == "f"


async def test_binary_osc_over_the_websocket_goes_through_the_bridge(
    served: Served,
) -> None:
    node, bridge, client, _server = served
    await client.connect(await client.host_info())
    assert client.ws is not None
    await client.ws.send_bytes(message("/mixer/fader2", 0.5))
    await client.ws.send_bytes(b"garbage")
    await until(lambda: bridge.counts["ok"] == 1 and bridge.counts["bad"] == 1)
    assert node.sets[-1][0] == {"parameters/speed": 0.5}


async def test_a_query_sent_over_the_websocket_is_answered_there(served: Served) -> None:
    _, _, client, _ = served
    await client.connect(await client.host_info())
    assert client.ws is not None
    await client.ws.send_str("/?HOST_INFO")
    await client.ws.send_str("/mixer/fader1?TYPE")
    first = orjson.loads(await client.ws.receive_str(timeout=5))
    second = orjson.loads(await client.ws.receive_str(timeout=5))
    assert first["OSC_TRANSPORT"] == "UDP" and second == {"TYPE": "f"}
