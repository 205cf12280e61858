"""A display machine cut off mid-show, with real node processes (issue 14's
acceptance): n3 alone (n1 and n2 stopped with SIGSTOP) queues writes with
`?offline=queue` and reads them back `pending` and `stale`; n1 and n2 are
continued while the fault proxy of simulations/chaoskit cuts n3 off, and
change the same keys; n3 queues one more edit, later than theirs; on
healing, the lww keys take the later edit and the manual key opens a
conflict, resolved through the CLI; n3 is killed (SIGKILL) in the middle of
its replay, restarted, and every queued write is applied exactly once.

Peer traffic goes through one proxy link per ordered pair of nodes, so
cutting n3 off is blocking its links; the proxy lives in this test's event
loop, so the whole scenario is one coroutine and the CLI runs as an asyncio
subprocess (a blocking call would stall the proxy).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from mesh.client import ApiError, Unreachable
from simulations.chaoskit.proxy import FaultProxy
from tests.integration.harness import Cluster, eventually, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LWW_OLD = "parameters/show/brightness"  # the majority's edit is the later one
LWW_NEW = "parameters/show/speed"  # n3's edit is the later one
MANUAL = "displays/offline-wall"  # manual policy, critical
REPLAY_PREFIX = "parameters/replay/"
REPLAYS = 200  # over the node's replay window (64 in flight), so that the replay takes a few round trips
# Each peer message n3 sends, and each it receives, is held this long while
# it replays, so that the replay lasts long enough to be killed midway.
SLOW_LINK = 0.1
FINAL = {"applied", "superseded", "conflict", "rejected"}


async def hana(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """`hana-node …` as an asyncio subprocess (the proxy keeps running)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesh.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("HANA_TOKEN")}, "COLUMNS": "80"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wire(c: Cluster, proxy: FaultProxy) -> None:
    """Every node dials each peer through the proxy link (src, dst)."""
    ports = {}
    for src in c.nodes:
        for dst, node in c.nodes.items():
            if src != dst:
                ports[(src, dst)] = await proxy.add_link(src, dst, ("127.0.0.1", node.raft_port))
    for src, node in c.nodes.items():
        node.peers = {nid: n.raft if nid == src else f"127.0.0.1:{ports[(src, nid)]}" for nid, n in c.nodes.items()}


def links_of(c: Cluster, nid: str) -> list[tuple[str, str]]:
    return [pair for other in c.nodes if other != nid for pair in ((nid, other), (other, nid))]


async def local(c: Cluster, nid: str, key: str) -> dict[str, Any]:
    async with c.nodes[nid].client(timeout=5) as m:
        return await m.get(key, consistency="local")


async def outbox(c: Cluster, nid: str) -> list[dict[str, Any]]:
    async with c.nodes[nid].client(timeout=5) as m:
        return list((await m.outbox())["items"])


