"""Headless Chromium for the status page's tests, and meshes of real nodes.

The browser is Debian's `chromium` driven through Debian's `chromedriver`
(packages chromium and chromium-driver, installed by scripts/test when
missing) with Selenium, pointed at both binaries: Selenium Manager is never
asked to find or download anything. As root (CI) the binaries must be there:
a missing one fails the tests with what to install. Anyone else without them
gets a skip saying so.

Screenshots of each step, the browser's console and the chromedriver log go
to artifacts/browser/<test>/ (or $HANA_BROWSER_ARTIFACTS/<test>/).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib import request as urlrequest
from urllib.error import HTTPError

import pytest

from tests.integration.harness import Cluster, NodeProc, running_cluster

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("HANA_BROWSER_ARTIFACTS", REPO / "artifacts" / "browser"))
CHROMIUM = Path(os.environ.get("HANA_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("HANA_CHROMEDRIVER", "/usr/bin/chromedriver"))

# Flags for a browser on a machine without a screen, a GPU or a network
# beyond loopback: no first-run, sync, update or background connections
# (they would only be refused), a fresh profile each run. --no-sandbox:
# Chromium's sandbox cannot start as root (CI); the browser only ever loads
# pages the tests serve on loopback.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--window-size=1400,1000",
)

T = TypeVar("T")


def _missing() -> list[str]:
    return [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]


@pytest.fixture(scope="session")
def chrome_binaries() -> tuple[Path, Path]:
    missing = _missing()
    if missing:
        why = (
            f"headless Chromium is not installed ({', '.join(missing)} missing): "
            "apt-get install chromium chromium-driver (scripts/test does it when run as root)"
        )
        if os.geteuid() == 0:
            pytest.fail(why)
        pytest.skip(why)
    return CHROMIUM, CHROMEDRIVER


class Page:
    """One browser tab on the status page, with the waits and screenshots
    the tests use. Every wait polls a condition with a deadline."""

    def __init__(self, driver: Any, out: Path) -> None:
        self.driver = driver
        self.out = out
        self.step = 0

    # -- navigation and evidence ---------------------------------------------------

    def open(self, api: str, path: str = "/") -> None:
        self.driver.get(f"http://{api}{path}")

    def shot(self, name: str) -> Path:
        self.step += 1
        path = self.out / f"{self.step:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def console(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        if entries:
            with (self.out / "console.log").open("a") as f:
                for e in entries:
                    f.write(f"{e.get('level')} {e.get('message')}\n")
        return entries

    def assert_no_script_errors(self) -> None:
        """The page's own script threw nothing (failed requests the page
        shows are not script errors)."""
        errors = [e["message"] for e in self.console() if "Uncaught" in e.get("message", "")]
        assert not errors, errors

    # -- reading the page ------------------------------------------------------------

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def members(self) -> dict[str, dict[str, str]]:
        """Each member row: its health, role attribute and the cells' text."""
        rows = self.js(
            """return [...document.querySelectorAll('#members tbody tr')].map(tr => ({
                id: tr.dataset.member, health: tr.dataset.health, role: tr.dataset.role,
                controller: tr.classList.contains('controller'),
                cells: [...tr.cells].map(td => td.innerText)}));"""
        )
        return {r["id"]: r for r in rows}

    def text(self, element_id: str) -> str:
        return str(
            self.js("const e = document.getElementById(arguments[0]); return e ? e.innerText : null;", element_id)
        )

    def visible(self, selector: str) -> list[Any]:
        return [e for e in self.driver.find_elements("css selector", selector) if e.is_displayed()]

    def wait(self, check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                value = check()
                if value:
                    return value
            except Exception as exc:  # a page being redrawn: ask again
                last = exc
            if time.monotonic() >= deadline:
                self.shot("timeout")
                raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last!r})")
            time.sleep(interval)

    def login(self, token: str) -> None:
        field = self.driver.find_element("id", "token-input")
        field.clear()
        field.send_keys(token)
        self.driver.find_element("id", "login-button").click()

    def role(self) -> str:
        return str(self.js("return document.body.dataset.role || ''"))


@pytest.fixture(scope="module")
def driver(chrome_binaries: tuple[Path, Path]) -> Iterator[Any]:
    """One headless Chromium for a test module (each test opens its pages)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = chrome_binaries
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="hana-chromium-")
    options = Options()
    options.binary_location = str(chromium)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(executable_path=str(chromedriver), log_output=str(ARTIFACTS / "chromedriver.log"))
    drv = webdriver.Chrome(options=options, service=service)
    drv.set_page_load_timeout(20)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(driver: Any, request: pytest.FixtureRequest) -> Iterator[Page]:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    out = ARTIFACTS / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    driver.get("about:blank")
    driver.get_log("browser")  # start each test with an empty console
    driver.get_log("performance")
    yield Page(driver, out)
    with contextlib.suppress(Exception):
        Page(driver, out).console()


# -- meshes ----------------------------------------------------------------------------


def start_mesh(root: Path, n: int, extra: list[str] | None = None) -> Cluster:
    c = Cluster.create(root, n, extra)
    c.start_all()
    return c


@pytest.fixture(scope="module")
def mesh3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nodes on loopback, no tokens file: a browser without a token is
    an operator, each node's admin token makes it the admin."""
    with running_cluster(tmp_path_factory.mktemp("mesh3"), 3) as c:
        c.start_all()
        asyncio.run(c.wait_leader())
        yield c


def leader_and_followers(c: Cluster) -> tuple[str, list[str]]:
    leader = asyncio.run(c.wait_leader())
    return leader, [nid for nid in c.nodes if nid != leader and c.nodes[nid].alive()]


# -- a plain HTTP client for checks (not the page) -------------------------------------


def http(
    node: NodeProc, method: str, path: str, body: Any = None, token: str | None = None, origin: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Accept": "application/json"}
    if origin:
        headers["Origin"] = origin
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urlrequest.Request(f"http://{node.api}{path}", data=data, method=method, headers=headers)
    try:
        with urlrequest.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def admin_token(node: NodeProc) -> str:
    return (node.data_dir / "admin-token").read_text().strip()


def record_figure(name: str, value: Any) -> None:
    """Measured figures, kept beside the screenshots (figures.json)."""
    path = ARTIFACTS / "figures.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = value
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
