"""Join tokens and the trust state machine (issue 18)."""

from __future__ import annotations

import orjson
import pytest

from mesh.state.hlc import HLC
from mesh.state.model import HanaState
from mesh.trust import tokens

FP = "ab" * 32


def make(expires: int = 10_000, role: str = "voter") -> tokens.JoinToken:
    return tokens.new_token("show", ["https://127.0.0.1:7070"], FP, expires, role)


def test_a_token_round_trips_and_stays_under_the_bound():
    tok = make()
    text = tok.encode()
    assert text.startswith("hana1.") and len(text) <= tokens.MAX_TOKEN_CHARS
    assert tokens.decode(text) == tok
    assert tokens.decode("  " + text + "\n") == tok


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "must start with hana1"),
        ("hello", "must start with hana1"),
        ("hana1.!!!!", "damaged or truncated"),
        ("hana1." + "A" * 5000, "longer than 4096"),
        (None, "is a string"),
        ("hana1.eyJ4IjoxfQ", "fields are not those"),
    ],
)
def test_garbage_is_refused_with_a_clear_error(text, match):
    with pytest.raises(tokens.TokenError, match=match):
        tokens.decode(text)


def test_every_truncation_of_a_token_is_refused():
    text = make().encode()
    for cut in range(len(text) - 1, 0, -7):
        with pytest.raises(tokens.TokenError):
            tokens.decode(text[:cut])


def test_expiry_and_durations():
    tok = make(expires=5_000)
    tokens.check_expiry(tok, 4_999)
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.check_expiry(tok, 5_000)
    assert tokens.parse_duration("10m") == 600 and tokens.parse_duration("1d") == 86400
    for bad in ("10", "0s", "31d", "-1m", "10 minutes"):
        with pytest.raises(ValueError):
            tokens.parse_duration(bad)


# -- the state machine ---------------------------------------------------------------------


def apply(state: HanaState, cmd: dict, time: int = 1_000) -> dict:
    doc = {"author": "admin", "role": "admin", "node": "n1", "time": time, "hlc": HLC(time, 0, "n1").encode(), **cmd}
    return state.apply(state.applied_index + 1, orjson.dumps(doc))


def invite(state: HanaState, tok: tokens.JoinToken) -> dict:
    return apply(
        state,
        {"op": "trust_invite", "id": tok.id, "hash": tok.secret_hash, "expires": tok.expires, "member_role": tok.role},
    )


def issue(
    state: HanaState, tok: tokens.JoinToken, node: str = "n4", time: int = 1_000, proof: str | None = None
) -> dict:
    return apply(
        state,
        {
            "op": "trust_issue",
            "node_id": node,
            "serial": "abc123",
            "fingerprint": FP,
            "not_after": 10**13,
            "via": "token",
            "token": tok.id,
            "proof": proof or tok.secret_hash,
            "raft": "127.0.0.1:9000",
        },
        time,
    )


def test_a_token_is_spent_once_and_the_second_join_changes_nothing():
    s = HanaState()
    tok = make()
    assert "error" not in invite(s, tok)
    first = issue(s, tok, "n4")
    assert first["role"] == "voter" and s.trust.admissions["n4"]["role"] == "voter"
    before = orjson.dumps(s.trust.to_json())
    second = issue(s, tok, "n5")
    assert second["error"]["code"] == "join_refused" and second["error"]["reason"] == "spent"
    assert orjson.dumps(s.trust.to_json()) == before


def test_expired_unknown_and_wrong_secret_tokens_are_refused():
    s = HanaState()
    tok = make(expires=2_000)
    invite(s, tok)
    assert issue(s, tok, time=2_000)["error"]["reason"] == "expired"
    assert issue(s, tok, proof="00" * 32)["error"]["reason"] == "wrong_secret"
    assert issue(s, make())["error"]["reason"] == "unknown"
    assert not s.trust.issued and not s.trust.tokens[tok.id].get("spent")


def test_trust_commands_need_the_admin_role():
    s = HanaState()
    tok = make()
    r = apply(
        s,
        {
            "op": "trust_invite",
            "id": tok.id,
            "hash": tok.secret_hash,
            "expires": 1,
            "member_role": "voter",
            "role": "operator",
        },
    )
    assert r["error"]["code"] == "forbidden"


def test_removing_a_member_revokes_its_serials_and_peer_allowed_refuses_it():
    from mesh.raft import ConfChange, ConfChangeType

    s = HanaState()
    tok = make()
    invite(s, tok)
    issue(s, tok, "n4")
    assert s.trust.peer_allowed("n4", 0xABC123)
    s.apply_conf_change(9, ConfChange(ConfChangeType.REMOVE_NODE, "n4"))
    assert not s.trust.peer_allowed("n4", 0xABC123)
    assert not s.trust.peer_allowed("n4", 0x1)  # any certificate of a removed node
    assert "abc123" in s.trust.revoked and "n4" not in s.trust.admissions


def test_pending_then_approval_then_issue_by_the_approved_key_only():
    s = HanaState()
    r = apply(
        s, {"op": "trust_pending", "node_id": "n9", "address": "127.0.0.1:9", "fingerprint": FP, "source": "request"}
    )
    assert r["known"] is False and s.trust.pending_list()[0]["first_seen"] == 1_000
    assert apply(s, {"op": "trust_pending", "node_id": "n9", "address": "x", "fingerprint": FP, "source": "request"})[
        "known"
    ]
    assert apply(s, {"op": "trust_approve", "node_id": "nope"})["error"]["code"] == "not_found"
    assert "error" not in apply(s, {"op": "trust_approve", "node_id": "n9"})
    assert not s.trust.pending
    base = {"op": "trust_issue", "node_id": "n9", "serial": "1", "not_after": 10**13, "via": "approval"}
    assert apply(s, {**base, "fingerprint": "cd" * 32})["error"]["reason"] == "not_approved"
    assert apply(s, {**base, "fingerprint": FP})["role"] == "learner"
    assert s.trust.admissions["n9"]["role"] == "learner"


def test_the_trust_state_survives_a_snapshot():
    s = HanaState()
    tok = make()
    invite(s, tok)
    issue(s, tok, "n4")
    t = HanaState()
    t.restore(s.snapshot())
    assert t.trust.to_json() == s.trust.to_json()
    assert issue(t, tok, "n5")["error"]["reason"] == "spent"
