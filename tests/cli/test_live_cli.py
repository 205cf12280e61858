"""`hana-node live set/watch` and `hana-node osc status/monitor` as a user
runs them (subprocesses) against an in-process mesh with the real live
stream and the OSC bridge (tests/osc/meshes.py). Long-running commands are
stopped by their PID once they have shown what the test waits for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.cli.kit import HANA, env, hana_in_terminal
from tests.osc.kit import message
from tests.osc.meshes import OscMesh, eventually, osc_mesh


@pytest.fixture
async def mesh() -> AsyncIterator[OscMesh]:
    async with osc_mesh() as m:
        yield m


def api(mesh: OscMesh, nid: str) -> str:
    server = mesh.clients[nid].server
    return f"{server.host}:{server.port}"


async def run(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *HANA, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env(COLUMNS="120")
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def running(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        *HANA, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env(COLUMNS="120")
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()  # by its PID
        await proc.wait()


async def json_line(proc: asyncio.subprocess.Process, pred: Any, timeout: float = 15) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            line = await proc.stdout.readline()
            if not line:
                err = await proc.stderr.read() if proc.stderr else b""
                raise AssertionError(f"the command ended: {err.decode()}")
            doc = orjson.loads(line)
            if pred(doc):
                return dict(doc)


def in_terminal_for(seconds: float, *args: str, columns: int = 100) -> tuple[int, str]:
    """Run a command that runs until Ctrl-C on a pseudo-terminal for
    `seconds`, then send it SIGINT (Ctrl-C) by its PID; its exit status and
    its output without colour codes."""
    return hana_in_terminal(*args, columns=columns, rows=30, timeout=seconds + 15, interrupt_after=seconds)


async def test_live_set_commits_one_gesture(mesh: OscMesh) -> None:
    code, out, err = await run("live", "set", "parameters/cli", "0.5", "--api", api(mesh, "n2"))
    assert code == 0, err
    assert out.startswith("set parameters/cli = 0.5 (gesture cli-") and "committed" in out

    async def committed_everywhere() -> bool:
        return all((kv := n.kv.get("parameters/cli")) is not None and kv.value == 0.5 for n in mesh.nodes.values())

    await eventually(committed_everywhere)
    _, hist = await mesh.get("n3", "/v1/history?prefix=parameters/cli")
    [record] = hist["records"]
    assert record["gesture"].startswith("cli-")


async def test_live_set_json_and_keep(mesh: OscMesh) -> None:
    code, out, err = await run(
        "live", "set", "parameters/kept", '"text"', "--keep", "--gesture", "g-cli", "--json", "--api", api(mesh, "n1")
    )
    assert code == 0, err
    assert orjson.loads(out) == {"key": "parameters/kept", "value": "text", "gesture": "g-cli", "ended": False}


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["parameters/x", "{bad"], 2, "value is not JSON"),
        (["nokey", "1"], 2, "expected component/name"),
        (["nope/x", "1"], 1, "unknown_component"),
        (["displays/d", '{"width": "wide"}'], 1, "invalid_value"),
    ],
    ids=["not json", "no component", "unknown component", "invalid value"],
)
async def test_live_set_refusals_are_clear_and_change_nothing(
    mesh: OscMesh, args: list[str], code: int, says: str
) -> None:
    revision = mesh.nodes["n1"].kv.revision
    got, out, err = await run("live", "set", *args, "--api", api(mesh, "n1"))
    assert (got, out) == (code, "") and says in err, err
    assert err.startswith("hana-node live")
    assert "Traceback" not in err
    assert mesh.nodes["n1"].kv.revision == revision


async def test_live_watch_json_streams_live_values_and_committed_changes(mesh: OscMesh) -> None:
    async with running("live", "watch", "--prefix", "parameters/", "--json", "--api", api(mesh, "n3")) as proc:
        client, _ = mesh.udp()

        async def send_until_seen() -> dict[str, Any]:
            # The command may not be subscribed yet: keep the fader moving.
            for i in range(1, 400):
                client.send_message("/fader2", i / 400)
                with contextlib.suppress(TimeoutError):
                    return await json_line(proc, lambda d: d.get("type") == "live", timeout=0.05)
            raise AssertionError("no live message printed")

        live = await send_until_seen()
        assert live["source"] == "n1" and "parameters/speed" in live["values"]
        await mesh.put("parameters/plain", 3)
        change = await json_line(proc, lambda d: d.get("type") == "change" and d.get("key") == "parameters/plain")
        assert change["value"] == 3


@pytest.mark.slow
async def test_live_watch_draws_a_table_of_values_and_rates(mesh: OscMesh) -> None:
    client, _ = mesh.udp()
    stop = asyncio.Event()

    async def fader() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            client.send_message("/fader2", (i % 100) / 100)
            await asyncio.sleep(0.02)

    mover = asyncio.ensure_future(fader())
    try:
        code, text = await asyncio.to_thread(
            in_terminal_for, 3, "live", "watch", "--prefix", "parameters/", "--api", api(mesh, "n2")
        )
    finally:
        stop.set()
        await mover
    assert code == 130, text  # Ctrl-C ends it
    assert "key" in text and "/s" in text and "from" in text, text
    rows = [line.split() for line in text.splitlines() if line.strip().startswith("parameters/speed")]
    assert rows, text
    # The fader moves at about 50/s: a rate above zero from n1's live stream.
    assert any(int(r[2]) > 0 and r[3] == "n1" for r in rows if len(r) >= 4 and r[2].isdigit()), rows[-3:]
    assert any(r[0] == "parameters/brightness" for r in (line.split() for line in text.splitlines()) if r)


async def test_osc_monitor_shows_what_came_in_and_where_it_went(mesh: OscMesh) -> None:
    async with running("osc", "monitor", "--json", "--api", api(mesh, "n1")) as proc:
        client, addr = mesh.udp()
        bridge = mesh.osc["n1"].bridge
        await eventually(lambda: _true(bool(bridge._monitors)))
        client.send_message("/fader1", 0.25)
        client._sock.sendto(message("/fader1", 0.25)[:-4], addr)
        ok = await json_line(proc, lambda d: d.get("result") == "ok")
        assert ok["messages"] == [{"address": "/fader1", "args": [0.25], "maps_to": {"parameters/brightness": 25.0}}]
        bad = await json_line(proc, lambda d: d.get("result") == "bad")
        assert bad["reason"]


async def test_osc_monitor_lines_for_people(mesh: OscMesh) -> None:
    async with running("osc", "monitor", "--api", api(mesh, "n1")) as proc:
        client, _ = mesh.udp()
        bridge = mesh.osc["n1"].bridge
        await eventually(lambda: _true(bool(bridge._monitors)))
        client.send_message("/fader1", 0.5)
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert " ok " in line and "/fader1 0.5 -> parameters/brightness=50.0" in line, line


async def test_osc_commands_on_a_node_without_the_bridge(mesh: OscMesh) -> None:
    for command in ("monitor", "status"):
        code, out, err = await run("osc", command, "--api", api(mesh, "n3"))
        assert code == 2 and out == ""
        assert "runs no OSC bridge: start it with --osc-listen" in err, err


async def test_osc_status(mesh: OscMesh) -> None:
    code, out, err = await run("osc", "status", "--api", api(mesh, "n1"))
    assert code == 0, err
    assert "/fader1" in out and "parameters/brightness" in out and "listen   127.0.0.1:" in out
    code, out, _ = await run("osc", "status", "--json", "--api", api(mesh, "n2"))
    doc = orjson.loads(out)
    assert code == 0 and doc["listen"] is None and doc["send"] == [f"127.0.0.1:{mesh.rx.port}"]  # type: ignore[union-attr]


async def _true(value: bool) -> bool:
    return value
