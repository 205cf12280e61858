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

Offline writes (issue 14) carry `made`, the HLC stamp of the moment they were
made on a node cut off from the controller, and per op a `base_version`.
The edit's stamp is what counts for them: the key remembers it (and a
deleted key its last stamp, in `tombstones`), so under `lww` the later edit
wins whatever order the log brings them in (the loser answered
`superseded`), and under `manual` a write whose key is no longer at its
base version is kept as a conflict. Conflicts are listed in the contract's
shape (`conflicts()`), resolved with take current|proposed|value (one
revision, one undo step, audited; resolved ones are kept, bounded, so that
resolving twice is `conflict_resolved`), and announced as `notices` the node
takes after each apply. `reset` sets a component's keys to its defaults.
The result of every offline write is remembered under its request id, so
that a replay repeated after a crash is answered with the first one's.
"""

from __future__ import annotations

import dataclasses
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
    Reset,
    Resolve,
    Restore,
    Save,
    SecurityEvent,
    Settle,
    Txn,
    Undo,
    parse_command,
)
from mesh.state.components import DEFAULT_REGISTRY, Registry, SchemaError
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

# Deleted keys whose last stamp is remembered (so that an offline write made
# before a delete loses to it under lww), and resolved conflicts kept (so
# that resolving twice says so), at most; the oldest go first.
MAX_TOMBSTONES = 10_000
MAX_RESOLVED = 1_000
# Notices (conflicts opened or resolved) held for the node to take, at most.
MAX_NOTICES = 1_000

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
        # Issue 14. The last stamp of each deleted key (insertion order,
        # bounded), resolved conflicts by id (bounded), both in the snapshot;
        # and notices for the node (conflicts opened or resolved: watch
        # events, the warning of a critical one), not part of the state.
        self.tombstones: dict[str, HLC] = {}
        self.resolved: dict[int, dict[str, Any]] = {}
        self.notices: list[dict[str, Any]] = []
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
        offline = isinstance(raw, dict) and raw.get("made") is not None
        # An offline write's replay is remembered whatever it did, so that a
        # replay after a crash gets the first one's fate (issue 14).
        if rid is not None and (_changed_something(result) or offline):
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
            if meta.made is not None and meta.made > self.clock:
                # The controller stamps what it appends after this past the
                # edit's own stamp: a later decision still wins.
                self.clock = meta.made
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
        made = meta.made
        if not txn and parsed[0].kind == "delete" and parsed[0].key not in self.data:
            last = self.tombstones.get(parsed[0].key)
            if made is not None and last is not None and made < last:
                return {"key": parsed[0].key, "revision": self.revision, "superseded": True, "current": None}
            raise StateError("not_found", f"key {parsed[0].key!r} does not exist", key=parsed[0].key)
        # Concurrent (stale by HLC) unconditional writes: lww skips them, manual keeps them aside.
        skipped: set[int] = set()
        kept: list[int] = []
        for i, op in enumerate(parsed):
            if op.kind == "check" or op.expected is not None:
                continue
            if made is not None:
                # An offline write (issue 14): the stamp of the moment it was
                # made decides under lww; under manual, a key changed since
                # the version the writer saw makes it a conflict.
                if op.component.policy == "manual" and op.base is not None:
                    cur = self.data.get(op.key)
                    if (cur.version if cur is not None else 0) != op.base:
                        kept.append(i)
                    continue
                last = self.key_hlc.get(op.key) or self.tombstones.get(op.key)
                if last is not None and made < last:
                    if op.component.policy == "manual":
                        kept.append(i)
                    else:
                        skipped.add(i)
                continue
            # A deleted key keeps its last stamp (issue 14): with offline
            # writes stamped by the moment they were made, a delete's stamp may
            # be later than the controller's next one.
            last = self.key_hlc.get(op.key) or self.tombstones.get(op.key)
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
        record = self.pending.get(cid)
        if record is not None:
            # Issue 14: what GET /v1/conflicts shows, and the notice.
            comp = parsed[0].component
            for op in parsed:
                if op.kind != "check":
                    comp = op.component
                    break
            record.update(key=keys[0], component=comp.name, critical=comp.critical, status="open")
            if meta.made is not None:
                record["made"] = meta.made.encode()
                record["base"] = {op.key: op.base for op in parsed if op.kind != "check" and op.base is not None}
            self._notice(record)
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
        self._record(
            ChangeRecord(self.revision, key, "put", value, prev, meta.author, meta.node, meta.time, _edit(meta))
        )
        if self._group is not None:
            self._group.note(key, before, [value])
        return kv

    def _delete(self, key: str, meta: Any) -> None:
        prev = self.data.pop(key)
        last = self.key_hlc.pop(key, None)
        stamp = meta.made if meta.made is not None else meta.stamp
        self.tombstones.pop(key, None)
        self.tombstones[key] = stamp if last is None or stamp > last else last
        while len(self.tombstones) > MAX_TOMBSTONES:
            del self.tombstones[next(iter(self.tombstones))]
        self._record(
            ChangeRecord(self.revision, key, "delete", None, prev.value, meta.author, meta.node, meta.time, _edit(meta))
        )
        if self._group is not None:
            self._group.note(key, [prev.value], [])

    def _touch(self, key: str, meta: Meta) -> None:
        # An offline write is stamped by the moment it was made (issue 14).
        stamp = meta.made if meta.made is not None else meta.stamp
        last = self.key_hlc.get(key)
        if last is None:
            last = self.tombstones.pop(key, None)
        if last is None or stamp > last:
            self.key_hlc[key] = stamp
        else:
            self.key_hlc[key] = last

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
            step = Group(self.revision, op, meta.author, changes, time=meta.stamp.wall)
            merged = self.undo.record(step, meta.merge_ms)
            if merged is not None and meta.coalesce:
                self._coalesce(changes[0][0], merged)
        if audit is not None:
            self._audit(meta, op, keys=touched, **audit)
        self._group = None

    def _coalesce(self, key: str, earlier: int) -> None:
        """History coalescing (mesh/state/commands.py): this revision's
        record of `key` takes the place of the record at `earlier`, the write
        it merged into, and keeps that one's before-value. Records since
        `earlier` are searched from the newest (a merge window is short); a
        record already compacted away is left so, and so is the oldest one
        held: the oldest record's revision is where history starts
        (`oldest_revision`), and a watcher resuming from before it would be
        told its changes were compacted."""
        history = self.history
        latest = history[-1] if history else None
        if latest is None or latest.key != key or latest.revision != self.revision:
            return
        for at in range(len(history) - 2, -1, -1):
            rec = history[at]
            if rec.revision < earlier:
                return
            if rec.revision == earlier and rec.key == key:
                if at == 0:
                    return
                del history[at]
                history[-1] = dataclasses.replace(latest, prev_value=rec.prev_value)
                return

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
        if body.take not in ("theirs", "ours"):
            return self._resolve(body, meta)
        # The first form (theirs/ours), exactly as it applied before issue 14.
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

    def _resolve(self, body: Resolve, meta: Meta) -> dict[str, Any]:
        """Issue 14: take current (keep what is there), proposed (apply the
        kept write) or value (set the conflict's key to it). Checked in full
        before anything changes; one revision and one undo step when keys
        change; audited; the conflict is kept as resolved."""
        cid = body.id
        conflict = self.pending.get(cid)
        if conflict is None:
            if cid in self.resolved:
                raise StateError("conflict_resolved", f"conflict {cid} is resolved already", id=cid)
            raise StateError("not_found", f"no conflict {cid!r}", id=cid)
        ops = conflict["ops"]
        key = conflict.get("key") or (ops[0][1] if ops else "")
        if body.take == "value":
            if len(ops) != 1:
                raise StateError(
                    "invalid_value", f"conflict {cid} covers {len(ops)} keys: take current or proposed", id=cid
                )
            try:
                self.registry.validate(key, body.value)
            except SchemaError as exc:
                raise StateError("invalid_value", str(exc), key=key, field=exc.field) from None
            except LookupError as exc:
                raise StateError("unknown_component", str(exc), key=key) from None
        del self.pending[cid]
        if body.take == "current":
            self._audit(meta, "resolve", keys=[], conflict=cid, take="current")
        else:
            self._begin()
            if body.take == "value":
                self._set(key, [body.value], meta)
            else:
                for kind, k, value in ops:
                    self._set(k, [value] if kind == "put" else [], meta)
            self._finish(meta, "resolve", undoable=True, audit={"conflict": cid, "take": body.take})
        done = {
            **conflict,
            "status": "resolved",
            "resolution": {"take": body.take, "revision": self.revision, "author": meta.author, "time": meta.time},
        }
        self.resolved[cid] = done
        while len(self.resolved) > MAX_RESOLVED:
            del self.resolved[next(iter(self.resolved))]
        self._notice(done)
        return {"id": cid, "take": body.take, "revision": self.revision, "key": key}

    def _notice(self, record: dict[str, Any]) -> None:
        ops = record.get("ops") or []
        key = record.get("key") or (ops[0][1] if ops else "")
        self.notices.append(
            {
                "type": "conflict",
                "id": record["id"],
                "key": key,
                "keys": [k for _, k, _ in ops][:32],
                "component": record.get("component", key.split("/", 1)[0]),
                "status": record.get("status", "open"),
                "critical": bool(record.get("critical", False)),
            }
        )
        del self.notices[:-MAX_NOTICES]

    def take_notices(self) -> list[dict[str, Any]]:
        """The notices since the last call (conflicts opened or resolved)."""
        out, self.notices = self.notices, []
        return out

    # -- reset to defaults ---------------------------------------------------------------

    def _op_reset(self, body: Reset, meta: Meta) -> dict[str, Any]:
        comp = self.registry.get(body.component)
        assert comp is not None  # parse_command checked it
        if body.keys is None:
            targets = sorted({k for k, _ in self.range(comp.prefix)} | set(comp.defaults))
        else:
            targets = list(body.keys)
        todo = []
        for key in targets:
            slot = [comp.defaults[key]] if key in comp.defaults else []
            if not self._holds(key, slot, -1):
                todo.append((key, slot))
        if not todo:
            return {"revision": self.revision, "keys": []}
        self._begin()
        for key, slot in todo:
            self._set(key, slot, meta)
        self._finish(meta, "reset", undoable=True, audit={"component": comp.name})
        return {"revision": self.revision, "keys": [k for k, _ in todo]}

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
        Reset: _op_reset,
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

    def conflicts(self, include_resolved: bool = False) -> dict[str, Any]:
        """GET /v1/conflicts: {"conflicts":[{"id","key","keys","component","status","critical",
        "base_version","revision","current":{value,version,author,time},
        "proposed":{op,value,author,node,time},"resolution"?}…]}: the open ones by id (and the
        resolved ones held, with include_resolved)."""
        records = [self.pending[c] for c in sorted(self.pending)]
        if include_resolved:
            records = sorted([*records, *self.resolved.values()], key=lambda r: int(r["id"]))
        writers = self._last_writers({_conflict_key(r) for r in records})
        return {"conflicts": [self.conflict_view(r, writers) for r in records]}

    def conflict(self, cid: int) -> dict[str, Any] | None:
        """One conflict, open or resolved (None if unknown)."""
        record = self.pending.get(cid) or self.resolved.get(cid)
        return self.conflict_view(record) if record is not None else None

    def conflict_view(
        self, record: dict[str, Any], writers: dict[str, tuple[str, int]] | None = None
    ) -> dict[str, Any]:
        ops = record.get("ops") or []
        key = _conflict_key(record)
        kind, value = next(((k, v) for k, kk, v in ops if kk == key), ("put", None))
        cur = self.data.get(key)
        if writers is None:
            writers = self._last_writers({key})
        author, time = writers.get(key, (None, None)) if cur is not None else (None, None)
        view: dict[str, Any] = {
            "id": record["id"],
            "key": key,
            "keys": [k for _, k, _ in ops],
            "component": record.get("component", key.split("/", 1)[0]),
            "status": record.get("status", "open"),
            "critical": bool(record.get("critical", False)),
            "base_version": (record.get("base") or {}).get(key),
            "revision": record.get("revision"),
            "current": {
                "value": cur.value if cur is not None else None,
                "version": cur.version if cur is not None else 0,
                "author": author,
                "time": time,
            },
            "proposed": {
                "op": kind,
                "value": value,
                "author": record.get("author"),
                "node": record.get("node"),
                "time": record.get("time"),
                "made": record.get("made", record.get("hlc")),
            },
        }
        if "resolution" in record:
            view["resolution"] = record["resolution"]
        return view

    def _last_writers(self, keys: set[str]) -> dict[str, tuple[str, int]]:
        """Who last wrote each of `keys` and when, from the history held (one pass)."""
        out: dict[str, tuple[str, int]] = {}
        for rec in reversed(self.history):
            if rec.key in keys and rec.key not in out:
                out[rec.key] = (rec.author, rec.time)
                if len(out) == len(keys):
                    break
        return out

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
            "save_store", "audit_trail", "pending", "next_conflict", "requests", "tombstones", "resolved", "trust",
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


def _conflict_key(record: dict[str, Any]) -> str:
    ops = record.get("ops") or []
    return str(record.get("key") or (ops[0][1] if ops else ""))


def _edit(meta: Meta) -> str:
    """The stamp a change record carries: the controller's, or for an
    offline write the moment it was made (issue 14)."""
    return meta.made.encode() if meta.made is not None else meta.hlc


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
