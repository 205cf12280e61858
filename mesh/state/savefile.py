"""Save files: export, import, validation and migration. Pure (bytes in,
bytes out; no filesystem).

A save file (`.hana`) is one JSON object, UTF-8, canonical (sorted keys, no
spaces, as orjson writes them) followed by a newline:

    {"format": "hana-save", "schema_version": 2, "name": "opening",
     "cluster": "hana", "revision": 42, "created": 1714564800000,
     "components": {"displays": {"displays/left": {...}}, ...},
     "sha256": "<hex>"}

`created` is the save's time in ms (taken from the save command, never from a
clock). `sha256` is over the canonical JSON of the object without its
`sha256` member. Schema versions:

- v1 (older layout): a flat `"entries": {key: value}` and `"time"` for the
  creation time; it has no per-component grouping.
- v2 (current): `"components": {component: {key: value}}` and `"created"`.

`load()` parses the text and hands the object to `load_document()`, which
checks the format name, the schema version (older ones migrate through
`MIGRATIONS`, one small function per step; future ones are refused), the
nesting depth (before anything encodes the document), the checksum, the
structure, that every key lies in a registered component and that every
value passes `mesh.state.values.check_value` (depth, size, JSON types) and
its component's schema. Any failure raises `SaveFileError` with `code` one of
`invalid_save`, `checksum_mismatch`, `unsupported_schema_version`,
`invalid_value`, `unknown_component`, `too_deep`, `too_large`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import orjson

from mesh.state.components import Registry, SchemaError, UnknownComponent
from mesh.state.kv import CommandError, validate_key
from mesh.state.limits import MAX_DEPTH, MAX_NAME_CHARS
from mesh.state.values import check_value, json_depth

FORMAT = "hana-save"
CURRENT_SCHEMA = 2
MAX_FILE_BYTES = 64 * 1024 * 1024
# A document nests its values this many levels down (v2: components, one
# component, one key); v1 one less.
_DOC_LEVELS = 3


class SaveFileError(CommandError):
    pass


def canonical(doc: Any) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def checksum(doc: dict[str, Any]) -> str:
    """SHA-256 (hex) over the canonical JSON of `doc` without `sha256`."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(canonical(body)).hexdigest()


def _seal(doc: dict[str, Any]) -> bytes:
    doc = {**doc, "sha256": checksum(doc)}
    return canonical(doc) + b"\n"


def export(*, name: str, cluster: str, revision: int, created: int, components: dict[str, dict[str, Any]]) -> bytes:
    """The current (v2) save file."""
    return _seal(
        {
            "format": FORMAT,
            "schema_version": CURRENT_SCHEMA,
            "name": name,
            "cluster": cluster,
            "revision": revision,
            "created": created,
            "components": components,
        }
    )


def export_v1(*, name: str, cluster: str, revision: int, created: int, entries: dict[str, Any]) -> bytes:
    """A v1 file, as older nodes wrote them (for tests and fixtures)."""
    return _seal(
        {
            "format": FORMAT,
            "schema_version": 1,
            "name": name,
            "cluster": cluster,
            "revision": revision,
            "time": created,
            "entries": entries,
        }
    )


# -- migrations: MIGRATIONS[n] turns a valid vN document into a vN+1 one ------


def migrate_v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    entries = doc.get("entries")
    if not isinstance(entries, dict):
        raise SaveFileError("invalid_save", "v1 save: entries must be an object")
    if type(doc.get("time")) is not int:
        raise SaveFileError("invalid_save", "v1 save: time must be an integer")
    components: dict[str, dict[str, Any]] = {}
    for key in sorted(entries):
        if not isinstance(key, str) or "/" not in key:
            raise SaveFileError("invalid_save", f"v1 save: entry {key!r} is not a component/name key")
        components.setdefault(key.split("/", 1)[0], {})[key] = entries[key]
    out = {k: v for k, v in doc.items() if k not in ("entries", "time", "sha256")}
    out.update(schema_version=2, created=doc["time"], components=components)
    return out


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: migrate_v1_to_v2}


def migrate(doc: dict[str, Any]) -> dict[str, Any]:
    version = doc["schema_version"]
    while version < CURRENT_SCHEMA:
        step = MIGRATIONS.get(version)
        if step is None:
            raise SaveFileError("unsupported_schema_version", f"no migration from schema version {version}")
        doc = step(doc)
        if doc.get("schema_version") != version + 1:
            raise AssertionError(f"migration from v{version} did not produce v{version + 1}")
        version += 1
    return doc


