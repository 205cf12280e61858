"""Every CLI command that prints records: `--json` prints the API's
document exactly (parsed back here and compared with what the API
answers), and without it a table or a line for people, with human times
and no line wider than the terminal."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from mesh.client import MeshClient
from tests.cli.conftest import Settled
from tests.cli.kit import hana

pytestmark = pytest.mark.integration


def cli_json(*args: str) -> Any:
    out = hana(*args, "--json")
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return orjson.loads(out.stdout)


def people(*args: str) -> str:
    out = hana(*args, columns=80)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    assert "{\n" not in out.stdout or args[0] == "get", out.stdout  # not the JSON document
    for line in out.stdout.splitlines():
        assert len(line) <= 80, (args, line)
    return out.stdout


def api_doc(api: str, method: str, path: str) -> Any:
    async def go() -> Any:
        async with MeshClient(api) as c:
            return await c.request(method, path)

    return asyncio.run(go())


def steady(doc: Any) -> Any:
    """A document without what changes from one moment to the next: the
    milliseconds since this node last heard its controller."""
    if isinstance(doc, dict):
        return {k: v for k, v in doc.items() if k != "controller_contact_ms"}
    return doc


EPOCH_MS = re.compile(r"\b1\d{12}\b")
CLOCK = re.compile(r"\b\d\d:\d\d:\d\d\b")


@pytest.mark.slow
def test_every_record_command_takes_json_and_prints_the_api_document(healthy: Settled) -> None:
    api = healthy.api(healthy.followers()[0])
    put = cli_json("put", "displays/json-a", '{"width": 1920}', "--api", api)
    assert put["key"] == "displays/json-a" and put["version"] >= 1
    cli_json("put", "displays/json-b", '{"width": 1280}', "--api", api)
    got = cli_json("get", "displays/json-a", "--api", api)
    assert steady(got) == steady(api_doc(api, "GET", "/v1/kv/displays/json-a"))
    keys = cli_json("keys", "displays/json-", "--api", api)
    assert steady(keys) == steady(api_doc(api, "GET", "/v1/kv?prefix=displays/json-"))
    assert [it["key"] for it in keys["items"]] == ["displays/json-a", "displays/json-b"]
    assert steady(cli_json("keys", "--prefix", "displays/json-", "--api", api)) == steady(keys)
    history = cli_json("history", "--prefix", "displays/json-", "--api", api)
    assert steady(history) == steady(api_doc(api, "GET", "/v1/history?prefix=displays/json-&since=0&limit=50"))
    saved = cli_json("save", "json-save", "--api", api)
    assert saved["name"] == "json-save"
    saves = cli_json("saves", "--api", api)
    assert steady(saves) == steady(api_doc(api, "GET", "/v1/saves")) and "json-save" in [s["name"] for s in saves]
    assert steady(cli_json("saves", "list", "--api", api)) == steady(saves)
    restored = cli_json("restore", "json-save", "--api", api)
    assert restored["restored"] == "json-save" and "recovery_point" in restored
    audit = cli_json("audit", "--api", api)
    assert steady(audit) == steady(api_doc(api, "GET", "/v1/audit?since=0"))
    assert {"save", "restore"} <= {e["op"] for e in audit["entries"]}
    assert cli_json("audit", "--limit", "1", "--api", api)["entries"] == audit["entries"][:1]
    members = cli_json("members", "list", "--api", api)
    assert {m["id"] for m in members["members"]} == {"n1", "n2", "n3"} and members["id"] == api_doc(
        api, "GET", "/v1/members"
    )["id"]
    status = cli_json("status", "--api", api)
    assert status["id"] == healthy.followers()[0] and status["leader"] == healthy.controller
    cli_json("put", "displays/json-a", '{"width": 800}', "--api", api)
    undone = cli_json("undo", "--api", api)
    assert undone["undone"]["keys"] == ["displays/json-a"]
    redone = cli_json("redo", "--api", api)
    assert redone["redone"]["keys"] == ["displays/json-a"]
    deleted = cli_json("delete", "displays/json-b", "--api", api)
    assert deleted["key"] == "displays/json-b"
    gone = cli_json("saves", "delete", "json-save", "--api", api)
    assert gone == {"name": "json-save", "deleted": True}
    assert "json-save" not in [s["name"] for s in cli_json("saves", "--api", api)]


@pytest.mark.slow
def test_tables_for_people_with_human_times(healthy: Settled, tmp_path: Path) -> None:
    api = healthy.api(healthy.controller)
    hana("put", "displays/people", '{"w": 1, "x": "[red]no"}', "--api", api)
    hana("save", "people-save", "--api", api)
    history = people("history", "--prefix", "displays/people", "--api", api)
    assert "displays/people" in history and CLOCK.search(history) and not EPOCH_MS.search(history), history
    assert "[red]no" in history  # data is never read as markup
    assert re.search(r"^\s*rev\s+time\s+op\s+key\s+value\s+by", history, re.M), history
    saves = people("saves", "--api", api)
    assert "people-save" in saves and CLOCK.search(saves) and not EPOCH_MS.search(saves), saves
    audit = people("audit", "--api", api)
    assert re.search(r"\bsave\b", audit) and "name=people-save" in audit and not EPOCH_MS.search(audit), audit
    keys = people("keys", "displays/people", "--api", api)
    assert re.search(r"displays/people\s+\d+\s+\d+\s+\{", keys), keys
    members = people("members", "list", "--api", api)
    assert all(nid in members for nid in ("n1", "n2", "n3")) and "healthy" in members, members
    got = people("get", "displays/people", "--api", api)
    assert '"w": 1' in got and "version" in got
    line = people("put", "displays/people", '{"w": 2}', "--api", api)
    assert re.fullmatch(r"displays/people: version \d+ at revision \d+\n", line), line
    assert people("saves", "delete", "people-save", "--api", api) == "deleted save 'people-save'\n"
    refused = hana("saves", "delete", "--api", api)
    assert refused.returncode == 2 and "needs the name of a save" in refused.stderr


def test_a_token_file_on_the_new_commands(healthy: Settled, tmp_path: Path) -> None:
    api = healthy.api(healthy.controller)
    wrong = tmp_path / "token"
    wrong.write_text("not-the-admin-token-0123456789\n")
    os.chmod(wrong, 0o600)
    for args in (["keys"], ["audit"], ["saves"], ["saves", "delete", "x"]):
        out = hana(*args, "--token-file", str(wrong), "--api", api)
        assert out.returncode == 1 and "401" in out.stderr, (args, out.stderr)
    right = tmp_path / "admin"
    right.write_text((healthy.c.nodes[healthy.controller].data_dir / "admin-token").read_text())
    os.chmod(right, 0o600)
    assert hana("audit", "--token-file", str(right), "--api", api).returncode == 0
