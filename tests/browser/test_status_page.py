"""The status page in a real browser (headless Chromium) against real node
processes: issue 16's acceptance for the page.

Each step's screenshot is kept in artifacts/browser/<test>/ (conftest.py);
measured latencies go to artifacts/browser/figures.json.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from mesh.launcher import listening_socket
from tests.browser.conftest import (
    REPO,
    Page,
    admin_token,
    http,
    leader_and_followers,
    record_figure,
)
from tests.integration.harness import Cluster, running_cluster

pytestmark = pytest.mark.integration


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m mesh.cli …` as a person would type it (the CLI finds the
    node's admin token on this machine)."""
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def put(node: Any, key: str, value: Any) -> dict[str, Any]:
    status, doc = http(node, "PUT", f"/v1/kv/{key}", {"value": value})
    assert status == 200, doc
    return doc


def value_of(node: Any, key: str) -> Any:
    status, doc = http(node, "GET", f"/v1/kv/{key}")
    assert status == 200, doc
    return doc["value"]


LIVE = ("live", "polling")


def page_ready(page: Page, members: int) -> dict[str, dict[str, str]]:
    """The page has drawn the mesh (and its watch is live)."""
    return page.wait(
        lambda: (
            (rows := page.members())
            and len(rows) == members
            and page.text("live-state") in ("live", "polling")
            and rows
        ),
        10,
        "the page to show the mesh",
    )


def all_healthy(page: Page, members: int) -> dict[str, dict[str, str]] | None:
    rows = page.members()
    if len(rows) == members and all(r["health"] == "healthy" for r in rows.values()):
        return rows
    return None


# -- the mesh at a glance --------------------------------------------------------------


def test_page_on_a_follower_shows_three_members_and_the_controller(mesh3: Cluster, page: Page) -> None:
    leader, followers = leader_and_followers(mesh3)
    here = followers[0]
    page.open(mesh3.nodes[here].api)
    rows = page.wait(
        lambda: (rows := page.members()) and len(rows) == 3 and page.text("controller") == leader and rows,
        10,
        "three members and the controller",
    )
    page.shot("follower-page")
    assert set(rows) == set(mesh3.nodes)
    assert page.text("node-id") == here
    assert rows[leader]["controller"] and not rows[here]["controller"]
    assert rows[here]["health"] == "healthy" and rows[leader]["health"] == "healthy"
    for nid, row in rows.items():
        assert "voter" in row["cells"][2], row
        assert row["cells"][6] in ("self", "static"), row  # found
        assert mesh3.nodes[nid].api in row["cells"][7]
    # It follows the controller: a link to the controller's page, and each
    # other member's name links to its own page.
    link = page.driver.find_element("id", "controller-link")
    assert link.is_displayed() and link.get_attribute("href") == f"http://{mesh3.nodes[leader].api}/"
    for nid in [*followers[1:], leader]:
        a = page.driver.find_element("css selector", f'tr[data-member="{nid}"] a')
        assert a.get_attribute("href") == f"http://{mesh3.nodes[nid].api}/"
    # No alert on a healthy mesh; the page's own script threw nothing.
    assert page.js("return document.getElementById('alerts').dataset.count") == "0"
    # The controller's own page judges every member.
    page.open(mesh3.nodes[leader].api)
    rows = page.wait(lambda: all_healthy(page, 3), 10, "every member healthy on the controller's page")
    page.shot("controller-page")
    assert all(r["cells"][4] == "0" or r["cells"][4].isdigit() for r in rows.values())  # lag known there
    page.assert_no_script_errors()


