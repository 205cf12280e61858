"""HanaState: hana's replicated state machine (components, versions, history,
undo/redo, saves, audit) over the KVStore.

Pure and deterministic: `apply(index, command_bytes) -> result` depends only on
the state and the command. Authors, origin nodes, times (ms) and hybrid
logical clock stamps travel inside the command; nothing here reads a clock, the
network, the filesystem or random numbers. Two nodes applying the same log
hold byte-identical `snapshot()`s. `restore(blob, index=None)` loads one.

HanaState is a KVStore (same `get`, `range`, `revision`, `changes_since`,
`history`), so the node's `KVStateMachine` adapter can wrap it unchanged.

Commands (JSON objects; every one may carry `author` (the authenticated
identity, default "anonymous"), `node` (origin node), `time` (ms, integer) and
`hlc` (an encoded `mesh.state.hlc.HLC`; without it the stamp is `(time, 0,
node)`)). A rejected command returns `{"error": {"code", "message", ...}}` and
changes nothing. `ERROR_STATUS` maps each code to its HTTP status.

put       {"op":"put","key","value","expected_version"?}
          -> {"key","version","revision"}
          -> {"key","revision","superseded":true,"current":{kv}}   (lww: a newer write already won)
delete    {"op":"delete","key","expected_version"?}  -> {"key","revision"}
txn       {"op":"txn","ops":[{"op":"put"|"delete"|"check","key","value"?,"expected_version"?}…]}
          -> {"revision","results":[{"key","version"}|{"key","deleted"}|{"key"}|{"key","superseded":true}…]}
          (all or nothing; one revision; version_conflict names "op_index")
undo      {"op":"undo","stack"?: author whose work to undo (default: the command's author),"force"?: bool}
          -> {"revision","undone":{"revision","op","author","keys","key_count"}}
          errors: nothing_to_undo; undo_conflict with "keys" changed since (unless force)
redo      {"op":"redo","stack"?,"force"?} -> {"revision","redone":{...}}; nothing_to_redo, undo_conflict
save      {"op":"save","name","components"?: [component…]} -> save metadata (below); save_exists,
          too_many_saves, save_too_large. Changes no key and is not an undo step.
restore   {"op":"restore","name","components"?: [component…]}
          -> {"revision","restored","components","changed","recovery_point"}
          Takes a recovery point (an automatic whole-state save named `recovery-<UTC time of the
          command>`), then writes the chosen components in dependency order as one revision
          and one undo group (keys the save lacks are deleted); other components untouched.
delete_save {"op":"delete_save","name"} -> {"name","deleted":true}; not_found
import_save {"op":"import_save","file": "<save file text>","name"?: override}
          -> save metadata; errors from mesh.state.savefile (invalid_save, checksum_mismatch,
          unsupported_schema_version, invalid_value, unknown_component), save_exists
resolve   {"op":"resolve","id","take":"theirs"|"ours"} -> {"id","take","revision"}  (manual-policy conflicts)
compact   {"op":"compact","revision"} -> {"compacted","oldest"}  (drop history records below it)

Save metadata: {"name","revision","created","author","node","auto","components":[…],"keys","bytes",
"source"?: {"cluster","revision","schema_version"} for imports, "imported_at"? revision}.

Queries (plain methods, local state): `history(prefix, since, limit)`, `audit(since, limit)` (both raise
`Compacted` for what is gone), `saves()`, `save_info(name)`, `export_save(name)` (bytes of a
`.hana` file), `components()`, `conflicts()`, `undo_status()`.

Conflict policy. Each key remembers the HLC stamp of its last write. A put or
delete *without* `expected_version` whose stamp is older than that was made
concurrently with (not after seeing) the newer write: under `lww` it loses
(skipped, answered `superseded`); under `manual` it is kept aside as a
conflict (`conflict_kept`, with its id) for a person to `resolve`. A write with
`expected_version` said exactly what it overwrites, so it is never stale.
Undo, redo, restore and resolve are explicit decisions and always apply.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from mesh.state import savefile
from mesh.state.components import DEFAULT_REGISTRY, Component, Registry, SchemaError, UnknownComponent
from mesh.state.hlc import HLC
from mesh.state.kv import (
    ChangeRecord,
    CommandError,
    Compacted,
    KeyValue,
    KVStore,
    _check,
    _expected_version,
    validate_key,
)
from mesh.state.undo import Group, GroupBuilder, UndoStacks, json_equal

SNAPSHOT_FORMAT = "hana-state"
SNAPSHOT_VERSION = 1
MAX_SAVE_NAME = 128
MAX_TXN_OPS = 1024
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")

# Request ids remembered for de-duplication (the window in which a retried
# command can still arrive: far more than the writes of one request timeout).
MAX_REMEMBERED_REQUESTS = 10_000

ERROR_STATUS: dict[str, int] = {
    "version_conflict": 409,
    "undo_conflict": 409,
    "nothing_to_undo": 409,
    "nothing_to_redo": 409,
    "save_exists": 409,
    "conflict_kept": 409,
    "not_found": 404,
    "compacted": 410,
    "save_too_large": 413,
    "too_many_saves": 413,
    # everything else (invalid_command, invalid_key, unknown_component, invalid_value,
    # invalid_save, checksum_mismatch, unsupported_schema_version): 400
}


class StateError(CommandError):
    """A rejected command, with extra fields for the error object."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(code, message)
        self.extra = extra


