"""Regression tests for issue 12 (hardening), the state machine's part:
findings 1, 3 (compact), 5, 7 and 12. Each fails on the code before the fix."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.state import savefile
from mesh.state.commands import Save
from mesh.state.kv import CommandError, Compacted
from mesh.state.limits import MAX_COMMAND_BYTES, MAX_DEPTH, MAX_VALUE_BYTES
from mesh.state.model import ERROR_STATUS, HanaState, StateError
from mesh.state.values import _canonical_iterative, canonical, check_value, json_depth
from tests.state.helpers import Driver, cmd, state_of, values

T0 = 1_714_564_800_000


def deep(n: int, leaf: Any = 1) -> Any:
    """A value nested n containers deep (lists and objects alternating)."""
    v = leaf
    for i in range(n):
        v = [v] if i % 2 else {"k": v}
    return v


def deep_text(n: int) -> str:
    return "[" * n + "]" * n


def save_file(components: dict[str, dict[str, Any]], name: str = "f", sha: str | None = None) -> str:
    doc: dict[str, Any] = {
        "format": "hana-save",
        "schema_version": 2,
        "name": name,
        "cluster": "hana",
        "revision": 1,
        "created": 1,
        "components": components,
    }
    doc["sha256"] = sha if sha is not None else savefile.checksum(doc)
    return savefile.canonical(doc).decode()


def round_trips(hs: HanaState) -> bytes:
    blob = hs.snapshot()
    other = hs._blank()  # the same configuration
    other.restore(blob)
    assert other.snapshot() == blob
    return blob


# -- finding 1: one value kills every node ------------------------------------------------------


@pytest.mark.parametrize("depth", [65, 100, 200, 251, 252, 253, 254, 255, 300, 1023])
def test_finding_01_deep_value_rejected_everywhere(depth: int) -> None:
    """Finding 1: a value nested ~252-300 deep was committed, then every
    snapshot failed on every node; 254-1023 gave 500s. Now every way in (put,
    txn, save import with or without a valid checksum, prevalidate) refuses
    it with too_deep (400), nothing changes, and the state still snapshots."""
    d = Driver()
    d("put", key="parameters/ok", value=deep(MAX_DEPTH))  # the limit itself is fine
    d("save", name="base")
    before = state_of(d.hs)
    value = orjson.loads(deep_text(depth))  # what orjson.loads hands over (it reads up to 1024)
    file_ok = save_file({"parameters": {"parameters/x": value}}) if depth <= 250 else None
    file_bad_sum = (
        '{"format":"hana-save","schema_version":2,"sha256":"0","components":{"parameters":{"parameters/x":'
        + deep_text(depth)
        + "}}}"
    )
    commands: list[dict[str, Any]] = [
        {"op": "put", "key": "parameters/x", "value": value},
        {
            "op": "txn",
            "ops": [
                {"op": "put", "key": "parameters/y", "value": 1},
                {"op": "put", "key": "parameters/x", "value": value},
            ],
        },
        {"op": "import_save", "file": file_bad_sum, "name": "bad", "role": "admin"},
    ]
    if file_ok is not None:
        commands.append({"op": "import_save", "file": file_ok, "name": "deep", "role": "admin"})
    # The very bytes a client could have sent, straight into the log.
    raw = b'{"op":"put","key":"parameters/x","value":' + deep_text(depth).encode() + b"}"
    assert d.hs.apply(10_000, raw).get("error", {}).get("code") == "too_deep"
    for command in commands:
        # A file nested past 1024 levels is not even JSON to orjson.
        code = "invalid_save" if command["op"] == "import_save" and depth + 3 > 1024 else "too_deep"
        if depth <= 250:  # the deepest a command can be and still be encoded by the API
            res = d(**dict(command))
            assert res.get("error", {}).get("code") == code, res
        with pytest.raises(StateError) as exc:
            d.hs.prevalidate(command)
        assert exc.value.code == code and ERROR_STATUS[code] == 400
    after = state_of(d.hs)
    after.pop("requests"), before.pop("requests")
    assert after == before
    round_trips(d.hs)


def test_value_check_is_iterative_and_exact() -> None:
    """The depth check itself cannot blow the stack, and it counts exactly
    (a scalar is 0 deep, [] is 1). A unit test of the fix, not a regression test."""
    assert json_depth(1) == 0 and json_depth([]) == 1 and json_depth({"a": [1]}) == 2
    assert json_depth(deep(100_000)) == 100_000  # no RecursionError
    assert check_value(deep(MAX_DEPTH)) > 0
    for bad in (deep(MAX_DEPTH + 1), deep(100_000)):
        with pytest.raises(CommandError) as exc:
            check_value(bad)
        assert exc.value.code == "too_deep"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (math.nan, "invalid_value"),
        (math.inf, "invalid_value"),
        (1 << 64, "invalid_value"),
        (-(1 << 63) - 1, "invalid_value"),
        ({1: "non-string key"}, "invalid_value"),
        ((1, 2), "invalid_value"),
        ({"s": {1, 2}}, "invalid_value"),
        ("x" * (MAX_VALUE_BYTES + 1), "too_large"),
        ("lone \ud800 surrogate", "invalid_value"),
        ({"\udfff": 1}, "invalid_value"),
    ],
)
def test_finding_01_what_orjson_would_refuse_or_change_is_refused(value: Any, code: str) -> None:
    """Finding 1: nothing that orjson cannot write back (or would write as
    something else: NaN as null) may enter the state, from any caller."""
    hs = HanaState()
    with pytest.raises(StateError) as exc:
        hs.prevalidate({"op": "put", "key": "parameters/p", "value": value})
    assert exc.value.code == code


def test_what_orjson_loads_gives_is_writable_once_bounded() -> None:
    """What orjson.loads gives is always writable once the depth is bounded
    (documents orjson 3.x, which the fix relies on): lone surrogates, invalid UTF-8 and 1e400 never parse, huge
    integers become floats, the largest 64-bit integers stay integers."""
    for text in (b'"\\ud800"', b'"\\udfff"', b'"\xff"', b"1e400", b"NaN", b"Infinity"):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(text)
    d = Driver()
    for text in (b"18446744073709551615", b"-9223372036854775808", b"18446744073709551616", b"1" + b"0" * 300):
        res = d.hs.apply(1, b'{"op":"put","key":"parameters/n","value":' + text + b"}")
        assert "error" not in res, res
    assert isinstance(d.hs.get("parameters/n").value, float)  # type: ignore[union-attr]
    round_trips(d.hs)


def test_finding_01_too_large_value_and_command() -> None:
    """Finding 1: one key's value is at most 1 MiB (413 too_large); an entry
    over MAX_COMMAND_BYTES is refused before it is even parsed."""
    hs = HanaState()
    big = "x" * MAX_VALUE_BYTES
    assert hs.apply(1, cmd(op="put", key="parameters/big", value=big))["error"]["code"] == "too_large"
    assert ERROR_STATUS["too_large"] == 413
    assert "error" not in hs.apply(2, cmd(op="put", key="parameters/big", value=big[:-10]))
    huge = b'{"op":"put","key":"parameters/p","value":1' + b" " * MAX_COMMAND_BYTES + b"}"
    assert hs.apply(3, huge)["error"]["code"] == "too_large"


def test_finding_01_snapshot_never_raises_on_a_legacy_deep_value() -> None:
    """Finding 1: a value stored before the limit existed (a version-1
    snapshot may hold one 251 deep) is copied deeper by a save, an undo or a
    conflict; snapshot() still encodes (falling back to an iterative encoder
    with the same bytes) and round-trips."""
    old = HanaState()
    old.apply(1, cmd(op="put", key="parameters/deep", value=1, time=T0))
    doc = orjson.loads(old.snapshot())
    doc["data"]["parameters/deep"][0] = deep(250)
    doc["history"] = []
    doc["version"] = 1
    doc["audit_floor"] = 0
    doc["audit"] = []
    legacy = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)  # what an old node could write
    hs = HanaState()
    hs.restore(legacy)
    assert "error" not in hs.apply(2, cmd(op="save", name="keep", time=T0 + 1))  # +6 levels: past orjson's 254
    assert "error" not in hs.apply(3, cmd(op="put", key="parameters/deep", value=2, time=T0 + 2))  # undo stack
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps([hs.saves_store])  # the snapshot nests it one level deeper still
    blob = round_trips(hs)
    assert orjson.loads(blob)["saves"]["keep"]["data"]["parameters"]["parameters/deep"] == deep(250)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(1 << 63), (1 << 64) - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
        max_leaves=30,
    )
)
def test_fallback_encoder_gives_orjsons_bytes(doc: Any) -> None:
    """The fallback encoder writes exactly what orjson writes (sorted keys,
    compact), so which one encoded a snapshot never shows."""
    assert _canonical_iterative(doc) == orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) == canonical(doc)


def test_finding_01_hostile_entries_never_raise_and_change_nothing() -> None:
    """Finding 1 / "nothing in the log can crash a node": entries that made
    the old apply raise (a repr() of a 900-deep name recursed; a deep save
    file broke the checksum's encoder) are rejected like any bad command."""
    d = Driver()
    d("put", key="parameters/a", value=1)
    d("save", name="s")
    before = state_of(d.hs)
    nested = deep_text(900)
    entries = [
        b'{"op":"delete_save","role":"admin","name":' + nested.encode() + b"}",
        b'{"op":"restore","role":"admin","name":' + nested.encode() + b"}",
        b'{"op":"undo","stack":' + nested.encode() + b"}",
        b'{"op":"resolve","id":' + nested.encode() + b',"take":"ours"}',
        b'{"op":"import_save","role":"admin","file":"' + b"[" * 600 + b"]" * 600 + b'"}',
        b'{"op":"import_save","role":"admin","doc":{"format":"hana-save","schema_version":2,"x":'
        + nested.encode()
        + b"}}",
        b'{"op":"put","key":' + nested.encode() + b',"value":1}',
        b'{"op":"put","key":"parameters/a","value":1,"hlc":"\xd9\xa3.0.n"}',
        b'{"op":"put","key":"parameters/a","value":1,"hlc":"' + b"9" * 5000 + b'.0.n"}',
        b'{"op":"put","key":"parameters/a","value":1,"rid":' + nested.encode() + b"}",
        b"\xff\xfe\x00garbage",
        b'{"op":"put","key":"parameters/\xed\xa0\x80","value":1}',  # an encoded lone surrogate
        b"[" * 2000 + b"]" * 2000,
        b'"just a string"',
        b"",
    ]
    for i, raw in enumerate(entries):
        res = d.hs.apply(100 + i, raw)
        assert "error" in res and res["error"]["code"] != "apply_failed", (i, res)
        assert len(res["error"]["message"]) <= 400
    after = state_of(d.hs)
    assert after == before


def test_apply_failed_is_a_deterministic_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in an op (here: planted) becomes the same apply_failed result
    on every node, never an exception out of apply."""

    def boom(self: HanaState, body: Any, meta: Any) -> dict[str, Any]:
        raise ZeroDivisionError("planted")

    monkeypatch.setitem(HanaState._handlers, Save, boom)
    results = []
    for _ in range(2):
        hs = HanaState()
        results.append((hs.apply(1, cmd(op="save", name="x")), hs.snapshot()))
    assert results[0] == results[1]
    assert results[0][0] == {"error": {"code": "apply_failed", "message": "ZeroDivisionError: planted"}}
    assert ERROR_STATUS["apply_failed"] == 500


# -- finding 3 (state part): compact is an admin action -------------------------------------


def test_finding_03_compact_needs_the_admin_role() -> None:
    """Finding 3: a forged `compact` wiped the history. The state machine
    now refuses compact without the admin role (403 forbidden)."""
    d = Driver()
    for i in range(5):
        d("put", key="parameters/p", value=i)
    for role in (None, "operator", "reader"):
        fields = {"revision": 5} if role is None else {"revision": 5, "role": role}
        assert d("compact", **fields)["error"]["code"] == "forbidden"
        with pytest.raises(StateError) as exc:
            d.hs.prevalidate({"op": "compact", **fields})
        assert exc.value.code == "forbidden" and ERROR_STATUS["forbidden"] == 403
    assert [r["revision"] for r in d.hs.history_query()["records"]] == [1, 2, 3, 4, 5]
    assert d("compact", revision=5, role="admin")["oldest"] == 5


# -- finding 5: undoing a restore is a restore ------------------------------------------


def test_finding_05_operator_cannot_undo_or_redo_an_admins_restore() -> None:
    """Finding 5: an operator could undo (and redo) an admin's restore, a
    restore without admin rights. Now: forbidden (403), nothing changes;
    the admin can; restore, import and delete_save need admin too."""
    d = Driver()
    d("put", author="admin", key="parameters/p", value=1)
    d("save", author="admin", name="show")
    d("put", author="admin", key="parameters/p", value=2)
    assert d("restore", author="admin", name="show")["error"]["code"] == "forbidden"  # no role: operator
    assert d("restore", author="admin", role="admin", name="show")["changed"] == 1
    before = state_of(d.hs)
    for role in (None, "operator"):
        extra = {} if role is None else {"role": role}
        res = d("undo", author="eve", stack="admin", **extra)
        assert res["error"]["code"] == "forbidden" and res["error"]["group"]["op"] == "restore"
        assert d("undo", author="eve", stack="admin", force=True, **extra)["error"]["code"] == "forbidden"
    assert state_of(d.hs) == before
    assert d("undo", author="root", role="admin", stack="admin")["undone"]["op"] == "restore"
    assert values(d.hs) == {"parameters/p": 2}
    assert d("redo", author="eve", stack="admin")["error"]["code"] == "forbidden"
    assert values(d.hs) == {"parameters/p": 2}
    assert "redone" in d("redo", author="root", role="admin", stack="admin")
    # An operator's own writes stay theirs to undo; a reader changes nothing.
    d("put", author="eve", key="parameters/q", value=1)
    assert d("undo", author="eve", role="reader")["error"]["code"] == "forbidden"
    assert "undone" in d("undo", author="eve")
    for op, fields in (
        ("delete_save", {"name": "show"}),
        ("import_save", {"file": d.hs.export_save("show").decode(), "name": "copy"}),
    ):
        assert d(op, **fields)["error"]["code"] == "forbidden"
        assert "error" not in d(op, role="admin", **fields)
    assert d("put", key="parameters/r", value=1, role="sudo")["error"]["code"] == "invalid_command"


# -- finding 7: imports validated before the log; the logged command about the file's size ----------


def test_finding_07_bad_import_is_refused_before_the_log() -> None:
    """Finding 7: bad-checksum imports went through the log (33 MB on every
    node). prevalidate (what the API runs before proposing) now refuses
    them, with the code apply would give."""
    hs = HanaState()
    good = save_file({"parameters": {"parameters/a": 1}})
    cases = {
        "checksum_mismatch": save_file({"parameters": {"parameters/a": 1}}, sha="0" * 64),
        "invalid_save": "\x01" * 1000,
        "unknown_component": save_file({"lights": {"lights/a": 1}}),
        "invalid_value": save_file({"displays": {"displays/a": {"width": "wide"}}}),
        "too_large": save_file({"parameters": {"parameters/a": "x" * MAX_VALUE_BYTES}}),
    }
    for code, text in cases.items():
        command = {"op": "import_save", "file": text, "name": "x", "role": "admin"}
        with pytest.raises(StateError) as exc:
            hs.prevalidate(command)
        assert exc.value.code == code, (code, exc.value)
        assert hs.apply(1, orjson.dumps(command))["error"]["code"] == code
    hs.prevalidate({"op": "import_save", "file": good, "name": "x", "role": "admin"})


def test_finding_07_logged_import_is_about_the_size_of_the_file() -> None:
    """Finding 7: a 9 MiB import became a 72 MiB peer frame: the file's text
    was escaped into the command (a control character becomes 6 bytes),
    then base64'd. Invalid text is now refused before the log, and
    `prepare` logs a valid file parsed (`doc`), not as an escaped string,
    which applies exactly as the text does."""
    quotes = {f"parameters/q{i}": '"\\' * 2000 for i in range(200)}  # the worst case for escaping
    text = save_file({"parameters": quotes}, name="big")
    command = {"op": "import_save", "file": text, "name": None, "role": "admin"}
    as_text = orjson.dumps(command)
    assert len(as_text) > 1.9 * len(text)  # why: every quote and backslash doubles
    hs = HanaState()
    prepared = hs.prepare(dict(command))
    assert "file" not in prepared and isinstance(prepared["doc"], dict)
    logged = orjson.dumps(prepared)
    assert len(logged) < len(text) + 200
    a, b = HanaState(), HanaState()
    assert a.apply(1, as_text) == b.apply(1, logged)
    assert a.snapshot() == b.snapshot()
    # Raw control characters (not JSON) are refused up front; so is what
    # would be too large to log (here: 9 MiB of them, 54 MiB escaped).
    with pytest.raises(StateError) as exc:
        hs.prepare({"op": "import_save", "file": "\x01" * 9000, "role": "admin"})
    assert exc.value.code == "invalid_save"
    with pytest.raises(StateError) as exc:
        hs.prevalidate({"op": "import_save", "file": "\x01" * (9 << 20), "role": "admin"})
    assert exc.value.code == "too_large"
    # A file that fits the log only once parsed: prevalidate (as given) says
    # too large, prepare (what to propose) takes it.
    doubled = save_file({"parameters": {f"parameters/q{i}": [""] * 22_000 for i in range(170)}}, name="q")
    assert len(doubled) < MAX_COMMAND_BYTES < 2 * len(doubled)
    as_given = {"op": "import_save", "file": doubled, "role": "admin"}
    with pytest.raises(StateError) as exc:
        hs.prevalidate(as_given)
    assert exc.value.code == "too_large"
    assert len(orjson.dumps(hs.prepare(as_given))) < MAX_COMMAND_BYTES


# -- finding 12: audit kept apart, membership and failed logins ---------------------------------


def test_finding_12_routine_writes_never_push_the_audit_out() -> None:
    """Finding 12: 10,050 routine writes pushed every earlier audit record
    out and GET /v1/audit answered 410. Routine writes are in the history
    only now; a restore and a failed login stay in the audit."""
    d = Driver()
    d("save", name="s")
    d("security_event", author="unknown", event="login_failed", address="10.0.0.9", count=3, path="/v1/kv/x")
    for i in range(10_050):
        d("put", key=f"parameters/p{i % 7}", value=i)
    entries = d.hs.audit(since=0)["entries"]
    assert [e["op"] for e in entries] == ["save", "security_event"]
    ev = entries[1]
    assert (ev["event"], ev["address"], ev["count"], ev["path"], ev["author"]) == (
        "login_failed",
        "10.0.0.9",
        3,
        "/v1/kv/x",
        "unknown",
    )
    assert ev["revision"] == 0 and d.hs.revision == 10_050  # a security event changes no revision
    with pytest.raises(Compacted):
        d.hs.history_query(since=1)
    round_trips(d.hs)


def test_finding_12_audit_retention_by_count_and_by_age_from_command_times() -> None:
    """Finding 12: retention by count and by age, measured with the times
    in the commands (never a clock), identical after a snapshot."""
    day = 24 * 3600 * 1000
    d = Driver(HanaState(audit_limit=5, audit_max_age_ms=10 * day), start=T0)

    def at(t: int) -> dict[str, Any]:  # a command as a controller stamps it
        return {"time": t, "hlc": f"{t:015d}.000000.n1"}

    for i in range(3):
        d("security_event", event="login_failed", address=f"a{i}", count=1, **at(T0 + i * day))
    assert len(d.hs.audit()["entries"]) == 3
    # Neither a node whose clock is far ahead (the controller's stamp bounds
    # it) nor a command without a controller's stamp ages the trail out.
    d("put", key="parameters/p", value=1, time=T0 + 400 * day, hlc=f"{T0 + 3 * day:015d}.000000.n1")
    d("put", key="parameters/p", value=2, time=T0 + 500 * day)
    d("security_event", event="login_failed", address="a3", count=1, **at(T0 + 3 * day))
    assert len(d.hs.audit()["entries"]) == 4
    # Eleven days on (by the log), the first two are gone. The trail's
    # floor is the oldest revision held; seq shows what was dropped.
    d("security_event", event="login_failed", address="late", count=1, **at(T0 + 11 * day + 1))
    kept = d.hs.audit(since=0)["entries"]
    assert [(e["address"], e["seq"], e["revision"]) for e in kept] == [("a2", 3, 0), ("a3", 4, 2), ("late", 5, 2)]
    # By count: five entries at most, all of revision 2 here.
    for i in range(6):
        d("save", name=f"s{i}", **at(T0 + 11 * day + 2 + i))
    assert [e["name"] for e in d.hs.audit(since=2)["entries"]] == ["s1", "s2", "s3", "s4", "s5"]
    with pytest.raises(Compacted):
        d.hs.audit(since=1)
    blob = round_trips(d.hs)
    other = HanaState(audit_limit=5, audit_max_age_ms=10 * day)
    other.restore(blob)
    assert other.audit(since=2) == d.hs.audit(since=2)


def test_finding_12_security_event_is_validated() -> None:
    """Finding 12: the security_event op records one audit entry and
    refuses malformed ones (bounded fields)."""
    hs = HanaState()
    good = {"op": "security_event", "event": "login_failed", "address": "::1", "count": 1, "path": "/"}
    hs.prevalidate(good)
    for bad in (
        {**good, "event": "Login Failed"},
        {**good, "count": 0},
        {**good, "count": True},
        {**good, "address": "x" * 300},
        {**good, "path": 5},
        {**good, "extra": 1},
    ):
        with pytest.raises(StateError):
            hs.prevalidate(bad)


# -- one validation: prevalidate and apply cannot disagree ------------------------------------

# Codes that do not depend on the state: if prevalidate passes, apply never gives them.
STATELESS = {
    "invalid_command",
    "invalid_key",
    "unknown_component",
    "too_deep",
    "too_large",
    "invalid_save",
    "checksum_mismatch",
    "unsupported_schema_version",
}


@pytest.mark.parametrize("seed", [3, 4])
def test_prevalidate_is_the_check_apply_runs_first(seed: int) -> None:
    """Finding 1 / "one validation": for thousands of random commands
    (valid, wrong types, deep, unknown, odd), prevalidate refuses exactly
    when apply refuses for a reason that does not depend on the state, with
    the same code and message; what it lets through is never refused by
    apply for such a reason."""
    from tests.node.logfuzz import EntryGenerator

    gen = EntryGenerator(seed)
    hs = HanaState()
    refused = passed = 0
    for index, data in enumerate(gen.entries(6000), 1):
        try:
            command = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(command, dict) or len(data) > MAX_COMMAND_BYTES:
            continue
        if isinstance(command.get("rid"), str) and command["rid"] in hs.requests:
            continue  # a copy of a request already applied: answered from memory
        try:
            hs.prevalidate(command)
            verdict = None
        except StateError as exc:
            verdict = (exc.code, str(exc)[:300])
        res = hs.apply(index, data)
        err = res.get("error")
        if verdict is not None:
            refused += 1
            assert err is not None and (err["code"], err["message"][:300]) == verdict, (data[:300], verdict, res)
        else:
            passed += 1
            assert err is None or err["code"] not in STATELESS, (data[:300], res)
            if err is not None and err["code"] == "forbidden":
                assert command["op"] in ("undo", "redo"), res
    assert refused > 1000 and passed > 1000


def test_a_version_1_snapshot_written_before_the_split_still_loads() -> None:
    """Upgrading: a node restarted on this code loads the snapshot an older
    node wrote (tests/state/fixtures/snapshot-v1.json, made by the code before
    issue 12), keeps its audit entries, and goes on deterministically."""
    from pathlib import Path

    blob = (Path(__file__).parent / "fixtures" / "snapshot-v1.json").read_bytes().strip()
    a, b = HanaState(history_limit=4), HanaState(history_limit=4)
    a.restore(blob)
    b.restore(blob)
    assert values(a) == {"parameters/p": 1, "displays/left": {"width": 2}}
    assert [e["op"] for e in a.audit(since=2)["entries"]] == ["put", "save", "put", "undo"]
    with pytest.raises(Compacted):
        a.audit(since=1)
    assert a.apply(6, cmd(op="put", key="parameters/p", value=2, rid="n1.b.1")) == {
        "key": "parameters/p",
        "revision": 3,
        "version": 2,
    }  # remembered from before the upgrade
    for hs in (a, b):
        hs.apply(7, cmd(op="redo", author="alice", time=T0 + 7))
        hs.apply(8, cmd(op="save", name="after", time=T0 + 8, hlc=f"{T0 + 8:015d}.000000.n1"))
    assert a.snapshot() == b.snapshot()
    assert orjson.loads(a.snapshot())["version"] == 2
    round_trips(a)


def test_entries_recorded_before_any_time_age_from_the_first_time_told() -> None:
    """The bootstrap membership entry is recorded before the log told any
    time (audit clock 0). It used to be aged from 1970: the first stamped
    command dropped it and the trail answered 410 for everything before.
    Found by the hostile-neighbour chaos run and tests/api/test_state_api."""
    from mesh.raft import ConfChange, ConfChangeType, ConfState

    day = 24 * 3600 * 1000
    hs = HanaState(audit_max_age_ms=10 * day)
    hs.apply_conf_change(1, ConfChange(ConfChangeType.BOOTSTRAP, conf=ConfState.of(["n1", "n2", "n3"])))
    hs.apply(2, cmd(op="save", name="a", role="admin", time=T0, hlc=f"{T0:015d}.000000.n1"))
    assert [e["op"] for e in hs.audit(since=0)["entries"]] == ["membership", "save"]
    # Ten days after the first time told, the bootstrap entry ages out too.
    later = T0 + 10 * day + 1
    hs.apply(3, cmd(op="save", name="b", role="admin", time=later, hlc=f"{later:015d}.000000.n1"))
    assert [e["op"] for e in hs.audit(since=hs.audit()["oldest"])["entries"]] == ["save"]
