"""Commands: parsed once, by one function, into typed values.

`parse_command(raw, registry)` turns a decoded command (a JSON object) into a
`Command`: its `Meta` (who, from where, when, with which role) and a frozen
body per op. It checks everything that does not depend on the state: op and
fields (unknown fields are refused), key syntax and component, every value
(depth, size, JSON types; `mesh.state.values.check_value`) and its schema,
save names and component lists, integers in range, an imported save file
parsed, checksummed, migrated and validated, and the role the op needs.
`HanaState.prevalidate` (the API, before proposing) and `HanaState.apply`
(every node, for every entry) both call it, so they cannot disagree.

Common fields of every command: `op`; `author` (the authenticated identity,
default "anonymous"), `role` ("reader" | "operator" | "admin"; absent counts
as "operator"), `node` (origin node), `time` (ms), `hlc` (an encoded
`mesh.state.hlc.HLC`, spliced in by the controller; absent: `(time, 0,
node)`), `rid` (a request id for de-duplication), `made` (issue 14: put,
delete and txn only: the HLC stamp of the moment an offline write was made,
on the node that queued it; with it, ops may carry `base_version`, the
version the writer saw, 0 for absent).

Roles: a reader changes nothing (`forbidden`); `restore`, `import_save`,
`delete_save` and `compact` need "admin" (`forbidden`, 403). Undoing or
redoing a restore also needs "admin"; that depends on the state and is
checked when the undo is applied (`ADMIN_GROUPS`).

The commands and their answers (a rejection is `{"error": {"code",
"message", ...}}`; codes and statuses in `mesh.state.errors.ERROR_STATUS`):

put       {"op":"put","key","value","expected_version"?}
          -> {"key","version","revision"}
          -> {"key","revision","superseded":true,"current":{kv}}   (lww: a newer write already won)
delete    {"op":"delete","key","expected_version"?}  -> {"key","revision"}
txn       {"op":"txn","ops":[{"op":"put"|"delete"|"check","key","value"?,"expected_version"?}…]}
          -> {"revision","results":[{"key","version"}|{"key","deleted"}|{"key"}|{"key","superseded":true}…]}
          (all or nothing; one revision; an error in one op names "op_index")
undo      {"op":"undo","stack"?: author whose work to undo (default: the command's author),"force"?: bool}
          -> {"revision","undone":{"revision","op","author","keys","key_count"}}
          errors: nothing_to_undo; undo_conflict with "keys" changed since (unless force);
          forbidden: undoing a restore needs the admin role
redo      {"op":"redo","stack"?,"force"?} -> {"revision","redone":{...}}; nothing_to_redo, undo_conflict, forbidden
save      {"op":"save","name","components"?: [component…]} -> save metadata (below); save_exists,
          too_many_saves, save_too_large. Changes no key and is not an undo step.
restore   {"op":"restore","name","components"?: [component…]}   (admin)
          -> {"revision","restored","components","changed","recovery_point"}
          Takes a recovery point (an automatic whole-state save named `recovery-<UTC time of the
          command>`), then writes the chosen components in dependency order as one revision
          and one undo group (keys the save lacks are deleted); other components untouched.
delete_save {"op":"delete_save","name"} -> {"name","deleted":true}; not_found   (admin)
import_save {"op":"import_save","file": "<save file text>","name"?: override or null}   (admin)
          or {"op":"import_save","doc": <the save file parsed>,"name"?}   (what HanaState.prepare proposes)
          -> save metadata; errors from mesh.state.savefile (invalid_save, checksum_mismatch,
          unsupported_schema_version, invalid_value, unknown_component, too_deep, too_large), save_exists
resolve   {"op":"resolve","id","take":"current"|"proposed"|"value","value"?}
          -> {"id","take","revision","key"}   (issue 14: keep the current value, apply the kept write,
          or set the conflict's key to `value`; one revision and one undo step when something changes,
          audited; not_found, conflict_resolved (409) when resolved already, invalid_value)
          {"op":"resolve","id","take":"theirs"|"ours"} -> {"id","take","revision"}  (the first form,
          kept so that logs holding it apply as they did: theirs = proposed, ours = current, and
          the conflict is dropped rather than kept as resolved)
reset     {"op":"reset","component","keys"?: [key…]} -> {"revision","keys":[changed key…]}
          (issue 14: the component's keys, or the chosen ones, set to the component's defaults, keys
          without a default deleted; one revision and one undo step, audited)
compact   {"op":"compact","revision"} -> {"compacted","oldest"}   (admin; drops history records below it)
security_event {"op":"security_event","event": snake_case,"address","count": int >= 1,"path"}
          -> {"revision","recorded": event}; one audit entry, changes no key and no revision
settle    {"op":"settle","gesture": id,"seq": int,"values": {key: value, …}}   (mesh/state/gestures.py)
          -> {"revision","gesture","keys": [key…]}
          A live gesture's final values, committed by its origin node once it ended: one revision,
          one history record per key carrying "gesture" (and "gesture_seq": `seq`, the origin's
          last live sequence number the values cover), one undo step for the whole gesture.

Command merging: `merge_ms` (a common field, 0..60000, default 0; the node
stamps its `--merge-ms` into puts and deletes) merges a single-key put or
delete into the author's previous undo step when that step is a single-key
write of the same key, still current, made at most `merge_ms` before it (by
the controller's HLC stamps, so every node decides alike): successive
writes of one fader become one undo step; history keeps every record.
History coalescing: `coalesce` (a common field, true or false, default
false; the node stamps it into puts and deletes under `--coalesce-history`)
makes such a merged write also take the place of the history record of the
write it merged into: the new record keeps that one's before-value, so a
run of merged writes reads as one change in history, as in the undo stack.

Save metadata: {"name","revision","created","author","node","auto","components":[…],"keys","bytes",
"source"?: {"cluster","revision","schema_version"} for imports, "imported_at"? revision}.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh.state import savefile, trust
from mesh.state.components import Component, Registry, SchemaError, UnknownComponent
from mesh.state.errors import StateError
from mesh.state.hlc import HLC
from mesh.state.kv import CommandError, validate_key
from mesh.state.limits import (
    MAX_EVENT_ADDRESS,
    MAX_EVENT_PATH,
    MAX_NAME_CHARS,
    MAX_RID_CHARS,
    MAX_SAVE_NAME,
    MAX_TXN_OPS,
)
from mesh.state.values import check_value, describe

ROLES = ("reader", "operator", "admin")
DEFAULT_ROLE = "operator"
# Ops that need the admin role whatever the state.
ADMIN_OPS = frozenset({"restore", "import_save", "delete_save", "compact"})
# Change groups (by op) whose undo or redo needs the admin role.
ADMIN_GROUPS = frozenset({"restore", "import_save", "import"})

COMMON_FIELDS = frozenset({"op", "author", "role", "node", "time", "hlc", "rid", "merge_ms", "coalesce", "made"})
# The largest command-merging window (ms).
MAX_MERGE_MS = 60_000
# The ops an offline write (`made`) may be.
MADE_OPS = frozenset({"put", "delete", "txn"})
RESOLVE_TAKES = ("current", "proposed", "value")
LEGACY_TAKES = ("theirs", "ours")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_EVENT = re.compile(r"[a-z][a-z0-9_]{0,63}")
_I63 = 1 << 63
_ZERO = HLC()


@dataclass(slots=True, frozen=True)
class Meta:
    author: str = "anonymous"
    node: str = ""
    time: int = 0
    stamp: HLC = _ZERO
    role: str = DEFAULT_ROLE
    rid: str | None = None
    # The command carries a controller's stamp (`hlc`), not one made up from `time`.
    stamped: bool = False
    # Command merging window (ms; 0: none), see the module docstring.
    merge_ms: int = 0
    # History coalescing: a merged write also replaces the history record of
    # the write it merged into, see the module docstring.
    coalesce: bool = False
    # An offline write: the stamp of the moment it was made (issue 14).
    made: HLC | None = None
    # The command's `hlc` text when it is exactly `stamp.encode()` (as the
    # controller writes it): kept so that applying does not encode it again.
    hlc_text: str | None = None

    @property
    def hlc(self) -> str:
        return self.hlc_text if self.hlc_text is not None else self.stamp.encode()

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(slots=True, frozen=True)
class KeyOp:
    """One put, delete or check (alone, or one op of a txn)."""

    kind: str
    key: str
    component: Component
    expected: int | None
    value: Any = None
    # An offline write's base version (0: the key was absent).
    base: int | None = None


@dataclass(slots=True, frozen=True)
class Put:
    op: KeyOp


@dataclass(slots=True, frozen=True)
class Delete:
    op: KeyOp


@dataclass(slots=True, frozen=True)
class Txn:
    ops: tuple[KeyOp, ...]


@dataclass(slots=True, frozen=True)
class Undo:
    stack: str | None  # None: the command's author
    force: bool
    redo: bool


@dataclass(slots=True, frozen=True)
class Save:
    name: str
    components: tuple[str, ...] | None  # None: all


@dataclass(slots=True, frozen=True)
class Restore:
    name: str
    components: tuple[str, ...] | None  # None: all the save holds


@dataclass(slots=True, frozen=True)
class DeleteSave:
    name: str


@dataclass(slots=True, frozen=True)
class ImportSave:
    name: str  # the override, or the file's own name
    doc: dict[str, Any]  # savefile.load's result: the current (v2) document, validated


@dataclass(slots=True, frozen=True)
class Resolve:
    id: int
    take: str
    value: Any = None  # take == "value"


@dataclass(slots=True, frozen=True)
class Reset:
    component: str
    keys: tuple[str, ...] | None  # None: every key of the component, and its defaults


@dataclass(slots=True, frozen=True)
class Compact:
    revision: int


@dataclass(slots=True, frozen=True)
class SecurityEvent:
    event: str
    address: str
    count: int
    path: str


@dataclass(slots=True, frozen=True)
class Settle:
    gesture: str
    seq: int
    ops: tuple[KeyOp, ...]


# TrustCommand: cluster credentials (issue 18), mesh/state/trust.py.
Body = (
    Put
    | Delete
    | Txn
    | Undo
    | Save
    | Restore
    | DeleteSave
    | ImportSave
    | Resolve
    | Compact
    | SecurityEvent
    | Settle
    | Reset
    | trust.TrustCommand
)


@dataclass(slots=True, frozen=True)
class Command:
    op: str
    meta: Meta
    body: Body


# -- field helpers ------------------------------------------------------------------------


def _fields(raw: dict[str, Any], allowed: frozenset[str], where: str = "") -> None:
    if raw.keys() <= allowed:
        return
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        names = ", ".join(describe(k, 40) for k in sorted(unknown)[:8])
        raise StateError("invalid_command", f"{where}unknown field(s) {names}")


def _text(raw: Any, what: str, limit: int, code: str = "invalid_command", empty: bool = True) -> str:
    if not isinstance(raw, str) or len(raw) > limit or (not empty and not raw):
        size = "a non-empty string" if not empty else "a string"
        raise StateError(code, f"{what} must be {size} of at most {limit} characters, got {describe(raw)}")
    return raw


def _int(raw: Any, what: str, low: int, high: int, code: str = "invalid_value") -> int:
    if type(raw) is not int or not low <= raw <= high:
        raise StateError(code, f"{what} must be an integer from {low} to {high}, got {describe(raw)}")
    return raw


def save_name(raw: Any) -> str:
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_SAVE_NAME or not set(raw) <= _NAME_CHARS or raw[0] in ".-":
        raise StateError(
            "invalid_value",
            f"save name must be 1-{MAX_SAVE_NAME} characters of A-Z a-z 0-9 . _ - not starting with . or -",
        )
    return raw


def _existing_name(raw: Any) -> str:
    """The name of a save that should exist (looked up later: not_found)."""
    return _text(raw, "name", MAX_NAME_CHARS, code="invalid_value")


def _components(raw: Any, registry: Registry) -> tuple[str, ...] | None:
    """Chosen components in dependency order; None: all."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(c, str) for c in raw):
        raise StateError("invalid_value", "components must be a non-empty list of component names")
    for c in raw:
        if c not in registry:
            raise StateError("unknown_component", f"unknown component {describe(c)}")
    return tuple(n for n in registry.names() if n in raw)


