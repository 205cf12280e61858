"""HanaState: hana's replicated state machine (components, versions, history,
undo/redo, saves, audit) over the KVStore.

This module is the dispatcher and the key-value writes at its core; the
other jobs live apart: commands are parsed and checked in
`mesh.state.commands` (which lists every command and its answer), values in
`mesh.state.values`, limits in `mesh.state.limits`, error codes in
`mesh.state.errors`; the save ops in `mesh.state.saves`, undo and redo in
`mesh.state.undo`, the audit trail (and security events, membership) in
`mesh.state.audit`, the snapshot format in `mesh.state.snapshot`.

Pure and deterministic: `apply(index, command_bytes) -> result` depends only on
the state and the command. Authors, roles, origin nodes, times (ms) and hybrid
logical clock stamps travel inside the command; nothing here reads a clock, the
network, the filesystem or random numbers. Two nodes applying the same log
hold byte-identical `snapshot()`s. `restore(blob, index=None)` loads one.

`apply` never raises, whatever the entry holds (not JSON, not UTF-8, too deep,
too large, wrong types, unknown ops): a command that cannot apply returns
`{"error": {"code", "message", ...}}` and changes nothing, identically on every
node. It is parsed and checked in full (`commands.parse_command`) before
anything changes; an unexpected exception (a bug) becomes the result
`{"error": {"code": "apply_failed", "message": "<type>: <message>"}}`.
`prevalidate(command)` runs the very same checks for the API before it
proposes, and `prepare(command)` also gives the (smaller) command to propose.
`snapshot()` always encodes. `ERROR_STATUS` maps each error code to its HTTP
status.

HanaState is a KVStore (same `get`, `range`, `revision`, `changes_since`,
`history`), so the node's `KVStateMachine` adapter can wrap it unchanged.
`apply_conf_change(index, cc)` (called by the Replica for every committed
membership entry) records the change in the audit trail.

Queries (plain methods, local state): `history_query(prefix, since, limit)`,
`audit(since, limit)` (both raise `Compacted` for what is gone), `saves()`,
`save_info(name)`, `export_save(name)` (bytes of a `.hana` file),
`components()`, `conflicts()`, `undo_status()`.

Conflict policy. Each key remembers the HLC stamp of its last write. A put or
delete *without* `expected_version` whose stamp is older than that was made
concurrently with (not after seeing) the newer write: under `lww` it loses
(skipped, answered `superseded`); under `manual` it is kept aside as a
conflict (`conflict_kept`, with its id) for a person to `resolve`. A write with
`expected_version` said exactly what it overwrites, so it is never stale.
Undo, redo, restore and resolve are explicit decisions and always apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from mesh.state import snapshot as snapshots
from mesh.state.audit import (
    DEFAULT_AUDIT_LIMIT,
    DEFAULT_AUDIT_MAX_AGE_MS,
    AuditTrail,
    membership_entry,
    op_security_event,
)
from mesh.state.commands import (
    Command,
    Compact,
    Delete,
    DeleteSave,
    ImportSave,
    KeyOp,
    Meta,
    Put,
    Resolve,
    Restore,
    Save,
    SecurityEvent,
    Settle,
    Txn,
    Undo,
    parse_command,
)
from mesh.state.components import DEFAULT_REGISTRY, Registry
from mesh.state.errors import ERROR_STATUS, StateError, err, error_result
from mesh.state.gestures import op_settle
from mesh.state.hlc import HLC
from mesh.state.kv import ChangeRecord, CommandError, KeyValue, KVStore, _check
from mesh.state.limits import (
    MAX_COMMAND_BYTES,
    MAX_DEPTH,
    MAX_RID_CHARS,
    MAX_SAVE_BYTES,
    MAX_SAVE_NAME,
    MAX_TXN_OPS,
)
from mesh.state.saves import (
    SaveStore,
    capture,
    civil_from_days,
    op_delete_save,
    op_import_save,
    op_restore,
    op_save,
    recovery_name,
    save_meta,
)
from mesh.state.trust import TrustCommand, TrustState
from mesh.state.trust import apply as trust_apply
from mesh.state.undo import Group, GroupBuilder, UndoStacks, json_equal, op_undo
from mesh.state.values import check_value, clip, json_depth

__all__ = [
    "ERROR_STATUS",
    "MAX_REMEMBERED_REQUESTS",
    "MAX_SAVE_NAME",
    "MAX_TXN_OPS",
    "HanaState",
    "Meta",
    "StateError",
    "civil_from_days",
    "recovery_name",
]

# orjson reads JSON nested this deep (and writes only 254 levels).
_ORJSON_READ_DEPTH = 1024

# Request ids remembered for de-duplication (the window in which a retried
# command can still arrive: far more than the writes of one request timeout).
MAX_REMEMBERED_REQUESTS = 10_000


class HanaState(KVStore):
    def __init__(
        self,
        registry: Registry = DEFAULT_REGISTRY,
        *,
        history_limit: int = 10_000,
        audit_limit: int = DEFAULT_AUDIT_LIMIT,
        audit_max_age_ms: int = DEFAULT_AUDIT_MAX_AGE_MS,
        undo_limit: int = 100,
        max_saves: int = 64,
        max_recovery_points: int = 8,
        max_save_bytes: int = MAX_SAVE_BYTES,
        max_conflicts: int = 100,
        cluster: str = "hana",
    ) -> None:
        super().__init__(history_limit)
        if min(audit_limit, audit_max_age_ms, max_saves, max_recovery_points, max_save_bytes, max_conflicts) < 1:
            raise ValueError("limits must be at least 1")
        self.registry = registry
        self.cluster = cluster
        self.audit_limit = audit_limit
        self.audit_max_age_ms = audit_max_age_ms
        self.max_saves = max_saves
        self.max_recovery_points = max_recovery_points
        self.max_save_bytes = max_save_bytes
        self.max_conflicts = max_conflicts
        self._init_extra(undo_limit)

    def _init_extra(self, undo_limit: int) -> None:
        self.clock = HLC()
        self.key_hlc: dict[str, HLC] = {}
        self.comp_versions: dict[str, list[Any]] = {}  # name -> [version, {node: count}]
        self.undo = UndoStacks(undo_limit)
        self.save_store = SaveStore(self.max_saves, self.max_recovery_points, self.max_save_bytes)
        self.audit_trail = AuditTrail(self.audit_limit, self.audit_max_age_ms)
        self.pending: dict[int, dict[str, Any]] = {}
        self.next_conflict = 1
        self._group: GroupBuilder | None = None
        # Results of the most recent commands that carried a request id
        # ("rid") and changed something, oldest first: a command proposed
        # twice (a forwarded write retried after a leader change) is applied
        # once and the second copy answers the first's result (Raft thesis
        # 6.3). A rejected command changed nothing, so its copy is simply
        # applied again. Part of the snapshot.
        self.requests: dict[str, dict[str, Any]] = {}
        # Cluster credentials: tokens, issued and revoked certificates, pending machines.
        self.trust = TrustState()

    @property
    def saves_store(self) -> dict[str, dict[str, Any]]:
        return self.save_store.saves

    # -- checking before proposing ------------------------------------------------------

    def prevalidate(self, command: dict[str, Any]) -> None:
        """Everything about `command` that does not depend on the state,
        checked by the code `apply` runs first (so the API and every node
        agree). Raises StateError (`.code`, `str(exc)`, `.extra`)."""
        self._parse_proposal(command)

    def prepare(self, command: dict[str, Any]) -> dict[str, Any]:
        """The command to propose, checked as `prevalidate` checks it: the
        same command, except that an `import_save` carrying the file's text
        carries it parsed (`doc`) when it is JSON, so that the log entry is
        about the size of the file (as a JSON string, every quote and
        backslash doubles; a control character takes six bytes)."""
        if command.get("op") == "import_save" and isinstance(command.get("file"), str):
            try:
                doc = orjson.loads(command["file"])
            except orjson.JSONDecodeError:
                pass  # refused below, as apply would refuse it
            else:
                command = {k: v for k, v in command.items() if k != "file"}
                command["doc"] = doc
        self._parse_proposal(command)
        return command

    def _parse_proposal(self, command: Any) -> Command:
        if not isinstance(command, dict):
            raise StateError("invalid_command", "a command is a JSON object")
        # Anything orjson would refuse or change (NaN becomes null) is
        # refused first; what is left is exactly what every node will
        # decode from the log, and it is checked by the same code.
        try:
            check_value(command, "the command", max_bytes=None, max_depth=_ORJSON_READ_DEPTH, strings=True)
        except CommandError as exc:
            raise StateError(exc.code, str(exc)) from None
        try:
            size = len(orjson.dumps(command))
        except orjson.JSONEncodeError as exc:
            if json_depth(command) <= MAX_DEPTH:
                raise StateError("invalid_command", f"the command is not JSON: {exc}") from None
            # Deeper than orjson writes (so it could never be proposed): the
            # parse names the value that is too deep.
            parse_command(command, self.registry)
            raise StateError("too_deep", f"a value is nested more than {MAX_DEPTH} deep") from None
        if size > MAX_COMMAND_BYTES:
            raise StateError("too_large", f"the command is {size} bytes (limit {MAX_COMMAND_BYTES})")
        return parse_command(command, self.registry)

    # -- apply ---------------------------------------------------------------------

    def apply(self, index: int, command: bytes) -> dict[str, Any]:
        self.applied_index = index
        try:
            return self._apply_entry(command)
        except Exception as exc:  # the apply path never raises (see the module doc)
            self._group = None
            return err("apply_failed", f"{type(exc).__name__}: {_safe_str(exc)}")

    def _apply_entry(self, command: bytes) -> dict[str, Any]:
        if not isinstance(command, (bytes, bytearray, memoryview)):
            return err("invalid_command", "a command is bytes of JSON")
        if len(command) > MAX_COMMAND_BYTES:
            return err("too_large", f"the command is {len(command)} bytes (limit {MAX_COMMAND_BYTES})")
        try:
            raw = orjson.loads(command)
        except orjson.JSONDecodeError as exc:
            return err("invalid_command", f"command is not JSON: {exc}")
        rid = raw.get("rid") if isinstance(raw, dict) else None
        if isinstance(rid, str) and 0 < len(rid) <= MAX_RID_CHARS:
            done = self.requests.get(rid)
            if done is not None:
                return done
        else:
            rid = None
        try:
            result = self._execute(parse_command(raw, self.registry))
        except CommandError as exc:
            result = error_result(exc)
        finally:
            self._group = None
        if rid is not None and _changed_something(result):
            self.requests[rid] = result
            while len(self.requests) > MAX_REMEMBERED_REQUESTS:
                del self.requests[next(iter(self.requests))]
        return result

    def _execute(self, cmd: Command) -> dict[str, Any]:
        meta = cmd.meta
        audit_clock = self.audit_trail.clock
        if meta.stamped:
            self.audit_trail.observe(min(meta.time, meta.stamp.wall))
        try:
            result = self._handlers[type(cmd.body)](self, cmd.body, meta)
        except Exception:
            self.audit_trail.clock = audit_clock
            raise
        if "error" not in result or result["error"]["code"] == "conflict_kept":
            if meta.stamp > self.clock:
                self.clock = meta.stamp
        else:
            self.audit_trail.clock = audit_clock
        return result

    # -- put / delete / txn --------------------------------------------------------------

    def _op_put(self, body: Put, meta: Meta) -> dict[str, Any]:
        return self._write([body.op], meta)

    def _op_delete(self, body: Delete, meta: Meta) -> dict[str, Any]:
        return self._write([body.op], meta)

    def _op_txn(self, body: Txn, meta: Meta) -> dict[str, Any]:
        return self._write(list(body.ops), meta, txn=True)

    def _write(self, parsed: list[KeyOp], meta: Meta, txn: bool = False) -> dict[str, Any]:
        for i, op in enumerate(parsed):
            conflict = _check(op.key, self.data.get(op.key), op.expected)
            if conflict is not None:
                if txn:
                    conflict["error"]["op_index"] = i
                return conflict
        if not txn and parsed[0].kind == "delete" and parsed[0].key not in self.data:
            raise StateError("not_found", f"key {parsed[0].key!r} does not exist", key=parsed[0].key)
        # Concurrent (stale by HLC) unconditional writes: lww skips them, manual keeps them aside.
        skipped: set[int] = set()
        kept: list[int] = []
        for i, op in enumerate(parsed):
            if op.kind == "check" or op.expected is not None:
                continue
            last = self.key_hlc.get(op.key)
            if last is not None and meta.stamp < last:
                if op.component.policy == "manual":
                    kept.append(i)
                else:
                    skipped.add(i)
        if kept:
            return self._keep_conflict(parsed, meta)
        live = [
            i
            for i, op in enumerate(parsed)
            if i not in skipped and (op.kind == "put" or (op.kind == "delete" and op.key in self.data))
        ]
        if not live:
            if not txn:
                key = parsed[0].key
                cur = self.data.get(key)
                return {
                    "key": key,
                    "revision": self.revision,
                    "superseded": True,
                    "current": cur.to_dict(key) if cur else None,
                }
            results = [_txn_result(op, i in skipped) for i, op in enumerate(parsed)]
            return {"revision": self.revision, "results": results}
        self._begin()
        results = [
            {"key": op.key, "superseded": True} if i in skipped else self._write_op(op.kind, op.key, op.value, meta)
            for i, op in enumerate(parsed)
        ]
        kind = "txn" if txn else parsed[0].kind
        self._finish(meta, kind, undoable=True, audit=None)
        if txn:
            return {"revision": self.revision, "results": results}
        if kind == "put":
            return {"key": parsed[0].key, "version": results[0]["version"], "revision": self.revision}
        return {"key": parsed[0].key, "revision": self.revision}

    def _keep_conflict(self, parsed: list[KeyOp], meta: Meta) -> dict[str, Any]:
        cid = self.next_conflict
        self.next_conflict += 1
        ops = [[op.kind, op.key, op.value] for op in parsed if op.kind != "check"]
        current = {}
        for _kind, key, _value in ops:
            cur = self.data.get(key)
            current[key] = cur.to_dict(key) if cur else None
        self.pending[cid] = {
            "id": cid,
            "revision": self.revision,
            "author": meta.author,
            "node": meta.node,
            "time": meta.time,
            "hlc": meta.hlc,
            "ops": ops,
            "current": current,
        }
        while len(self.pending) > self.max_conflicts:
            del self.pending[min(self.pending)]
        keys = [k for _, k, _ in ops]
        return {
            "error": {
                "code": "conflict_kept",
                "message": clip(
                    f"a newer change to {', '.join(keys[:8])} was made concurrently; "
                    f"kept as conflict {cid} for a person to resolve"
                ),
                "conflict_id": cid,
                "keys": keys[:32],
                "key_count": len(keys),
            }
        }

    # -- the low-level writes: records, HLC, undo group ----------------------------------

    def _begin(self) -> None:
        self.revision += 1
        self._group = GroupBuilder()

    def _put(self, key: str, value: Any, meta: Any) -> KeyValue:
        current = self.data.get(key)
        if current is None:
            kv = KeyValue(value, 1, self.revision, self.revision)
            prev = None
            before: list[Any] = []
        else:
            prev = current.value
            before = [prev]
            kv = KeyValue(value, current.version + 1, current.create_revision, self.revision)
        self.data[key] = kv
        self._touch(key, meta)
        self._record(ChangeRecord(self.revision, key, "put", value, prev, meta.author, meta.node, meta.time, meta.hlc))
        if self._group is not None:
            self._group.note(key, before, [value])
        return kv

    def _delete(self, key: str, meta: Any) -> None:
        prev = self.data.pop(key)
        self.key_hlc.pop(key, None)
        self._record(
            ChangeRecord(self.revision, key, "delete", None, prev.value, meta.author, meta.node, meta.time, meta.hlc)
        )
        if self._group is not None:
            self._group.note(key, [prev.value], [])

    def _touch(self, key: str, meta: Meta) -> None:
        last = self.key_hlc.get(key)
        if last is None or meta.stamp > last:
            self.key_hlc[key] = meta.stamp

    def _finish(self, meta: Meta, op: str, undoable: bool, audit: dict[str, Any] | None) -> None:
        """Close the change group: component versions, the undo step and
        (unless a routine write: `audit` None) the audit entry."""
        group = self._group
        assert group is not None
        touched = group.touched()
        comps: dict[str, None] = {}
        for key in touched:
            comps[key.split("/", 1)[0]] = None
        for name in comps:
            entry = self.comp_versions.setdefault(name, [0, {}])
            entry[0] += 1
            entry[1][meta.node] = entry[1].get(meta.node, 0) + 1
        changes = group.changes(self.revision)
        if undoable and changes:
            self.undo.record(Group(self.revision, op, meta.author, changes, time=meta.stamp.wall), meta.merge_ms)
        if audit is not None:
            self._audit(meta, op, keys=touched, **audit)
        self._group = None

    def _audit(self, meta: Meta, op: str, keys: list[str] | None = None, **extra: Any) -> None:
        entry: dict[str, Any] = {
            "revision": self.revision,
            "op": op,
            "author": meta.author,
            "role": meta.role,
            "node": meta.node,
            "time": meta.time,
            "hlc": meta.hlc,
        }
        if keys is not None:
            entry["keys"] = keys[:32]
            entry["key_count"] = len(keys)
        entry.update(extra)
        self.audit_trail.record(entry)

    def _set(self, key: str, slot: list[Any], meta: Meta) -> bool:
        """Make key hold slot ([] absent, [value] present); True if it changed."""
        cur = self.data.get(key)
        if slot:
            if cur is not None and json_equal(cur.value, slot[0]):
                return False
            self._put(key, slot[0], meta)
            return True
        if cur is None:
            return False
        self._delete(key, meta)
        return True

    def _holds(self, key: str, slot: list[Any], revision: int) -> bool:
        """Key holds slot (and, if revision >= 0, was last written at it)."""
        cur = self.data.get(key)
        if not slot:
            return cur is None
        if cur is None or not json_equal(cur.value, slot[0]):
            return False
        return revision < 0 or cur.mod_revision == revision

    def capture(self, components: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
        return capture(self, components)

    # -- conflicts and compaction ------------------------------------------------------------

    def _op_resolve(self, body: Resolve, meta: Meta) -> dict[str, Any]:
        cid = body.id
        if cid not in self.pending:
            raise StateError("not_found", f"no conflict {cid!r}")
        conflict = self.pending.pop(cid)
        if body.take == "theirs":
            self._begin()
            for kind, key, value in conflict["ops"]:
                self._set(key, [value] if kind == "put" else [], meta)
            self._finish(meta, "resolve", undoable=True, audit={"conflict": cid})
        else:
            self._audit(meta, "resolve", keys=[], conflict=cid)
        return {"id": cid, "take": body.take, "revision": self.revision}

    def _op_compact(self, body: Compact, meta: Meta) -> dict[str, Any]:
        rev = min(body.revision, self.revision + 1)
        while self.history and self.history[0].revision < rev:
            self.history.popleft()
        self._audit(meta, "compact", compacted=rev)
        return {"compacted": rev, "oldest": self.oldest_revision()}

    # The dispatcher: one handler per command type.
    _handlers: dict[type, Callable[[HanaState, Any, Meta], dict[str, Any]]] = {
        Put: _op_put,
        Delete: _op_delete,
        Txn: _op_txn,
        Undo: op_undo,
        Save: op_save,
        Restore: op_restore,
        DeleteSave: op_delete_save,
        ImportSave: op_import_save,
        Resolve: _op_resolve,
        Compact: _op_compact,
        SecurityEvent: op_security_event,
        Settle: op_settle,
        TrustCommand: trust_apply,
    }

    # -- membership (called by the Replica for committed conf-change entries) -------------

    def apply_conf_change(self, index: int, cc: Any) -> None:
        """Audit a committed membership change (audit.membership_entry).
        Never raises."""
        self.applied_index = max(self.applied_index, index)
        self.audit_trail.record(membership_entry(cc, self.revision, index, self.audit_trail.clock))
        if getattr(cc, "type", None) == "remove_node":  # revoke its certificates (mesh/state/trust.py)
            self.trust.revoke_node(str(cc.node), self.audit_trail.clock)

    # -- queries -----------------------------------------------------------------------

    def history_query(self, prefix: str = "", since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """GET /v1/history: {"revision","oldest","records":[record…]}; raises Compacted."""
        recs = self.changes_since(since, prefix, limit)
        return {"revision": self.revision, "oldest": self.oldest_revision(), "records": [r.to_dict() for r in recs]}

    def audit(self, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """GET /v1/audit: {"revision","oldest","entries":[{"revision","op","author","role","node","time",
        "hlc","keys"?,"key_count"?,…}]}; raises Compacted below the oldest entry held."""
        return self.audit_trail.query(since, limit, self.revision)

    def saves(self) -> dict[str, Any]:
        """GET /v1/saves: {"saves":[metadata…]} oldest first."""
        return {"saves": self.save_store.listing()}

    def save_info(self, name: str) -> dict[str, Any]:
        return save_meta(self.save_store.get(name))

    def export_save(self, name: str) -> bytes:
        """GET /v1/saves/{name}: the .hana file. Raises StateError(not_found)."""
        return self.save_store.export(name, self.cluster)

    def components(self) -> dict[str, Any]:
        """GET /v1/components: {"revision","components":[{name,prefix,order,critical,policy,description,
        schema,version,vector}…]} in dependency order."""
        out = []
        for comp in self.registry:
            version, vector = self.comp_versions.get(comp.name, [0, {}])
            out.append({**comp.describe(), "version": version, "vector": dict(sorted(vector.items()))})
        return {"revision": self.revision, "components": out}

    def conflicts(self) -> dict[str, Any]:
        return {"conflicts": [self.pending[c] for c in sorted(self.pending)]}

    def undo_status(self) -> dict[str, Any]:
        return {"stacks": self.undo.status()}

    # -- snapshots ---------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return snapshots.encode(self)

    def restore(self, blob: bytes, index: int | None = None) -> None:
        """Load a snapshot (mesh.state.snapshot); on any error raise
        ValueError and keep the current state."""
        new = self._blank()
        snapshots.decode(new, blob)
        for name in (
            "data", "history", "revision", "applied_index", "clock", "key_hlc", "comp_versions", "undo",
            "save_store", "audit_trail", "pending", "next_conflict", "requests", "trust",
        ):  # fmt: skip
            setattr(self, name, getattr(new, name))
        if index is not None:
            self.applied_index = max(self.applied_index, index)

    def _blank(self) -> HanaState:
        """An empty state with this one's configuration."""
        return HanaState(
            self.registry,
            history_limit=self.history_limit,
            audit_limit=self.audit_limit,
            audit_max_age_ms=self.audit_max_age_ms,
            undo_limit=self.undo.limit,
            max_saves=self.max_saves,
            max_recovery_points=self.max_recovery_points,
            max_save_bytes=self.max_save_bytes,
            max_conflicts=self.max_conflicts,
            cluster=self.cluster,
        )


def _safe_str(exc: BaseException) -> str:
    try:
        return clip(str(exc), 300)
    except Exception:  # a message that cannot even be printed
        return "(no message)"


def _changed_something(result: dict[str, Any]) -> bool:
    """Whether a result is worth remembering under its request id: a
    rejection (but a kept conflict) or a superseded write changed nothing,
    so a copy of it may simply apply again."""
    error = result.get("error")
    if error is not None:
        return bool(error.get("code") == "conflict_kept")
    return not result.get("superseded")


def _txn_result(op: KeyOp, skipped: bool) -> dict[str, Any]:
    if skipped:
        return {"key": op.key, "superseded": True}
    if op.kind == "delete":
        return {"key": op.key, "deleted": False}
    return {"key": op.key}
