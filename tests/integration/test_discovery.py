"""Zero-configuration meshes with real `hana-node serve` processes: mDNS
bound to 127.0.0.1 (tests/conftest.py sets HANA_MDNS_INTERFACES for every
process), no peer lists, a cluster name unique to each test.

- 3 nodes with --expect 3 form one cluster and commit a write; a node of
  another cluster name started beside them is never admitted;
- 5 nodes started at the same instant form exactly one cluster, repeated
  (HANA_FORMATION_RUNS, default 5);
- a 6th and 7th node join as learners, the voter count stays odd and within
  --voters; a SIGKILLed voter is replaced by a learner within the
  configured time;
- the same formation in network namespaces on a bridge (root + iproute2),
  with default mDNS interfaces inside the namespaces.

Every process is killed by PID at teardown; waiting is polling with a
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mesh.client import ApiError, MeshClient
from mesh.launcher import ProcessCluster, serve_command
from tests.integration.harness import SECRET, NodeProc, eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FORMATION_RUNS = int(os.environ.get("HANA_FORMATION_RUNS", "5"))
# Autopilot timings shortened so that promotion and replacement take seconds.
FAST_AUTOPILOT = ["--autopilot-stabilize", "1", "--autopilot-replace-after", "3"]
REPLACE_AFTER = 3.0


@dataclass
class MdnsMesh(ProcessCluster):
    """Serve processes that find each other with mDNS on 127.0.0.1."""

    cluster: str = ""
    extra_args: list[str] = field(default_factory=list)
    nodes: dict[str, NodeProc] = field(default_factory=dict)  # type: ignore[assignment]

    def add(self, nid: str, cluster: str | None = None) -> NodeProc:  # type: ignore[override]
        node = NodeProc(
            nid, self.root / nid, self.root / f"{nid}.log", cluster=cluster or self.cluster, mdns=True,
            args=self.extra_args,
        )  # fmt: skip
        self.nodes[nid] = node
        return node

    def start(self, nids: list[str], extra: list[str] | None = None) -> None:  # type: ignore[override]
        """Start several nodes as close to the same instant as possible."""
        env = dict(os.environ, HANA_SECRET=SECRET, HANA_MDNS_INTERFACES="127.0.0.1")
        for nid in nids:
            super().start(nid, env, extra or [])

    def kill(self, nid: str) -> None:
        self.nodes[nid].kill()

    async def status(self, nid: str) -> dict[str, Any]:
        async with self.nodes[nid].client(timeout=2.0) as c:
            return await c.status()

    async def agreed(self, nids: list[str], voters: int | None = None) -> dict[str, Any] | None:
        """The status of the leader if every node of `nids` names the same
        leader and reports the same configuration (with `voters` voters)."""
        docs = [await self.status(nid) for nid in nids]
        leaders = {d.get("leader") for d in docs}
        confs = {conf_of(d) for d in docs}
        if len(leaders) != 1 or None in leaders or len(confs) != 1:
            return None
        leader = leaders.pop()
        if leader not in nids:
            return None
        if voters is not None and len(confs.pop()[0]) != voters:
            return None
        return next(d for d in docs if d["id"] == leader)

    async def wait_agreed(self, nids: list[str], voters: int | None, timeout: float) -> dict[str, Any]:
        try:
            return await eventually(lambda: self.agreed(nids, voters), timeout, f"{nids} to agree", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None


def conf_of(doc: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    members = doc.get("members", [])
    voters = tuple(sorted(m["id"] for m in members if m.get("voter")))
    learners = tuple(sorted(m["id"] for m in members if not m.get("voter")))
    return voters, learners


def unique_cluster(tag: str) -> str:
    return f"t{tag}-{secrets.token_hex(3)}"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MdnsMesh]:
    m = MdnsMesh(tmp_path, cluster=unique_cluster("d"), extra_args=FAST_AUTOPILOT)
    try:
        yield m
    finally:
        m.stop_everything()


async def put_retry(api: str, key: str, value: object, timeout: float = 15.0) -> dict[str, Any]:
    async def attempt() -> dict[str, Any] | None:
        async with MeshClient(api, timeout=5.0) as c:
            try:
                return await c.put(key, value)
            except ApiError as exc:
                if exc.status != 503:
                    raise
                return None

    return await eventually(attempt, timeout, f"a committed write of {key}", interval=0.1)


async def test_three_nodes_expect_three_form_one_cluster_and_commit(mesh: MdnsMesh) -> None:
    ids = ["n1", "n2", "n3"]
    for nid in ids:
        mesh.add(nid)
    # A node of another cluster, with --expect 1, on the same segment.
    mesh.add("x1", cluster=unique_cluster("other"))
    mesh.start(ids, extra=["--expect", "3"])
    mesh.start(["x1"], extra=["--expect", "1"])
    leader = await mesh.wait_agreed(ids, voters=3, timeout=30)
    assert conf_of(leader) == (tuple(ids), ())
    assert all(m["found"] in ("mdns", "self") for m in leader["members"])
    await put_retry(mesh.nodes["n3"].api, "displays/left-wall", {"brightness": 0.8})
    for nid in ids:
        async with mesh.nodes[nid].client() as c:
            assert (await c.get("displays/left-wall"))["value"] == {"brightness": 0.8}
    # Each bootstrapped the same configuration, recorded in its data dir.
    for nid in ids:
        record = json.loads((mesh.nodes[nid].data_dir / "discovery.json").read_text())
        assert record == {"state": "member", "conf": ids, "how": "bootstrap"}
    # The other cluster's node formed its own cluster of one, never ours.
    other = await eventually(lambda: mesh.status("x1"), 15, "x1 to answer")
    assert other["cluster"] != mesh.cluster
    assert all(d["id"] == "x1" for d in other["members"])
    for nid in ids:
        assert "x1" not in {m["id"] for m in (await mesh.status(nid))["members"]}


def members_cli(api: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", "members", *args, "--api", api],
        capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


async def test_members_by_hand_through_a_follower(mesh: MdnsMesh) -> None:
    ids = ["n1", "n2", "n3"]
    for nid in [*ids, "n4"]:
        mesh.add(nid)
    mesh.start(ids, extra=["--expect", "3"])
    leader = (await mesh.wait_agreed(ids, voters=3, timeout=30))["id"]
    follower = next(n for n in ids if n != leader)
    # A fourth node joins as a learner; alone it is never promoted (3 + 1 is even).
    mesh.start(["n4"], extra=["--expect", "3"])
    await mesh.wait_agreed([*ids, "n4"], voters=3, timeout=30)
    api = mesh.nodes[follower].api
    listed = members_cli(api, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    rows = {m["id"]: m for m in doc["members"]}
    assert rows["n4"]["role"] == "learner" and rows["n4"]["found"] == "mdns"
    assert rows[follower]["found"] == "self"
    assert doc["leader"] == leader and doc["leader_api"] == mesh.nodes[leader].api
    # Asked of a follower: the CLI follows the 503 not_leader to the controller.
    promoted = members_cli(api, "promote", "n4", "--json")
    assert promoted.returncode == 0, promoted.stderr
    assert "n4" in json.loads(promoted.stdout)["conf"]["voters"]
    table = members_cli(mesh.nodes[leader].api, "list")
    assert table.returncode == 0 and "n4" in table.stdout and "mdns" in table.stdout, table.stdout + table.stderr
    demoted = members_cli(mesh.nodes[leader].api, "demote", "n4", "--json")
    assert demoted.returncode == 0, demoted.stderr
    assert json.loads(demoted.stdout)["conf"]["learners"] == ["n4"]
    async with mesh.nodes[follower].admin_client() as c:
        try:
            await c.request("POST", "/v1/members", {"id": "n4", "action": "promote"})
            raise AssertionError("a follower accepted a membership change")
        except ApiError as exc:
            assert exc.status == 503 and exc.code == "not_leader"
            assert exc.body["error"]["leader"] == leader
            assert exc.body["error"]["leader_api"] == mesh.nodes[leader].api
        try:
            await c.request("POST", "/v1/members", {"id": "n4", "action": "explode"})
            raise AssertionError("an unknown action was accepted")
        except ApiError as exc:
            assert exc.status == 400
    status = await mesh.status(leader)
    assert {m["id"]: m["found"] for m in status["members"]}["n4"] == "mdns"


@pytest.mark.parametrize("run", range(FORMATION_RUNS))
async def test_five_started_together_form_exactly_one_cluster(tmp_path: Path, run: int) -> None:
    # Even runs: --expect 5 (all five bootstrap). Odd runs: --expect 3 with
    # five fresh nodes at once, so the two not chosen join and are promoted.
    expect = 5 if run % 2 == 0 else 3
    m = MdnsMesh(tmp_path, cluster=unique_cluster(f"f{run}"), extra_args=FAST_AUTOPILOT)
    ids = [f"n{i}" for i in range(1, 6)]
    try:
        for nid in ids:
            m.add(nid)
        m.start(ids, extra=["--expect", str(expect), "--voters", "5"])
        await m.wait_agreed(ids, voters=5, timeout=40)
        records = [json.loads((m.nodes[nid].data_dir / "discovery.json").read_text()) for nid in ids]
        boots = {tuple(r["conf"]) for r in records if r["how"] == "bootstrap"}
        assert len(boots) == 1, records
        (initial,) = boots
        assert len(initial) == expect
        assert all(tuple(r["conf"]) == initial for r in records), records
    except BaseException:
        print(m.logs())
        raise
    finally:
        m.stop_everything()


async def test_learners_join_within_the_voter_limit_and_replace_a_killed_voter(mesh: MdnsMesh) -> None:
    ids = [f"n{i}" for i in range(1, 6)]
    for nid in [*ids, "n6", "n7"]:
        mesh.add(nid)
    mesh.start(ids, extra=["--expect", "5", "--voters", "5"])
    await mesh.wait_agreed(ids, voters=5, timeout=40)

    mesh.start(["n6", "n7"], extra=["--expect", "5", "--voters", "5"])
    seen_voter_counts: set[int] = set()
    everyone = [*ids, "n6", "n7"]

    async def learners_in() -> dict[str, Any] | None:
        doc = await mesh.agreed(everyone)
        if doc is None:
            return None
        voters, learners = conf_of(doc)
        seen_voter_counts.add(len(voters))
        return doc if learners == ("n6", "n7") else None

    doc = await eventually(learners_in, 30, "n6 and n7 to join as learners", interval=0.1)
    # Stable learners are not promoted past --voters 5.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        voters, _ = conf_of(await mesh.status(doc["id"]))
        seen_voter_counts.add(len(voters))
        await asyncio.sleep(0.1)
    assert seen_voter_counts == {5}, seen_voter_counts
    assert {m["id"]: m["found"] for m in doc["members"]}["n6"] == "mdns"

    # SIGKILL a voter that is not the controller: a learner takes its place.
    leader = doc["id"]
    victim = next(v for v in ids if v != leader)
    mesh.kill(victim)
    killed_at = time.monotonic()
    alive = [n for n in everyone if n != victim]

    async def replaced() -> dict[str, Any] | None:
        d = await mesh.status(leader)
        voters, _ = conf_of(d)
        seen_voter_counts.add(len(voters))
        return d if victim not in voters and len(voters) == 5 else None

    try:
        await eventually(replaced, REPLACE_AFTER + 15, f"a learner to replace {victim}", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{mesh.logs()}") from None
    took = time.monotonic() - killed_at
    print(f"voter count restored {took:.1f}s after SIGKILL of {victim} (replace_after {REPLACE_AFTER}s)")
    assert took <= REPLACE_AFTER + 15
    # Never more than --voters; the only even count is the one step of a replacement.
    assert max(seen_voter_counts) <= 5, seen_voter_counts
    final = await mesh.wait_agreed(alive, voters=5, timeout=15)
    voters, learners = conf_of(final)
    assert len(voters) == 5 and victim in learners
    await put_retry(mesh.nodes[alive[-1]].api, "parameters/after-replace", 1)


# -- network namespaces -----------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


@dataclass
class Namespaces:
    """A hub namespace with a bridge, one namespace per node on a veth pair,
    addresses 10.99.0.x/24 that exist only inside them. Nothing is routed
    out; everything is deleted in `cleanup`, even after a failure."""

    tag: str
    created: list[str] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"hub{self.tag}"

    def ns(self, i: int) -> str:
        return f"hn{self.tag}{i}"

    def setup(self, n: int) -> None:
        _ip("netns", "add", self.hub)
        self.created.append(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i in range(1, n + 1):
            ns = self.ns(i)
            _ip("netns", "add", ns)
            self.created.append(ns)
            # veth pair created inside the hub: no link ever exists in the root namespace.
            _ip("-n", self.hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.hub, "link", "set", f"v{i}", "master", "br0")
            _ip("-n", self.hub, "link", "set", f"v{i}", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"10.99.0.{i}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def cleanup(self) -> None:
        # Deleting a namespace deletes its links (and the veth peers with them).
        for ns in reversed(self.created):
            _ip("netns", "delete", ns, check=False)
        self.created.clear()


def _netns_unavailable() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"hprobe{secrets.token_hex(3)}"
    res = _ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"`ip netns add` failed: {res.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return None


def test_formation_in_network_namespaces(tmp_path: Path) -> None:
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    n = 3
    spaces = Namespaces(secrets.token_hex(2))
    procs: list[subprocess.Popen[bytes]] = []
    cluster = unique_cluster("ns")
    # Default mDNS interfaces inside the namespaces: drop the loopback override.
    env = {k: v for k, v in os.environ.items() if k != "HANA_MDNS_INTERFACES"}
    env["HANA_SECRET"] = SECRET
    logs = [tmp_path / f"n{i}.log" for i in range(1, n + 1)]

    def status(i: int) -> dict[str, Any] | None:
        res = subprocess.run(
            ["ip", "netns", "exec", spaces.ns(i), sys.executable, "-m", "mesh.cli", "status", "--json",
             "--api", "127.0.0.1:7070"],
            capture_output=True, text=True, timeout=20, env=env,
        )  # fmt: skip
        # Exit 1 is a status too: asked on a follower, the other members'
        # APIs (127.0.0.1 in their own namespaces) cannot be asked from here.
        return json.loads(res.stdout) if res.returncode in (0, 1) and res.stdout else None

    def all_logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())

    try:
        try:
            spaces.setup(n)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot build the namespace network: {exc.stderr.strip()}")
        for i in range(1, n + 1):
            # Fixed ports: each namespace has its own network, nothing else in it.
            serve = serve_command(
                f"n{i}", api="127.0.0.1:7070", raft=f"10.99.0.{i}:7071", data_dir=tmp_path / f"n{i}",
                cluster=cluster, expect=n, mdns=True,
            )  # fmt: skip
            cmd = ["ip", "netns", "exec", spaces.ns(i), *serve]
            with open(logs[i - 1], "ab") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
        deadline = time.monotonic() + 45
        agreed: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            docs = [status(i) for i in range(1, n + 1)]
            if all(d is not None for d in docs):
                leaders = {d["leader"] for d in docs if d is not None}
                confs = {conf_of(d) for d in docs if d is not None}
                if len(leaders) == 1 and None not in leaders and confs == {(("n1", "n2", "n3"), ())}:
                    agreed = docs[0]
                    break
            time.sleep(0.2)
        assert agreed is not None, f"no single cluster formed in the namespaces\n{all_logs()}"
        # Each node dials the others at their namespace addresses, found by mDNS.
        raft = {m["id"]: m["raft"] for m in agreed["members"]}
        assert raft == {f"n{i}": f"10.99.0.{i}:7071" for i in range(1, n + 1)}, raft
        put = subprocess.run(
            ["ip", "netns", "exec", spaces.ns(2), sys.executable, "-m", "mesh.cli", "put", "displays/ns", '{"on": 1}',
             "--api", "127.0.0.1:7070"],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        assert put.returncode == 0, put.stderr + all_logs()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        spaces.cleanup()
        leftover = _ip("netns", "list", check=False).stdout
        assert spaces.tag not in leftover, leftover