_HLC_TEXT = re.compile(rf"([0-9]{{1,19}})\.([0-9]{{1,19}})\.(.{{0,{MAX_NAME_CHARS}}})", re.DOTALL)
# Where the dots of an encoded stamp (mesh.state.hlc: 15 wall digits, 6
# logical) are.
_WALL_END = 15
_LOGICAL_END = _WALL_END + 1 + 6


def _hlc(raw: Any) -> HLC:
    """A stamp exactly as HLC.encode writes it (ASCII digits, bounded)."""
    m = _HLC_TEXT.fullmatch(raw) if type(raw) is str else None
    if m is None:
        raise StateError("invalid_command", f"hlc must be an encoded stamp, got {describe(raw)}")
    return HLC(int(m[1]), int(m[2]), m[3])


def _name_field(raw: dict[str, Any], name: str, default: str) -> str:
    value = raw.get(name, default)
    if type(value) is not str or len(value) > MAX_NAME_CHARS:
        raise StateError("invalid_command", f"{name} must be a string of at most {MAX_NAME_CHARS} characters")
    return value


def parse_meta(raw: dict[str, Any]) -> Meta:
    author = _name_field(raw, "author", "anonymous")
    node = _name_field(raw, "node", "")
    time = raw.get("time", 0)
    if type(time) is not int or not -_I63 <= time < _I63:
        raise StateError("invalid_command", f"time must be an integer (ms) of 64 bits, got {describe(time)}")
    role = raw.get("role", DEFAULT_ROLE)
    if role not in ROLES:
        raise StateError("invalid_command", f"role must be one of {', '.join(ROLES)}, got {describe(role)}")
    rid = raw.get("rid")
    if rid == "":
        rid = None
    elif rid is not None and (type(rid) is not str or len(rid) > MAX_RID_CHARS):
        raise StateError("invalid_command", f"rid must be a string of at most {MAX_RID_CHARS} characters")
    hlc = raw.get("hlc")
    stamp = _hlc(hlc) if hlc is not None else HLC(max(time, 0), 0, node)
    # Matched by _hlc: exactly 15 wall and 6 logical digits are what encode
    # writes for this stamp (any other width is encoded again when needed).
    canonical = (
        hlc is not None
        and hlc[_WALL_END : _WALL_END + 1] == "."
        and hlc[_LOGICAL_END : _LOGICAL_END + 1] == "."
        and hlc[_WALL_END + 1 : _LOGICAL_END].isdigit()
    )
    merge_ms = _int(raw.get("merge_ms", 0), "merge_ms", 0, MAX_MERGE_MS, code="invalid_command")
    coalesce = raw.get("coalesce", False)
    if type(coalesce) is not bool:
        raise StateError("invalid_command", "coalesce must be true or false")
    made = raw.get("made")
    return Meta(
        author,
        node,
        time,
        stamp,
        role,
        rid,
        hlc is not None,
        merge_ms=merge_ms,
        coalesce=coalesce,
        made=_hlc(made) if made is not None else None,
        hlc_text=hlc if canonical else None,
    )


