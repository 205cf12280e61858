"""Save files: export, checksum, schema versions and migration, validation."""

from __future__ import annotations

import orjson
import pytest

from mesh.state import savefile
from mesh.state.components import DEFAULT_REGISTRY
from mesh.state.savefile import SaveFileError

COMPONENTS = {
    "displays": {"displays/left": {"width": 1920, "height": 1080}},
    "parameters": {"parameters/master/brightness": 0.5},
}


def good() -> bytes:
    return savefile.export(name="show", cluster="hana", revision=7, created=123, components=COMPONENTS)


def test_export_is_canonical_and_loads_back() -> None:
    blob = good()
    assert blob == good() and blob.endswith(b"\n")
    doc = orjson.loads(blob)
    assert doc["format"] == "hana-save" and doc["schema_version"] == 2 and len(doc["sha256"]) == 64
    loaded = savefile.load(blob, DEFAULT_REGISTRY)
    assert loaded["components"] == COMPONENTS
    assert (loaded["name"], loaded["cluster"], loaded["revision"], loaded["created"]) == ("show", "hana", 7, 123)
    assert loaded["source_schema"] == 2


def test_v1_migrates_to_v2() -> None:
    entries = {k: v for comp in COMPONENTS.values() for k, v in comp.items()}
    v1 = savefile.export_v1(name="old", cluster="hana", revision=3, created=99, entries=entries)
    assert "entries" in orjson.loads(v1)
    loaded = savefile.load(v1, DEFAULT_REGISTRY)
    assert loaded["schema_version"] == 2 and loaded["source_schema"] == 1
    assert loaded["components"] == COMPONENTS
    assert loaded["created"] == 99 and "time" not in loaded and "entries" not in loaded


def test_migration_step_unit() -> None:
    out = savefile.migrate_v1_to_v2(
        {"format": "hana-save", "schema_version": 1, "time": 5, "entries": {"b/x": 1, "a/y": 2}}
    )
    assert out == {
        "format": "hana-save",
        "schema_version": 2,
        "created": 5,
        "components": {"a": {"a/y": 2}, "b": {"b/x": 1}},
    }
    with pytest.raises(SaveFileError):
        savefile.migrate_v1_to_v2({"schema_version": 1, "time": 5, "entries": {"flat": 1}})


def _reseal(doc: dict[str, object]) -> bytes:
    doc = {k: v for k, v in doc.items() if k != "sha256"}
    doc["sha256"] = savefile.checksum(doc)
    return savefile.canonical(doc)


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda b: b.replace(b"1920", b"1921"), "checksum_mismatch"),
        (lambda b: b[: len(b) // 2], "invalid_save"),
        (lambda b: b"", "invalid_save"),
        (lambda b: b"[1,2]", "invalid_save"),
        (lambda b: _reseal({**orjson.loads(b), "schema_version": 3}), "unsupported_schema_version"),
        (lambda b: _reseal({**orjson.loads(b), "schema_version": 0}), "unsupported_schema_version"),
        (lambda b: _reseal({**orjson.loads(b), "format": "other"}), "invalid_save"),
        (lambda b: _reseal({k: v for k, v in orjson.loads(b).items() if k != "name"}), "invalid_save"),
        (
            lambda b: _reseal({**orjson.loads(b), "components": {"displays": {"displays/x": {"width": -1}}}}),
            "invalid_value",
        ),
        (lambda b: _reseal({**orjson.loads(b), "components": {"nope": {"nope/x": 1}}}), "unknown_component"),
        (
            lambda b: _reseal({**orjson.loads(b), "components": {"displays": {"windows/x": {}}}}),
            "invalid_save",
        ),
        (lambda b: _reseal({**orjson.loads(b), "components": {"displays": {"displays//x": {}}}}), "invalid_save"),
        (lambda b: orjson.dumps({k: v for k, v in orjson.loads(b).items() if k != "sha256"}), "invalid_save"),
    ],
)
def test_bad_files_are_refused_with_a_clear_code(mutate: object, code: str) -> None:
    blob = mutate(good())  # type: ignore[operator]
    with pytest.raises(SaveFileError) as err:
        savefile.load(blob, DEFAULT_REGISTRY)
    assert err.value.code == code, str(err.value)
    assert str(err.value)


def test_future_version_message_says_upgrade() -> None:
    blob = _reseal({**orjson.loads(good()), "schema_version": 9})
    with pytest.raises(SaveFileError, match="newer"):
        savefile.load(blob, DEFAULT_REGISTRY)
