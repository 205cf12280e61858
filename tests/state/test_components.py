"""The component registry and schema validation."""

from __future__ import annotations

import pytest

from mesh.state.components import DEFAULT_REGISTRY, Component, Registry, SchemaError, UnknownComponent, obj, t

ORDER = [
    "environment",
    "display_groups",
    "displays",
    "windows",
    "plugins",
    "parameters",
    "modulation",
    "input_mappings",
    "settings",
]


def test_default_registry_is_in_dependency_order() -> None:
    assert DEFAULT_REGISTRY.names() == ORDER
    described = DEFAULT_REGISTRY.describe()
    assert [d["prefix"] for d in described] == [n + "/" for n in ORDER]
    assert {d["policy"] for d in described} == {"lww", "manual"}
    assert all(d["policy"] == "manual" for d in described if d["critical"])


def test_key_outside_every_component_is_rejected() -> None:
    with pytest.raises(UnknownComponent, match="outside every registered component"):
        DEFAULT_REGISTRY.component_of("nope/x")
    with pytest.raises(UnknownComponent):
        DEFAULT_REGISTRY.component_of("displays")
    assert DEFAULT_REGISTRY.component_of("parameters/master/brightness").name == "parameters"


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("displays/a", {"width": 0}, "displays/a.width"),
        ("displays/a", {"width": 1.5}, "displays/a.width"),
        ("displays/a", {"enabled": 1}, "displays/a.enabled"),
        ("displays/a", [1], "displays/a"),
        ("display_groups/g", {"displays": ["a", 3]}, "display_groups/g.displays[1]"),
        ("plugins/p", {"version": "1"}, "plugins/p.type"),
        ("input_mappings/m", {"kind": "dmx"}, "input_mappings/m.kind"),
        ("input_mappings/m", {"kind": "midi", "channel": 16}, "input_mappings/m.channel"),
        ("modulation/m", {"source": "lfo1", "target": 3}, "modulation/m.target"),
        ("windows/w", {"x": True}, "windows/w.x"),
    ],
)
def test_invalid_values_name_the_field(key: str, value: object, field: str) -> None:
    with pytest.raises(SchemaError) as err:
        DEFAULT_REGISTRY.validate(key, value)
    assert err.value.field == field
    assert field in str(err.value)


def test_unknown_fields_are_kept_and_valid_values_pass() -> None:
    value = {"name": "Left", "width": 1920, "height": 1080, "future_field": {"x": 1}}
    DEFAULT_REGISTRY.validate("displays/left", value)
    assert value["future_field"] == {"x": 1}
    DEFAULT_REGISTRY.validate("parameters/master/brightness", 0.8)
    DEFAULT_REGISTRY.validate("settings/anything", None)


def test_registry_is_data_and_extends() -> None:
    reg = DEFAULT_REGISTRY.with_component(Component("cues", 10, obj(["at"], at=t("number")), policy="lww"))
    assert reg.names()[-1] == "cues"
    reg.validate("cues/c1", {"at": 1.5})
    with pytest.raises(SchemaError):
        reg.validate("cues/c1", {})
    with pytest.raises(ValueError):
        Registry([Component("a", 0), Component("a", 1)])
    with pytest.raises(ValueError):
        Component("a", 0, policy="random")