# -- per op ---------------------------------------------------------------------------------


def _key_op(raw: dict[str, Any], registry: Registry, kind: str, where: str = "") -> KeyOp:
    try:
        key = validate_key(raw.get("key"))
    except CommandError as exc:
        raise StateError(exc.code, f"{where}{exc}") from None
    try:
        comp = registry.component_of(key)
    except UnknownComponent as exc:
        raise StateError("unknown_component", f"{where}{exc}", key=key) from None
    expected = raw.get("expected_version")
    if expected is not None:
        expected = _int(expected, f"{where}expected_version", 0, _I63 - 1)
    base = raw.get("base_version")
    if base is not None:
        base = _int(base, f"{where}base_version", 0, _I63 - 1)
    value = None
    if kind == "put":
        if "value" not in raw:
            raise StateError("invalid_value", f"{where}put needs a value")
        value = raw["value"]
        check_put_value(comp, key, value, where)
    return KeyOp(kind, key, comp, expected, value, base)


def check_put_value(comp: Component, key: str, value: Any, where: str = "") -> None:
    """A put's value checks (depth, size, JSON types, the component's
    schema): StateError. Also what the live table runs for a key whose
    name and component it checked before (mesh/node/live.py)."""
    try:
        check_value(value, f"{where}value of {key}")
    except CommandError as exc:
        raise StateError(exc.code, str(exc), key=key) from None
    try:
        comp.validate(key, value)
    except SchemaError as exc:
        raise StateError("invalid_value", f"{where}{exc}", key=key, field=exc.field) from None


