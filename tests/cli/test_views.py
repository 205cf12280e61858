"""The judging and drawing of `status` and the tables, over fabricated
documents (no processes): verdicts and exit codes, 80 columns whatever the
ids and addresses, human times, one line per watched change, --token-file
on every command that talks to a node."""

from __future__ import annotations

import argparse
import io
import time
from typing import Any

import pytest
from rich.console import Console

from mesh import cli_tables as t
from mesh.cli import build_parser
from mesh.status_view import assess, render_status


def member(nid: str, **kw: Any) -> dict[str, Any]:
    base = {
        "id": nid,
        "raft": f"10.0.0.{len(nid)}:7071",
        "api": f"10.0.0.{len(nid)}:7070",
        "voter": True,
        "role": "follower",
        "match_index": None,
        "last_contact_ms": 5.0,
        "found": "mdns",
    }
    return {**base, **kw}


def status(nid: str, leader: str | None, ids: list[str], applied: int = 100, **kw: Any) -> dict[str, Any]:
    return {
        "id": nid,
        "cluster": "hana",
        "role": "leader" if nid == leader else "follower",
        "term": 3,
        "leader": leader,
        "commit_index": applied,
        "applied_index": applied,
        "revision": 40,
        "members": [member(i, role="leader" if i == leader else "follower") for i in ids],
        **kw,
    }


def controller_view(leader: str, ids: list[str], **per: dict[str, Any]) -> dict[str, Any]:
    members = []
    for i in ids:
        m = {**member(i), "lag": 0, "healthy": True, "last_contact_ms": 0.0 if i == leader else 20.0}
        m.update(per.get(i, {}))
        members.append(m)
    return {"id": leader, "cluster": "hana", "leader": leader, "term": 3, "members": members, "discovered": []}


IDS = ["a", "b", "c"]


def test_healthy_from_a_follower_takes_health_from_the_controller() -> None:
    views = {i: status(i, "a", IDS) for i in ("a", "c")}
    report = assess(status("b", "a", IDS), views, controller_view("a", IDS))
    assert report.code == 0 and [r.health for r in report.rows] == ["ok", "ok", "ok"]
    rows = {r.id: r for r in report.rows}
    assert rows["c"].contact_ms == 20.0 and rows["a"].contact_ms == 5.0  # the leader's: as b hears it
    assert "as the controller a sees it" in report.health_source


def test_an_unreachable_voter_is_down_not_a_follower_and_exits_1() -> None:
    views = {"a": status("a", "a", IDS), "c": "connection refused"}
    cv = controller_view("a", IDS, c={"healthy": False, "last_contact_ms": 4000.0})
    report = assess(status("b", "a", IDS), views, cv)
    c = next(r for r in report.rows if r.id == "c")
    assert (c.role, c.health, c.why) == ("unreachable", "down", "connection refused")
    assert report.code == 1 and "c down" in report.verdict


def test_behind_cut_off_and_learners() -> None:
    ids = ["a", "b", "c", "d"]
    views = {i: status(i, "a", ids) for i in ("b", "c", "d")}
    doc = status("a", "a", ids)
    doc["members"][3]["voter"] = False
    cv = controller_view(
        "a",
        ids,
        b={"healthy": False, "lag": 900},
        c={"healthy": False, "last_contact_ms": None},
        d={"healthy": False, "last_contact_ms": 9000.0},
    )
    report = assess(doc, views, cv)
    health = {r.id: r.health for r in report.rows}
    assert health == {"a": "ok", "b": "behind", "c": "cut off", "d": "cut off"}
    assert report.code == 1 and report.verdict == "degraded: b behind, c cut off"  # a learner does not count


def test_no_controller_exits_2_and_without_the_controllers_view_health_comes_from_each_member() -> None:
    report = assess(status("a", None, IDS), {"b": status("b", None, IDS), "c": None}, None)
    assert report.code == 2 and "no controller" in report.verdict
    assert [r.health for r in report.rows] == ["no ctrl", "no ctrl", "?"]
    # The controller did not answer: lag from the members' own positions.
    views = {"a": "no answer within 1 s", "c": status("c", "a", IDS, applied=10)}
    report = assess(status("b", "a", IDS, applied=400), views, None)
    assert {r.id: r.health for r in report.rows} == {"a": "down", "b": "ok", "c": "behind"}
    assert report.code == 1
    # A node that says it is cut off from its controller has none.
    assert assess(status("b", "a", IDS, connected=False), {}, None).code == 2


def test_members_whose_api_is_on_their_own_machines_loopback_are_not_asked() -> None:
    from mesh.cli_status import elsewhere_on_loopback
    from mesh.status_view import NotAsked

    assert elsewhere_on_loopback({"api": "127.0.0.1:7070", "raft": "10.0.0.2:7071"})
    assert elsewhere_on_loopback({"api": "localhost:7070", "raft": "wall-2.local:7071"})
    assert not elsewhere_on_loopback({"api": "127.0.0.1:7070", "raft": "127.0.0.1:7071"})
    assert not elsewhere_on_loopback({"api": "10.0.0.2:7070", "raft": "10.0.0.2:7071"})
    far = {i: NotAsked("its API (127.0.0.1:7070) listens on its own machine's loopback") for i in IDS}
    # Asked on a follower: unknown from here, and said so (exit 1: not known healthy).
    report = assess(status("b", "a", IDS), far, None)
    assert [r.health for r in report.rows] == ["?", "ok", "?"] and report.code == 1
    assert "a, c unknown from here" in report.verdict
    assert {r.role for r in report.rows} == {"leader", "follower"}  # not "unreachable"
    # Asked on the controller: its own view of everyone's health.
    report = assess(status("a", "a", IDS), far, controller_view("a", IDS))
    assert report.code == 0


