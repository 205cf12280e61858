"""Saves held in the state: named captures of components at one revision,
made (and imported, and deleted) through the log, so every node holds the
same saves. Pure.

A save is a dict: {"name","revision","created","author","node","auto",
"bytes","keys","data": {component: {key: value}}, "seq", "source"?,
"imported_at"?}. `auto` saves are recovery points, taken before every
restore; they are bounded separately (`max_recovery_points`, oldest dropped)
and do not count towards `max_saves`.

`op_save`, `op_delete_save`, `op_import_save` and `op_restore` are those
commands over a HanaState (the dispatcher in mesh.state.model calls them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mesh.state import savefile
from mesh.state.commands import DeleteSave, ImportSave, Meta, Restore, Save
from mesh.state.components import SchemaError
from mesh.state.errors import StateError
from mesh.state.limits import MAX_SAVE_BYTES
from mesh.state.values import canonical, describe

if TYPE_CHECKING:
    from mesh.state.model import HanaState


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


def save_meta(save: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in save.items() if k not in ("data", "seq")}
    out["components"] = list(save["data"])
    return out


class SaveStore:
    def __init__(self, max_saves: int = 64, max_recovery_points: int = 8, max_save_bytes: int = MAX_SAVE_BYTES) -> None:
        if min(max_saves, max_recovery_points, max_save_bytes) < 1:
            raise ValueError("limits must be at least 1")
        self.max_saves = max_saves
        self.max_recovery_points = max_recovery_points
        self.max_save_bytes = max_save_bytes
        self.saves: dict[str, dict[str, Any]] = {}
        self.seq = 0

    def __contains__(self, name: object) -> bool:
        return name in self.saves

    def get(self, name: str) -> dict[str, Any]:
        save = self.saves.get(name)
        if save is None:
            raise StateError("not_found", f"no save named {describe(name)}")
        return save

    def new(
        self, name: str, data: dict[str, dict[str, Any]], meta: Meta, *, revision: int, created: int, auto: bool
    ) -> dict[str, Any]:
        """A save (not stored yet); save_too_large if over the limit."""
        size = len(canonical(data))
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

    def check_room(self, save: dict[str, Any]) -> None:
        """Refuse (changing nothing) what `store` could not take."""
        if save["name"] in self.saves:
            raise StateError("save_exists", f"a save named {save['name']!r} exists", name=save["name"])
        if not save["auto"] and sum(1 for s in self.saves.values() if not s["auto"]) >= self.max_saves:
            raise StateError("too_many_saves", f"at most {self.max_saves} saves; delete one first")

    def store(self, save: dict[str, Any]) -> None:
        self.check_room(save)
        self.seq += 1
        save["seq"] = self.seq
        self.saves[save["name"]] = save
        autos = sorted((s["seq"], n) for n, s in self.saves.items() if s["auto"])
        for _seq, n in autos[: max(0, len(autos) - self.max_recovery_points)]:
            del self.saves[n]

    def remove(self, name: str) -> None:
        self.get(name)
        del self.saves[name]

    def free_recovery_name(self, time_ms: int) -> str:
        base = recovery_name(time_ms)
        point, n = base, 1
        while point in self.saves:
            n += 1
            point = f"{base}-{n}"
        return point

    def listing(self) -> list[dict[str, Any]]:
        return [save_meta(s) for s in sorted(self.saves.values(), key=lambda s: s["seq"])]

    def export(self, name: str, cluster: str) -> bytes:
        s = self.get(name)
        return savefile.export(
            name=name, cluster=cluster, revision=s["revision"], created=s["created"], components=s["data"]
        )

    # -- snapshots ----------------------------------------------------------------

    def to_json(self) -> tuple[dict[str, Any], int]:
        return self.saves, self.seq

    def load_json(self, saves: Any, seq: Any) -> None:
        if not isinstance(saves, dict) or type(seq) is not int:
            raise ValueError("saves must be an object and save_seq an integer")
        for name, s in saves.items():
            if not isinstance(s, dict) or not isinstance(s.get("data"), dict) or type(s.get("seq")) is not int:
                raise ValueError(f"invalid save {name!r}")
            if s.get("name") != name or not isinstance(s.get("auto"), bool):
                raise ValueError(f"invalid save {name!r}")
        self.saves, self.seq = dict(saves), seq


# -- the save ops ------------------------------------------------------------------------


def capture(state: HanaState, components: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The chosen components' keys and values, now."""
    out: dict[str, dict[str, Any]] = {c: {} for c in components}
    for key in sorted(state.data):
        bucket = out.get(key.split("/", 1)[0])
        if bucket is not None:
            bucket[key] = state.data[key].value
    return out