_PUT_FIELDS = COMMON_FIELDS | {"key", "value", "expected_version", "base_version"}
_DELETE_FIELDS = COMMON_FIELDS | {"key", "expected_version", "base_version"}


def _put(raw: dict[str, Any], registry: Registry, meta: Meta) -> Put:
    _fields(raw, _PUT_FIELDS)
    return Put(_key_op(raw, registry, "put"))


def _delete(raw: dict[str, Any], registry: Registry, meta: Meta) -> Delete:
    _fields(raw, _DELETE_FIELDS)
    return Delete(_key_op(raw, registry, "delete"))


_TXN_OP_FIELDS = frozenset({"op", "key", "value", "expected_version", "base_version"})


def _txn(raw: dict[str, Any], registry: Registry, meta: Meta) -> Txn:
    _fields(raw, COMMON_FIELDS | {"ops"})
    ops = raw.get("ops")
    if not isinstance(ops, list) or not 0 < len(ops) <= MAX_TXN_OPS:
        raise StateError("invalid_command", f"txn needs a list of 1 to {MAX_TXN_OPS} ops")
    parsed = []
    for i, op in enumerate(ops):
        where = f"ops[{i}]: "
        if not isinstance(op, dict) or op.get("op") not in ("put", "delete", "check"):
            raise StateError("invalid_command", f"{where}op must be put, delete or check", op_index=i)
        try:
            _fields(op, _TXN_OP_FIELDS, where)
            parsed.append(_key_op(op, registry, op["op"], where))
        except StateError as exc:
            exc.extra.setdefault("op_index", i)
            raise
    return Txn(tuple(parsed))


