"""TLS on the wire with real `hana-node serve` processes (issue 18).

Every peer link and the API go through the chaos proxy, which captures the
bytes (simulations/chaoskit/proxy.py `on_bytes`). A 3-node mesh with
certificates (mutual TLS 1.3 between peers, --api-tls) commits writes, and
no key or value appears in any captured byte. In pre-shared-secret mode the
peer links are sealed (AEAD) and show nothing either, while the plain HTTP
API in the same capture shows the key and the value: the check finds
plaintext when there is some."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.client import ApiError, MeshClient, Unreachable
from mesh.launcher import ProcessCluster, ServeProcess
from simulations.chaoskit.proxy import FaultProxy
from tests.integration.harness import eventually
from tests.transport.kit import leaked

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "integration-test-secret-0123456789"
KEY = "parameters/wirecheckkey5d1e"
VALUE = "wire-check-value-a9b4c7"


class Wire:
    """The proxy's capture, per kind of link."""

    def __init__(self) -> None:
        self.peer = bytearray()
        self.api = bytearray()

    def __call__(self, src: str, dst: str, direction: str, chunk: bytes) -> None:
        (self.api if src == "client" else self.peer).extend(chunk)


def env() -> dict[str, str]:
    e = dict(os.environ, HANA_SECRET=SECRET)
    return e


def client(node: ServeProcess, url: str | None = None, timeout: float = 5.0) -> MeshClient:
    return MeshClient(url or node.url, timeout=timeout, ca=node.ca)


async def start_mesh(root: Path, tls: bool, proxy: FaultProxy) -> tuple[ProcessCluster, str]:
    """n1..n3, every peer link through the proxy; returns the cluster and
    the proxied URL of n1's API."""
    mesh = ProcessCluster(root, tls=tls)
    for nid in ("n1", "n2", "n3"):
        mesh.add(nid)
    for src, node in mesh.nodes.items():
        peers = {src: node.raft}
        for dst, other in mesh.nodes.items():
            if dst != src:
                port = await proxy.add_link(src, dst, ("127.0.0.1", other.raft_port))
                peers[dst] = f"127.0.0.1:{port}"
        node.peers = peers
    api_port = await proxy.add_link("client", "n1", ("127.0.0.1", mesh.nodes["n1"].api_port))
    # n1 answers requests addressed to the proxy's port too.
    mesh.nodes["n1"].args += ["--allow-host", f"127.0.0.1:{api_port}"]
    for nid in mesh.nodes:
        mesh.start(nid, env())
    scheme = "https" if tls else "http"
    return mesh, f"{scheme}://127.0.0.1:{api_port}"


async def wait_leader(mesh: ProcessCluster) -> None:
    async def leader() -> str | None:
        for node in mesh.nodes.values():
            try:
                async with client(node, timeout=2.0) as c:
                    st = await c.status()
            except (Unreachable, ApiError):
                return None
            if st.get("leader") is None:
                return None
        return "yes"

    try:
        await eventually(leader, 30.0, "a leader")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{mesh.logs()}") from None


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    p = FaultProxy(seed=7)
    yield p
    await p.close()


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "psk"])
async def test_mesh_commits_and_no_plaintext_crosses_the_wire(tmp_path: Path, proxy: FaultProxy, tls: bool) -> None:
    wire = Wire()
    proxy.on_bytes = wire
    mesh, api_url = await start_mesh(tmp_path, tls, proxy)
    try:
        await wait_leader(mesh)
        n1 = mesh.nodes["n1"]
        async with client(n1, api_url) as c:
            for i in range(5):
                for _ in range(50):
                    try:
                        await c.put(f"{KEY}/{i}", f"{VALUE}-{i}")
                        break
                    except ApiError as exc:
                        if exc.status != 503:
                            raise
                        await asyncio.sleep(0.1)
                else:
                    raise AssertionError("write never committed")

        async def everywhere() -> bool:
            for node in mesh.nodes.values():
                async with client(node) as c:
                    items = (await c.list(KEY, consistency="local"))["items"]
                if len(items) != 5:
                    return False
            return True

        await eventually(everywhere, 20.0, "every node to hold the 5 writes")
        assert len(wire.peer) > 5000 and len(wire.api) > 500
        markers = [KEY.encode(), VALUE.encode()]
        assert leaked(wire.peer, markers) == [], "plaintext on a peer link"
        if tls:
            assert leaked(wire.api, markers) == [], "plaintext on the HTTPS API"
        else:
            # The control: plain HTTP through the same capture shows both.
            assert leaked(wire.api, markers) == markers
        # ?confirm=all asks every member's API over the same scheme, HTTPS
        # verified against the cluster CA on a TLS mesh.
        async with client(n1) as c:
            doc = await c.put(f"{KEY}/confirmed", "all", confirm="all")
        assert doc["applied_by"] == sorted(mesh.nodes) and doc["missing"] == [], doc
    finally:
        mesh.stop_everything()


