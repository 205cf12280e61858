"""The trust service over a fake node whose log is a HanaState applied in
order (what every node does with committed entries)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from mesh.state.hlc import HLC
from mesh.state.model import HanaState
from mesh.trust import ca, local, tokens
from mesh.trust.service import TrustFailure, TrustService


class LogNode:
    node_id = "n1"

    def __init__(self) -> None:
        self.kv = HanaState()
        self.index = 0
        self.lock = asyncio.Lock()
        self.ops: list[str] = []

    def status(self) -> dict[str, Any]:
        return {"leader": "n1", "members": [{"id": "n1", "voter": True, "raft": "127.0.0.1:1", "match_index": 1}]}

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        async with self.lock:  # one log, one order
            await asyncio.sleep(0)
            self.index += 1
            self.ops.append(command["op"])
            t = int(time.time() * 1000)
            doc = {"node": "n1", "time": t, "hlc": HLC(t, self.index, "n1").encode(), **command}
            return self.kv.apply(self.index, orjson.dumps(doc))


async def no_change(node: str, action: str, raft: Any) -> None:
    return None


@pytest.fixture
def service(tmp_path) -> TrustService:
    local.init_cluster(tmp_path, "show", "n1")
    return TrustService(tmp_path, LogNode(), no_change, "http://127.0.0.1:7070")


def join_body(token: str, node_id: str) -> dict[str, Any]:
    return {"token": token, "node_id": node_id, "csr": ca.csr_pem(ca.make_csr(ca.new_key(), "show", node_id, []))}


async def test_two_joins_racing_with_one_token_spend_it_once(service):
    doc = await service.invite(600, "voter", "admin")
    results = await asyncio.gather(
        service.join(join_body(doc["token"], "n4")), service.join(join_body(doc["token"], "n5")), return_exceptions=True
    )
    ok = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, TrustFailure)]
    assert len(ok) == 1 and len(refused) == 1, results
    assert refused[0].status == 403 and refused[0].extra["reason"] == "spent"
    assert service.node.ops.count("trust_issue") == 2  # both reached the log: the log decided
    assert ok[0]["role"] == "voter" and "BEGIN CERTIFICATE" in ok[0]["cert"]
    assert set(service.trust.issued) == {ok[0]["node_id"]}


async def test_garbage_another_clusters_and_expired_tokens_are_refused_and_change_nothing(service):
    before = orjson.dumps(service.trust.to_json())
    with pytest.raises(TrustFailure) as info:
        await service.join(join_body("hana1.xyz", "n4"))
    assert info.value.status == 400 and info.value.code == "invalid_token"
    other = tokens.new_token("other", ["http://127.0.0.1:1"], "ab" * 32, 10**13).encode()
    with pytest.raises(TrustFailure, match="cluster 'other'"):
        await service.join(join_body(other, "n4"))
    expired = tokens.new_token("show", ["http://127.0.0.1:1"], "ab" * 32, 1000).encode()
    with pytest.raises(TrustFailure, match="expired"):
        await service.join(join_body(expired, "n4"))
    guessed = tokens.new_token("show", ["http://127.0.0.1:1"], "ab" * 32, 10**13).encode()
    with pytest.raises(TrustFailure, match="unknown join token"):
        await service.join(join_body(guessed, "n4"))
    assert orjson.dumps(service.trust.to_json()) == before
    assert "trust_issue" not in service.node.ops  # refused before the log: a guessed token costs no entry


async def test_a_request_without_token_is_pending_then_approved_by_its_key(service):
    key = ca.new_key()
    body = {"node_id": "n9", "csr": ca.csr_pem(ca.make_csr(key, "pending", "n9", [])), "raft": "127.0.0.1:9"}
    status, doc = await service.request_join(body, "127.0.0.1")
    assert status == 202 and doc["fingerprint"] == ca.key_fingerprint(key.public_key())
    assert [p["id"] for p in service.trust.pending_list()] == ["n9"]
    other = {**body, "csr": ca.csr_pem(ca.make_csr(ca.new_key(), "pending", "n9", []))}
    await service.approve("n9", "admin")
    assert (await service.request_join(other, "x"))[0] == 202  # another key is not the approved one
    status, doc = await service.request_join(body, "127.0.0.1")
    assert status == 200 and ca.same_key(ca.x509.load_pem_x509_certificate(doc["cert"].encode()), key)


async def test_the_autopilot_admits_only_machines_with_a_certificate_of_the_log(service):
    assert service.admissible("n1") is False  # init's own serial not yet registered by the loop
    doc = await service.invite(600, "learner", "admin")
    await service.join(join_body(doc["token"], "n4"))
    assert service.admissible("n4") and not service.admissible("n5")
    service.trust.revoke_node("n4", 0)
    assert not service.admissible("n4")