def _undo(raw: dict[str, Any], registry: Registry, meta: Meta, redo: bool = False) -> Undo:
    _fields(raw, COMMON_FIELDS | {"stack", "force"})
    stack = raw.get("stack")
    if stack is not None:
        stack = _text(stack, "stack", MAX_NAME_CHARS)
    force = raw.get("force", False)
    if not isinstance(force, bool):
        raise StateError("invalid_command", "force must be a boolean")
    return Undo(stack, force, redo)


def _redo(raw: dict[str, Any], registry: Registry, meta: Meta) -> Undo:
    return _undo(raw, registry, meta, redo=True)


def _save(raw: dict[str, Any], registry: Registry, meta: Meta) -> Save:
    _fields(raw, COMMON_FIELDS | {"name", "components"})
    return Save(save_name(raw.get("name")), _components(raw.get("components"), registry))


def _restore(raw: dict[str, Any], registry: Registry, meta: Meta) -> Restore:
    _fields(raw, COMMON_FIELDS | {"name", "components"})
    return Restore(_existing_name(raw.get("name")), _components(raw.get("components"), registry))


def _delete_save(raw: dict[str, Any], registry: Registry, meta: Meta) -> DeleteSave:
    _fields(raw, COMMON_FIELDS | {"name"})
    return DeleteSave(_existing_name(raw.get("name")))


def _import_save(raw: dict[str, Any], registry: Registry, meta: Meta) -> ImportSave:
    """Two shapes, checked identically: `file` (the save file's text, as
    the API receives it) or `doc` (that text parsed: what `prepare` puts in
    the log, the size of the file instead of up to twice it, escaped)."""
    _fields(raw, COMMON_FIELDS | {"name", "file", "doc"})
    if ("file" in raw) == ("doc" in raw):
        raise StateError("invalid_save", "import_save needs the save file as a string in file (or parsed, in doc)")
    if "file" in raw:
        text = raw["file"]
        if not isinstance(text, str):
            raise StateError("invalid_save", "import_save needs the save file as a string in file")
        doc = savefile.load(text, registry)
    else:
        doc = savefile.load_document(raw["doc"], registry)
    name = raw.get("name")
    return ImportSave(save_name(name if name is not None else doc["name"]), doc)


def _resolve(raw: dict[str, Any], registry: Registry, meta: Meta) -> Resolve:
    _fields(raw, COMMON_FIELDS | {"id", "take", "value"})
    take = raw.get("take")
    if take not in RESOLVE_TAKES and take not in LEGACY_TAKES:
        raise StateError(
            "invalid_value",
            "take must be current (keep the current value), proposed (apply the kept write) or value "
            "(set the key to the given value)",
        )
    cid = _int(raw.get("id"), "id", 0, _I63 - 1)
    if take != "value":
        if "value" in raw:
            raise StateError("invalid_value", f"take {take} takes no value")
        return Resolve(cid, take)
    if "value" not in raw:
        raise StateError("invalid_value", "take value needs a value")
    value = raw["value"]
    try:
        check_value(value, "value")
    except CommandError as exc:
        raise StateError(exc.code, str(exc)) from None
    return Resolve(cid, take, value)