def draw(renderable: Any, width: int) -> list[str]:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(renderable)
    return buf.getvalue().splitlines()


@pytest.mark.parametrize("width", [80, 200])
def test_status_fits_the_width_with_long_ids_and_addresses(width: int) -> None:
    ids = ["display-machine-left-wall-01", "b", "fohcontroller"]
    doc = status("b", "b", ids)
    for m in doc["members"]:
        m["api"] = "[fd00:1234:5678:9abc::1]:7070"
    views = {ids[0]: "no answer within 1 s", ids[2]: status(ids[2], "b", ids)}
    lines = draw(render_status(assess(doc, views, controller_view("b", ids)), width), width)
    assert max(len(x) for x in lines) <= width
    assert any(x.startswith("display-machine") or x.startswith("display-mach") for x in lines), lines
    assert ("raft" in lines[3]) == (width >= 110)


def test_human_times_and_durations() -> None:
    now = time.time()
    assert t.human_time(int(now * 1000), now) == time.strftime("%H:%M:%S", time.localtime(now))
    assert t.human_time(1_700_000_000_000, now) == time.strftime("%Y-%m-%d %H:%M", time.localtime(1_700_000_000))
    assert t.human_time(0) == "-" and t.human_time(None) == "-"
    assert [t.human_duration_ms(x) for x in (0.4, 12.3, 3200, 240_000, None)] == [
        "<1 ms",
        "12 ms",
        "3.2 s",
        "4 min",
        "-",
    ]


def test_watch_line_is_one_line_and_fits_a_terminal() -> None:
    rec = {
        "revision": 12,
        "key": "displays/a",
        "op": "put",
        "value": {"text": "x\ny" * 100},
        "author": "ops",
        "node": "n2",
        "time": int(time.time() * 1000),
    }
    line = t.watch_line(rec)
    assert "\n" not in line and line.startswith("#12 ") and line.endswith("  by ops@n2")
    cut = t.watch_line(rec, width=80)
    assert len(cut) <= 80 and cut.endswith("…  by ops@n2")
    assert t.watch_line({**rec, "op": "delete", "value": None}).split()[2:4] == ["delete", "displays/a"]


def test_tables_render_every_document_shape_within_80_columns() -> None:
    history = {
        "revision": 3,
        "oldest": 1,
        "records": [
            {
                "revision": 3,
                "key": "displays/" + "x" * 90,
                "op": "put",
                "value": {"w": list(range(50))},
                "prev_value": None,
                "author": "admin",
                "node": "n1",
                "time": 1_700_000_000_000,
            }
        ],
    }
    audit = {
        "revision": 3,
        "oldest": 0,
        "entries": [
            {
                "seq": 1,
                "revision": 0,
                "op": "membership",
                "author": "",
                "role": "",
                "node": "",
                "time": 0,
                "hlc": "",
                "change": "bootstrap",
                "voters": ["n1", "n2"],
            }
        ],
    }
    conflicts = {
        "conflicts": [
            {
                "id": "c1",
                "key": "displays/a",
                "component": "displays",
                "status": "open",
                "base_version": 2,
                "current": {"value": {"w": 1}, "version": 3, "author": "ops", "time": 1},
                "proposed": {"value": {"w": 2}, "author": "foh", "node": "n2", "time": 1_700_000_000_000},
            }
        ]
    }
    for renderable in (
        t.history_table(history),
        t.audit_table(audit),
        t.saves_table(
            [
                {
                    "name": "s",
                    "revision": 1,
                    "created": 1,
                    "author": "a",
                    "node": "n",
                    "auto": True,
                    "bytes": 5000,
                    "keys": 3,
                }
            ]
        ),
        t.keys_table(
            {"revision": 1, "items": [{"key": "k/" * 50, "value": "v" * 300, "version": 1, "mod_revision": 1}]}
        ),
        t.members_table(
            {
                "id": "n2",
                "leader": "n1",
                "leader_api": "127.0.0.1:1",
                "members": [member("n1")],
                "discovered": [{"id": "n9", "raft": "x:1", "api": None, "found": "mdns", "state": "seen"}],
            }
        ),
        t.conflicts_table(conflicts),
    ):
        lines = draw(renderable, 80)
        assert lines and max(len(x) for x in lines) <= 80, lines
    assert t.conflicts_table({"conflicts": []}) is not None


def test_every_command_that_talks_to_a_node_takes_a_token_file_and_json() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    talking = [n for n in sub.choices if n not in ("serve", "demo", "init")]  # type: ignore[attr-defined]  (init: local files only)
    assert {"audit", "keys", "saves", "status", "watch", "history", "members"} <= set(talking)
    for name in talking:
        # `live` and `osc` have commands of their own (live set, osc monitor…): each of those.
        command = sub.choices[name]  # type: ignore[attr-defined]
        nested = next((a for a in command._actions if isinstance(a, argparse._SubParsersAction)), None)
        for leaf, p in [(name, command)] if nested is None else [(f"{name} {n}", p) for n, p in nested.choices.items()]:
            flags = {o for a in p._actions for o in a.option_strings}
            assert {"--token-file", "--token", "--api"} <= flags, leaf
            if name != "export":  # writes a file, prints no record
                assert "--json" in flags, leaf
    args = parser.parse_args(["saves", "delete", "old", "--token-file", "/f"])
    assert (args.action, args.name, args.token_file) == ("delete", "old", "/f")
    assert parser.parse_args(["saves"]).action == "list"
