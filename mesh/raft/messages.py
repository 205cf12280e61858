"""The records the core consumes and produces: entries, snapshots, hard state
and peer messages.

Every record encodes to a dict of JSON-native values (`to_dict`) ready for
orjson, and decodes from one (`from_dict`) with strict validation: a peer
frame that is not exactly a well-formed message raises `MessageDecodeError`
naming the offending field, and nothing of it reaches the protocol. Bytes
(entry payloads, snapshot data, read contexts) travel as base64 text.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from dataclasses import dataclass, field
from typing import Any

from mesh.raft.errors import MessageDecodeError

NodeId = str

# Wire format version of these dicts; the transport stamps it on every frame.
# 2: snapshots stream out of band (header frame + raw chunk frames), a
#    heartbeat response may carry reject + reject_hint (a follower that lost
#    its log).
# 3: live-parameter frames (mesh/node/live.py) on their own queue; a version-2
#    node would drop the whole connection on one, so versions 2 and 3 refuse
#    each other at the handshake, with a clear handshake_refused line, instead.
# 4: everything after the hellos is sealed (an AEAD) on pre-shared-secret
#    links, or the link is mutual TLS 1.3 (mesh/transport/aead.py, tls.py).
# 5: live interest frames (which live values a node wants, so values go only
#    to nodes with a subscriber for them); a version-4 node would drop the
#    connection on one.
PROTOCOL_VERSION = 5


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class ConfChangeType(enum.StrEnum):
    # Sets the whole configuration; written only by bootstrap at index 1.
    BOOTSTRAP = "bootstrap"
    ADD_VOTER = "add_voter"
    ADD_LEARNER = "add_learner"
    PROMOTE_LEARNER = "promote_learner"
    DEMOTE_VOTER = "demote_voter"
    REMOVE_NODE = "remove_node"


class MessageType(enum.StrEnum):
    APP = "app"
    APP_RESP = "app_resp"
    VOTE = "vote"
    VOTE_RESP = "vote_resp"
    PRE_VOTE = "pre_vote"
    PRE_VOTE_RESP = "pre_vote_resp"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat_resp"
    SNAP = "snap"
    TIMEOUT_NOW = "timeout_now"
    READ_INDEX = "read_index"
    READ_INDEX_RESP = "read_index_resp"
    TRANSFER_LEADER = "transfer_leader"


# Context marking a vote request that comes from a leadership transfer: it
# must be granted even by nodes that still hear from the current leader.
CAMPAIGN_TRANSFER = b"transfer"
# Context marking an append without entries (it only moves the commit
# index) to a follower the leader streams to, whose answer would repeat an
# acknowledgement: a follower that accepts it and already acknowledged that
# far in this term commits and applies without answering. A rejected one,
# or one past what the follower acknowledged, is answered as usual, and a
# node that does not know the mark answers it.
COMMIT_ONLY = b"commit"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise MessageDecodeError(f"{where}: expected base64 text, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageDecodeError(f"{where}: invalid base64 ({exc})") from exc


def _int(d: dict[str, Any], key: str, where: str, default: int | None = 0) -> int:
    value = d.get(key, default)
    if value is None:
        raise MessageDecodeError(f"{where}.{key}: missing")
    # bool is an int subclass; a peer sending true for an index is malformed.
    if type(value) is not int:
        raise MessageDecodeError(f"{where}.{key}: expected an integer, got {type(value).__name__}")
    if value < 0:
        raise MessageDecodeError(f"{where}.{key}: must not be negative, got {value}")
    if value >= 1 << 63:
        raise MessageDecodeError(f"{where}.{key}: out of range")
    return value


def _node_id(value: Any, where: str) -> NodeId:
    if not isinstance(value, str) or not value:
        raise MessageDecodeError(f"{where}: expected a non-empty node id")
    if len(value) > 256:
        raise MessageDecodeError(f"{where}: node id longer than 256 characters")
    return value


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MessageDecodeError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _known_keys(d: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = d.keys() - allowed
    if unknown:
        raise MessageDecodeError(f"{where}: unknown field(s) {sorted(unknown)}")


@dataclass(slots=True)
class Entry:
    """One log entry. `data` is opaque to the core except for conf changes."""

    index: int
    term: int
    data: bytes = b""
    type: EntryType = EntryType.NORMAL

    def size(self) -> int:
        return len(self.data) + 16

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "term": self.term}
        if self.type != EntryType.NORMAL:
            d["type"] = int(self.type)
        if self.data:
            d["data"] = _b64(self.data)
        return d

    @classmethod
    def from_dict(cls, raw: Any, where: str = "entry") -> Entry:
        d = _dict(raw, where)
        _known_keys(d, _ENTRY_KEYS, where)
        etype = _int(d, "type", where)
        try:
            entry_type = EntryType(etype)
        except ValueError:
            raise MessageDecodeError(f"{where}.type: unknown entry type {etype}") from None
        data = _unb64(d["data"], f"{where}.data") if "data" in d else b""
        return cls(_int(d, "index", where, None), _int(d, "term", where, None), data, entry_type)


_ENTRY_KEYS = frozenset({"index", "term", "type", "data"})


@dataclass(slots=True, frozen=True)
class ConfState:
    """A cluster configuration: who votes and who only replicates."""

    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()

    def __post_init__(self) -> None:
        if set(self.voters) & set(self.learners):
            raise MessageDecodeError("conf state: a node cannot be both voter and learner")

    @classmethod
    def of(cls, voters: Any = (), learners: Any = ()) -> ConfState:
        return cls(tuple(sorted(set(voters))), tuple(sorted(set(learners))))

    def members(self) -> tuple[NodeId, ...]:
        return tuple(sorted(self.voters + self.learners))

    def to_dict(self) -> dict[str, Any]:
        return {"voters": list(self.voters), "learners": list(self.learners)}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "conf") -> ConfState:
        d = _dict(raw, where)
        _known_keys(d, frozenset({"voters", "learners"}), where)
        out = []
        for key in ("voters", "learners"):
            ids = d.get(key, [])
            if not isinstance(ids, list):
                raise MessageDecodeError(f"{where}.{key}: expected a list")
            out.append([_node_id(i, f"{where}.{key}[]") for i in ids])
        if len(set(out[0])) != len(out[0]) or len(set(out[1])) != len(out[1]):
            raise MessageDecodeError(f"{where}: duplicate node id")
        return cls.of(out[0], out[1])


# A conf change's optional context: who asked, from where, why (audited by
# the state machine). Bounded: it rides in the log.
MAX_CONTEXT_ITEMS = 16
MAX_CONTEXT_KEY = 64
MAX_CONTEXT_VALUE = 1024


def _context(raw: Any, where: str) -> dict[str, str]:
    d = _dict(raw, where)
    if len(d) > MAX_CONTEXT_ITEMS:
        raise MessageDecodeError(f"{where}: more than {MAX_CONTEXT_ITEMS} items")
    for k, v in d.items():
        if not isinstance(k, str) or not 0 < len(k) <= MAX_CONTEXT_KEY:
            raise MessageDecodeError(f"{where}: keys are strings of 1 to {MAX_CONTEXT_KEY} characters")
        if not isinstance(v, str) or len(v) > MAX_CONTEXT_VALUE:
            raise MessageDecodeError(f"{where}.{k}: expected a string of at most {MAX_CONTEXT_VALUE} characters")
    return dict(d)


@dataclass(slots=True, frozen=True)
class ConfChange:
    """A single-server membership change (or the bootstrap configuration).

    `context` (optional, e.g. {"author", "address", "reason"}) travels with
    the change for the audit trail; it is encoded only when non-empty, so a
    change without one encodes exactly as before."""

    type: ConfChangeType
    node: NodeId = ""
    # Only for BOOTSTRAP: the whole initial configuration.
    conf: ConfState | None = None
    context: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.context:
            _context(self.context, "conf_change.context")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": str(self.type)}
        if self.node:
            d["node"] = self.node
        if self.conf is not None:
            d["conf"] = self.conf.to_dict()
        if self.context:
            d["context"] = dict(self.context)
        return d

    @classmethod
    def from_dict(cls, raw: Any, where: str = "conf_change") -> ConfChange:
        d = _dict(raw, where)
        _known_keys(d, frozenset({"type", "node", "conf", "context"}), where)
        kind: Any = d.get("type")  # untrusted: the enum refuses anything but one of its values
        try:
            ctype = ConfChangeType(kind)
        except ValueError:
            raise MessageDecodeError(f"{where}.type: unknown change {kind!r}") from None
        context = _context(d["context"], f"{where}.context") if "context" in d else {}
        if ctype == ConfChangeType.BOOTSTRAP:
            if "conf" not in d:
                raise MessageDecodeError(f"{where}.conf: bootstrap needs a configuration")
            return cls(ctype, "", ConfState.from_dict(d["conf"], f"{where}.conf"), context)
        return cls(ctype, _node_id(d.get("node"), f"{where}.node"), None, context)

    def encode(self) -> bytes:
        # Entry payloads are bytes; the conf change is JSON text inside one
        # (stdlib json: the core depends on nothing outside the standard library).
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise MessageDecodeError(f"conf change: not JSON ({exc})") from exc
        return cls.from_dict(raw)


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "term": self.term, "conf": self.conf.to_dict()}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "snapshot.meta") -> SnapshotMeta:
        d = _dict(raw, where)
        _known_keys(d, frozenset({"index", "term", "conf"}), where)
        return cls(
            _int(d, "index", where, None),
            _int(d, "term", where, None),
            ConfState.from_dict(d.get("conf", {}), f"{where}.conf"),
        )


@dataclass(slots=True, frozen=True)
class Snapshot:
    """The state machine's bytes at `meta.index`, with the configuration then."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    def is_empty(self) -> bool:
        return self.meta.index == 0

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta.to_dict(), "data": _b64(self.data)}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "snapshot") -> Snapshot:
        d = _dict(raw, where)
        _known_keys(d, frozenset({"meta", "data"}), where)
        if "meta" not in d:
            raise MessageDecodeError(f"{where}.meta: missing")
        return cls(SnapshotMeta.from_dict(d["meta"], f"{where}.meta"), _unb64(d.get("data", ""), f"{where}.data"))