@pytest.mark.slow
def test_a_put_through_the_cli_appears_on_the_page_within_a_second(mesh3: Cluster, page: Page) -> None:
    _, followers = leader_and_followers(mesh3)
    node = mesh3.nodes[followers[0]]
    page.open(node.api)
    page_ready(page, 3)
    page.wait(lambda: page.text("live-state") == "live", 10, "the watch to be live")
    # Note when the change shows up, in the page itself.
    page.js(
        """window.__seen = {};
        new MutationObserver(() => {
          for (const li of document.querySelectorAll('#change-list li')) {
            const k = li.dataset.key + '@' + li.dataset.revision;
            if (!(k in window.__seen)) window.__seen[k] = Date.now();
          }
        }).observe(document.getElementById('change-list'), {childList: true});"""
    )
    latencies = []
    for i in range(3):
        key = f"parameters/browser/cli-{i}"
        started = time.time()
        done = cli("put", "--json", "--api", mesh3.nodes[followers[-1]].api, key, orjson.dumps({"level": i}).decode())
        acked = time.time()
        assert done.returncode == 0, done.stderr
        revision = orjson.loads(done.stdout)["revision"]
        seen = page.wait(
            lambda key=key, revision=revision: page.js("return window.__seen[arguments[0]]", f"{key}@{revision}"),
            max(0.0, acked + 1.0 - time.time()),
            f"{key} on the page within 1 s of the CLI's answer",
        )
        latencies.append(
            {"after_ack_ms": round(seen - acked * 1000), "after_cli_start_ms": round(seen - started * 1000)}
        )
        item = page.driver.find_element("css selector", f'#change-list li[data-revision="{revision}"]')
        assert key in item.text and '{"level":' + str(i) + "}" in item.text
    page.shot("cli-put-shown")
    # A negative figure: the page showed it before the CLI process had exited.
    record_figure("cli_put_to_page_ms", latencies)
    print(f"CLI put -> page: {latencies}")
    page.assert_no_script_errors()


# -- a node dies -----------------------------------------------------------------------


@pytest.mark.slow
def test_after_sigkill_a_nodes_row_turns_unhealthy_within_3_s(tmp_path: Path, page: Page) -> None:
    with running_cluster(tmp_path, 3) as c:
        c.start_all()
        leader, followers = leader_and_followers(c)
        gone, witness = followers
        # 1. On the controller's page, a follower dies.
        page.open(c.nodes[leader].api)
        page.wait(lambda: all_healthy(page, 3), 10, "a healthy mesh on the controller's page")
        page.shot("controller-page-healthy")
        c.kill(gone)
        killed = time.monotonic()
        page.wait(lambda: page.members()[gone]["health"] == "unhealthy", 3.0, f"{gone}'s row unhealthy")
        follower_seen = time.monotonic() - killed
        page.wait(lambda: page.visible(f'#alerts p[data-member="{gone}"]'), 1.0, f"an alert naming {gone}")
        page.shot("follower-killed")
        # 2. On the last follower's page, the controller dies: its row turns
        # unhealthy and the page says this node is cut off.
        page.open(c.nodes[witness].api)
        page.wait(
            lambda: (rows := page.members()) and rows[leader]["health"] == "healthy" and rows[leader]["controller"],
            10,
            "the controller healthy on the follower's page",
        )
        page.shot("follower-page-before")
        c.kill(leader)
        killed = time.monotonic()
        page.wait(lambda: page.members()[leader]["health"] == "unhealthy", 3.0, f"{leader}'s row unhealthy")
        controller_seen = time.monotonic() - killed
        page.wait(lambda: page.visible('#alerts p[data-kind="cut-off"]'), 1.0, "the cut-off alert")
        page.shot("controller-killed")
        record_figure(
            "sigkill_to_unhealthy_s",
            {
                "follower_on_controller_page": round(follower_seen, 2),
                "controller_on_follower_page": round(controller_seen, 2),
            },
        )
        print(f"SIGKILL -> unhealthy: follower {follower_seen:.2f} s, controller {controller_seen:.2f} s")
        # 3. The page's own node dies: the page says so and keeps its last view.
        c.kill(witness)
        page.wait(lambda: page.visible('#alerts p[data-kind="unreachable"]'), 15, "the page's node unreachable")
        assert len(page.members()) == 3
        page.shot("own-node-killed")
        page.assert_no_script_errors()


