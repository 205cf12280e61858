"""`hana-node status` over real processes: its exit codes (shared/API.md),
an 80-column terminal, unreachable members shown as such, and health
filled in when asked from a follower."""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.cli.conftest import Settled
from tests.cli.kit import TerminalRun, hana, hana_in_terminal, rows, wait_exit_code

pytestmark = pytest.mark.integration
IDS = ["n1", "n2", "n3"]


def test_healthy_mesh_exits_0_and_fits_an_80_column_terminal(healthy: Settled) -> None:
    follower = healthy.followers()[0]
    rc, text = hana_in_terminal("status", "--api", healthy.api(follower), columns=80)
    assert rc == 0, text
    lines = text.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, text
    table = rows(text, IDS)
    assert set(table) == set(IDS), text
    assert table[follower][0] == f"{follower}*"  # the member asked
    assert table[healthy.controller][1] == "leader"
    for nid in IDS:
        assert table[nid][3] == "ok", text  # health, filled in although a follower was asked
    # Last contact comes from the controller's view (a follower alone
    # does not hear the other followers): no row but the asked one's own
    # controller row lacks it.
    for nid in healthy.followers():
        assert table[nid][5] != "-", text
    assert f"controller {healthy.controller}" in text
    assert "as the controller" in text
    # A wide terminal shows more columns; the 80-column one leaves them out.
    wide_rc, wide = hana_in_terminal("status", "--api", healthy.api(follower), columns=160)
    assert wide_rc == 0 and "raft" in wide.splitlines()[3] and "raft" not in lines[3], wide
    # Also when not a terminal (COLUMNS, as in a pipe): no wrapping.
    piped = hana("status", "--api", healthy.api(healthy.controller), columns=80)
    assert piped.returncode == 0 and max(len(x) for x in piped.stdout.splitlines()) <= 80, piped.stdout


def test_help_explains_the_columns_and_the_exit_codes() -> None:
    out = hana("status", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    explained = (
        "commit the last log index stored on a majority",
        "revision the state's change counter",
        "applied the last log index this member has applied",
        "unreachable (its API did not answer)",
        "Exit status: 0 when",
        "1 when a voter is unhealthy or behind",
        "2 when there is no controller",
    )
    for words in explained:
        assert words in text, words


def test_a_stopped_or_killed_voter_exits_1_and_shows_unreachable(healthy: Settled) -> None:
    c = healthy.c
    victim = healthy.followers()[0]
    asked = healthy.followers()[1]
    c.signal(victim, signal.SIGSTOP)
    try:
        out = wait_exit_code(c.nodes[asked].api, 1)
        table = rows(out.stdout, IDS)
        assert table[victim][1:4] == ["unreachable", "v", "down"], out.stdout
        assert table[asked][3] == "ok" and table[healthy.controller][3] == "ok", out.stdout
        assert "degraded" in out.stdout and "no answer within" in out.stdout
    finally:
        c.signal(victim, signal.SIGCONT)
    wait_exit_code(c.nodes[asked].api, 0)
    c.kill(victim)
    out = wait_exit_code(c.nodes[healthy.controller].api, 1)
    table = rows(out.stdout, IDS)
    assert table[victim][1] == "unreachable" and table[victim][3] == "down", out.stdout
    assert "connection refused" in out.stdout
    # --json prints the document as the API answers it, with the same exit status.
    as_json = hana("status", "--json", "--api", c.nodes[asked].api)
    assert as_json.returncode == 1 and '"commit_index"' in as_json.stdout


def test_a_stopped_controller_exits_1_from_a_follower(healthy: Settled) -> None:
    c = healthy.c
    asked = healthy.followers()[0]
    c.signal(healthy.controller, signal.SIGSTOP)
    try:
        out = wait_exit_code(c.nodes[asked].api, 1)
        assert rows(out.stdout, IDS)[healthy.controller][1] == "unreachable", out.stdout
    finally:
        c.signal(healthy.controller, signal.SIGCONT)


def test_no_controller_or_no_node_exits_2(healthy: Settled) -> None:
    c = healthy.c
    survivor, *others = IDS
    for nid in others:
        c.kill(nid)
    # The node that cannot be reached: 2, and a word on what to check.
    gone = hana("status", "--api", c.nodes[others[0]].api)
    assert gone.returncode == 2, gone.stdout + gone.stderr
    assert "no status from" in gone.stderr and "connection refused" in gone.stderr
    assert "Traceback" not in gone.stderr
    # Alone, the survivor loses (or never finds) its controller: 2.
    deadline = time.monotonic() + 20
    out = wait_exit_code(c.nodes[survivor].api, 2, timeout=deadline - time.monotonic())
    assert "no controller" in out.stdout, out.stdout
    table = rows(out.stdout, IDS)
    for nid in others:
        assert table[nid][1] == "unreachable", out.stdout


@pytest.mark.slow
def test_watch_redraws_in_place_and_keeps_going_when_members_die(healthy: Settled) -> None:
    c = healthy.c
    asked, other = healthy.followers()
    run = TerminalRun("status", "--watch", "--api", c.nodes[asked].api, columns=80)
    try:
        run.wait_for(r"healthy: a controller", timeout=15)
        # Redrawn in place: the cursor goes back up over the last frame.
        first = run.wait_for(r"refreshing every second", timeout=15)
        run.wait_for(r"refreshing every second", timeout=5, start=first.end())
        assert "\x1b[1A" in run.raw()  # cursor up: the next frame is drawn over the last
        mark = run.mark()
        c.kill(other)
        run.wait_for(rf"{other}\s+unreachable\s+v\s+down", timeout=15, start=mark)
        # The member asked dies too: another member's view, and a word on it.
        mark = run.mark()
        c.kill(asked)
        run.wait_for(rf"not answering: {re.escape(c.nodes[asked].api)}", timeout=15, start=mark)
        run.wait_for(rf"asked {healthy.controller}\b", timeout=15, start=mark)
        assert run.proc.poll() is None
        for line in run.text().splitlines():
            assert len(line) <= 80, line
    finally:
        rc = run.interrupt()
    assert rc == 130 and "Traceback" not in run.text()
