"""mesh/osc/mapping.py: range scaling both ways, types from the component
schemas, and mappings that cannot work refused with a reason."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.osc.mapping import Table, ValueRefused, parse_mapping
from mesh.state.components import DEFAULT_REGISTRY, Component, SchemaError, t

REG = DEFAULT_REGISTRY.with_component(Component("levels", 9, t("integer", minimum=0, maximum=10))).with_component(
    Component("modes", 10, t("string", enum=("a", "b")))
)


def m(**doc: Any) -> Any:
    return parse_mapping("input_mappings/x", {"kind": "osc", "address": "/x", "target": "parameters/p", **doc}, REG)


def test_scaling_maps_the_input_range_onto_the_output_range_and_clamps() -> None:
    mapping = m(in_min=0, in_max=1, out_min=0, out_max=100)
    assert mapping.tag == "f"
    assert mapping.to_value((0.25,)) == 25.0
    assert mapping.to_value((1.5,)) == 100.0  # clamped
    assert mapping.to_value((-1,)) == 0.0
    assert mapping.to_osc(50.0) == [(0.5, "f")]
    assert mapping.osc_range() == (0.0, 1.0)


def test_an_inverted_output_range_and_defaults() -> None:
    assert m(out_min=10, out_max=0).to_value((0.0,)) == 10.0  # in defaults to 0..1
    assert m(in_min=0, in_max=127).to_value((200,)) == 127.0  # out defaults to in: clamp only
    assert m().to_value((3.5,)) == 3.5  # no scaling at all
    assert m().to_osc(3.5) == [(3.5, "f")]


def test_types_come_from_the_target_schema() -> None:
    level = parse_mapping("input_mappings/l", {"kind": "osc", "address": "/l", "target": "levels/a"}, REG)
    assert level is not None and level.tag == "i" and (level.minimum, level.maximum) == (0, 10)
    assert level.to_value((4.6,)) == 5
    assert level.to_osc(7) == [(7, "i")]
    mode = parse_mapping("input_mappings/m", {"kind": "osc", "address": "/m", "target": "modes/a"}, REG)
    assert mode is not None and mode.tag == "s" and mode.choices == ("a", "b")
    with pytest.raises(ValueRefused):
        mode.to_value((1.0,))


@pytest.mark.parametrize(
    "args",
    [(), ("text",), (None,), (float("nan"),), (float("inf"),), ([1.0],), (b"\x00",)],
    ids=["none", "string", "nil", "nan", "inf", "array", "blob"],
)
def test_arguments_a_numeric_mapping_cannot_take(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueRefused):
        m(out_min=0, out_max=1).to_value(args)


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"address": "x"}, "starting with /"),
        ({"address": "/a/*"}, "pattern"),
        ({"address": "/a//b"}, "empty parts"),
        ({"address": "/"}, "root"),
        ({"target": "nowhere/p"}, "outside every registered component"),
        ({"target": "input_mappings/y"}, "input mapping"),
        ({"target": "displays/d"}, "not one OSC value"),
        ({"in_min": 1, "in_max": 1}, "must differ"),
        ({"out_max": "big"}, "must be a number"),
    ],
)
def test_unusable_mappings_are_refused_with_a_reason(doc: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        m(**doc)


def test_the_table_keeps_usable_mappings_and_says_why_others_are_out() -> None:
    table = Table.build(
        [
            ("input_mappings/a", {"kind": "osc", "address": "/f/1", "target": "parameters/one"}),
            ("input_mappings/b", {"kind": "osc", "address": "/f/1", "target": "parameters/two"}),
            ("input_mappings/c", {"kind": "midi", "channel": 1}),
            ("input_mappings/d", {"kind": "osc", "address": "bad", "target": "parameters/x"}),
            ("input_mappings/e", "not even an object"),
        ],
        REG,
    )
    assert [x.target for x in table.by_address["/f/1"]] == ["parameters/one", "parameters/two"]
    assert set(table.refused) == {"input_mappings/d"}
    assert len(table) == 2


@pytest.mark.parametrize(
    "doc",
    [{"in_min": "0"}, {"out_max": True}, {"description": 5}],
    ids=["in_min string", "out_max boolean", "description number"],
)
def test_the_state_refuses_mapping_fields_of_the_wrong_type(doc: dict[str, Any]) -> None:
    """A write of such a mapping is a 400, not a record the bridge must skip."""
    with pytest.raises(SchemaError):
        DEFAULT_REGISTRY.validate("input_mappings/x", {"kind": "osc", "address": "/x", "target": "parameters/p", **doc})
    DEFAULT_REGISTRY.validate("input_mappings/x", {"kind": "osc", "address": "/x", "in_min": 0, "out_max": 2.5})
