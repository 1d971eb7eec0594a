"""The key table, the helpers the trainer shares, and the JSON Schema built from them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from backend.config import config_json_schema, defaults
from backend.config.schema import (
    KEYS,
    OLD_ARCHITECTURE_NAMES,
    SECTIONS_TOP,
    SUPPORTED_ARCHITECTURES,
    SWITCHABLE_SECTIONS,
    pooling_factors,
    target_channels,
)
from backend.config.valuetypes import coerce, describe, matches


def test_constants() -> None:
    # PyTC v1.0.0's whole model map.
    assert set(SUPPORTED_ARCHITECTURES) == {
        "unet_3d",
        "unet_2d",
        "unet_plus_3d",
        "unet_plus_2d",
        "fpn_3d",
        "deeplabv3a",
        "deeplabv3b",
        "deeplabv3c",
        "unetr",
        "swinunetr",
    }
    assert OLD_ARCHITECTURE_NAMES["unet_residual_3d"] == "unet_3d"
    assert OLD_ARCHITECTURE_NAMES["unet_super"] == "unet_plus_3d"


def test_target_channels() -> None:
    # The whole table is tested in tests/config/test_criterion_constraints.py.
    assert target_channels("0", do_2d=False) == 1
    assert target_channels("2", do_2d=False) == 3
    assert target_channels("2", do_2d=True) == 2
    assert target_channels("4-1-1", do_2d=True) == 1
    for bad in ("4", "5", "9", "2-1", "4-1"):
        with pytest.raises(ValueError, match="PyTC"):
            target_channels(bad, do_2d=False)


def test_pooling_factors() -> None:
    iso = [False, False, False, True, True]
    assert pooling_factors("unet_3d", 5, iso) == (4, 16, 16)
    assert pooling_factors("unet_2d", 5, iso) == (1, 16, 16)
    assert pooling_factors("unet_3d", 3, [False, False, False]) == (1, 4, 4)


def test_tree_has_pytc_sections_and_nested_sections() -> None:
    tree = defaults()
    assert tuple(tree) == SECTIONS_TOP
    assert tree["DATASET"]["REJECT_SAMPLING"] == {
        "SIZE_THRES": -1,
        "DIVERSITY": -1,
        "P": 0.95,
        "NUM_TRIAL": 50,
    }
    assert tree["SOLVER"]["SWA"]["ENABLED"] is False
    assert tree["SOLVER"]["CLIP_GRADIENTS"]["CLIP_TYPE"] == "value"
    for aug in (
        "ROTATE",
        "RESCALE",
        "FLIP",
        "ELASTIC",
        "GRAYSCALE",
        "MISSINGPARTS",
        "MISSINGSECTION",
        "MISALIGNMENT",
        "MOTIONBLUR",
        "CUTBLUR",
        "CUTNOISE",
    ):
        assert tree["AUGMENTOR"][aug]["ENABLED"] is True, aug
        assert 0 <= tree["AUGMENTOR"][aug]["P"] <= 1
    assert tree["AUGMENTOR"]["COPYPASTE"]["ENABLED"] is False
    assert {"AUGMENTOR.ROTATE", "SOLVER.SWA", "SOLVER.CLIP_GRADIENTS"} <= SWITCHABLE_SECTIONS


def test_reference_defaults() -> None:
    tree = defaults()
    assert tree["SYSTEM"]["NUM_GPUS"] == 4 and tree["SYSTEM"]["NUM_CPUS"] == 4
    assert tree["MODEL"]["FILTERS"] == [28, 36, 48, 64, 80]
    assert tree["MODEL"]["INPUT_SIZE"] == [8, 256, 256]
    assert tree["MODEL"]["LOSS_OPTION"] == [["WeightedBCE"]]
    assert tree["DATASET"]["PAD_SIZE"] == [2, 64, 64]
    assert tree["SOLVER"]["BASE_LR"] == 0.001
    assert tree["SOLVER"]["WARMUP_FACTOR"] == 0.001
    assert tree["MONITOR"]["ITERATION_NUM"] == [20, 200]
    assert tree["INFERENCE"]["OUTPUT_NAME"] == "result.h5"


def test_defaults_are_fresh_copies() -> None:
    first = defaults()
    first["MODEL"]["FILTERS"].append(1)
    assert defaults()["MODEL"]["FILTERS"] == [28, 36, 48, 64, 80]


def test_every_key_has_help_and_a_default_of_its_own_type() -> None:
    for key in KEYS.values():
        assert key.help, key.name
        assert matches(key.default, key.type), key.name


def test_core_keys_include_what_a_run_needs() -> None:
    for name in (
        "SOLVER.BASE_LR",
        "SOLVER.ITERATION_TOTAL",
        "MODEL.TARGET_OPT",
        "DATASET.IMAGE_NAME",
        "AUGMENTOR.FLIP.ENABLED",
        "MODEL.MIXED_PRECESION",
        "SOLVER.SWA.ENABLED",
        "MODEL.PRE_MODEL_ITER",
    ):
        assert KEYS[name].core, name
    for name in ("AUGMENTOR.COPYPASTE.ENABLED", "SYSTEM.DEBUG"):
        assert not KEYS[name].core, name


def test_value_types() -> None:
    assert coerce("(1, 2)", "list[int]") == [1, 2]
    assert coerce("1e-3", "float") == 0.001
    assert coerce("abc", "float") == "abc"  # left for validation to report
    assert coerce([[1, 2]], "list[list[float]]") == [[1.0, 2.0]]
    assert coerce(True, "int") is True  # a bool is never an int
    assert not matches(True, "int")
    assert matches(None, "str|list[str]|None")
    assert describe("list[list[str]]") == "a list of lists of strings"
    assert describe("int|None") == "an integer or null"


# --- JSON Schema ----------------------------------------------------------------------------

KEYWORDS = {
    "$schema", "$id", "title", "type", "properties", "additionalProperties", "items", "anyOf",
    "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems",
    "maxItems", "default", "description", "x-trainboard",
}  # fmt: skip


def _is(value: Any, kind: str) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return {
        "integer": number and float(value).is_integer(),
        "number": number,
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
        "null": value is None,
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }[kind]


def schema_errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """A small JSON Schema checker for exactly the keywords the config schema uses."""
    if "anyOf" in schema:
        if all(schema_errors(s, value, path) for s in schema["anyOf"]):
            return [f"{path}: matches no alternative"]
        return []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if not any(_is(value, k) for k in kinds):
            return [f"{path}: {value!r} is not {kinds}"]
    out = []
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in enum")
    if _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{path}: below minimum")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{path}: above maximum")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            out.append(f"{path}: not above exclusiveMinimum")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            out.append(f"{path}: not below exclusiveMaximum")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1e9):
            out.append(f"{path}: wrong length")
        for i, item in enumerate(value):
            out += schema_errors(schema.get("items", {}), item, f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            out += [f"{path}.{k}: not allowed" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                out += schema_errors(props[k], v, f"{path}.{k}")
    return out


def _walk(schema: dict[str, Any]) -> list[str]:
    found = list(schema)
    for key in ("properties",):
        for sub in schema.get(key, {}).values():
            found += _walk(sub)
    if isinstance(schema.get("items"), dict):
        found += _walk(schema["items"])
    for sub in schema.get("anyOf", []):
        found += _walk(sub)
    return found


def prop(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = schema
    for part in dotted.split("."):
        node = node["properties"][part]
    return node


def test_json_schema_uses_only_known_keywords_and_serialises() -> None:
    schema = config_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(_walk(schema)) <= KEYWORDS
    assert json.loads(json.dumps(schema)) == schema


def test_json_schema_validates_its_own_defaults() -> None:
    schema = config_json_schema()
    assert schema_errors(schema, defaults()) == []
    for name in KEYS:
        node = prop(schema, name)
        assert schema_errors(node, node["default"]) == [], name


def test_json_schema_rejects_bad_values() -> None:
    schema = config_json_schema()
    tree = defaults()
    tree["SOLVER"]["BASE_LR"] = 0
    tree["SOLVER"]["NAME"] = "RMSprop"
    tree["MODEL"]["INPUT_SIZE"] = [8, 256]
    tree["MODEL"]["TYPO"] = 1
    tree["AUGMENTOR"]["ROTATE"]["P"] = 1.5
    found = " ".join(schema_errors(schema, tree))
    for where in ("BASE_LR", "NAME", "INPUT_SIZE", "TYPO", "ROTATE.P"):
        assert where in found, where


def test_json_schema_takes_what_pytc_takes_where_a_range_is_advice() -> None:
    schema = config_json_schema()
    tree = defaults()
    tree["SOLVER"]["GAMMA"] = 2.0  # PyTC trains with it; validation warns
    tree["SOLVER"]["MOMENTUM"] = 1.2
    assert schema_errors(schema, tree) == []
    assert "maximum" not in prop(schema, "SOLVER.GAMMA")


def test_json_schema_carries_slider_metadata() -> None:
    schema = config_json_schema()
    lr = prop(schema, "SOLVER.BASE_LR")
    assert lr["x-trainboard"] == {
        "core": True, "widget": "log-slider", "min": 1e-5, "max": 1.0, "step": None,
    }  # fmt: skip
    assert lr["exclusiveMinimum"] == 0 and lr["default"] == 0.001
    assert lr["description"] == "base learning rate"
    batch = prop(schema, "SOLVER.SAMPLES_PER_BATCH")["x-trainboard"]
    assert (batch["widget"], batch["min"], batch["max"], batch["step"]) == ("slider", 1, 64, 1)
    for name in ("SOLVER.ITERATION_TOTAL", "SOLVER.ITERATION_SAVE", "SOLVER.ITERATION_VAL"):
        assert prop(schema, name)["x-trainboard"]["widget"] in ("slider", "log-slider")
    for name in ("SYSTEM.NUM_GPUS", "SYSTEM.NUM_CPUS"):
        assert prop(schema, name)["x-trainboard"]["widget"] == "slider"
    optimizer = prop(schema, "SOLVER.NAME")
    assert optimizer["enum"] == ["SGD", "Adam", "AdamW"]
    assert optimizer["x-trainboard"]["widget"] == "select"
    scheduler = prop(schema, "SOLVER.LR_SCHEDULER_NAME")["x-trainboard"]
    assert scheduler["widget"] == "select" and "WarmupCosineLR" in scheduler["options"]
    assert prop(schema, "MODEL.MIXED_PRECESION")["x-trainboard"]["widget"] == "toggle"
    assert prop(schema, "MODEL.INPUT_SIZE")["minItems"] == 3
    assert prop(schema, "MODEL.EMBEDDING")["x-trainboard"]["core"] is False
    assert prop(schema, "MODEL.ARCHITECTURE")["enum"] == list(SUPPORTED_ARCHITECTURES)
