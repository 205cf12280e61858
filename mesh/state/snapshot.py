"""The state's snapshot: the whole HanaState as one canonical JSON document.
Pure.

`encode(state)` always succeeds (`values.canonical` falls back to an
iterative encoder for what orjson cannot write) and is byte-identical on
every node holding the same state. `decode(blank, blob)` fills a blank
HanaState from a snapshot of this format (version 1, before the audit trail
was kept apart, or 2), or from a plain KVStore's "hana-kv" one; anything
wrong raises ValueError.

Version 2 document: {"format": "hana-state", "version": 2, "revision",
"applied_index", "history_limit", "clock", "data": {key: [value, version,
create_revision, mod_revision, hlc]}, "history": [record…], "components",
"undo", "saves", "save_seq", "audit": {"entries": [[clock, entry]…], "floor",
"clock", "seq"}, "conflicts", "next_conflict", "requests": [[rid, result]…], and (issue 14,
only when not empty) "tombstones": [[key, hlc]…] (deleted keys' last stamps,
oldest first), "resolved": [conflict…] (resolved conflicts, oldest first)}.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import orjson

from mesh.state.hlc import HLC
from mesh.state.kv import ChangeRecord, KeyValue, KVStore
from mesh.state.trust import TrustState
from mesh.state.undo import UndoStacks
from mesh.state.values import canonical, clip, describe

if TYPE_CHECKING:
    from mesh.state.model import HanaState

FORMAT = "hana-state"
# v2: the audit trail kept apart ({"entries": [[clock, entry]…], "floor", "clock", "seq"}).
VERSION = 2


def encode(state: HanaState) -> bytes:
    saves, save_seq = state.save_store.to_json()
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "revision": state.revision,
        "applied_index": state.applied_index,
        "history_limit": state.history_limit,
        "clock": state.clock.encode(),
        "data": {
            k: [v.value, v.version, v.create_revision, v.mod_revision, _enc(state.key_hlc.get(k))]
            for k, v in sorted(state.data.items())
        },
        "history": [r.to_dict() for r in state.history],
        "components": state.comp_versions,
        "undo": state.undo.to_json(),
        "saves": saves,
        "save_seq": save_seq,
        "audit": state.audit_trail.to_json(),
        "conflicts": [state.pending[c] for c in sorted(state.pending)],
        "next_conflict": state.next_conflict,
        # In apply order (a list: sorting the keys would lose it).
        "requests": [[rid, res] for rid, res in state.requests.items()],
        "trust": state.trust.to_json(),
    }
    # Issue 14, written only when held, so that the snapshot of a state
    # without them is what it was before.
    if state.tombstones:
        doc["tombstones"] = [[k, h.encode()] for k, h in state.tombstones.items()]
    if state.resolved:
        doc["resolved"] = [state.resolved[c] for c in state.resolved]
    return canonical(doc)


def decode(new: HanaState, blob: bytes) -> None:
    """Fill `new` (a blank HanaState) from `blob`; ValueError if it is not a
    snapshot this code reads."""
    try:
        doc = orjson.loads(blob)
        if not isinstance(doc, dict):
            raise ValueError("snapshot is not an object")
        if doc.get("format") == "hana-kv":
            kv = KVStore(new.history_limit)
            kv.restore(blob)
            new.data, new.history, new.revision, new.applied_index = kv.data, kv.history, kv.revision, kv.applied_index
        elif doc.get("format") == FORMAT and doc.get("version") in (1, VERSION):
            _decode(new, doc)
        else:
            fmt, version = describe(doc.get("format")), describe(doc.get("version"))
            raise ValueError(f"unknown snapshot format {fmt} v{version}")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ValueError(f"invalid state snapshot: {clip(str(exc))}") from exc


def _decode(new: HanaState, doc: dict[str, Any]) -> None:
    new.data = {}
    for k, v in doc["data"].items():
        new.data[k] = KeyValue(v[0], int(v[1]), int(v[2]), int(v[3]))
        if v[4]:
            new.key_hlc[k] = HLC.decode(v[4])
    new.history = deque(ChangeRecord(**r) for r in doc["history"])
    new.revision = int(doc["revision"])
    new.applied_index = int(doc["applied_index"])
    new.clock = HLC.decode(doc["clock"])
    new.comp_versions = {n: [int(v[0]), dict(v[1])] for n, v in doc["components"].items()}
    new.undo = UndoStacks.from_json(doc["undo"])
    new.save_store.load_json(doc["saves"], doc["save_seq"])
    if doc["version"] == 1:
        new.audit_trail.load_v1(doc["audit"], doc["audit_floor"])
    else:
        new.audit_trail.load_json(doc["audit"])
    new.pending = {int(c["id"]): c for c in doc["conflicts"]}
    new.next_conflict = int(doc["next_conflict"])
    new.requests = {str(rid): dict(res) for rid, res in doc.get("requests", [])}
    new.tombstones = {str(k): HLC.decode(h) for k, h in doc.get("tombstones", [])}
    new.resolved = {int(c["id"]): c for c in doc.get("resolved", [])}
    new.trust = TrustState.from_json(doc.get("trust"))


def _enc(h: HLC | None) -> str:
    return h.encode() if h is not None else ""
