"""`hana-node watch` over real processes: it survives the death of its node
(says so, resumes on another member, prints every revision exactly once and
in order), gives up with a non-zero status when no member answers, prints
one line per change, and ends quietly in `watch | head -1`."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time

import orjson
import pytest

from mesh.client import ApiError, MeshClient, Unreachable
from tests.cli.conftest import Settled
from tests.cli.kit import HANA, Lines, env

pytestmark = pytest.mark.integration


def put(apis: list[str], key: str, value: object, timeout: float = 20.0) -> int:
    """Write through whichever node answers (an election may be under way);
    the revision. A write whose outcome is unknown is not retried: the
    test compares the watch with the history, not with this list."""

    async def go() -> int:
        deadline = time.monotonic() + timeout
        while True:
            for api in apis:
                try:
                    async with MeshClient(api, timeout=5.0) as c:
                        return int((await c.put(key, value))["revision"])
                except (Unreachable, ApiError) as exc:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no node took {key}: {exc}") from exc
            await asyncio.sleep(0.1)

    return asyncio.run(go())


def revision(api: str) -> int:
    async def go() -> int:
        async with MeshClient(api) as c:
            return int((await c.status())["revision"])

    return asyncio.run(go())


def history_revisions(api: str, prefix: str, since: int) -> list[int]:
    async def go() -> list[int]:
        async with MeshClient(api) as c:
            doc = await c.history(prefix, since, 10_000)
            return [r["revision"] for r in doc["records"]]

    return asyncio.run(go())


@pytest.mark.slow
def test_watch_survives_the_death_of_its_node_and_misses_nothing(healthy: Settled) -> None:
    c = healthy.c
    watched = healthy.controller  # the hardest case: the election happens too
    others = [c.nodes[n].api for n in healthy.followers()]
    since = revision(c.nodes[watched].api) + 1
    proc = subprocess.Popen(
        [*HANA, "watch", "--api", c.nodes[watched].api, "--prefix", "displays/", "--since", str(since),
         "--json", "--give-up", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        for i in range(5):
            put(others, f"displays/before-{i}", {"i": i})
        out.wait_count(5, timeout=10)
        c.kill(watched)
        last = 0
        for i in range(5):
            last = put(others, f"displays/after-{i}", {"i": i})
        err.wait_for(r"lost 127\.0\.0\.1:\d+ .*reconnecting from revision \d+", timeout=10)
        err.wait_for(r"resumed on 127\.0\.0\.1:\d+ from revision \d+", timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            # --json prints every message; status notices (the node lost
            # or regained its controller) are not changes.
            docs = [d for line in out.lines if (d := orjson.loads(line)).get("type", "change") == "change"]
            if docs and docs[-1]["revision"] >= last:
                break
            time.sleep(0.05)
        printed = [d["revision"] for d in docs]
        # Exactly what the log holds under the prefix, once each, in order.
        assert printed == history_revisions(others[0], "displays/", since), (printed, err.text())
        assert len(printed) >= 10 and printed == sorted(set(printed))
        assert {d["key"] for d in docs} >= {f"displays/{w}-{i}" for w in ("before", "after") for i in range(5)}
        # Every member gone: it gives up, non-zero, and says so.
        for nid in healthy.followers():
            c.kill(nid)
        assert proc.wait(timeout=20) == 2
        err.wait_for(r"gave up: no member answered for 4 s .* the last revision printed is \d+", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watch_prints_one_line_per_change_and_ends_quietly_in_a_pipe(healthy: Settled) -> None:
    c = healthy.c
    api = c.nodes[healthy.controller].api
    # A real shell pipeline; pipefail makes the watch's own status the pipeline's.
    pipeline = subprocess.Popen(
        ["bash", "-c", 'set -o pipefail; "$@" | head -1', "bash", *HANA, "watch", "--api", api, "--prefix",
         "displays/", "--since", str(revision(api) + 1)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    try:
        # head takes the first line and exits; the watch notices at its next
        # write. Write until the pipeline has ended.
        deadline = time.monotonic() + 30
        i = 0
        while pipeline.poll() is None and time.monotonic() < deadline:
            put([api], f"displays/pipe-{i}", {"brightness": i / 10, "name": "wall"})
            i += 1
            time.sleep(0.05)
        stdout, stderr = pipeline.communicate(timeout=10)
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
            pipeline.wait()
    assert pipeline.returncode == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert re.fullmatch(
        r'#\d+ \d\d:\d\d:\d\d put displays/pipe-0 = \{"brightness":0\.0,"name":"wall"\}  by \S+@n\d\n', stdout
    ), stdout


def test_watch_of_an_unreachable_node_exits_2_at_once(healthy: Settled) -> None:
    c = healthy.c
    victim = healthy.followers()[0]
    c.kill(victim)
    out = subprocess.run([*HANA, "watch", "--api", c.nodes[victim].api], capture_output=True, text=True, env=env(),
                         timeout=30)  # fmt: skip
    assert out.returncode == 2 and "cannot watch on" in out.stderr, out.stderr