async def scenario(c: Cluster, proxy: FaultProxy) -> dict[str, float]:
    figures: dict[str, float] = {}
    t0 = time.monotonic()
    await wire(c, proxy)
    c.start_all()
    await c.wait_leader(timeout=30)
    n1, n3 = c.nodes["n1"], c.nodes["n3"]
    async with n1.client() as m:
        await m.put(LWW_OLD, 0.5)
        await m.put(LWW_NEW, 1.0)
        await m.put(MANUAL, {"width": 1024})

    # -- n3 alone: queued writes, read back pending and stale --------------------------
    for nid in ("n1", "n2"):
        c.signal(nid, signal.SIGSTOP)

    async def cut_off() -> bool:
        return (await c.status("n3")).get("connected") is False

    await eventually(cut_off, 20, "n3 to say it is not connected")
    async with n3.client(timeout=15) as m:
        a = await m.put(LWW_OLD, 0.7, offline="queue")
        b = await m.put(MANUAL, {"width": 1280}, offline="queue")
        replays = await asyncio.gather(
            *(m.put(f"{REPLAY_PREFIX}k{i:03d}", {"w": i}, offline="queue") for i in range(REPLAYS))
        )
    for doc in (a, b, *replays):
        assert isinstance(doc.get("queued"), str) and doc["queued"].startswith("n3."), doc
    got = await local(c, "n3", LWW_OLD)
    assert got["value"] == 0.7 and got["pending"] is True and got["stale"] is True, got
    assert got["controller_contact_ms"] is None or got["controller_contact_ms"] > 0
    code, out, err = await hana("get", MANUAL, "--consistency", "local", "--api", n3.api)
    assert code == 0 and "pending" in out and "stale" in out, (out, err)
    code, out, err = await hana("get", MANUAL, "--api", n3.api)  # linearizable: needs a controller
    assert code == 1 and "--consistency local" in err, (out, err)

    # -- the majority edits the same keys while the proxy cuts n3 off ----------------
    for pair in links_of(c, "n3"):
        proxy.block(*pair)
    for nid in ("n1", "n2"):
        c.signal(nid, signal.SIGCONT)
    await c.wait_leader(among=["n1", "n2"], timeout=30)
    async with n1.client() as m:
        await m.put(LWW_OLD, 0.9)  # later than n3's 0.7: wins
        await m.put(LWW_NEW, 2.0)  # earlier than n3's next edit: loses
        await m.put(MANUAL, {"width": 1920})  # the key n3's edit was based on changed
    async with n3.client(timeout=15) as m:
        late = await m.put(LWW_NEW, 3.0, offline="queue")
    assert isinstance(late.get("queued"), str), late
    ids = {LWW_OLD: a["queued"], MANUAL: b["queued"], LWW_NEW: late["queued"]}
    figures["queued_at_s"] = round(time.monotonic() - t0, 1)

    # -- heal, slowly; kill -9 n3 in the middle of its replay ---------------------------
    for pair in links_of(c, "n3"):
        proxy.set_delay(*pair, SLOW_LINK)
        proxy.unblock(*pair)

    async def midway() -> list[dict[str, Any]] | None:
        items = await outbox(c, "n3")
        replay = [i for i in items if str(i.get("key", "")).startswith(REPLAY_PREFIX)]
        done = [i for i in replay if i["state"] in FINAL]
        return items if 0 < len(done) < len(replay) else None

    before = await eventually(midway, 30, "n3 to be replaying its outbox", interval=0.01)
    n3.kill()
    applied_before = sum(1 for i in before if i["state"] == "applied")
    figures["replayed_before_kill"] = applied_before
    for pair in links_of(c, "n3"):
        proxy.heal(*pair)
    c.start("n3")

    async def drained() -> list[dict[str, Any]] | None:
        items = await outbox(c, "n3")
        return items if items and all(i["state"] in FINAL for i in items) else None

    items = await eventually(drained, 40, "n3's outbox to drain after its restart")
    figures["drained_at_s"] = round(time.monotonic() - t0, 1)
    fate = {i["id"]: i for i in items}
    assert len(fate) == len(items), "an outbox id twice"
    assert fate[ids[LWW_OLD]]["state"] == "superseded", fate[ids[LWW_OLD]]
    assert fate[ids[LWW_NEW]]["state"] == "applied", fate[ids[LWW_NEW]]
    assert fate[ids[MANUAL]]["state"] == "conflict", fate[ids[MANUAL]]
    for doc in replays:
        assert fate[doc["queued"]]["state"] == "applied", fate[doc["queued"]]

    # Each queued write applied once: one history record per replay key, version 1.
    async def replicated() -> dict[str, Any] | None:
        async with n1.client() as m:
            listing = await m.list(REPLAY_PREFIX)
        return listing if len(listing["items"]) == REPLAYS else None

    listing = await eventually(replicated, 20, "every replayed key on n1")
    assert all(i["version"] == 1 for i in listing["items"]), listing
    async with n1.client() as m:
        hist = await m.history(REPLAY_PREFIX, limit=10_000)
        assert sorted(r["key"] for r in hist["records"]) == sorted(f"{REPLAY_PREFIX}k{i:03d}" for i in range(REPLAYS))
        assert {r["value"]["w"] for r in hist["records"]} == set(range(REPLAYS))
        # lww: the later edit on each key, whichever side made it.
        assert (await m.get(LWW_OLD))["value"] == 0.9
        assert (await m.get(LWW_NEW))["value"] == 3.0
        assert (await m.get(MANUAL))["value"] == {"width": 1920}  # kept for a person
        conflicts = [x for x in (await m.conflicts())["conflicts"] if x["status"] == "open"]
    assert [x["key"] for x in conflicts] == [MANUAL] and conflicts[0]["critical"] is True, conflicts
    cid = str(conflicts[0]["id"])

    # -- resolve through the CLI -----------------------------------------------------
    code, out, err = await hana("conflicts", "--api", n3.api)
    assert code == 0 and MANUAL in out and "1 open (1 critical" in out, (out, err)
    assert max(len(x) for x in out.splitlines()) <= 80, out
    code, out, err = await hana("conflicts", "--api", n3.api, "--json")
    assert code == 0 and [str(x["id"]) for x in orjson.loads(out)["conflicts"]] == [cid], out
    code, out, err = await hana("conflicts", "show", cid, "--api", n3.api)
    assert code == 0 and "1920" in out and "1280" in out and "critical" in out, (out, err)
    code, out, err = await hana(
        "conflicts", "resolve", cid, "--take", "value", "--value", '{"width": 0}', "--api", n3.api
    )
    assert code == 1 and "refused the resolution" in err and "nothing changed" in err, (out, err)
    code, out, err = await hana("conflicts", "resolve", cid, "--take", "proposed", "--api", n3.api)
    assert code == 0 and f"conflict {cid} resolved: took proposed" in out, (out, err)
    code, out, err = await hana("conflicts", "resolve", cid, "--take", "current", "--api", n1.api)
    assert code == 1 and "already resolved; nothing changed" in err, (out, err)
    code, out, err = await hana("conflicts", "resolve", "999999", "--take", "current", "--api", n1.api)
    assert code == 1 and "knows no conflict" in err, (out, err)

    async def resolved_everywhere() -> bool:
        for nid in c.nodes:
            doc = await local(c, nid, MANUAL)
            if doc["value"] != {"width": 1280}:
                return False
        return True

    await eventually(resolved_everywhere, 20, "the resolved value on every node")
    code, out, err = await hana("outbox", "--api", n3.api)
    assert code == 0 and "superseded" in out and "conflict" in out and "applied" in out, (out, err)

    # -- which displays have a cue; reset to defaults -------------------------------
    code, out, err = await hana("put", "parameters/show/cue", '"act-2"', "--confirm", "all", "--api", n3.api)
    assert code == 0 and "applied by 3: n1, n2, n3" in out and "every member has it" in out, (out, err)
    code, out, err = await hana("reset", "displays", MANUAL, "--api", n3.api)
    assert code == 0 and "1 key(s) reset to defaults" in out, (out, err)
    async with n1.client() as m:
        with pytest.raises(ApiError) as gone:
            await m.get(MANUAL)  # displays has no default for it: deleted
        assert gone.value.status == 404
    code, out, err = await hana("reset", "no-such-component", "--api", n3.api)
    assert code == 1 and "nothing changed" in err, (out, err)
    figures["total_s"] = round(time.monotonic() - t0, 1)
    return figures


def test_cut_off_node_queues_reconciles_and_replays_once_after_kill_9(tmp_path: Path) -> None:
    async def main() -> dict[str, float]:
        proxy = FaultProxy(seed=14)
        try:
            with running_cluster(tmp_path, 3, ["--offline-wait", "0.3"]) as c:
                try:
                    return await scenario(c, proxy)
                except (AssertionError, ApiError, Unreachable) as exc:
                    raise AssertionError(f"{exc}\n{c.logs(4000)}") from exc
        finally:
            await proxy.close()

    figures = asyncio.run(main())
    print(f"offline integration figures: {figures}")