@dataclass(slots=True, frozen=True)
class HardState:
    """What must be on disk before any message that depends on it is sent."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "vote": self.vote, "commit": self.commit}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "hard_state") -> HardState:
        d = _dict(raw, where)
        _known_keys(d, frozenset({"term", "vote", "commit"}), where)
        vote = d.get("vote")
        if vote is not None:
            vote = _node_id(vote, f"{where}.vote")
        return cls(_int(d, "term", where), vote, _int(d, "commit", where))


@dataclass(slots=True)
class Message:
    """A message between two cores. Which fields matter depends on `type`:

    - APP: `index`/`log_term` locate the entry before `entries`; `commit`.
    - APP_RESP: `index` is the last index matched, or (with `reject`) the
      rejected probe index; `reject_hint` and `log_term` drive fast back-off.
    - VOTE/PRE_VOTE: `index`/`log_term` describe the candidate's last entry.
    - HEARTBEAT: `commit`; `context` carries a ReadIndex round.
    - SNAP: `snapshot`.
    - READ_INDEX/READ_INDEX_RESP: `context` names the read; `index` answers it.
    """

    type: MessageType
    to: NodeId
    frm: NodeId
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": str(self.type), "to": self.to, "from": self.frm, "term": self.term}
        if self.log_term:
            d["log_term"] = self.log_term
        if self.index:
            d["index"] = self.index
        if self.entries:
            d["entries"] = [e.to_dict() for e in self.entries]
        if self.commit:
            d["commit"] = self.commit
        if self.reject:
            d["reject"] = True
        if self.reject_hint:
            d["reject_hint"] = self.reject_hint
        if self.snapshot is not None:
            d["snapshot"] = self.snapshot.to_dict()
        if self.context:
            d["context"] = _b64(self.context)
        return d

    @classmethod
    def from_dict(cls, raw: Any) -> Message:
        d = _dict(raw, "message")
        _known_keys(d, _MESSAGE_KEYS, "message")
        kind: Any = d.get("type")  # untrusted: the enum refuses anything but one of its values
        try:
            mtype = MessageType(kind)
        except ValueError:
            raise MessageDecodeError(f"message.type: unknown type {kind!r}") from None
        where = f"message({mtype})"
        entries_raw = d.get("entries", [])
        if not isinstance(entries_raw, list):
            raise MessageDecodeError(f"{where}.entries: expected a list")
        if entries_raw and mtype != MessageType.APP:
            raise MessageDecodeError(f"{where}.entries: only append messages carry entries")
        entries = [Entry.from_dict(e, f"{where}.entries[{i}]") for i, e in enumerate(entries_raw)]
        index = _int(d, "index", where)
        for i, e in enumerate(entries):
            if e.index != index + 1 + i:
                raise MessageDecodeError(f"{where}.entries[{i}]: index {e.index} breaks the sequence")
        reject = d.get("reject", False)
        if not isinstance(reject, bool):
            raise MessageDecodeError(f"{where}.reject: expected a boolean")
        snapshot = None
        if "snapshot" in d:
            snapshot = Snapshot.from_dict(d["snapshot"], f"{where}.snapshot")
        if mtype == MessageType.SNAP and snapshot is None:
            raise MessageDecodeError(f"{where}.snapshot: missing")
        term = _int(d, "term", where, None)
        if term == 0:
            # Term 0 is reserved for local events inside the core.
            raise MessageDecodeError(f"{where}.term: peer messages carry a term >= 1")
        return cls(
            type=mtype,
            to=_node_id(d.get("to"), f"{where}.to"),
            frm=_node_id(d.get("from"), f"{where}.from"),
            term=term,
            log_term=_int(d, "log_term", where),
            index=index,
            entries=entries,
            commit=_int(d, "commit", where),
            reject=reject,
            reject_hint=_int(d, "reject_hint", where),
            snapshot=snapshot,
            context=_unb64(d["context"], f"{where}.context") if "context" in d else b"",
        )


_MESSAGE_KEYS = frozenset(
    {
        "type",
        "to",
        "from",
        "term",
        "log_term",
        "index",
        "entries",
        "commit",
        "reject",
        "reject_hint",
        "snapshot",
        "context",
    }
)


def bootstrap_entries(conf: ConfState) -> tuple[list[Entry], HardState]:
    """What a fresh node of an initial cluster writes before it starts: one
    entry at index 1, term 1, setting the whole configuration, committed.
    Every initial member writes the identical entry, so their logs agree, and
    a member added later learns the initial configuration from the log."""
    if not conf.voters:
        raise ValueError("bootstrap needs at least one voter")
    cc = ConfChange(ConfChangeType.BOOTSTRAP, conf=conf)
    return [Entry(1, 1, cc.encode(), EntryType.CONF_CHANGE)], HardState(term=1, vote=None, commit=1)
