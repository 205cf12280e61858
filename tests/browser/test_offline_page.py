"""The status page of a node cut off from its controller (issue 14), in
headless Chromium against real node processes: the page says the node is
cut off and shows its queued write; once the node is back, the conflict
its offline edit became is on the page, marked critical, and the operator
resolves it with a button (through the API, as the page's only way in).

The conflict is made without a proxy: n1 and n2 are stopped (SIGSTOP) while
n3 queues an edit; then n3 is stopped and n1 and n2 resumed, and they change
the same key; then n3 resumes and replays its edit, based on an older
version of a manual-policy key.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

from tests.browser.conftest import Page, http
from tests.integration.harness import Cluster, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "displays/offline-wall"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("offline-page"), 3) as c:
        c.start_all()
        asyncio.run(c.wait_leader())
        yield c


def conflicts_on_page(page: Page) -> list[dict[str, Any]]:
    return list(
        page.js(
            """return [...document.querySelectorAll('#conflicts tbody tr')].map(tr => ({
                id: tr.dataset.conflict, key: tr.dataset.key, critical: tr.dataset.critical,
                text: tr.innerText}));"""
        )
    )


def test_cut_off_state_queued_write_and_resolving_a_critical_conflict(mesh: Cluster, page: Page) -> None:
    n1, n2, n3 = (mesh.nodes[n] for n in ("n1", "n2", "n3"))
    status, doc = http(n1, "PUT", f"/v1/kv/{KEY}", {"value": {"width": 1024}})
    assert status == 200, doc
    page.open(n3.api)
    page.wait(lambda: page.js("return document.getElementById('connection').dataset.connected") == "true", 15,
              "the page to say n3 is connected")  # fmt: skip
    assert not page.visible("#conflicts-panel")

    # n3 alone: the page says it is cut off; an offline edit is queued.
    for n in (n1, n2):
        n.signal(signal.SIGSTOP)
    page.wait(lambda: page.js("return document.getElementById('connection').dataset.connected") == "false", 20,
              "the page to say n3 is cut off")  # fmt: skip
    status, queued = http(n3, "PUT", f"/v1/kv/{KEY}?offline=queue", {"value": {"width": 1280}})
    assert status == 202 and queued["queued"], queued
    page.wait(lambda: "1 queued" in page.text("outbox-count"), 15, "the queued write in the header")
    assert "cut off" in page.text("connection")
    page.shot("cut-off-with-a-queued-write")

    # Meanwhile the majority changes the same key; then n3 comes back.
    n3.signal(signal.SIGSTOP)
    for n in (n1, n2):
        n.signal(signal.SIGCONT)
    asyncio.run(mesh.wait_leader(among=["n1", "n2"], timeout=30))
    status, doc = http(n1, "PUT", f"/v1/kv/{KEY}", {"value": {"width": 1920}})
    assert status == 200, doc
    n3.signal(signal.SIGCONT)

    rows = page.wait(lambda: conflicts_on_page(page), 30, "the conflict on n3's page")
    page.shot("critical-conflict")
    assert len(rows) == 1 and rows[0]["key"] == KEY and rows[0]["critical"] == "true", rows
    assert "1920" in rows[0]["text"] and "1280" in rows[0]["text"]
    assert page.js("return !!document.querySelector('#alerts [data-kind=conflict]')")
    assert page.text("connection") == "connected"

    # The operator (no token on a loopback node) takes the offline edit.
    # The panel redraws on every watch message: a button found just before
    # a redraw is gone (stale) when clicked, and that click never happened.
    take = f'tr[data-conflict="{rows[0]["id"]}"] button[data-take=proposed]'

    def click_take() -> bool:
        try:
            page.driver.find_element("css selector", take).click()
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        return True

    page.wait(click_take, 15, "a click on the conflict's Take offline edit button")
    page.wait(lambda: not conflicts_on_page(page), 15, "the conflict to leave the page")
    page.shot("resolved")
    assert "resolved" in page.text("notice")
    status, doc = http(n1, "GET", f"/v1/kv/{KEY}")
    assert status == 200 and doc["value"] == {"width": 1280}, doc
    status, listing = http(n1, "GET", "/v1/conflicts")
    assert status == 200 and not [c for c in listing["conflicts"] if c["status"] == "open"], listing
    page.assert_no_script_errors()