# -- import --------------------------------------------------------------------


def load(blob: bytes | str, registry: Registry) -> dict[str, Any]:
    """Parse, verify, migrate and validate a save file; the current (v2)
    document without `sha256`, plus `source_schema` (the file's own schema
    version). Raises SaveFileError."""
    if isinstance(blob, str):
        try:
            blob = blob.encode()
        except UnicodeEncodeError:
            raise SaveFileError("invalid_save", "save file is not valid UTF-8 text") from None
    if len(blob) > MAX_FILE_BYTES:
        raise SaveFileError("invalid_save", f"save file larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        raise SaveFileError("invalid_save", f"save file is not valid JSON (truncated?): {exc}") from None
    return load_document(doc, registry)


def load_document(doc: Any, registry: Registry) -> dict[str, Any]:
    """`load()` for a save file already parsed (the same checks, the same
    result)."""
    if not isinstance(doc, dict):
        raise SaveFileError("invalid_save", "save file must be a JSON object")
    if doc.get("format") != FORMAT:
        fmt = doc.get("format")
        shown = repr(fmt[:40]) if isinstance(fmt, str) else type(fmt).__name__
        raise SaveFileError("invalid_save", f"not a hana save file (format {shown})")
    version = doc.get("schema_version")
    if type(version) is not int:
        raise SaveFileError("invalid_save", "schema_version must be an integer")
    if version > CURRENT_SCHEMA:
        raise SaveFileError(
            "unsupported_schema_version",
            f"save schema version {version} is newer than this node understands ({CURRENT_SCHEMA}); upgrade it",
        )
    if version < 1:
        raise SaveFileError("unsupported_schema_version", f"unknown save schema version {version}")
    # Before anything encodes it (the checksum does): orjson reads 1024
    # levels but writes only 254.
    if json_depth(doc, stop_above=MAX_DEPTH + _DOC_LEVELS) > MAX_DEPTH + _DOC_LEVELS:
        raise SaveFileError("too_deep", f"save file: a value is nested more than {MAX_DEPTH} deep")
    expected = doc.get("sha256")
    if not isinstance(expected, str):
        raise SaveFileError("invalid_save", "save file has no sha256")
    actual = checksum(doc)
    if actual != expected:
        shown = expected[:64] + ("…" if len(expected) > 64 else "")
        raise SaveFileError("checksum_mismatch", f"save file checksum mismatch: file says {shown}, content {actual}")
    out = validate_document(migrate(doc), registry)
    out["source_schema"] = version
    return out


def validate_document(doc: dict[str, Any], registry: Registry) -> dict[str, Any]:
    for name in ("name", "cluster"):
        if not isinstance(doc.get(name), str) or len(doc[name]) > MAX_NAME_CHARS:
            raise SaveFileError("invalid_save", f"save file: {name} must be a string of at most {MAX_NAME_CHARS}")
    for name in ("revision", "created"):
        if type(doc.get(name)) is not int or doc[name] < 0:
            raise SaveFileError("invalid_save", f"save file: {name} must be a non-negative integer")
    comps = doc.get("components")
    if not isinstance(comps, dict):
        raise SaveFileError("invalid_save", "save file: components must be an object")
    for comp_name, entries in comps.items():
        if comp_name not in registry:
            raise SaveFileError("unknown_component", f"save file: unknown component {comp_name!r}")
        if not isinstance(entries, dict):
            raise SaveFileError("invalid_save", f"save file: components.{comp_name} must be an object")
        for key, value in entries.items():
            try:
                validate_key(key)
                check_value(value, f"value of {key}")
                comp = registry.validate(key, value)
            except CommandError as exc:
                code = exc.code if exc.code in ("too_deep", "too_large", "invalid_value") else "invalid_save"
                raise SaveFileError(code, f"save file: {exc}") from None
            except UnknownComponent as exc:
                raise SaveFileError("unknown_component", f"save file: {exc}") from None
            except SchemaError as exc:
                raise SaveFileError("invalid_value", f"save file: {exc}") from None
            if comp.name != comp_name:
                raise SaveFileError("invalid_save", f"save file: key {key!r} filed under component {comp_name!r}")
    return {k: v for k, v in doc.items() if k != "sha256"}
