"""The component registry: what may live in the state, and how.

Keys are `component/name[/…]`; the first segment names a registered
component. Each `Component` has:
- `name` (also its key prefix, `name + "/"`),
- `order`: its place in the dependency order (restores write components in
  this order: environment before display groups before displays …),
- `schema`: what its values must look like (`Schema`),
- `critical`: whether a conflict in it needs a person (and its default policy),
- `policy`: `"lww"` (last writer wins by hybrid logical clock) or `"manual"`
  (a concurrent write is kept aside as a conflict for a person to resolve).

The registry is plain data: `Registry([...Component...])`; extend it with
`DEFAULT_REGISTRY.with_component(Component(...))`. Every node of a mesh must
run the same registry (it is part of the deterministic state machine).

A schema checks only the fields it names and keeps every field it does not
know, so newer and older nodes and plugins can share a mesh. An invalid value
raises `SchemaError` whose message and `.field` name the offending field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

JSON_TYPES = ("any", "object", "array", "string", "number", "integer", "boolean", "null")
POLICIES = ("lww", "manual")


class SchemaError(ValueError):
    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if kind == "integer":
        return isinstance(value, int)
    if kind == "number":
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    raise ValueError(f"unknown schema type {kind!r}")


@dataclass(frozen=True, slots=True)
class Schema:
    """A small JSON schema: `types` (any of JSON_TYPES), object `fields`
    (each a nested Schema), `required` field names, array `items`, numeric
    `minimum`/`maximum`, `enum`, string `max_length`."""

    types: tuple[str, ...] = ("any",)
    fields: Mapping[str, Schema] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    items: Schema | None = None
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[Any, ...] | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        for t in self.types:
            if t not in JSON_TYPES:
                raise ValueError(f"unknown schema type {t!r}")

    def validate(self, value: Any, path: str = "value") -> None:
        if not any(_type_ok(value, t) for t in self.types):
            raise SchemaError(path, f"must be {' or '.join(self.types)}, got {_json_type(value)}")
        if self.enum is not None and value not in self.enum:
            raise SchemaError(path, f"must be one of {list(self.enum)!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                raise SchemaError(path, f"must be at least {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise SchemaError(path, f"must be at most {self.maximum}")
        if isinstance(value, str) and self.max_length is not None and len(value) > self.max_length:
            raise SchemaError(path, f"must be at most {self.max_length} characters")
        if isinstance(value, dict):
            for name in self.required:
                if name not in value:
                    raise SchemaError(f"{path}.{name}", "is required")
            for name, sub in self.fields.items():
                if name in value:
                    sub.validate(value[name], f"{path}.{name}")
            # Unknown fields are kept as they are: forward/backward compatible.
        if isinstance(value, list) and self.items is not None:
            for i, item in enumerate(value):
                self.items.validate(item, f"{path}[{i}]")

    def accepts_anything(self) -> bool:
        """True when `validate` passes every value (type any, no constraint):
        a caller that checked a value is JSON (`check_value`) need not run
        it (the live table, for a fader's 120 values a second)."""
        return (
            "any" in self.types
            and self.enum is None
            and self.minimum is None
            and self.maximum is None
            and self.max_length is None
            and not self.required
            and not self.fields
            and self.items is None
        )

    def describe(self) -> dict[str, Any]:
        """A JSON description for GET /v1/components."""
        out: dict[str, Any] = {"type": list(self.types)}
        if self.fields:
            out["fields"] = {k: v.describe() for k, v in sorted(self.fields.items())}
        if self.required:
            out["required"] = list(self.required)
        if self.items is not None:
            out["items"] = self.items.describe()
        for name in ("minimum", "maximum", "max_length"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.enum is not None:
            out["enum"] = list(self.enum)
        return out


def _json_type(value: Any) -> str:
    for t in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _type_ok(value, t):
            return t
    return type(value).__name__


def obj(required: Iterable[str] = (), **fields: Schema) -> Schema:
    return Schema(("object",), fields, tuple(required))


def t(*types: str, **kw: Any) -> Schema:
    return Schema(types, **kw)


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    order: int
    schema: Schema = field(default_factory=Schema)
    critical: bool = False
    policy: str = "lww"
    description: str = ""
    # Reset to defaults (issue 14): key -> the value `POST
    # /v1/components/{name}/reset` sets; a key without one is deleted.
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"invalid component name {self.name!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"component {self.name}: policy must be one of {POLICIES}")
        for key, value in self.defaults.items():
            if not key.startswith(self.prefix) or key == self.prefix:
                raise ValueError(f"component {self.name}: default key {key!r} is outside it")
            self.validate(key, value)

    @property
    def prefix(self) -> str:
        return self.name + "/"

    def validate(self, key: str, value: Any) -> None:
        """Raise SchemaError naming `key` and the offending field."""
        self.schema.validate(value, key)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prefix": self.prefix,
            "order": self.order,
            "critical": self.critical,
            "policy": self.policy,
            "description": self.description,
            "schema": self.schema.describe(),
            **({"defaults": dict(sorted(self.defaults.items()))} if self.defaults else {}),
        }


class UnknownComponent(KeyError):
    def __init__(self, key: str, known: Iterable[str]) -> None:
        super().__init__(key)
        self.message = f"key {key!r} is outside every registered component (known: {', '.join(known)})"

    def __str__(self) -> str:
        return self.message


class Registry:
    """Components in dependency order (by `order`, then name)."""

    def __init__(self, components: Iterable[Component]) -> None:
        comps = sorted(components, key=lambda c: (c.order, c.name))
        self._by_name = {c.name: c for c in comps}
        if len(self._by_name) != len(comps):
            raise ValueError("duplicate component names")
        self.ordered: tuple[Component, ...] = tuple(comps)

    def __iter__(self) -> Iterator[Component]:
        return iter(self.ordered)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return [c.name for c in self.ordered]

    def get(self, name: str) -> Component | None:
        return self._by_name.get(name)

    def component_of(self, key: str) -> Component:
        """The component owning `key`; UnknownComponent if none."""
        comp = self._by_name.get(key.split("/", 1)[0])
        if comp is None or "/" not in key:
            raise UnknownComponent(key, self._by_name)
        return comp

    def validate(self, key: str, value: Any) -> Component:
        comp = self.component_of(key)
        comp.validate(key, value)
        return comp

    def with_component(self, comp: Component) -> Registry:
        return Registry([*(c for c in self.ordered if c.name != comp.name), comp])

    def describe(self) -> list[dict[str, Any]]:
        return [c.describe() for c in self.ordered]


_name = t("string", max_length=256)
_enabled = t("boolean")

DEFAULT_COMPONENTS = (
    Component(
        "environment",
        0,
        obj(name=_name, properties=t("object")),
        critical=True,
        policy="manual",
        description="global environment properties",
    ),
    Component(
        "display_groups",
        1,
        obj(name=_name, displays=t("array", items=t("string"))),
        critical=True,
        policy="manual",
        description="display group configurations",
    ),
    Component(
        "displays",
        2,
        obj(
            name=_name,
            host=t("string"),
            group=t("string"),
            width=t("integer", minimum=1),
            height=t("integer", minimum=1),
            enabled=_enabled,
        ),
        critical=True,
        policy="manual",
        description="individual display states",
    ),
    Component(
        "windows",
        3,
        obj(
            display=t("string"),
            plugin=t("string"),
            x=t("number"),
            y=t("number"),
            width=t("number", minimum=0),
            height=t("number", minimum=0),
            z=t("integer"),
        ),
        description="window assignments and properties",
    ),
    Component(
        "plugins",
        4,
        obj(["type"], type=t("string"), version=t("string"), enabled=_enabled, state=t("object")),
        description="plugin states",
    ),
    Component("parameters", 5, Schema(), description="parameters: any JSON value the user sets"),
    Component(
        "modulation",
        6,
        obj(["source", "target"], source=t("string"), target=t("string"), amount=t("number")),
        description="modulation routing",
    ),
    Component(
        "input_mappings",
        7,
        obj(
            ["kind"],
            kind=t("string", enum=("osc", "midi")),
            address=t("string"),
            channel=t("integer", minimum=0, maximum=15),
            target=t("string"),
            # OSC range scaling (mesh/osc/mapping.py): in_* onto out_*.
            in_min=t("number"),
            in_max=t("number"),
            out_min=t("number"),
            out_max=t("number"),
            description=t("string", max_length=1024),
        ),
        description="input mappings (OSC, MIDI)",
    ),
    Component("settings", 8, Schema(), critical=True, policy="manual", description="global system settings"),
)

DEFAULT_REGISTRY = Registry(DEFAULT_COMPONENTS)