def _reset(raw: dict[str, Any], registry: Registry, meta: Meta) -> Reset:
    _fields(raw, COMMON_FIELDS | {"component", "keys"})
    name = raw.get("component")
    if not isinstance(name, str) or name not in registry:
        raise StateError("unknown_component", f"unknown component {describe(name)}")
    comp = registry.get(name)
    assert comp is not None
    keys = raw.get("keys")
    if keys is None:
        return Reset(name, None)
    if not isinstance(keys, list) or not 0 < len(keys) <= MAX_TXN_OPS:
        raise StateError("invalid_value", f"keys must be a list of 1 to {MAX_TXN_OPS} keys of {name}")
    out: dict[str, None] = {}
    for i, key in enumerate(keys):
        try:
            validate_key(key)
        except CommandError as exc:
            raise StateError(exc.code, f"keys[{i}]: {exc}") from None
        if not key.startswith(comp.prefix):
            raise StateError("invalid_value", f"keys[{i}]: {describe(key)} is not a key of {name}")
        out[key] = None
    return Reset(name, tuple(out))


def _compact(raw: dict[str, Any], registry: Registry, meta: Meta) -> Compact:
    _fields(raw, COMMON_FIELDS | {"revision"})
    return Compact(_int(raw.get("revision"), "compact needs a revision: it", 0, _I63 - 1))


def _security_event(raw: dict[str, Any], registry: Registry, meta: Meta) -> SecurityEvent:
    _fields(raw, COMMON_FIELDS | {"event", "address", "count", "path"})
    event = raw.get("event")
    if not isinstance(event, str) or not _EVENT.fullmatch(event):
        raise StateError("invalid_value", "event must be a snake_case name of at most 64 characters")
    address = _text(raw.get("address", ""), "address", MAX_EVENT_ADDRESS, code="invalid_value")
    path = _text(raw.get("path", ""), "path", MAX_EVENT_PATH, code="invalid_value")
    count = _int(raw.get("count", 1), "count", 1, _I63 - 1)
    return SecurityEvent(event, address, count, path)


def _settle(raw: dict[str, Any], registry: Registry, meta: Meta) -> Settle:
    _fields(raw, COMMON_FIELDS | {"gesture", "seq", "values"})
    gesture = _text(raw.get("gesture"), "gesture", MAX_NAME_CHARS, empty=False)
    seq = _int(raw.get("seq", 0), "seq", 0, _I63 - 1, code="invalid_command")
    values = raw.get("values")
    if not isinstance(values, dict) or not 0 < len(values) <= MAX_TXN_OPS:
        raise StateError("invalid_command", f"settle needs values: an object of 1 to {MAX_TXN_OPS} keys")
    ops = tuple(_key_op({"key": k, "value": v}, registry, "put") for k, v in values.items())
    return Settle(gesture, seq, ops)


PARSERS: dict[str, Callable[[dict[str, Any], Registry, Meta], Body]] = {
    "put": _put,
    "delete": _delete,
    "txn": _txn,
    "undo": _undo,
    "redo": _redo,
    "save": _save,
    "restore": _restore,
    "delete_save": _delete_save,
    "import_save": _import_save,
    "resolve": _resolve,
    "compact": _compact,
    "security_event": _security_event,
    "settle": _settle,
    "reset": _reset,
    **trust.PARSERS,
}
OPS = tuple(PARSERS)


def parse_command(raw: Any, registry: Registry) -> Command:
    """The typed command, or StateError (a CommandError) saying what is
    wrong. Pure: the same input gives the same answer on every node."""
    op = raw.get("op") if isinstance(raw, dict) else None
    if not isinstance(op, str) or op not in PARSERS:
        raise StateError("invalid_command", f"command must be an object with op one of {', '.join(OPS)}")
    assert isinstance(raw, dict)
    meta = parse_meta(raw)
    if meta.role == "reader":
        raise StateError("forbidden", f"the reader role cannot {op}", role=meta.role)
    if op in ADMIN_OPS and not meta.is_admin:
        raise StateError("forbidden", f"{op} needs the admin role", role=meta.role)
    if meta.made is not None and op not in MADE_OPS:
        raise StateError("invalid_command", f"made is for put, delete and txn, not {op}")
    try:
        body = PARSERS[op](raw, registry, meta)
    except StateError:
        raise
    except CommandError as exc:  # from savefile and friends: same code, no extras
        raise StateError(exc.code, str(exc)) from None
    if meta.made is None and _has_base(body):
        raise StateError("invalid_command", "base_version is for offline writes (with made)")
    return Command(op, meta, body)


def _has_base(body: Body) -> bool:
    if isinstance(body, (Put, Delete)):
        return body.op.base is not None
    if isinstance(body, Txn):
        return any(op.base is not None for op in body.ops)
    return False