# -- saves -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_save_restored_from_the_page_changes_the_state(mesh3: Cluster, page: Page) -> None:
    _, followers = leader_and_followers(mesh3)
    node = mesh3.nodes[followers[0]]
    key = "parameters/show/scene"
    put(node, key, "opening")
    page.open(node.api)
    page_ready(page, 3)
    # An operator (no token here) makes the save from the page.
    assert page.role() == "operator"
    assert not page.visible("button.restore")
    page.driver.find_element("id", "save-name").send_keys("before-the-show")
    page.driver.find_element("id", "save-button").click()
    page.wait(lambda: page.visible('#saves tr[data-save="before-the-show"]'), 5, "the new save listed")
    page.shot("saved-as-operator")
    put(node, key, "finale")
    # The admin pastes the node's admin token into the page's login.
    page.login(admin_token(node))
    page.wait(lambda: page.role() == "admin", 5, "the admin role")
    restore = page.wait(lambda: page.visible('button.restore[data-save="before-the-show"]'), 5, "the restore button")[0]
    page.shot("admin-logged-in")
    # The confirmation: cancelling changes nothing.
    restore.click()
    page.wait(lambda: page.js("return document.getElementById('confirm').open"), 3, "the confirmation")
    page.shot("confirm-restore")
    page.driver.find_element("id", "confirm-no").click()
    page.wait(lambda: not page.js("return document.getElementById('confirm').open"), 3, "the dialog closed")
    assert value_of(node, key) == "finale"
    # Confirmed: the state becomes the save's, on every member.
    page.visible('button.restore[data-save="before-the-show"]')[0].click()
    page.wait(lambda: page.js("return document.getElementById('confirm').open"), 3, "the confirmation")
    page.driver.find_element("id", "confirm-yes").click()
    page.wait(lambda: value_of(node, key) == "opening", 10, "the state restored")
    for other in mesh3.nodes.values():
        assert value_of(other, key) == "opening"
    page.wait(lambda: "Restored" in page.text("notice"), 5, "the page saying it restored")
    page.wait(
        lambda: (
            page.visible(f'#change-list li[data-key="{key}"]')
            and '"opening"' in page.visible(f'#change-list li[data-key="{key}"]')[0].text
        ),
        5,
        "the restore in the live changes",
    )
    page.wait(lambda: page.visible('#audit li[data-op="restore"]'), 5, "the restore in the audit trail")
    page.shot("restored")
    # Undo reverts the restore (the admin's own change group), redo makes it again.
    page.driver.find_element("id", "undo").click()
    page.wait(lambda: value_of(node, key) == "finale", 10, "the restore undone")
    page.wait(lambda: "Undone" in page.text("notice"), 5, "the page saying it undid")
    page.driver.find_element("id", "redo").click()
    page.wait(lambda: value_of(node, key) == "opening", 10, "the restore redone")
    page.shot("undone-and-redone")
    # A refusal is shown with the node's own words, and changes nothing.
    page.driver.find_element("id", "save-name").send_keys("before-the-show")
    page.driver.find_element("id", "save-button").click()
    page.wait(lambda: "save_exists" in page.text("notice"), 5, "the refusal shown")
    assert "Save failed" in page.text("notice")
    page.shot("refusal-shown")
    page.assert_no_script_errors()


# -- roles -----------------------------------------------------------------------------

TOKENS = {
    "reader": "reader-token-0123456789abc",
    "operator": "operator-token-0123456789",
    "admin": "admin-token-0123456789abcd",
}


@pytest.fixture(scope="module")
def tokens_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("tokens")
    tokens = root / "tokens.json"
    tokens.write_bytes(
        orjson.dumps({"tokens": [{"name": f"{role}-1", "token": t, "role": role} for role, t in TOKENS.items()]})
    )
    tokens.chmod(0o600)
    with running_cluster(root / "mesh", 1, ["--tokens-file", str(tokens)]) as c:
        c.start_all()
        node = c.nodes["n1"]

        async def ready() -> bool:
            return http(node, "GET", "/v1/status", token=TOKENS["reader"])[1].get("leader") == "n1"

        from tests.integration.harness import eventually

        asyncio.run(eventually(ready, 20, "n1 to lead"))
        yield c