@dataclass(slots=True, frozen=True)
class Meta:
    author: str
    node: str
    time: int
    stamp: HLC

    @property
    def hlc(self) -> str:
        return self.stamp.encode()


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01 (proleptic
    Gregorian; H. Hinnant's algorithm). Arithmetic only: the state machine
    must not import clock modules, even to format a timestamp it was given."""
    z = days + 719_468
    era = (z if z >= 0 else z - 146_096) // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if month <= 2 else 0), month, day


def recovery_name(time_ms: int) -> str:
    """A save name for the time in the command, e.g. recovery-20261128T024312.123Z."""
    if time_ms < 0:
        return f"recovery-{time_ms}"
    seconds, ms = divmod(time_ms, 1000)
    days, rem = divmod(seconds, 86_400)
    year, month, day = civil_from_days(days)
    if year > 9999:
        return f"recovery-{time_ms}"
    hh, rem = divmod(rem, 3600)
    mm, ss = divmod(rem, 60)
    return f"recovery-{year:04d}{month:02d}{day:02d}T{hh:02d}{mm:02d}{ss:02d}.{ms:03d}Z"


class HanaState(KVStore):
    def __init__(
        self,
        registry: Registry = DEFAULT_REGISTRY,
        *,
        history_limit: int = 10_000,
        audit_limit: int = 10_000,
        undo_limit: int = 100,
        max_saves: int = 64,
        max_recovery_points: int = 8,
        max_save_bytes: int = 32 * 1024 * 1024,
        max_conflicts: int = 100,
        cluster: str = "hana",
    ) -> None:
        super().__init__(history_limit)
        if min(audit_limit, max_saves, max_recovery_points, max_save_bytes, max_conflicts) < 1:
            raise ValueError("limits must be at least 1")
        self.registry = registry
        self.cluster = cluster
        self.audit_limit = audit_limit
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
        self.saves_store: dict[str, dict[str, Any]] = {}
        self.save_seq = 0
        self.audit_log: deque[dict[str, Any]] = deque()
        self.audit_floor = 0  # audit entries below this revision are gone
        self.pending: dict[int, dict[str, Any]] = {}
        self.next_conflict = 1
        self._group: GroupBuilder | None = None
        self._stamp: Meta | None = None
        # Results of the most recent commands that carried a request id
        # ("rid"), oldest first: a command proposed twice (a forwarded write
        # retried after a leader change) is applied once and the second copy
        # answers the first's result (Raft thesis 6.3). Part of the snapshot.
        self.requests: dict[str, dict[str, Any]] = {}

    # -- apply ---------------------------------------------------------------------

    def apply(self, index: int, command: bytes) -> dict[str, Any]:
        self.applied_index = index
        try:
            cmd = orjson.loads(command)
        except orjson.JSONDecodeError:
            return _err("invalid_command", "command is not JSON")
        rid = cmd.get("rid") if isinstance(cmd, dict) else None
        if isinstance(rid, str) and rid:
            done = self.requests.get(rid)
            if done is not None:
                return done
            result = self._apply_checked(cmd)
            self.requests[rid] = result
            while len(self.requests) > MAX_REMEMBERED_REQUESTS:
                del self.requests[next(iter(self.requests))]
            return result
        return self._apply_checked(cmd)

    def _apply_checked(self, cmd: Any) -> dict[str, Any]:
        try:
            return self._apply(cmd)
        except StateError as exc:
            return {"error": {"code": exc.code, "message": str(exc), **exc.extra}}
        except CommandError as exc:
            return _err(exc.code, str(exc))
        finally:
            self._group = None

    _OPS = (
        "put",
        "delete",
        "txn",
        "undo",
        "redo",
        "save",
        "restore",
        "delete_save",
        "import_save",
        "resolve",
        "compact",
    )

    def _apply(self, cmd: Any) -> dict[str, Any]:
        if not isinstance(cmd, dict) or cmd.get("op") not in self._OPS:
            raise StateError("invalid_command", f"command must be an object with op one of {', '.join(self._OPS)}")
        meta = _meta(cmd)
        op = cmd["op"]
        handler = getattr(self, f"_op_{op}")
        result: dict[str, Any] = handler(cmd, meta)
        if ("error" not in result or result["error"]["code"] == "conflict_kept") and meta.stamp > self.clock:
            self.clock = meta.stamp
        return result

    # -- validation helpers -----------------------------------------------------------

    def _key(self, raw: Any, where: str = "") -> tuple[str, Component]:
        key = validate_key(raw)
        try:
            return key, self.registry.component_of(key)
        except UnknownComponent as exc:
            raise StateError("unknown_component", f"{where}{exc}", key=key) from None

    def _valid(self, comp: Component, key: str, value: Any, where: str = "") -> None:
        try:
            comp.validate(key, value)
        except SchemaError as exc:
            raise StateError("invalid_value", f"{where}{exc}", key=key, field=exc.field) from None

    def _component_list(self, raw: Any, allowed: list[str] | None = None) -> list[str]:
        """Chosen components (None: all allowed), in dependency order."""
        allowed = self.registry.names() if allowed is None else allowed
        if raw is None:
            return [n for n in self.registry.names() if n in allowed]
        if not isinstance(raw, list) or not raw or not all(isinstance(c, str) for c in raw):
            raise StateError("invalid_value", "components must be a non-empty list of component names")
        for c in raw:
            if c not in self.registry:
                raise StateError("unknown_component", f"unknown component {c!r}")
            if c not in allowed:
                raise StateError("invalid_value", f"component {c!r} is not in this save")
        return [n for n in self.registry.names() if n in raw]

    # -- put / delete / txn --------------------------------------------------------------

    def _op_put(self, cmd: dict[str, Any], meta: Meta) -> dict[str, Any]:
        key, comp = self._key(cmd.get("key"))
        if "value" not in cmd:
            raise StateError("invalid_value", "put needs a value")
        self._valid(comp, key, cmd["value"])
        return self._write([("put", key, _expected_version(cmd.get("expected_version")), cmd["value"], comp)], meta)

    def _op_delete(self, cmd: dict[str, Any], meta: Meta) -> dict[str, Any]:
        key, comp = self._key(cmd.get("key"))
        return self._write([("delete", key, _expected_version(cmd.get("expected_version")), None, comp)], meta)

    def _op_txn(self, cmd: dict[str, Any], meta: Meta) -> dict[str, Any]:
        ops = cmd.get("ops")
        if not isinstance(ops, list) or not ops or len(ops) > MAX_TXN_OPS:
            raise StateError("invalid_command", f"txn needs a list of 1 to {MAX_TXN_OPS} ops")
        parsed = []
        for i, op in enumerate(ops):
            if not isinstance(op, dict) or op.get("op") not in ("put", "delete", "check"):
                raise StateError("invalid_command", f"ops[{i}]: op must be put, delete or check", op_index=i)
            key, comp = self._key(op.get("key"), f"ops[{i}]: ")
            if op["op"] == "put":
                if "value" not in op:
                    raise StateError("invalid_value", f"ops[{i}]: put needs a value", op_index=i)
                self._valid(comp, key, op["value"], f"ops[{i}]: ")
            parsed.append((op["op"], key, _expected_version(op.get("expected_version")), op.get("value"), comp))
        return self._write(parsed, meta, txn=True)

    def _write(
        self, parsed: list[tuple[str, str, int | None, Any, Component]], meta: Meta, txn: bool = False
    ) -> dict[str, Any]:
        for i, (_kind, key, expected, _value, _comp) in enumerate(parsed):
            conflict = _check(key, self.data.get(key), expected)
            if conflict is not None:
                if txn:
                    conflict["error"]["op_index"] = i
                return conflict
        if not txn and parsed[0][0] == "delete" and parsed[0][1] not in self.data:
            raise StateError("not_found", f"key {parsed[0][1]!r} does not exist", key=parsed[0][1])
        # Concurrent (stale by HLC) unconditional writes: lww skips them, manual keeps them aside.
        skipped: set[int] = set()
        kept: list[int] = []
        for i, (kind, key, expected, _value, comp) in enumerate(parsed):
            if kind == "check" or expected is not None:
                continue
            last = self.key_hlc.get(key)
            if last is not None and meta.stamp < last:
                if comp.policy == "manual":
                    kept.append(i)
                else:
                    skipped.add(i)
        if kept:
            return self._keep_conflict(parsed, meta)
        live = [
            i
            for i, (kind, key, *_rest) in enumerate(parsed)
            if i not in skipped and (kind == "put" or (kind == "delete" and key in self.data))
        ]
        if not live:
            if not txn:
                key = parsed[0][1]
                cur = self.data.get(key)
                return {
                    "key": key,
                    "revision": self.revision,
                    "superseded": True,
                    "current": cur.to_dict(key) if cur else None,
                }
            return {
                "revision": self.revision,
                "results": [_txn_result(p, i in skipped, None) for i, p in enumerate(parsed)],
            }
        self._begin()
        results = [
            {"key": key, "superseded": True} if i in skipped else self._write_op(kind, key, value, meta)
            for i, (kind, key, _expected, value, _comp) in enumerate(parsed)
        ]
        op = "txn" if txn else parsed[0][0]
        self._finish(meta, op, undoable=True)
        if txn:
            return {"revision": self.revision, "results": results}
        if op == "put":
            return {"key": parsed[0][1], "version": results[0]["version"], "revision": self.revision}
        return {"key": parsed[0][1], "revision": self.revision}

    def _keep_conflict(self, parsed: list[tuple[str, str, int | None, Any, Component]], meta: Meta) -> dict[str, Any]:
        cid = self.next_conflict
        self.next_conflict += 1
        ops = [[kind, key, value] for kind, key, _e, value, _c in parsed if kind != "check"]
        current = {}
        for _kind, key, *_ in ops:
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
                "message": f"a newer change to {', '.join(keys[:8])} was made concurrently; "
                f"kept as conflict {cid} for a person to resolve",
                "conflict_id": cid,
                "keys": keys,
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

    def _finish(self, meta: Meta, op: str, undoable: bool, **audit: Any) -> None:
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
            self.undo.record(Group(self.revision, op, meta.author, changes))
        self._audit(meta, op, keys=touched, **audit)
        self._group = None

    def _audit(self, meta: Meta, op: str, keys: list[str] | None = None, **extra: Any) -> None:
        entry: dict[str, Any] = {
            "revision": self.revision,
            "op": op,
            "author": meta.author,
            "node": meta.node,
            "time": meta.time,
            "hlc": meta.hlc,
        }
        if keys is not None:
            entry["keys"] = keys[:32]
            entry["key_count"] = len(keys)
        entry.update(extra)
        self.audit_log.append(entry)
        while len(self.audit_log) > self.audit_limit:
            gone = self.audit_log.popleft()
            self.audit_floor = gone["revision"] + 1

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

    # -- undo / redo ---------------------------------------------------------------------

    def _op_undo(self, cmd: dict[str, Any], meta: Meta, redo: bool = False) -> dict[str, Any]:
        stack = cmd.get("stack", meta.author)
        force = cmd.get("force", False)
        if not isinstance(stack, str) or not isinstance(force, bool):
            raise StateError("invalid_command", "stack must be a string and force a boolean")
        word = "redo" if redo else "undo"
        group = self.undo.peek(redo, stack)
        if group is None:
            raise StateError(f"nothing_to_{word}", f"{stack!r} has nothing to {word}", stack=stack)
        if not force:
            changed = [k for k, _before, after, at in group.changes if not self._holds(k, after, at)]
            if changed:
                raise StateError(
                    "undo_conflict",
                    f"cannot {word} revision {group.revision}: {', '.join(changed[:8])} changed since "
                    f"(force to {word} anyway)",
                    keys=changed,
                    group=group.summary(),
                )
        if any(not self._holds(k, before, -1) for k, before, _after, _at in group.changes):
            self._begin()
            for key, before, _after, _at in group.changes:
                self._set(key, before, meta)
            self.undo.move(redo, stack, self.revision)
            self._finish(meta, word, undoable=False, group=group.summary())
        else:
            self.undo.move(redo, stack, self.revision)
            self._audit(meta, word, keys=[], group=group.summary())
        return {"revision": self.revision, f"{word}ne": group.summary()}

    def _op_redo(self, cmd: dict[str, Any], meta: Meta) -> dict[str, Any]:
        return self._op_undo(cmd, meta, redo=True)

    def _holds(self, key: str, slot: list[Any], revision: int) -> bool:
        """Key holds slot (and, if revision >= 0, was last written at it)."""
        cur = self.data.get(key)
        if not slot:
            return cur is None
        if cur is None or not json_equal(cur.value, slot[0]):
            return False
        return revision < 0 or cur.mod_revision == revision

    # -- saves -------------------------------------------------------------------------

    def _save_name(self, raw: Any) -> str:
        if (
            not isinstance(raw, str)
            or not 0 < len(raw) <= MAX_SAVE_NAME
            or not set(raw) <= _NAME_CHARS
            or raw[0] in ".-"
        ):
            raise StateError(
                "invalid_value",
                f"save name must be 1-{MAX_SAVE_NAME} characters of A-Z a-z 0-9 . _ - not starting with . or -",
            )
        return raw

    def capture(self, components: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {c: {} for c in components}
        for key in sorted(self.data):
            bucket = out.get(key.split("/", 1)[0])
            if bucket is not None:
                bucket[key] = self.data[key].value
        return out

    def _new_save(
        self, name: str, data: dict[str, dict[str, Any]], meta: Meta, *, revision: int, created: int, auto: bool
    ) -> dict[str, Any]:
        size = len(orjson.dumps(data))
        if size > self.max_save_bytes:
            raise StateError("save_too_large", f"save {name!r} would be {size} bytes (limit {self.max_save_bytes})")
        return {
            "name": name,
            "revision": revision,
            "created": created,
            "author": meta.author,
            "node": meta.node,
            "auto": auto,
            "bytes": size,
            "keys": sum(len(v) for v in data.values()),
            "data": data,
        }

    def _store(self, save: dict[str, Any]) -> None:
        if not save["auto"] and sum(1 for s in self.saves_store.values() if not s["auto"]) >= self.max_saves:
            raise StateError("too_many_saves", f"at most {self.max_saves} saves; delete one first")
        self.save_seq += 1
        save["seq"] = self.save_seq
        self.saves_store[save["name"]] = save
        autos = sorted((s["seq"], n) for n, s in self.saves_store.items() if s["auto"])
        for _seq, n in autos[: max(0, len(autos) - self.max_recovery_points)]:
            del self.saves_store[n]

    def _op_save(self, cmd: dict[str, Any], meta: Meta) -> dict[str, Any]:
        name = self._save_name(cmd.get("name"))
        comps = self._component_list(cmd.get("components"))
        if name in self.saves_store:
            raise StateError("save_exists", f"a save named {name!r} exists", name=name)
        save = self._new_save(name, self.capture(comps), meta, revision=self.revision, created=meta.time, auto=False)
        self._store(save)
        self._audit(meta, "save", name=name, components=comps)
        return _save_meta(save)

    def _op_delete_save(self, cmd: dict[str, Any], meta: Meta) -> dict[str, Any]:
        name = cmd.get("name")
        if not isinstance(name, str) or name not in self.saves_store:
            raise StateError("not_found", f"no save named {name!r}")
        del self.saves_store[name]
        self._audit(meta, "delete_save", name=name)
        return {"name": name, "deleted": True}

    def _op_import_save(self, cmd: dict[str, Any], meta: Meta) -> dict[str, Any]:
        text = cmd.get("file")
        if not isinstance(text, str):
            raise StateError("invalid_save", "import_save needs the save file as a string in file")
        doc = savefile.load(text, self.registry)
        name = self._save_name(cmd["name"] if cmd.get("name") is not None else doc["name"])
        if name in self.saves_store:
            raise StateError("save_exists", f"a save named {name!r} exists", name=name)
        data = {c: doc["components"][c] for c in self.registry.names() if c in doc["components"]}
        save = self._new_save(name, data, meta, revision=doc["revision"], created=doc["created"], auto=False)
        save["source"] = {
            "cluster": doc["cluster"],
            "revision": doc["revision"],
            "schema_version": doc["source_schema"],
        }
        save["imported_at"] = self.revision
        self._store(save)
        self._audit(meta, "import_save", name=name, components=list(data))
        return _save_meta(save)

    def _op_restore(self, cmd: dict[str, Any], meta: Meta) -> dict[str, Any]:
        name = cmd.get("name")
        if not isinstance(name, str) or name not in self.saves_store:
            raise StateError("not_found", f"no save named {name!r}")
        save = self.saves_store[name]
        comps = self._component_list(cmd.get("components"), list(save["data"]))
        # Validate everything before changing anything.
        for c in comps:
            comp = self.registry.get(c)
            assert comp is not None
            for key, value in save["data"][c].items():
                self._valid(comp, key, value, f"save {name!r}: ")
        base = recovery_name(meta.time)
        point, n = base, 1
        while point in self.saves_store:
            n += 1
            point = f"{base}-{n}"
        recovery = self._new_save(
            point, self.capture(self.registry.names()), meta, revision=self.revision, created=meta.time, auto=True
        )
        self._store(recovery)
        plan: list[tuple[str, list[Any]]] = []
        for c in comps:
            target = save["data"][c]
            prefix = c + "/"
            gone = [k for k in self.data if k.startswith(prefix) and k not in target]
            for key in sorted([*gone, *target]):
                plan.append((key, [target[key]] if key in target else []))
        changed = [(k, s) for k, s in plan if not self._holds(k, s, -1)]
        if changed:
            self._begin()
            for key, slot in changed:
                self._set(key, slot, meta)
            self._finish(meta, "restore", undoable=True, name=name, components=comps, recovery_point=point)
        else:
            self._audit(meta, "restore", keys=[], name=name, components=comps, recovery_point=point)
        return {
            "revision": self.revision,
            "restored": name,
            "components": comps,
            "changed": len(changed),
            "recovery_point": point,
        }

    # -- conflicts and compaction ------------------------------------------------------

    def _op_resolve(self, cmd: dict[str, Any], meta: Meta) -> dict[str, Any]:
        cid, take = cmd.get("id"), cmd.get("take")
        if take not in ("theirs", "ours"):
            raise StateError("invalid_value", "take must be theirs (apply the kept change) or ours (drop it)")
        if type(cid) is not int or cid not in self.pending:
            raise StateError("not_found", f"no conflict {cid!r}")
        conflict = self.pending.pop(cid)
        if take == "theirs":
            self._begin()
            for kind, key, value in conflict["ops"]:
                self._set(key, [value] if kind == "put" else [], meta)
            self._finish(meta, "resolve", undoable=True, conflict=cid)
        else:
            self._audit(meta, "resolve", keys=[], conflict=cid)
        return {"id": cid, "take": take, "revision": self.revision}

    def _op_compact(self, cmd: dict[str, Any], meta: Meta) -> dict[str, Any]:
        rev = cmd.get("revision")
        if type(rev) is not int or rev < 0:
            raise StateError("invalid_value", "compact needs a non-negative integer revision")
        rev = min(rev, self.revision + 1)
        while self.history and self.history[0].revision < rev:
            self.history.popleft()
        self._audit(meta, "compact", compacted=rev)
        return {"compacted": rev, "oldest": self.oldest_revision()}

    # -- queries -----------------------------------------------------------------------

    def history_query(self, prefix: str = "", since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """GET /v1/history: {"revision","oldest","records":[record…]}; raises Compacted."""
        recs = self.changes_since(since, prefix, limit)
        return {"revision": self.revision, "oldest": self.oldest_revision(), "records": [r.to_dict() for r in recs]}

    def audit(self, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """GET /v1/audit: {"revision","oldest","entries":[{"revision","op","author","node","time","hlc",
        "keys"?,"key_count"?,…}]}; raises Compacted below the oldest entry held."""
        if since < self.audit_floor:
            raise Compacted(since, self.audit_floor)
        out = []
        for e in self.audit_log:
            if e["revision"] >= since:
                out.append(e)
                if limit is not None and len(out) >= limit:
                    break
        return {"revision": self.revision, "oldest": self.audit_floor, "entries": out}

    def saves(self) -> dict[str, Any]:
        """GET /v1/saves: {"saves":[metadata…]} oldest first."""
        return {"saves": [_save_meta(s) for s in sorted(self.saves_store.values(), key=lambda s: s["seq"])]}

    def save_info(self, name: str) -> dict[str, Any]:
        if name not in self.saves_store:
            raise StateError("not_found", f"no save named {name!r}")
        return _save_meta(self.saves_store[name])

    def export_save(self, name: str) -> bytes:
        """GET /v1/saves/{name}: the .hana file. Raises StateError(not_found)."""
        if name not in self.saves_store:
            raise StateError("not_found", f"no save named {name!r}")
        s = self.saves_store[name]
        return savefile.export(
            name=name, cluster=self.cluster, revision=s["revision"], created=s["created"], components=s["data"]
        )

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
        doc = {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "revision": self.revision,
            "applied_index": self.applied_index,
            "history_limit": self.history_limit,
            "clock": self.clock.encode(),
            "data": {
                k: [v.value, v.version, v.create_revision, v.mod_revision, _enc(self.key_hlc.get(k))]
                for k, v in sorted(self.data.items())
            },
            "history": [r.to_dict() for r in self.history],
            "components": self.comp_versions,
            "undo": self.undo.to_json(),
            "saves": self.saves_store,
            "save_seq": self.save_seq,
            "audit": list(self.audit_log),
            "audit_floor": self.audit_floor,
            "conflicts": [self.pending[c] for c in sorted(self.pending)],
            "next_conflict": self.next_conflict,
            # In apply order (a list: sorting the keys would lose it).
            "requests": [[rid, res] for rid, res in self.requests.items()],
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    def restore(self, blob: bytes, index: int | None = None) -> None:
        """Load a snapshot (ours, or a plain KVStore's "hana-kv" one); on any
        error raise ValueError and keep the current state."""
        try:
            doc = orjson.loads(blob)
            if not isinstance(doc, dict):
                raise ValueError("snapshot is not an object")
            if doc.get("format") == "hana-kv":
                kv = KVStore(self.history_limit)
                kv.restore(blob)
                new = self._blank()
                new.data, new.history, new.revision, new.applied_index = (
                    kv.data,
                    kv.history,
                    kv.revision,
                    kv.applied_index,
                )
            elif doc.get("format") == SNAPSHOT_FORMAT and doc.get("version") == SNAPSHOT_VERSION:
                new = self._blank()
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
                new.saves_store = dict(doc["saves"])
                new.save_seq = int(doc["save_seq"])
                new.audit_log = deque(doc["audit"])
                new.audit_floor = int(doc["audit_floor"])
                new.pending = {int(c["id"]): c for c in doc["conflicts"]}
                new.next_conflict = int(doc["next_conflict"])
                new.requests = {str(rid): dict(res) for rid, res in doc.get("requests", [])}
            else:
                raise ValueError(f"unknown snapshot format {doc.get('format')!r} v{doc.get('version')!r}")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ValueError(f"invalid state snapshot: {exc}") from exc
        for name in (
            "data", "history", "revision", "applied_index", "clock", "key_hlc", "comp_versions", "undo",
            "saves_store", "save_seq", "audit_log", "audit_floor", "pending", "next_conflict", "requests",
        ):  # fmt: skip
            setattr(self, name, getattr(new, name))
        if index is not None:
            self.applied_index = max(self.applied_index, index)

    def _blank(self) -> HanaState:
        return HanaState(
            self.registry,
            history_limit=self.history_limit,
            audit_limit=self.audit_limit,
            undo_limit=self.undo.limit,
            cluster=self.cluster,
        )


def _enc(h: HLC | None) -> str:
    return h.encode() if h is not None else ""


def _meta(cmd: dict[str, Any]) -> Meta:
    author = cmd.get("author", "anonymous")
    node = cmd.get("node", "")
    time = cmd.get("time", 0)
    if not isinstance(author, str) or not isinstance(node, str) or type(time) is not int:
        raise StateError("invalid_command", "author and node must be strings, time an integer")
    raw = cmd.get("hlc")
    if raw is None:
        stamp = HLC(max(time, 0), 0, node)
    else:
        try:
            stamp = HLC.decode(raw)
        except ValueError as exc:
            raise StateError("invalid_command", str(exc)) from None
    return Meta(author, node, time, stamp)


def _txn_result(p: tuple[str, str, int | None, Any, Component], skipped: bool, _: Any) -> dict[str, Any]:
    kind, key = p[0], p[1]
    if skipped:
        return {"key": key, "superseded": True}
    if kind == "delete":
        return {"key": key, "deleted": False}
    return {"key": key}


def _save_meta(save: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in save.items() if k not in ("data", "seq")}
    out["components"] = list(save["data"])
    return out


def _err(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
