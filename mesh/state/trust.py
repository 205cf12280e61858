"""The cluster's trust state (issue 18): join tokens, issued certificates,
revocations, machines pending approval, signers and the CA roll. Pure and
deterministic like the rest of mesh/state: time comes from the command
(`min(time, hlc wall)` of a stamped command, as the audit trail reads it).

Commands (all need the admin role; the node itself proposes the internal
ones with role admin and author `node:<id>`):

trust_invite  {"id","hash","expires","member_role"}  a join token: id, sha256(secret), expiry (ms), voter|learner
trust_issue   {"node_id","serial","fingerprint","not_after","via","token"?,"proof"?,"old_serial"?,"raft"?,"api"?}
              a certificate issued through the log. via "token": the token must exist, be unspent and
              unexpired and `proof` its hash (spent here, once: two joins racing cannot both spend it);
              via "approval": the node must be approved with that key fingerprint; via "renew":
              `old_serial` must be this node's and not revoked; via "init": the first node's own.
              A join (token or approval) leaves an admission: the controller adds the node (learner,
              then voter if the token says so) through the ordinary membership path.
trust_pending {"node_id","address","fingerprint","source"}   a machine without valid credentials
trust_approve {"node_id"}                         an admin's approval of a pending machine (its key fingerprint)
trust_signer  {"node_id","api"}                   a machine that holds the CA key, and its API address
trust_ca      {"certs":[pem…],"phase":"roll"|"done"}   the CA bundle every node writes to tls/ca.pem
trust_ca_ack  {"node_id","bundle"}                a node wrote that bundle (sha256 of the joined PEMs)

Revocation: a committed `remove` of a member (HanaState.apply_conf_change)
revokes every serial issued to it and marks it removed; `peer_allowed`
refuses both until it joins again with a new token.

Error code `join_refused` (403) for a spent, expired, unknown or wrong token,
an unapproved key, a revoked or foreign serial; the state is unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mesh.state.errors import StateError
from mesh.state.values import describe

if TYPE_CHECKING:
    from mesh.state.commands import Meta
    from mesh.state.components import Registry
    from mesh.state.model import HanaState

MAX_TOKENS = 256
MAX_PENDING = 64
MAX_SERIALS_PER_NODE = 8
MAX_REVOKED = 4096
MAX_NODES = 1024
MAX_PEM = 8192
# A join's admission is carried out by the controller within this time (ms).
ADMIT_FOR_MS = 10 * 60 * 1000
_HEX = re.compile(r"[0-9a-f]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")
_NODE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ADDR = re.compile(r"[A-Za-z0-9.:\[\]/_-]{0,300}")
_COMMON = frozenset({"op", "author", "role", "node", "time", "hlc", "rid"})
_I62 = 1 << 62


@dataclass(slots=True, frozen=True)
class TrustCommand:
    """One trust op and its checked fields."""

    op: str
    fields: dict[str, Any]


def _fields(raw: dict[str, Any], required: set[str], optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    missing = required - set(raw)
    unknown = set(raw) - required - optional - _COMMON
    if missing or unknown:
        raise StateError(
            "invalid_command",
            f"{raw.get('op')}: missing {sorted(missing)} unknown {sorted(describe(k, 40) for k in unknown)[:8]}",
        )


def _match(raw: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise StateError("invalid_value", f"{name} is not valid: {describe(value)}")
    return value


def _int(raw: dict[str, Any], name: str) -> int:
    value = raw.get(name)
    if type(value) is not int or not 0 <= value < _I62:
        raise StateError("invalid_value", f"{name} must be a non-negative integer, got {describe(value)}")
    return value


def parse(raw: dict[str, Any], registry: Registry, meta: Meta) -> TrustCommand:
    op = str(raw["op"])
    if not meta.is_admin:
        raise StateError("forbidden", f"{op} needs the admin role", role=meta.role)
    f: dict[str, Any] = {}
    if op == "trust_invite":
        _fields(raw, {"id", "hash", "expires", "member_role"})
        f = {"id": _match(raw, "id", _TOKEN_ID), "hash": _match(raw, "hash", _HEX64), "expires": _int(raw, "expires")}
        if raw["member_role"] not in ("voter", "learner"):
            raise StateError("invalid_value", "member_role must be voter or learner")
        f["role"] = raw["member_role"]
    elif op == "trust_issue":
        _fields(
            raw,
            {"node_id", "serial", "fingerprint", "not_after", "via"},
            {"token", "proof", "old_serial", "raft", "api", "ca"},
        )
        f = {
            "node_id": _match(raw, "node_id", _NODE),
            "serial": _match(raw, "serial", _HEX),
            "fingerprint": _match(raw, "fingerprint", _HEX64),
            "not_after": _int(raw, "not_after"),
            "via": raw["via"],
        }
        if f["via"] not in ("token", "approval", "renew", "init"):
            raise StateError("invalid_value", "via must be token, approval, renew or init")
        if f["via"] == "token":
            f["token"] = _match(raw, "token", _TOKEN_ID)
            f["proof"] = _match(raw, "proof", _HEX64)
        if f["via"] == "renew":
            f["old_serial"] = _match(raw, "old_serial", _HEX)
        if "ca" in raw:
            f["ca"] = _match(raw, "ca", _HEX64)
        for name in ("raft", "api"):
            if name in raw:
                f[name] = _match(raw, name, _ADDR)
    elif op == "trust_pending":
        _fields(raw, {"node_id", "address", "fingerprint", "source"})
        f = {
            "node_id": _match(raw, "node_id", _NODE),
            "address": _match(raw, "address", _ADDR),
            "fingerprint": _match(raw, "fingerprint", _HEX64),
        }
        if raw["source"] not in ("request", "tls", "mdns"):
            raise StateError("invalid_value", "source must be request, tls or mdns")
        f["source"] = raw["source"]
    elif op == "trust_approve":
        _fields(raw, {"node_id"})
        f = {"node_id": _match(raw, "node_id", _NODE)}
    elif op == "trust_signer":
        _fields(raw, {"node_id", "api"})
        f = {"node_id": _match(raw, "node_id", _NODE), "api": _match(raw, "api", _ADDR)}
    elif op == "trust_ca":
        _fields(raw, {"certs", "phase"})
        certs = raw["certs"]
        if (
            not isinstance(certs, list)
            or not 0 < len(certs) <= 2
            or not all(
                isinstance(c, str) and c.startswith("-----BEGIN CERTIFICATE-----") and len(c) <= MAX_PEM for c in certs
            )
        ):
            raise StateError("invalid_value", "certs must be one or two PEM certificates")
        if raw["phase"] not in ("roll", "done"):
            raise StateError("invalid_value", "phase must be roll or done")
        f = {"certs": list(certs), "phase": raw["phase"]}
    elif op == "trust_ca_ack":
        _fields(raw, {"node_id", "bundle"})
        f = {"node_id": _match(raw, "node_id", _NODE), "bundle": _match(raw, "bundle", _HEX64)}
    return TrustCommand(op, f)


OPS = ("trust_invite", "trust_issue", "trust_pending", "trust_approve", "trust_signer", "trust_ca", "trust_ca_ack")
PARSERS: dict[str, Callable[[dict[str, Any], Registry, Meta], TrustCommand]] = dict.fromkeys(OPS, parse)


def bundle_id(certs: list[str]) -> str:
    return hashlib.sha256("".join(certs).encode()).hexdigest()


def _refuse(message: str, reason: str) -> StateError:
    return StateError("join_refused", message, reason=reason)


class TrustState:
    def __init__(self) -> None:
        # token id -> {"hash","expires","role","created","by","spent"?: node id,"spent_at"?}
        self.tokens: dict[str, dict[str, Any]] = {}
        # node id -> [{"serial","fingerprint","not_after","via"}…] newest last
        self.issued: dict[str, list[dict[str, Any]]] = {}
        self.revoked: dict[str, int] = {}  # serial -> not_after (ms)
        self.removed: dict[str, int] = {}  # node id -> when (ms)
        self.pending: dict[str, dict[str, Any]] = {}  # node id -> {"id","address","fingerprint","first_seen","source"}
        self.approved: dict[str, dict[str, Any]] = {}  # node id -> {"fingerprint","by","at"}
        self.admissions: dict[str, dict[str, Any]] = {}  # node id -> {"role","raft","api","until"}
        self.signers: dict[str, str] = {}  # node id -> API address
        self.ca: dict[str, Any] = {}  # {"certs":[pem…],"phase","bundle"}
        self.ca_acks: dict[str, str] = {}  # node id -> bundle id it wrote

    # -- queries (the node and the API read these) ---------------------------------

    def peer_allowed(self, node_id: str, serial: int) -> bool:
        """A peer presenting a validly signed certificate is let in unless its
        serial is revoked or the node was removed (and has not joined again)."""
        return format(serial, "x") not in self.revoked and node_id not in self.removed

    def pending_list(self) -> list[dict[str, Any]]:
        return [dict(p) for _, p in sorted(self.pending.items())]

    def view(self) -> dict[str, Any]:
        return {
            "tokens": [
                {"id": t, **{k: v for k, v in d.items() if k != "hash"}} for t, d in sorted(self.tokens.items())
            ],
            "issued": {n: list(s) for n, s in sorted(self.issued.items())},
            "revoked": sorted(self.revoked),
            "removed": sorted(self.removed),
            "pending": self.pending_list(),
            "approved": sorted(self.approved),
            "admissions": {n: dict(a) for n, a in sorted(self.admissions.items())},
            "signers": dict(sorted(self.signers.items())),
            "ca": {"phase": self.ca.get("phase"), "bundle": self.ca.get("bundle"), "acks": dict(self.ca_acks)},
        }

    # -- membership hook ---------------------------------------------------------------

    def revoke_node(self, node_id: str, now: int) -> list[str]:
        """`members remove`: revoke every serial issued to `node_id`."""
        serials = [c["serial"] for c in self.issued.get(node_id, [])]
        for s in serials:
            self.revoked[s] = next(c["not_after"] for c in self.issued[node_id] if c["serial"] == s)
        self.removed[node_id] = now
        self.admissions.pop(node_id, None)
        self.approved.pop(node_id, None)
        self.pending.pop(node_id, None)
        self.ca_acks.pop(node_id, None)
        self._bound(now)
        return serials

    def _bound(self, now: int) -> None:
        if len(self.tokens) > MAX_TOKENS:  # used or expired ones first
            for t in [t for t, d in self.tokens.items() if d.get("spent") or d["expires"] <= now]:
                if len(self.tokens) <= MAX_TOKENS:
                    break
                del self.tokens[t]
        while len(self.tokens) > MAX_TOKENS:
            del self.tokens[next(iter(self.tokens))]
        for s in [s for s, exp in self.revoked.items() if exp < now]:
            del self.revoked[s]  # expired: no TLS handshake accepts it anyway
        while len(self.revoked) > MAX_REVOKED:
            del self.revoked[next(iter(self.revoked))]
        while len(self.removed) > MAX_NODES:
            del self.removed[next(iter(self.removed))]
        while len(self.issued) > MAX_NODES:
            del self.issued[next(iter(self.issued))]

    # -- snapshots -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "issued": self.issued,
            "revoked": self.revoked,
            "removed": self.removed,
            "pending": self.pending,
            "approved": self.approved,
            "admissions": self.admissions,
            "signers": self.signers,
            "ca": self.ca,
            "ca_acks": self.ca_acks,
        }

    @classmethod
    def from_json(cls, doc: Any) -> TrustState:
        t = cls()
        if doc is None:
            return t
        if not isinstance(doc, dict):
            raise ValueError("trust state is not an object")
        for name in (
            "tokens",
            "issued",
            "revoked",
            "removed",
            "pending",
            "approved",
            "admissions",
            "signers",
            "ca",
            "ca_acks",
        ):
            value = doc.get(name, {})
            if not isinstance(value, dict):
                raise ValueError(f"trust state: {name} is not an object")
            setattr(t, name, dict(value))
        return t


def _now(meta: Meta) -> int:
    return min(meta.time, meta.stamp.wall) if meta.stamped else meta.time


def apply(state: HanaState, body: TrustCommand, meta: Meta) -> dict[str, Any]:
    """Apply one trust command (HanaState's handler). A refusal raises
    StateError before anything changed."""
    t: TrustState = state.trust
    f = body.fields
    now = _now(meta)
    op = body.op
    if op == "trust_invite":
        if f["id"] in t.tokens:
            raise StateError("invalid_value", f"token {f['id']} exists already")
        t.tokens[f["id"]] = {
            "hash": f["hash"],
            "expires": f["expires"],
            "role": f["role"],
            "created": now,
            "by": meta.author,
        }
        t._bound(now)
        state._audit(meta, "trust_invite", token=f["id"], expires=f["expires"], member_role=f["role"])
        return {"revision": state.revision, "token": f["id"], "expires": f["expires"], "role": f["role"]}
    if op == "trust_issue":
        return _issue(state, t, f, meta, now)
    if op == "trust_pending":
        nid = f["node_id"]
        known = t.pending.get(nid)
        if known is not None and known["fingerprint"] == f["fingerprint"]:
            return {"revision": state.revision, "pending": nid, "known": True}
        if known is None and len(t.pending) >= MAX_PENDING:
            raise StateError("too_large", f"{MAX_PENDING} machines are pending already: approve or remove some")
        t.pending[nid] = {
            "id": nid,
            "address": f["address"],
            "fingerprint": f["fingerprint"],
            "first_seen": now if known is None else known["first_seen"],
            "source": f["source"],
        }
        state._audit(meta, "trust_pending", member=nid, address=f["address"], fingerprint=f["fingerprint"])
        return {"revision": state.revision, "pending": nid, "known": False}
    if op == "trust_approve":
        nid = f["node_id"]
        p = t.pending.pop(nid, None)
        if p is None:
            raise StateError("not_found", f"{nid} is not pending (hana-node members list shows the pending machines)")
        t.approved[nid] = {"fingerprint": p["fingerprint"], "by": meta.author, "at": now}
        t.removed.pop(nid, None)
        state._audit(meta, "trust_approve", member=nid, fingerprint=p["fingerprint"])
        return {"revision": state.revision, "approved": nid, "fingerprint": p["fingerprint"]}
    if op == "trust_signer":
        if t.signers.get(f["node_id"]) != f["api"]:
            t.signers[f["node_id"]] = f["api"]
            while len(t.signers) > 16:
                del t.signers[next(iter(t.signers))]
        return {"revision": state.revision, "signer": f["node_id"]}
    if op == "trust_ca":
        bid = bundle_id(f["certs"])
        t.ca = {"certs": f["certs"], "phase": f["phase"], "bundle": bid}
        t.ca_acks = {}
        state._audit(meta, "trust_ca", phase=f["phase"], bundle=bid, cas=len(f["certs"]))
        return {"revision": state.revision, "bundle": bid, "phase": f["phase"]}
    if op == "trust_ca_ack":
        if len(t.ca_acks) < MAX_NODES:
            t.ca_acks[f["node_id"]] = f["bundle"]
        return {"revision": state.revision, "ack": f["node_id"]}
    raise StateError("invalid_command", f"unknown trust op {op}")


def _issue(state: HanaState, t: TrustState, f: dict[str, Any], meta: Meta, now: int) -> dict[str, Any]:
    nid, via = f["node_id"], f["via"]
    role = "learner"
    if via == "token":
        tok = t.tokens.get(f["token"])
        if tok is None:
            raise _refuse("unknown join token: it was never issued by this cluster (or is long gone)", "unknown")
        if tok.get("spent"):
            raise _refuse(f"the join token was already used (by {tok['spent']}): ask for a new one", "spent")
        if now >= tok["expires"]:
            raise _refuse("the join token expired: ask an admin for a new one (hana-node invite)", "expired")
        if not hmac.compare_digest(tok["hash"], f["proof"]):
            raise _refuse("the join token's secret is wrong", "wrong_secret")
        tok["spent"], tok["spent_at"] = nid, now
        role = tok["role"]
    elif via == "approval":
        a = t.approved.get(nid)
        if a is None or a["fingerprint"] != f["fingerprint"]:
            raise _refuse(f"{nid} is not approved with this key (hana-node members approve {nid})", "not_approved")
        del t.approved[nid]
    elif via == "renew":
        mine = {c["serial"] for c in t.issued.get(nid, [])}
        if nid in t.removed or f["old_serial"] in t.revoked:
            raise _refuse(f"{nid}'s certificate is revoked: it must join again with a new token", "revoked")
        if f["old_serial"] not in mine and t.issued.get(nid):
            raise _refuse(f"serial {f['old_serial']} was not issued to {nid}", "foreign_serial")
    elif via == "init" and (nid in t.removed or t.issued.get(nid)):
        return {"revision": state.revision, "serial": f["serial"], "node_id": nid, "known": True}
    if via in ("token", "approval"):
        t.removed.pop(nid, None)
        t.admissions[nid] = {
            "role": role,
            "raft": f.get("raft", ""),
            "api": f.get("api", ""),
            "until": now + ADMIT_FOR_MS,
        }
    certs = t.issued.setdefault(nid, [])
    certs.append({"serial": f["serial"], "fingerprint": f["fingerprint"], "not_after": f["not_after"], "via": via})
    if "ca" in f:
        certs[-1]["ca"] = f["ca"]
    del certs[:-MAX_SERIALS_PER_NODE]
    t._bound(now)
    state._audit(meta, "trust_issue", member=nid, serial=f["serial"], via=via, member_role=role)
    return {"revision": state.revision, "serial": f["serial"], "node_id": nid, "role": role}
