"""`GET /v1/live` over an in-process 3-node mesh: a set on one node reaches
the subscribers of every node, settles once through the log (one history
record per key with its gesture, one undo step), and bad sets are answered
on the socket and go nowhere."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import ClientWebSocketResponse

from tests.api.conftest import JSON, Mesh


async def recv(ws: ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive_str(timeout=timeout)
    doc: dict[str, Any] = orjson.loads(msg)
    return doc


async def until(ws: ClientWebSocketResponse, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            doc = await recv(ws, timeout)
            if pred(doc):
                return doc


async def get(mesh: Mesh, nid: str, path: str) -> tuple[int, Any]:
    resp = await mesh.clients[nid].get(path)
    return resp.status, orjson.loads(await resp.read())


async def wait_for(cond: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.02)


async def test_a_gesture_reaches_every_node_settles_once_and_undoes_in_one_step(mesh: Mesh) -> None:
    a, b, c = "n1", "n2", "n3"
    await mesh.clients[a].put("/v1/kv/parameters/fader", data=orjson.dumps({"value": 0.1}), headers=JSON)
    watchers = {nid: await mesh.clients[nid].ws_connect("/v1/live?prefix=parameters/") for nid in (b, c)}
    other = await mesh.clients[b].ws_connect("/v1/live?prefix=displays/")
    source = await mesh.clients[a].ws_connect("/v1/live")
    for i in range(1, 21):
        await source.send_str(orjson.dumps({"set": {"parameters/fader": i / 20}, "gesture": "g1"}).decode())
    await source.send_str(orjson.dumps({"set": {"parameters/other": 7}, "gesture": "g1"}).decode())
    for ws in watchers.values():
        seen: list[float] = []
        async with asyncio.timeout(10):
            while True:
                doc = await recv(ws)
                assert doc["type"] == "live" and doc["source"] == a and doc["gesture"] == "g1", doc
                if "parameters/fader" in doc["values"]:
                    seen.append(doc["values"]["parameters/fader"])
                if doc["values"].get("parameters/other") == 7:
                    break
        # A monotone subsequence of what was sent, ending in the last value.
        assert seen == sorted(seen) and seen[-1] == 1.0, seen
    await source.send_str(orjson.dumps({"end": "g1"}).decode())

    async def settled_everywhere() -> bool:
        for nid in (a, b, c):
            status, doc = await get(mesh, nid, "/v1/kv/parameters/fader")
            if status != 200 or doc["value"] != 1.0:
                return False
        return True

    await wait_for(settled_everywhere)
    _, hist = await get(mesh, b, "/v1/history?prefix=parameters/")
    gesture_records = [r for r in hist["records"] if r.get("gesture") == "g1"]
    assert sorted(r["key"] for r in gesture_records) == ["parameters/fader", "parameters/other"]
    assert len({r["revision"] for r in gesture_records}) == 1
    # The subscriber of another prefix saw nothing.
    assert other.closed is False
    try:
        stray = await other.receive_str(timeout=0.2)
    except TimeoutError:
        stray = None
    assert stray is None

    resp = await mesh.clients[a].post("/v1/undo", data=b"{}", headers=JSON)
    assert resp.status == 200, await resp.read()

    async def undone_everywhere() -> bool:
        for nid in (a, b, c):
            status, doc = await get(mesh, nid, "/v1/kv/parameters/fader")
            if status != 200 or doc["value"] != 0.1:
                return False
            status, _ = await get(mesh, nid, "/v1/kv/parameters/other")
            if status != 404:
                return False
        return True

    await wait_for(undone_everywhere)
    for ws in (*watchers.values(), other, source):
        await ws.close()


async def test_silence_settles_a_gesture(mesh: Mesh) -> None:
    ws = await mesh.clients["n2"].ws_connect("/v1/live")
    await ws.send_str(orjson.dumps({"set": {"parameters/quiet": 3}}).decode())

    async def settled() -> bool:
        status, doc = await get(mesh, "n3", "/v1/kv/parameters/quiet")
        return status == 200 and doc["value"] == 3

    await wait_for(settled)
    _, hist = await get(mesh, "n1", "/v1/history?prefix=parameters/quiet")
    assert len(hist["records"]) == 1 and hist["records"][0]["gesture"], hist
    await ws.close()


async def test_bad_sets_are_answered_on_the_socket_and_go_nowhere(mesh: Mesh) -> None:
    watcher = await mesh.clients["n3"].ws_connect("/v1/live")
    ws = await mesh.clients["n1"].ws_connect("/v1/live")
    bad = {
        "not json": ("{", "invalid_json"),
        "unknown component": ('{"set": {"nope/x": 1}}', "unknown_component"),
        "invalid value": ('{"set": {"displays/d1": {"width": "wide"}}}', "invalid_value"),
        "bad key": ('{"set": {"parameters//x": 1}}', "invalid_key"),
        "unknown field": ('{"set": {"parameters/x": 1}, "speed": 3}', "invalid_field"),
        "empty set": ('{"set": {}}', "invalid_value"),
        "neither": ('{"gesture": "g"}', "invalid_command"),
        "too deep": ('{"set": {"parameters/x": ' + "[" * 70 + "]" * 70 + "}}", "too_deep"),
    }
    for name, (text, code) in bad.items():
        await ws.send_str(text)
        doc = await recv(ws)
        assert doc["type"] == "error" and doc["error"]["code"] == code, (name, doc)
    await ws.send_str(orjson.dumps({"set": {"parameters/good": 1}}).decode())
    doc = await until(watcher, lambda d: d["type"] == "live")
    # The first live value the watcher got is the good one: nothing bad went anywhere.
    assert doc["values"] == {"parameters/good": 1}, doc
    for node in mesh.nodes.values():
        assert node.kv.get("nope/x") is None
    await ws.close()
    await watcher.close()


async def test_a_reader_may_watch_but_not_set() -> None:
    # A loopback API's anonymous client is an operator; the live route is a
    # GET, so the guard lets readers in, and the socket refuses their sets.
    from mesh.api.auth import Identity
    from mesh.api.live_routes import _handle, _Publisher

    class Node:
        node_id = "x"

    pub = _Publisher(Node(), Identity("viewer", "reader"))  # type: ignore[arg-type]
    answer = _handle('{"set": {"parameters/x": 1}}', pub)
    assert answer is not None and orjson.loads(answer)["error"]["code"] == "forbidden"


async def test_a_socket_over_its_rate_gets_its_values_coalesced_and_checked_at_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mesh.api import live_routes
    from mesh.api.auth import Identity
    from mesh.api.live_routes import _handle, _Publisher
    from mesh.state.errors import StateError

    class Clock:
        now = 0.0

        def monotonic(self) -> float:
            return self.now

    clock = Clock()
    monkeypatch.setattr(live_routes, "time", clock)

    published: list[dict[str, Any]] = []

    class Node:
        node_id = "x"

        def live_check(self, values: dict[str, Any], **kw: Any) -> None:
            if any(not k.startswith("parameters/") for k in values):
                raise StateError("unknown_component", "not a parameter")

        def live_set(self, values: dict[str, Any], **kw: Any) -> None:
            self.live_check(values)
            published.append(dict(values))

    pub = _Publisher(Node(), Identity("desk", "operator"))  # type: ignore[arg-type]
    pub.tokens = 0.0  # and the clock stands still: every set is over the rate
    for i in range(100):
        assert _handle(orjson.dumps({"set": {"parameters/f": i, f"parameters/k{i % 3}": i}}).decode(), pub) is None
    bad = _handle('{"set": {"nope/x": 1}}', pub)
    assert bad is not None and orjson.loads(bad)["error"]["code"] == "unknown_component"
    assert not published and pub.pending_keys == 4 and pub.coalesced == 196
    clock.now = 1.0  # tokens come back
    assert pub.flusher is not None
    await asyncio.wait_for(pub.flusher, 5)
    assert published == [{"parameters/f": 99, "parameters/k0": 99, "parameters/k1": 97, "parameters/k2": 98}]


async def test_a_node_stopped_mid_gesture_commits_it_first(mesh: Mesh) -> None:
    src = mesh.follower()
    mesh.nodes[src].live_set({"parameters/stopped": 42}, gesture="g", author="desk")
    await mesh.nodes[src].stop(transfer=False)
    other = next(n for n in mesh.nodes if n != src)

    async def committed() -> bool:
        status, doc = await get(mesh, other, "/v1/kv/parameters/stopped?consistency=local")
        return status == 200 and doc["value"] == 42

    await wait_for(committed)


async def test_live_counts_are_in_the_metrics(mesh: Mesh) -> None:
    ws = await mesh.clients["n1"].ws_connect("/v1/live")
    await ws.send_str(orjson.dumps({"set": {"parameters/m1": 1, "parameters/m2": 2}, "gesture": "g"}).decode())
    await until(ws, lambda d: d["type"] == "live")
    resp = await mesh.clients["n1"].get("/metrics")
    text = (await resp.read()).decode()
    assert 'hana_live_values{kind="set"} 2.0' in text, text
    # (The gesture may have settled by now: its sizes are 1 and 2, or 0.)
    assert "hana_live_gestures_open " in text and "hana_live_keys " in text
    await ws.close()
