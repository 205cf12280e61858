"""The replicated key-value state machine: keys, versions, revisions, history.

Pure and deterministic: `apply(index, command)` depends only on the state and
the command (timestamps, authors and origin nodes travel inside the command),
so every node that applies the same log holds byte-identical state, and
`snapshot()` of two such nodes is byte-identical too.

Semantics follow shared/API.md and etcd's MVCC model:
- every committed change gets the next global `revision`; a transaction is
  one revision however many keys it touches;
- each key keeps `version` (writes since creation), `create_revision` and
  `mod_revision`; a delete removes the key (a later put starts at version 1);
- `expected_version` makes a write conditional (0: must not exist); a
  mismatch is a conflict answered with the current value and changes nothing;
- change records are kept in a bounded rolling buffer for watchers and
  history; asking for revisions older than the buffer gets `Compacted`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

MAX_KEY_BYTES = 512
# Commands are JSON objects; this is the shape of what the API proposes.
COMMAND_OPS = frozenset({"put", "delete", "txn"})
TXN_OPS = frozenset({"put", "delete", "check"})
# C0 controls and DEL: one regex search per key instead of a Python loop per
# character (validate_key runs for every write on every node).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CommandError(ValueError):
    """A command that cannot apply (every node rejects it the same way)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Compacted(LookupError):
    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"revision {requested} is compacted; the oldest held is {oldest}")
        self.requested = requested
        self.oldest = oldest


def validate_key(key: Any) -> str:
    """Keys are `component/name[/…]`: non-empty segments, no `.`/`..`."""
    if not isinstance(key, str):
        raise CommandError("invalid_key", "key must be a string")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise CommandError("invalid_key", f"key longer than {MAX_KEY_BYTES} bytes")
    parts = key.split("/")
    if len(parts) < 2:
        raise CommandError("invalid_key", f"key {key!r} must be component/name")
    for part in parts:
        if part in ("", ".", ".."):
            raise CommandError("invalid_key", f"key {key!r} has an empty or relative segment")
        if _CONTROL.search(part) is not None:
            raise CommandError("invalid_key", f"key {key!r} contains a control character")
    return key


@dataclass(slots=True)
class KeyValue:
    value: Any
    version: int
    create_revision: int
    mod_revision: int

    def to_dict(self, key: str) -> dict[str, Any]:
        return {
            "key": key,
            "value": self.value,
            "version": self.version,
            "create_revision": self.create_revision,
            "mod_revision": self.mod_revision,
        }


@dataclass(slots=True, frozen=True)
class ChangeRecord:
    revision: int
    key: str
    op: str  # "put" or "delete"
    value: Any
    prev_value: Any
    author: str
    node: str
    time: int
    hlc: str = ""  # the writer's hybrid logical clock stamp (mesh.state.hlc); "" from plain KVStore
    # A settled live gesture (mesh/state/gestures.py): its id, and the last
    # live sequence number of its origin node that the settled value covers.
    gesture: str = ""
    gesture_seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "revision": self.revision,
            "key": self.key,
            "op": self.op,
            "value": self.value,
            "prev_value": self.prev_value,
            "author": self.author,
            "node": self.node,
            "time": self.time,
        }
        if self.hlc:
            out["hlc"] = self.hlc
        if self.gesture:
            out["gesture"] = self.gesture
            out["gesture_seq"] = self.gesture_seq
        return out


