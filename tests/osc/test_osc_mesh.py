"""The OSC bridge on a real in-process 3-node mesh with the real live stream
(tests/meshkit.py, L1's mesh/node/live.py): a python-osc client sends to
n1's --osc-listen, the values move live on every node and settle into the
log as one gesture; a python-osc server hears them from n2's --osc-send;
bad packets are dropped, counted in /metrics and change nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from tests.api.conftest import JSON
from tests.osc.kit import BAD_PACKETS, bundle, message
from tests.osc.meshes import OscMesh, eventually, osc_mesh


@pytest.fixture
async def mesh() -> AsyncIterator[OscMesh]:
    async with osc_mesh() as m:
        yield m


async def test_an_osc_fader_gesture_moves_live_everywhere_settles_once_and_undoes_in_one_step(mesh: OscMesh) -> None:
    watcher = await mesh.clients["n3"].ws_connect("/v1/live?prefix=parameters/")
    # The watcher is subscribed once its socket is open: a probe set through
    # n2's live socket reaches it.
    probe = await mesh.clients["n2"].ws_connect("/v1/live")
    await probe.send_str(orjson.dumps({"set": {"parameters/probe": 1}}).decode())
    async with asyncio.timeout(10):
        while "parameters/probe" not in orjson.loads(await watcher.receive_str())["values"]:
            pass
    client, addr = mesh.udp()
    assert mesh.rx is not None
    start = len(mesh.rx.got)
    n = 120
    for i in range(1, n + 1):
        client.send_message("/fader1", i / n)
        if i % 10 == 0:
            client._sock.sendto(bundle(message("/fader1", i / n), message("/fader2", i / n / 2)), addr)
        await asyncio.sleep(0)  # the node reads as it goes (a real desk paces itself)
    seen: list[float] = []
    gestures = set()
    async with asyncio.timeout(10):
        while not seen or seen[-1] != 100.0:
            doc = orjson.loads(await watcher.receive_str())
            if "parameters/brightness" in doc["values"]:
                assert doc["source"] == "n1"
                seen.append(doc["values"]["parameters/brightness"])
                gestures.add(doc["gesture"])
    assert seen == sorted(seen), "a monotone subsequence of what the fader sent"
    assert len(gestures) == 1  # one gesture: the packets came without a pause

    async def settled() -> bool:
        for nid in mesh.nodes:
            _, b = await mesh.get(nid, "/v1/kv/parameters/brightness")
            _, s = await mesh.get(nid, "/v1/kv/parameters/speed")
            if b.get("value") != 100.0 or s.get("value") != 0.5:
                return False
        return True

    await eventually(settled)
    (gesture,) = gestures
    _, hist = await mesh.get("n2", "/v1/history?prefix=parameters/")
    records = [r for r in hist["records"] if r.get("gesture") == gesture]
    assert sorted(r["key"] for r in records) == ["parameters/brightness", "parameters/speed"]
    assert {r["author"] for r in records} == {"osc"}
    # n2's --osc-send reported the fader's moves, scaled back into 0..1.
    got = await mesh.rx.wait_for(lambda g: ("/fader1", (1.0,)) in g and ("/fader2", (0.5,)) in g)
    fader1 = [args[0] for address, args in got[start:] if address == "/fader1"]
    assert fader1 == sorted(fader1)
    # One undo of the osc author reverts the whole gesture, on every node.
    resp = await mesh.clients["n1"].post("/v1/undo", data=orjson.dumps({"author": "osc"}), headers=JSON)
    assert resp.status == 200, await resp.read()

    async def undone() -> bool:
        for nid in mesh.nodes:
            _, b = await mesh.get(nid, "/v1/kv/parameters/brightness")
            status, _ = await mesh.get(nid, "/v1/kv/parameters/speed")
            if b.get("value") != 10.0 or status != 404:
                return False
        return True

    await eventually(undone)
    _, metrics = await mesh.get("n1", "/metrics")
    assert f'hana_osc_packets_total{{result="ok"}} {float(n + n // 10)}' in metrics
    await watcher.close()
    await probe.close()


@pytest.mark.slow
async def test_bad_packets_are_dropped_counted_in_metrics_and_change_nothing(mesh: OscMesh) -> None:
    watcher = await mesh.clients["n2"].ws_connect("/v1/live")
    probe = await mesh.clients["n3"].ws_connect("/v1/live")
    await probe.send_str(orjson.dumps({"set": {"parameters/probe": 1}}).decode())
    async with asyncio.timeout(10):
        while "parameters/probe" not in orjson.loads(await watcher.receive_str())["values"]:
            pass
    revision = mesh.nodes["n1"].kv.revision
    client, addr = mesh.udp()
    for data, _ in BAD_PACKETS.values():
        client._sock.sendto(data, addr)
    client.send_message("/fader2", 0.25)  # a good one after them
    async with asyncio.timeout(10):
        while True:
            doc = orjson.loads(await watcher.receive_str())
            if doc["source"] == "n1":
                break
    # The first live value from n1 is the good packet's: no bad one went anywhere.
    assert doc["values"] == {"parameters/speed": 0.25}
    assert all(r.revision <= revision for r in mesh.nodes["n1"].kv.changes_since(1) if r.author == "osc")
    _, metrics = await mesh.get("n1", "/metrics")
    expected: dict[str, int] = {}
    for _, result in BAD_PACKETS.values():
        expected[result] = expected.get(result, 0) + 1
    for result, count in expected.items():
        assert f'hana_osc_packets_total{{result="{result}"}} {float(count)}' in metrics, result
    assert 'hana_osc_packets_total{result="ok"} 1.0' in metrics
    await watcher.close()
    await probe.close()


async def test_the_osc_routes_show_the_bridge_and_monitor_what_comes_in(mesh: OscMesh) -> None:
    status, doc = await mesh.get("n1", "/v1/osc")
    assert status == 200
    assert doc["listen"] == "{}:{}".format(*mesh.udp()[1])
    assert doc["oscquery"].startswith("127.0.0.1:")
    assert {m["address"] for m in doc["mappings"]} == {"/fader1", "/fader2"}
    ws = await mesh.clients["n1"].ws_connect("/v1/osc/monitor")
    client, _ = mesh.udp()

    async def subscribed() -> bool:
        return bool(mesh.osc["n1"].bridge._monitors)

    await eventually(subscribed)
    client.send_message("/fader1", 0.5)
    client.send_message("/nowhere", 1)
    first = orjson.loads(await ws.receive_str(timeout=5))
    second = orjson.loads(await ws.receive_str(timeout=5))
    assert first["result"] == "ok"
    assert first["messages"] == [{"address": "/fader1", "args": [0.5], "maps_to": {"parameters/brightness": 50.0}}]
    assert second["result"] == "unmapped" and second["messages"][0]["address"] == "/nowhere"
    await ws.close()
    # A node without the bridge: 404.
    assert (await mesh.get("n3", "/v1/osc"))[0] == 404