def op_save(state: HanaState, body: Save, meta: Meta) -> dict[str, Any]:
    store = state.save_store
    comps = list(body.components) if body.components is not None else state.registry.names()
    if body.name in store:
        raise StateError("save_exists", f"a save named {body.name!r} exists", name=body.name)
    save = store.new(body.name, capture(state, comps), meta, revision=state.revision, created=meta.time, auto=False)
    store.store(save)
    state._audit(meta, "save", name=body.name, components=comps)
    return save_meta(save)


def op_delete_save(state: HanaState, body: DeleteSave, meta: Meta) -> dict[str, Any]:
    state.save_store.remove(body.name)
    state._audit(meta, "delete_save", name=body.name)
    return {"name": body.name, "deleted": True}


def op_import_save(state: HanaState, body: ImportSave, meta: Meta) -> dict[str, Any]:
    """The file was parsed, checksummed, migrated and validated with the
    command (commands.parse_command); what is left depends on the state."""
    store, doc = state.save_store, body.doc
    if body.name in store:
        raise StateError("save_exists", f"a save named {body.name!r} exists", name=body.name)
    data = {c: doc["components"][c] for c in state.registry.names() if c in doc["components"]}
    save = store.new(body.name, data, meta, revision=doc["revision"], created=doc["created"], auto=False)
    save["source"] = {"cluster": doc["cluster"], "revision": doc["revision"], "schema_version": doc["source_schema"]}
    save["imported_at"] = state.revision
    store.store(save)
    state._audit(meta, "import_save", name=body.name, components=list(data))
    return save_meta(save)


def op_restore(state: HanaState, body: Restore, meta: Meta) -> dict[str, Any]:
    """A recovery point (the whole state), then the chosen components of the
    save written in dependency order as one revision and one undo group."""
    store, name = state.save_store, body.name
    save = store.get(name)
    comps = _in_save(state, body.components, save)
    # Validate everything before changing anything.
    for c in comps:
        comp = state.registry.get(c)
        assert comp is not None
        for key, value in save["data"][c].items():
            try:
                comp.validate(key, value)
            except SchemaError as exc:
                raise StateError("invalid_value", f"save {name!r}: {exc}", key=key, field=exc.field) from None
    point = store.free_recovery_name(meta.time)
    whole = capture(state, state.registry.names())
    store.store(store.new(point, whole, meta, revision=state.revision, created=meta.time, auto=True))
    plan: list[tuple[str, list[Any]]] = []
    for c in comps:
        target = save["data"][c]
        prefix = c + "/"
        gone = [k for k in state.data if k.startswith(prefix) and k not in target]
        for key in sorted([*gone, *target]):
            plan.append((key, [target[key]] if key in target else []))
    changed = [(k, s) for k, s in plan if not state._holds(k, s, -1)]
    audit = {"name": name, "components": comps, "recovery_point": point}
    if changed:
        state._begin()
        for key, slot in changed:
            state._set(key, slot, meta)
        state._finish(meta, "restore", undoable=True, audit=audit)
    else:
        state._audit(meta, "restore", keys=[], **audit)
    return {
        "revision": state.revision,
        "restored": name,
        "components": comps,
        "changed": len(changed),
        "recovery_point": point,
    }


def _in_save(state: HanaState, chosen: tuple[str, ...] | None, save: dict[str, Any]) -> list[str]:
    """The chosen components (None: all the save holds), in dependency order."""
    held = list(save["data"])
    if chosen is None:
        return [n for n in state.registry.names() if n in held]
    for c in chosen:
        if c not in held:
            raise StateError("invalid_value", f"component {c!r} is not in this save")
    return list(chosen)