@pytest.mark.slow
def test_a_reader_token_sees_no_restore_button(tokens_node: Cluster, page: Page) -> None:
    node = tokens_node.nodes["n1"]
    assert http(node, "POST", "/v1/saves", {"name": "rehearsal"}, token=TOKENS["admin"])[0] == 200
    page.open(node.api)
    # Without a token this node shows nothing but the way in.
    page.wait(lambda: page.visible('#alerts p[data-kind="login"]'), 10, "the login prompt")
    assert page.role() == "none" and not page.members()
    page.shot("no-token")
    seen: dict[str, dict[str, bool]] = {}
    for role in ("reader", "operator", "admin"):
        page.login(TOKENS[role])
        page.wait(lambda role=role: page.role() == role, 5, f"the {role} role")
        page.wait(lambda: page.visible('#saves tr[data-save="rehearsal"]'), 5, "the saves listed")
        page.wait(lambda: len(page.members()) == 1, 5, "the mesh shown")
        page.shot(f"as-{role}")
        seen[role] = {
            "restore": bool(page.visible("button.restore")),
            "delete": bool(page.visible("button.delete")),
            "save": bool(page.visible("#save-form")),
            "undo": bool(page.visible("#undo")),
            "export": bool(page.visible("button.export")),
        }
        page.driver.find_element("id", "logout").click()
        page.wait(lambda: page.role() == "none", 5, "logged out")
    assert seen["reader"] == {"restore": False, "delete": False, "save": False, "undo": False, "export": True}
    assert seen["operator"] == {"restore": False, "delete": False, "save": True, "undo": True, "export": True}
    assert seen["admin"] == {"restore": True, "delete": True, "save": True, "undo": True, "export": True}
    # The token is kept for this tab only.
    assert page.js("return sessionStorage.getItem('hana.token')") is None
    page.assert_no_script_errors()


@pytest.mark.slow
def test_changes_show_on_a_node_that_needs_tokens(tokens_node: Cluster, page: Page) -> None:
    """A browser cannot put a token on a WebSocket: with a tokens file the
    page follows the history instead, with its token."""
    node = tokens_node.nodes["n1"]
    page.open(node.api)
    page.login(TOKENS["reader"])
    page.wait(lambda: page.text("live-state") == "polling", 5, "the history followed")
    status, doc = http(node, "PUT", "/v1/kv/parameters/tokens/x", {"value": 42}, token=TOKENS["operator"])
    assert status == 200, doc
    page.wait(lambda: page.visible(f'#change-list li[data-revision="{doc["revision"]}"]'), 3, "the change on the page")
    item = page.visible(f'#change-list li[data-revision="{doc["revision"]}"]')[0]
    assert "operator-1" in item.text
    page.shot("reader-sees-change")
    page.driver.find_element("id", "logout").click()
    page.assert_no_script_errors()


# -- another origin --------------------------------------------------------------------