async def test_https_api_refuses_plaintext_and_the_cli_verifies_the_ca(tmp_path: Path) -> None:
    """A plaintext client on the HTTPS port gets nothing and changes nothing;
    the CLI reaches the node over HTTPS with --ca, or with the CA it finds
    through the node's pointer on this machine; a client of another CA is
    refused."""
    mesh = ProcessCluster(tmp_path, tls=True)
    node = mesh.add("n1")
    node.peers = {"n1": node.raft}
    try:
        mesh.start("n1", env())
        await wait_leader(mesh)
        async with client(node) as c:
            await c.put("parameters/k", "v1")
        # Plain HTTP to the HTTPS port, twice: a 400 saying to use https,
        # nothing written, one log line (rate limit).
        for _ in range(2):
            async with MeshClient(f"http://{node.api}", timeout=5.0) as plain:
                with pytest.raises(ApiError) as info:
                    await plain.put("parameters/k", "plaintext")
            assert info.value.status == 400 and info.value.code == "https_required"
            assert "https://" in info.value.message
        # A client that trusts another CA refuses the node.
        other = tmp_path / "other-ca.pem"
        from mesh.transport.tls import DevCa

        other.write_bytes(DevCa.make("hana").pem())
        async with MeshClient(node.url, timeout=5.0, ca=other) as wrong:
            with pytest.raises(Unreachable, match="certificate"):
                await wrong.get("parameters/k")
        async with client(node) as c:
            assert (await c.get("parameters/k"))["value"] == "v1"

        def log_lines(code: str) -> list[str]:
            return [line for line in node.log_path.read_text().splitlines() if f"code={code}" in line]

        await eventually(
            lambda: asyncio.sleep(0, log_lines("tls_handshake_failed")), 5.0, "the refused handshake logged"
        )
        assert len(log_lines("https_required")) == 1
        cli = [sys.executable, "-m", "mesh.cli", "get", "parameters/k", "--json"]
        for extra in (["--api", node.url, "--ca", str(node.ca)], ["--api", node.api]):
            out = subprocess.run(cli + extra, capture_output=True, text=True, timeout=30, env=env())
            assert out.returncode == 0, out.stderr
            assert '"v1"' in out.stdout
    finally:
        mesh.stop_everything()


def test_a_non_loopback_api_without_api_tls_refuses_to_start(tmp_path: Path) -> None:
    from mesh.transport.tls import DevCa

    DevCa.make("hana").write_node(tmp_path / "n1", "hana", "n1")
    cmd = [sys.executable, "-m", "mesh.cli", "serve", "--id", "n1", "--data-dir", str(tmp_path / "n1")]
    cmd += ["--api", "0.0.0.0:0", "--raft", "127.0.0.1:0", "--no-mdns", "--peers", "n1=127.0.0.1:1"]
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tokens": [{"name": "ops", "token": "a-long-enough-token-1234", "role": "admin"}]}')
    tokens.chmod(0o600)
    cmd += ["--tokens-file", str(tokens)]
    before = sorted(p.name for p in (tmp_path / "n1").iterdir())
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env())
    assert out.returncode == 2, out.stderr
    assert "is not loopback and this node has certificates" in out.stderr
    assert "add --api-tls" in out.stderr
    assert sorted(p.name for p in (tmp_path / "n1").iterdir()) == before  # nothing written