class KVStore:
    def __init__(self, history_limit: int = 10_000) -> None:
        if history_limit < 1:
            raise ValueError("history_limit must be at least 1")
        self.history_limit = history_limit
        self.revision = 0
        self.applied_index = 0
        self.data: dict[str, KeyValue] = {}
        self.history: deque[ChangeRecord] = deque()

    # -- reads ---------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        return self.data.get(key)

    def range(self, prefix: str) -> list[tuple[str, KeyValue]]:
        return sorted((k, v) for k, v in self.data.items() if k.startswith(prefix))

    def oldest_revision(self) -> int:
        """The oldest revision whose change records are still held."""
        return self.history[0].revision if self.history else self.revision + 1

    def changes_since(self, since: int, prefix: str = "", limit: int | None = None) -> list[ChangeRecord]:
        """Change records with revision >= since (0 or 1: from the start)."""
        since = max(since, 1)
        if since < self.oldest_revision() and since <= self.revision:
            raise Compacted(since, self.oldest_revision())
        # Walk back from the newest record: a live watcher asks for the last
        # few changes, so this costs what it returns, not the whole buffer.
        newer: list[ChangeRecord] = []
        for rec in reversed(self.history):
            if rec.revision < since:
                break
            if rec.key.startswith(prefix):
                newer.append(rec)
        newer.reverse()
        return newer if limit is None else newer[:limit]

    # -- writes --------------------------------------------------------------

    def apply(self, index: int, command: bytes) -> dict[str, Any]:
        """Apply one committed command. Returns the result for the proposer;
        a rejected command returns {"error": {...}} and changes nothing."""
        self.applied_index = index
        try:
            cmd = orjson.loads(command)
        except orjson.JSONDecodeError:
            return _error("invalid_command", "command is not JSON")
        try:
            return self._apply(cmd)
        except CommandError as exc:
            return _error(exc.code, str(exc))

    def _apply(self, cmd: Any) -> dict[str, Any]:
        if not isinstance(cmd, dict) or cmd.get("op") not in COMMAND_OPS:
            raise CommandError("invalid_command", "command must be an object with op put, delete or txn")
        meta = _Meta.of(cmd)
        op = cmd["op"]
        if op == "txn":
            return self._txn(cmd.get("ops"), meta)
        key = validate_key(cmd.get("key"))
        expected = _expected_version(cmd.get("expected_version"))
        current = self.data.get(key)
        conflict = _check(key, current, expected)
        if conflict is not None:
            return conflict
        if op == "put":
            if "value" not in cmd:
                raise CommandError("invalid_value", "put needs a value")
            self.revision += 1
            kv = self._put(key, cmd["value"], meta)
            return {"key": key, "version": kv.version, "revision": self.revision}
        if current is None:
            return _error("not_found", f"key {key!r} does not exist")
        self.revision += 1
        self._delete(key, meta)
        return {"key": key, "revision": self.revision}

    def _txn(self, ops: Any, meta: _Meta) -> dict[str, Any]:
        if not isinstance(ops, list) or not ops:
            raise CommandError("invalid_command", "txn needs a non-empty list of ops")
        parsed = []
        for i, op in enumerate(ops):
            if not isinstance(op, dict) or op.get("op") not in TXN_OPS:
                raise CommandError("invalid_command", f"ops[{i}]: op must be put, delete or check")
            key = validate_key(op.get("key"))
            if op["op"] == "put" and "value" not in op:
                raise CommandError("invalid_value", f"ops[{i}]: put needs a value")
            parsed.append((i, op["op"], key, _expected_version(op.get("expected_version")), op.get("value")))
        # All checks first, against the state before the transaction.
        for i, _kind, key, expected, _ in parsed:
            conflict = _check(key, self.data.get(key), expected)
            if conflict is not None:
                conflict["error"]["op_index"] = i
                return conflict
        if not any(kind != "check" for _, kind, *_ in parsed):
            return {"revision": self.revision, "results": [{"key": k} for _, _, k, _, _ in parsed]}
        self.revision += 1
        results = [self._write_op(kind, key, value, meta) for _, kind, key, _, value in parsed]
        return {"revision": self.revision, "results": results}

    def _write_op(self, kind: str, key: str, value: Any, meta: Any) -> dict[str, Any]:
        """Carry out one op of a change at the current revision; its result."""
        if kind == "put":
            return {"key": key, "version": self._put(key, value, meta).version}
        if kind == "delete":
            existed = key in self.data
            if existed:
                self._delete(key, meta)
            return {"key": key, "deleted": existed}
        # A check: nothing to change.
        return {"key": key}

    def _put(self, key: str, value: Any, meta: _Meta) -> KeyValue:
        current = self.data.get(key)
        if current is None:
            kv = KeyValue(value, 1, self.revision, self.revision)
            prev = None
        else:
            prev = current.value
            kv = KeyValue(value, current.version + 1, current.create_revision, self.revision)
        self.data[key] = kv
        self._record(ChangeRecord(self.revision, key, "put", value, prev, meta.author, meta.node, meta.time))
        return kv

    def _delete(self, key: str, meta: _Meta) -> None:
        prev = self.data.pop(key)
        self._record(ChangeRecord(self.revision, key, "delete", None, prev.value, meta.author, meta.node, meta.time))

    def _record(self, rec: ChangeRecord) -> None:
        self.history.append(rec)
        while len(self.history) > self.history_limit:
            # Drop whole revisions so a transaction is never half compacted.
            oldest = self.history[0].revision
            while self.history and self.history[0].revision == oldest:
                self.history.popleft()

    # -- snapshots -----------------------------------------------------------

    def snapshot(self) -> bytes:
        doc = {
            "format": "hana-kv",
            "version": 1,
            "revision": self.revision,
            "applied_index": self.applied_index,
            "history_limit": self.history_limit,
            "data": {k: [v.value, v.version, v.create_revision, v.mod_revision] for k, v in sorted(self.data.items())},
            "history": [r.to_dict() for r in self.history],
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    def restore(self, blob: bytes) -> None:
        try:
            doc = orjson.loads(blob)
            if doc.get("format") != "hana-kv" or doc.get("version") != 1:
                raise ValueError(f"unknown snapshot format {doc.get('format')!r} v{doc.get('version')!r}")
            data = {k: KeyValue(v[0], int(v[1]), int(v[2]), int(v[3])) for k, v in doc["data"].items()}
            history = deque(ChangeRecord(**r) for r in doc["history"])
            revision = int(doc["revision"])
            applied = int(doc["applied_index"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ValueError(f"invalid key-value snapshot: {exc}") from exc
        self.data, self.history, self.revision, self.applied_index = data, history, revision, applied


@dataclass(slots=True, frozen=True)
class _Meta:
    author: str
    node: str
    time: int

    @classmethod
    def of(cls, cmd: dict[str, Any]) -> _Meta:
        author = cmd.get("author", "anonymous")
        node = cmd.get("node", "")
        time = cmd.get("time", 0)
        if not isinstance(author, str) or not isinstance(node, str) or type(time) is not int:
            raise CommandError("invalid_command", "author and node must be strings, time an integer")
        return cls(author, node, time)


def _expected_version(raw: Any) -> int | None:
    if raw is None:
        return None
    if type(raw) is not int or raw < 0:
        raise CommandError("invalid_value", "expected_version must be a non-negative integer")
    return raw


def _check(key: str, current: KeyValue | None, expected: int | None) -> dict[str, Any] | None:
    if expected is None:
        return None
    actual = current.version if current is not None else 0
    if actual == expected:
        return None
    return {
        "error": {
            "code": "version_conflict",
            "message": f"key {key!r} is at version {actual}, expected {expected}",
            "current": current.to_dict(key) if current is not None else None,
        }
    }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