EVIL_PAGE = """<!doctype html><html><body><h1>not the mesh</h1><pre id="out"></pre><script>
const target = "http://%(api)s";
const results = {};
async function attempt(name, url, init) {
  try {
    const r = await fetch(target + url, init);
    results[name] = "answered " + r.type + " " + r.status;
  } catch (e) {
    results[name] = "failed: " + e.message;
  }
}
(async () => {
  const json = {"Content-Type": "application/json"};
  await attempt("put", "/v1/kv/parameters/show/target", {method: "PUT", headers: json,
    body: JSON.stringify({value: "pwned"})});
  await attempt("txn", "/v1/txn", {method: "POST", headers: json,
    body: JSON.stringify({ops: [{op: "put", key: "parameters/show/target", value: "pwned"}]})});
  await attempt("save", "/v1/saves", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
    body: JSON.stringify({name: "evil"})});
  await attempt("simple_put", "/v1/kv/parameters/show/target", {method: "POST", mode: "no-cors",
    body: JSON.stringify({value: "pwned"})});
  await attempt("undo", "/v1/undo", {method: "POST", mode: "no-cors", body: "{}"});
  await attempt("restore", "/v1/saves/evil/restore", {method: "POST", mode: "no-cors", body: "{}"});
  await new Promise((resolve) => {
    const ws = new WebSocket("ws://%(api)s/v1/watch");
    ws.onopen = () => { results.watch = "open"; ws.close(); resolve(); };
    ws.onerror = () => { results.watch = "refused"; resolve(); };
  });
  document.getElementById("out").textContent = JSON.stringify(results, null, 1);
  document.body.dataset.done = "1";
  window.results = results;
})();
</script></body></html>"""


@pytest.fixture
def evil_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A second local HTTP server, on another port: another origin."""
    root = tmp_path / "evil"
    root.mkdir()
    sock = listening_socket()
    port = int(sock.getsockname()[1])

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Quiet, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    thread = threading.Thread(target=server.serve_forever, name="evil-origin", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.slow
def test_a_page_on_another_origin_cannot_write(mesh3: Cluster, page: Page, evil_server: tuple[str, Path]) -> None:
    evil, root = evil_server
    _, followers = leader_and_followers(mesh3)
    node = mesh3.nodes[followers[0]]
    before = put(node, "parameters/show/target", "safe")
    saves_before = http(node, "GET", "/v1/saves")[1]
    (root / "index.html").write_text(EVIL_PAGE % {"api": node.api})
    page.driver.get_log("performance")
    page.open(evil, "/index.html")
    page.wait(lambda: page.js("return document.body.dataset.done") == "1", 10, "the other page's attempts")
    page.shot("other-origin")
    results = page.js("return window.results")
    # Every attempt failed in the browser, or got an answer the page cannot read.
    for name in ("put", "txn"):
        assert results[name].startswith("failed"), results
    for name in ("save", "simple_put", "undo", "restore"):
        assert results[name] in ("answered opaque 0",) or results[name].startswith("failed"), results
    assert results["watch"] == "refused", results
    # The node answered 403 to each request that reached it (the browser
    # reads no body of a refused cross-origin answer: the same request with
    # that page's Origin shows the code).
    answers = node_answers(page, node.api)
    assert {status for _, status in answers} == {403}, answers
    assert sum(1 for url, _ in answers if url == "ws") == 1, answers
    assert len(answers) >= 7, answers  # 6 requests (2 as preflights) and the watch
    status, refused = http(node, "POST", "/v1/saves", {"name": "evil"}, origin=f"http://{evil}")
    assert status == 403 and refused["error"]["code"] == "origin_refused", refused
    # And nothing changed.
    status, now = http(node, "GET", "/v1/kv/parameters/show/target")
    assert status == 200 and now["value"] == "safe" and now["version"] == before["version"]
    assert http(node, "GET", "/v1/saves")[1] == saves_before
    page.assert_no_script_errors()


def node_answers(page: Page, api: str) -> list[tuple[str, int]]:
    """(url, status) of every answer the browser got from the node at `api`,
    preflights included, and of refused WebSocket handshakes ("ws", status),
    from Chromium's performance (DevTools) log."""
    answers = []
    for entry in page.driver.get_log("performance"):
        msg = orjson.loads(entry["message"])["message"]
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Network.responseReceived" and f"//{api}/" in params["response"]["url"]:
            answers.append((params["response"]["url"], int(params["response"]["status"])))
        elif method == "Network.webSocketFrameError":
            code = re.search(r"response code: (\d+)", params.get("errorMessage", ""))
            answers.append(("ws", int(code.group(1)) if code else 0))
    return answers
