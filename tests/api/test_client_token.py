"""MeshClient with a guessed token: the CLI lends a node's admin token found
on this machine; if the node at that address refuses it (another node now
answers there, say in another network namespace), the client goes on
without a token instead of failing, and only then."""

from __future__ import annotations

import pytest

from mesh.client import ApiError, MeshClient
from tests.api.conftest import ADMIN_TOKEN
from tests.api.edge_kit import RecordingNode, api_client


@pytest.mark.parametrize("optional", [True, False])
async def test_a_refused_guessed_token_is_dropped_once(optional: bool, capsys: pytest.CaptureFixture[str]) -> None:
    node = RecordingNode()
    async with api_client(node) as c:
        base = str(c.make_url("")).rstrip("/")
        async with MeshClient(base, token="someone-elses-token-0123", token_optional=optional) as mc:
            if not optional:
                with pytest.raises(ApiError) as info:
                    await mc.put("parameters/a", 1)
                assert info.value.status == 401
                assert node.proposed == []
                return
            await mc.put("parameters/a", 1)
            await mc.put("parameters/b", 2)
    assert [(p["key"], p["author"], p["role"]) for p in node.proposed] == [
        ("parameters/a", "anonymous", "operator"),
        ("parameters/b", "anonymous", "operator"),
    ]
    assert capsys.readouterr().err.count("refused the admin token") == 1


async def test_a_good_guessed_token_is_kept() -> None:
    node = RecordingNode()
    async with api_client(node) as c:
        base = str(c.make_url("")).rstrip("/")
        async with MeshClient(base, token=ADMIN_TOKEN, token_optional=True) as mc:
            await mc.put("parameters/a", 1)
    assert node.proposed[0]["role"] == "admin"
