"""The config as JSON Schema (draft 2020-12), for the browser wizard and other tools.

It describes the resolved values (`LoadedConfig.values`): augmentations are sections,
never bare booleans; architectures are current names. Each key also carries an
`x-trainboard` object telling the wizard whether Trainboard uses the key and how to draw
it (a slider for the batch size, a log slider for the learning rate, ...).
"""

from __future__ import annotations

from typing import Any

from backend.config.schema import ADVISORY_RANGES, KEYS, SECTIONS_TOP, Key, defaults
from backend.config.valuetypes import alternatives, item_tag

__all__ = ["config_json_schema", "defaults"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"
_SIMPLE = {
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "str": "string",
    "None": "null",
}


def config_json_schema() -> dict[str, Any]:
    root: dict[str, Any] = {
        "$schema": DRAFT,
        "$id": "https://trainboard.local/schemas/pytc-config.json",
        "title": "PyTorch Connectomics training config (legacy yacs) as Trainboard reads it",
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }
    for key in KEYS.values():
        node = root
        *parents, leaf = key.name.split(".")
        for part in parents:
            node = node["properties"].setdefault(part, _object())
        node["properties"][leaf] = key_schema(key)
    # Sections in PyTC's order, not the order keys happened to be declared in.
    props = root["properties"]
    root["properties"] = {s: props[s] for s in SECTIONS_TOP if s in props}
    return root


def _object() -> dict[str, Any]:
    return {"type": "object", "properties": {}, "additionalProperties": False}


def key_schema(key: Key) -> dict[str, Any]:
    schema = _type_schema(key.type, key)
    if key.length is not None:
        _set_length(schema, key.length)
    schema["default"] = key.default
    schema["description"] = key.help
    schema["x-trainboard"] = _ui(key)
    return schema


def _type_schema(tag: str, key: Key) -> dict[str, Any]:
    alts = [_alt_schema(alt, key) for alt in alternatives(tag)]
    if len(alts) == 1:
        return alts[0]
    if all(set(a) == {"type"} for a in alts):
        return {"type": [a["type"] for a in alts]}
    return {"anyOf": alts}


def _alt_schema(alt: str, key: Key) -> dict[str, Any]:
    """One alternative; bounds and allowed values go on the numbers and strings inside."""
    if alt == "any":
        return {}
    if alt.startswith("list["):
        return {"type": "array", "items": _type_schema(item_tag(alt), key)}
    schema: dict[str, Any] = {"type": _SIMPLE[alt]}
    if alt in ("int", "float") and key.name not in ADVISORY_RANGES:  # advice: validate warns
        if key.minimum is not None:
            schema["exclusiveMinimum" if key.exclusive_minimum else "minimum"] = key.minimum
        if key.maximum is not None:
            schema["exclusiveMaximum" if key.exclusive_maximum else "maximum"] = key.maximum
    if alt == "str" and key.choices:
        schema["enum"] = list(key.choices)
    return schema


def _set_length(schema: dict[str, Any], length: int) -> None:
    targets = schema.get("anyOf", [schema])
    for alt in targets:
        if alt.get("type") == "array":
            alt["minItems"] = alt["maxItems"] = length


def _ui(key: Key) -> dict[str, Any]:
    ui: dict[str, Any] = {"core": key.core, "widget": key.widget}
    if key.ui is not None:
        ui.update({"min": key.ui.min, "max": key.ui.max, "step": key.ui.step})
    elif key.widget == "number" and key.minimum is not None:
        ui.update(
            {
                "min": key.minimum,
                "max": key.maximum,
                "step": 1 if alternatives(key.type)[0] == "int" else None,
            }
        )
    if key.choices:
        ui["options"] = list(key.choices)
    return ui
