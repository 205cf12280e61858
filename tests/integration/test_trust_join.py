"""Cluster credentials with real processes (issue 18): a mesh formed by
`init`, `invite` and `serve --join`; a spent token refused; a machine
without a token pending until approved; a removed member's certificate
revoked; bad tokens and certificates refused, changing nothing.

Peer links are mutual TLS 1.3 (trust-tls) with the certificates `init` and
`--join` wrote; the API is plain HTTP on loopback except where a test says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mesh.client import ApiError, MeshClient, Unreachable
from mesh.trust import ca, local, tokens
from tests.integration.harness import Cluster, NodeProc, eventually

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FAST = ["--trust-interval", "0.2"]


def init(root: Path, nid: str, cluster: str = "show") -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mesh.cli",
            "init",
            "--data-dir",
            str(root / nid),
            "--cluster",
            cluster,
            "--node-id",
            nid,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def make_cluster(root: Path, ids: list[str]) -> Cluster:
    c = Cluster(root)
    for nid in ids:
        c.nodes[nid] = NodeProc(nid, root / nid, root / f"{nid}.log", args=list(FAST))
    return c


async def invite(node: NodeProc, role: str = "voter", expires: str = "10m") -> str:
    async with node.admin_client() as a:
        doc = await a.request("POST", "/v1/trust/invite", {"role": role, "expires": expires})
    return str(doc["token"])


async def members(node: NodeProc) -> dict:
    async with node.client(timeout=3.0) as cl:
        return await cl.members()


async def voters(node: NodeProc) -> set[str]:
    return {m["id"] for m in (await members(node))["members"] if m["voter"]}


def wait_exit(c: Cluster, nid: str, timeout: float = 60.0) -> int:
    proc = c.nodes[nid].proc
    assert proc is not None
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{nid} did not exit\n{c.logs()}") from None


async def test_init_invite_join_form_a_mesh_a_spent_token_is_refused_and_removal_revokes(tmp_path):
    c = make_cluster(tmp_path, ["n1", "n2", "n3", "n4"])
    try:
        init(tmp_path, "n1")
        c.start("n1")
        await c.wait_leader(["n1"])
        n1 = c.nodes["n1"]

        token = await invite(n1, "voter")
        c.start("n2", ["--join", token])
        await eventually(lambda: _has(voters(n1), {"n1", "n2"}), 40, "n2 a voter")
        # Peer links are mutual TLS with the certificates init and join made (trust-tls).
        assert "event=cluster_secret source=tls:" in c.nodes["n2"].log_tail(20000)

        # The same token again: refused by the log (spent), the machine writes nothing.
        c.start("n4", ["--join", token])
        assert wait_exit(c, "n4") == 2
        assert "already used" in c.nodes["n4"].log_tail()
        assert not (tmp_path / "n4" / "tls").exists()

        # `hana-node invite` prints the token (the CLI finds n1's admin token on this machine).
        out = subprocess.run(
            [sys.executable, "-m", "mesh.cli", "invite", "--role", "voter", "--expires", "5m", "--api", n1.api],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert tokens.decode(out.stdout.strip()).role == "voter"
        c.start("n3", ["--join", out.stdout.strip()])
        await eventually(lambda: _has(voters(n1), {"n1", "n2", "n3"}), 40, "n3 a voter")
        for nid in ("n2", "n3"):
            assert (tmp_path / nid / "tls" / "node.key").stat().st_mode & 0o777 == 0o600
            assert local.node_cert(tmp_path / nid).issuer == local.bundle(tmp_path / "n1")[0].subject

        # The mesh works: a write on n1 is read on n3.
        async with n1.client() as cl:
            await cl.put("displays/left", {"on": True})
        async with c.nodes["n3"].client() as cl:
            assert (await cl.get("displays/left"))["value"] == {"on": True}

        # members remove revokes n3's serial on every node; its certificate no longer renews.
        serial = format(local.node_cert(tmp_path / "n3").serial_number, "x")
        async with n1.admin_client() as a:
            await a.request("POST", "/v1/members", {"id": "n3", "action": "remove"})

        async def revoked_on_n2() -> bool:
            async with c.nodes["n2"].client() as cl:
                doc = await cl.request("GET", "/v1/trust")
            return serial in doc["revoked"] and "n3" in doc["removed"]

        await eventually(revoked_on_n2, 20, "n3's serial revoked on n2")
        key = local.node_key(tmp_path / "n3")
        body = {
            "cert": local.node_cert(tmp_path / "n3").public_bytes(serialization.Encoding.PEM).decode(),
            "csr": ca.csr_pem(ca.make_csr(key, "show", "n3", ["127.0.0.1"])),
        }
        async with n1.client() as cl:
            with pytest.raises(ApiError) as info:
                await cl.request("POST", "/v1/trust/renew", body)
        assert info.value.status == 403 and info.value.code == "join_refused" and "revoked" in str(info.value)

        # On reconnect, its certificate (valid, signed by the cluster CA) is refused by the TLS handshake.
        c.nodes["n3"].kill()
        c.start("n3")

        async def refused() -> bool:
            logs = c.nodes["n1"].log_tail(20000) + c.nodes["n2"].log_tail(20000)
            return any("reason=not_admitted" in ln and "n3 (serial" in ln for ln in logs.splitlines())

        await eventually(refused, 30, "n3's reconnection refused as not admitted")
        assert await voters(n1) == {"n1", "n2"}
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_everything()


async def _has(coro, want: set[str]) -> bool:
    return want <= await coro


async def test_a_machine_without_a_token_is_pending_until_approved(tmp_path):
    c = make_cluster(tmp_path, ["n1", "n4"])
    try:
        init(tmp_path, "n1")
        c.start("n1")
        await c.wait_leader(["n1"])
        n1 = c.nodes["n1"]
        c.start("n4", ["--request-join", f"http://{n1.api}"])

        async def pending() -> dict | None:
            return next((p for p in (await members(n1))["pending"] if p["id"] == "n4"), None)

        entry = await eventually(pending, 30, "n4 pending on n1")
        assert set(entry) >= {"id", "address", "fingerprint", "first_seen"}
        key = ca.load_key((tmp_path / "n4" / "pending.key").read_bytes())
        assert entry["fingerprint"] == ca.key_fingerprint(key.public_key())
        # Pending: no credentials, not a member, until a person approves.
        assert not (tmp_path / "n4" / "tls").exists()
        assert "n4" not in {m["id"] for m in (await members(n1))["members"]}

        out = subprocess.run(
            [sys.executable, "-m", "mesh.cli", "members", "approve", "n4", "--api", n1.api],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr

        async def member() -> bool:
            return "n4" in {m["id"] for m in (await members(n1))["members"]}

        await eventually(member, 40, "n4 a member after approval")
        assert not (await members(n1))["pending"]
        assert ca.same_key(local.node_cert(tmp_path / "n4"), local.node_key(tmp_path / "n4"))
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_everything()


async def test_bad_tokens_and_foreign_or_expired_certificates_are_refused(tmp_path):
    c = make_cluster(tmp_path, ["n1", "x1", "x2"])
    try:
        init(tmp_path, "n1")
        c.start("n1")
        await c.wait_leader(["n1"])
        n1 = c.nodes["n1"]
        good = await invite(n1)

        # Garbage and a truncated token: refused at once, nothing written or sent.
        for nid, bad in (("x1", "hana1.not-a-token"), ("x2", good[: len(good) // 2])):
            c.start(nid, ["--join", bad])
            assert wait_exit(c, nid) == 2
            tail = c.nodes[nid].log_tail()
            assert "damaged or truncated" in tail, tail
            assert not (tmp_path / nid / "tls").exists()

        # Another cluster's certificate, and an expired one of this cluster: renewal refused.
        other = tmp_path / "other"
        local.init_cluster(other, "show", "n1")
        s = local.signer(tmp_path / "n1")
        assert s is not None
        key = ca.new_key()
        expired = ca.issue(
            s.key, s.cert, key.public_key(), "show", "n9", [], now=ca.utcnow() - ca.dt.timedelta(days=2), lifetime_s=60
        )
        for cert, k, why in (
            (local.node_cert(other), local.node_key(other), "not signed by this cluster's CA"),
            (expired, key, "expired"),
        ):
            body = {
                "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
                "csr": ca.csr_pem(ca.make_csr(k, "show", "n1", [])),
            }
            async with n1.client() as cl:
                with pytest.raises(ApiError) as info:
                    await cl.request("POST", "/v1/trust/renew", body)
            assert info.value.status == 403 and why in str(info.value), str(info.value)
        # Logged once per route and code, saying why.
        log1 = n1.log_tail(50000)
        assert log1.count("event=trust_request_refused route=/v1/trust/renew") == 1, log1
        assert "code=join_refused reason=bad_certificate" in log1
        # Nothing changed: n1 issued nothing more than its own certificate.
        async with n1.client() as cl:
            doc = await cl.request("GET", "/v1/trust")
        assert set(doc["issued"]) == {"n1"} and len(doc["issued"]["n1"]) == 1
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_everything()


async def test_certificates_renew_before_expiry_and_a_ca_roll_loses_no_write(tmp_path):
    """Short lifetimes (hidden --cert-lifetime): each node renews at 2/3 of
    it through the log; `hana-node rotate-ca` then rolls the CA while writes
    flow: both CAs trusted, every node renewed by the new one, the old
    dropped, every acknowledged write still there."""
    c = make_cluster(tmp_path, ["n1", "n2"])
    for node in c.nodes.values():
        node.args += ["--cert-lifetime", "24"]
    try:
        init(tmp_path, "n1")
        c.start("n1")
        await c.wait_leader(["n1"])
        n1 = c.nodes["n1"]
        c.start("n2", ["--join", await invite(n1, "voter")])
        await eventually(lambda: _has(voters(n1), {"n1", "n2"}), 40, "n2 a voter")
        first = local.node_cert(tmp_path / "n2").serial_number

        async def renewed() -> bool:
            # The new certificate is written, then the line logged: wait for both.
            logged = "event=certificate_renewed reason=lifetime" in c.nodes["n2"].log_tail(20000)
            return logged and local.node_cert(tmp_path / "n2").serial_number != first

        await eventually(renewed, 40, "n2's certificate renewed")

        old_ca = local.bundle(tmp_path / "n1")[0]
        acked: list[str] = []
        stop = asyncio.Event()

        async def writer() -> None:
            i = 0
            async with n1.client() as cl:
                while not stop.is_set():
                    try:
                        await cl.put(f"parameters/roll/k{i}", i)
                        acked.append(f"parameters/roll/k{i}")
                    except (ApiError, Unreachable):
                        pass
                    i += 1
                    await asyncio.sleep(0.05)

        task = asyncio.ensure_future(writer())
        try:
            out = subprocess.run(
                [sys.executable, "-m", "mesh.cli", "rotate-ca", "--api", n1.api],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr

            async def rolled() -> bool:
                for nid in ("n1", "n2"):
                    cas = local.bundle(tmp_path / nid)
                    if len(cas) != 1 or cas[0].subject == old_ca.subject:
                        return False
                    if local.node_cert(tmp_path / nid).issuer != cas[0].subject:
                        return False
                return True

            await eventually(rolled, 60, "the CA rolled on both nodes")
            # Writes go on committing over links that now carry the new CA's certificates.
            done = len(acked)

            async def more() -> bool:
                return len(acked) >= done + 10

            await eventually(more, 30, "writes after the roll")
        finally:
            stop.set()
            await task
        log1 = n1.log_tail(50000)
        assert "event=ca_roll_started" in log1 and "event=ca_roll_done" in log1
        async with c.nodes["n2"].client() as cl:
            keys = {k["key"] for k in (await cl.list("parameters/roll/"))["items"]}
        assert set(acked) <= keys
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_everything()


async def test_a_join_over_the_https_api_checks_the_controller_against_the_tokens_ca(tmp_path):
    """With --api-tls the token names https:// controllers; the new machine
    checks that the controller serves the CA whose sha256 the token carries
    and verifies its TLS certificate against it before sending the secret. A
    token pointing at another CA is refused, nothing written, the token unspent."""
    c = make_cluster(tmp_path, ["n1", "n2", "x1"])
    c.nodes["n1"].args.append("--api-tls")
    try:
        init(tmp_path, "n1")
        c.start("n1")
        n1 = c.nodes["n1"]
        ca_file = tmp_path / "n1" / "tls" / "ca.pem"

        async def invited() -> str | None:
            if not (tmp_path / "n1" / "admin-token").exists():
                return None
            token = (tmp_path / "n1" / "admin-token").read_text().strip()
            async with MeshClient(n1.api, token=token, ca=ca_file, timeout=5.0) as a:
                doc = await a.request("POST", "/v1/trust/invite", {"role": "voter"})
            return str(doc["token"])

        text = await eventually(invited, 30, "an invitation over HTTPS")
        tok = tokens.decode(text)
        assert tok.controllers == (f"https://{n1.api}",)

        other = local.init_cluster(tmp_path / "other", "show", "n1")
        forged = dataclasses.replace(tok, ca_sha256=ca.fingerprint(local.bundle(other.ca_bundle.parent.parent)[0]))
        c.start("x1", ["--join", forged.encode()])
        assert wait_exit(c, "x1") == 2
        assert "does not hold the cluster CA named in the token" in c.nodes["x1"].log_tail()
        assert not (tmp_path / "x1" / "tls").exists()

        c.start("n2", ["--join", text])  # the genuine token: not spent by the refused attempt
        await eventually(lambda: _has(voters_tls(n1, ca_file), {"n1", "n2"}), 40, "n2 a voter")
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_everything()


async def voters_tls(node: NodeProc, ca_file: Path) -> set[str]:
    async with MeshClient(node.api, ca=ca_file, timeout=3.0) as cl:
        return {m["id"] for m in (await cl.members())["members"] if m["voter"]}


async def test_a_machine_found_by_mdns_asks_and_stays_pending_until_approved(tmp_path):
    """mDNS on loopback: a fresh machine without credentials started with
    `--request-join mdns` finds a member of the cluster by mDNS, asks it, and
    shows as pending until approved; the autopilot does not add it before."""
    c = make_cluster(tmp_path, ["n1", "n4"])
    for node in c.nodes.values():
        node.mdns = True
        node.cluster = "show"
    try:
        init(tmp_path, "n1")
        c.start("n1")
        await c.wait_leader(["n1"])
        n1 = c.nodes["n1"]
        c.start("n4", ["--request-join", "mdns"])

        async def pending() -> dict | None:
            return next((p for p in (await members(n1))["pending"] if p["id"] == "n4"), None)

        await eventually(pending, 40, "n4 pending on n1")
        assert "event=member_found_by_mdns" in c.nodes["n4"].log_tail()
        assert "n4" not in {m["id"] for m in (await members(n1))["members"]}
        async with n1.admin_client() as a:
            await a.request("POST", "/v1/trust/approve", {"id": "n4"})

        async def member() -> bool:
            return "n4" in {m["id"] for m in (await members(n1))["members"]}

        await eventually(member, 40, "n4 a member after approval")
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_everything()
