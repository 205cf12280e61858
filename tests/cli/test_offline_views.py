"""The CLI of a node cut off from its controller, over fabricated documents
(no processes): flags and their refusals, refusals explained in words,
tables within 80 columns, stale/pending on reads, `--confirm all`'s
members and exit status, the client's request shapes."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from typing import Any

import pytest
from rich.console import Console

from mesh import cli_offline as o
from mesh import cli_tables as t
from mesh.cli import build_parser, main
from mesh.client import ApiError, Freshness, is_queued, write_params


def draw(renderable: Any, width: int = 80) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(renderable)
    text = buf.getvalue()
    assert max(len(x) for x in text.splitlines()) <= width, text
    return text


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, timeout=30)


CONFLICT = {
    "id": "c-7",
    "key": "displays/left-wall",
    "component": "displays",
    "status": "open",
    "critical": True,
    "base_version": 2,
    "current": {"value": {"width": 1920}, "version": 3, "author": "ops", "time": 1_700_000_000_000},
    "proposed": {"value": {"width": 1280}, "author": "foh", "node": "n3", "time": "001700000000000.000001.n3"},
}


def test_parser_has_the_new_commands_and_write_flags() -> None:
    p = build_parser()
    a = p.parse_args(["conflicts", "resolve", "c-7", "--take", "value", "--value", '{"w": 1}'])
    assert (a.action, a.conflict_id, a.take, a.value) == ("resolve", "c-7", "value", '{"w": 1}')
    assert p.parse_args(["conflicts"]).action == "list"
    a = p.parse_args(["reset", "displays", "displays/a", "displays/b"])
    assert (a.component, a.keys) == ("displays", ["displays/a", "displays/b"])
    a = p.parse_args(["put", "k/a", "1", "--confirm", "all", "--offline", "queue"])
    assert (a.confirm, a.offline) == ("all", "queue")
    assert p.parse_args(["delete", "k/a", "--offline", "queue"]).offline == "queue"
    assert p.parse_args(["outbox", "--state", "conflict", "--json"]).state == "conflict"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["conflicts", "resolve", "c-1", "--take", "theirs"], "invalid choice: 'theirs'"),
        (["put", "k/a", "1", "--confirm", "some"], "invalid choice: 'some'"),
        (["put", "k/a", "1", "--offline", "drop"], "invalid choice: 'drop'"),
        (["conflicts", "resolve", "c-1"], "needs --take current, proposed or value"),
        (["conflicts", "resolve", "c-1", "--take", "value"], "--take value needs --value JSON"),
        (["conflicts", "resolve", "c-1", "--take", "current", "--value", "1"], "--value goes with --take value"),
        (["conflicts", "resolve", "c-1", "--take", "value", "--value", "{nope"], "--value is not JSON"),
        (["conflicts", "show"], "needs a conflict id"),
        (["conflicts", "list", "c-1"], "takes no id"),
        (["reset", "displays", "windows/w1"], "not in component 'displays'"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_error_and_send_nothing(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --api on a port nothing listens on: had anything been sent, the
    # error would be "cannot reach", not the flag's.
    try:
        code = main([*args, "--api", "127.0.0.1:9"])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err and "cannot reach" not in err, err


def test_the_cli_as_a_person_runs_it_exits_2_on_a_bad_flag() -> None:
    out = run_cli("conflicts", "resolve", "1", "--take", "theirs")
    assert out.returncode == 2 and "invalid choice: 'theirs'" in out.stderr, out


def ns(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**kw)


def test_refusals_are_explained_in_words() -> None:
    conf = ns(command="conflicts", conflict_id="c-9")
    assert "knows no conflict 'c-9'; nothing changed" in o.explain(conf, ApiError(404, "not_found", "x", {}))
    assert "already resolved; nothing changed" in o.explain(conf, ApiError(409, "conflict_resolved", "x", {}))
    bad = o.explain(conf, ApiError(400, "invalid_value", "width: must be >= 1", {}))
    assert "refused the resolution (invalid_value: width: must be >= 1); nothing changed" in bad
    put = ns(command="put", key="displays/a", offline=None)
    body = {"error": {"code": "version_conflict", "current": {"version": 4}}}
    assert "it is at version 4; nothing changed" in o.explain(put, ApiError(409, "version_conflict", "m", body))
    assert "--offline queue keeps it" in o.explain(put, ApiError(503, "no_leader", "m", {}))
    get = ns(command="get", key="displays/a")
    assert "--consistency local" in o.explain(get, ApiError(503, "no_leader", "m", {}))
    assert "no component 'nope'" in o.explain(ns(command="reset", component="nope"), ApiError(404, "x", "m", {}))


def test_conflicts_table_marks_critical_ones_first_within_80_columns() -> None:
    calm = {**CONFLICT, "id": "c-1", "critical": False, "key": "windows/" + "w" * 70, "component": "windows"}
    done = {**CONFLICT, "id": "c-0", "status": "resolved"}
    text = draw(t.conflicts_table({"conflicts": [calm, done, CONFLICT]}))
    lines = [x for x in text.splitlines() if x.strip()]
    assert lines[1].startswith("!c-7"), text  # critical and open first; then c-1; resolved last
    assert "2 open (1 critical, marked !)" in text
    assert "no open conflicts" in draw(t.conflicts_table({"conflicts": []}))
    assert "stale" in draw(t.conflicts_table({"conflicts": [CONFLICT], "stale": True}))


def test_conflict_view_shows_both_sides_and_how_to_resolve() -> None:
    text = draw(o.conflict_view(CONFLICT))
    assert "conflict c-7 on displays/left-wall" in text and "critical" in text
    assert '"width": 1920' in text and '"width": 1280' in text
    assert "hana-node conflicts resolve c-7 --take current" in text
    assert "resolve:" not in draw(o.conflict_view({**CONFLICT, "status": "resolved"}))


def test_outbox_table_says_every_fate_within_80_columns() -> None:
    items = [
        {"id": "n3.1", "key": "parameters/a", "op": "put", "state": "applied", "made": "001700000000000.000000.n3",
         "base_version": 1, "result": {"key": "parameters/a", "version": 2, "revision": 40}},
        {"id": "n3.2", "key": "parameters/b", "op": "put", "state": "superseded", "made": 1_700_000_000_000,
         "base_version": 1, "result": {"superseded": True, "current": {"version": 5}}},
        {"id": "n3.3", "key": "displays/a", "op": "put", "state": "conflict", "made": None, "base_version": 2,
         "result": {"conflict": "c-7"}},
        {"id": "n3.4", "key": "displays/b", "op": "put", "state": "rejected", "made": None, "base_version": 0,
         "result": {"error": {"code": "invalid_value", "message": "width: must be an integer"}}},
        {"id": "n3.5", "keys": ["windows/a", "windows/b"], "op": "txn", "state": "queued", "made": None,
         "base_versions": [0, 1]},
    ]  # fmt: skip
    text = draw(o.outbox_table({"items": items}))
    for want in ("revision 40", "later edit won (v5)", "conflict c-7", "invalid_value", "windows/a, windows/b"):
        assert want in text, (want, text)
    assert "5 item(s), 1 not final yet" in text
    assert "hears no controller" in draw(o.outbox_table({"items": items, "connected": False}))
    assert "outbox is empty" in draw(o.outbox_table({"items": []}))


def test_reads_show_stale_and_pending() -> None:
    doc = {"key": "displays/a", "value": 1, "version": 2, "mod_revision": 9, "create_revision": 3, "revision": 9,
           "stale": True, "controller_contact_ms": 4200, "pending": True}  # fmt: skip
    text = draw(t.key_view(doc))
    assert "pending: a write queued on this node" in text and "last heard a controller 4.2 s ago" in text
    assert "stale" not in draw(t.key_view({**doc, "stale": False, "pending": False}))
    listing = {"revision": 9, "stale": True, "items": [{**doc, "key": "displays/a"}, {**doc, "pending": False}]}
    text = draw(t.keys_table(listing))
    assert "2*" in text and "*: pending" in text and "stale" in text
    f = Freshness.of(doc)
    assert (f.stale, f.pending, f.controller_contact_ms, f.fresh) == (True, True, 4200, False)
    assert Freshness.of({"stale": False, "controller_contact_ms": None}).fresh


def test_confirm_all_names_the_displays_and_exits_3_when_one_is_missing() -> None:
    every = {"key": "scenes/s", "version": 2, "revision": 30, "applied_by": ["n1", "n2", "n3"], "missing": []}
    text = draw(o.write_line("put", every))
    assert "applied by 3: n1, n2, n3" in text and "every member has it" in text
    assert o.confirm_exit(every) == 0
    some = {**every, "applied_by": ["n1", "n2"], "missing": ["n3"]}
    assert "missing 1: n3" in draw(o.write_line("put", some))
    assert o.confirm_exit(some) == o.EXIT_NOT_EVERYWHERE == 3
    queued = {"queued": "n3.17", "key": "displays/a", "base_version": 2, "outbox": 3}
    text = draw(o.write_line("put", queued))
    assert is_queued(queued) and "queued as n3.17" in text and "hana-node outbox" in text
    assert o.confirm_exit(queued) == 3  # no display has it yet
    assert "version 2 at revision 30" in draw(o.write_line("put", {"key": "scenes/s", "version": 2, "revision": 30}))


def test_client_request_shapes() -> None:
    assert write_params(None, None) is None
    assert write_params("all", "queue") == {"confirm": "all", "offline": "queue"}
    with pytest.raises(ValueError, match="confirm"):
        write_params("some", None)
    with pytest.raises(ValueError, match="offline"):
        write_params(None, "later")


def test_watch_notices_of_fates_and_conflicts_read_as_sentences() -> None:
    fate = {"type": "outbox", "id": "n3.4", "key": "displays/a", "state": "conflict", "result": {"conflict": 7}}
    assert o.notice_line(fate) == "queued write n3.4 (displays/a): conflict - conflict 7"
    opened = {"type": "conflict", "id": 7, "key": "displays/a", "status": "open", "critical": True}
    assert o.notice_line(opened) == "critical conflict 7 opened on displays/a: hana-node conflicts show 7"
    assert o.notice_line({**opened, "status": "resolved", "critical": False}) == "conflict 7 on displays/a: resolved"
