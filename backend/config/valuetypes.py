"""Value types of config keys, written as small tags: "int", "list[list[str]]", "str|None".

Tags keep the schema table readable and are enough for everything the loader, the
validator and the JSON Schema need: matching, converting (PyTC's literal evaluation of
strings, ints where floats are meant) and describing a type to a human.

Grammar: `tag := alt ("|" alt)*`, `alt := int | float | bool | str | None | any | list[tag]`.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator
from functools import cache
from typing import Any

SCALARS = ("int", "float", "bool", "str", "None", "any")


@cache
def alternatives(tag: str) -> tuple[str, ...]:
    """Split a tag on top-level `|` (not inside `list[...]`)."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(tag):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(tag[start:i].strip())
            start = i + 1
    parts.append(tag[start:].strip())
    for part in parts:
        if part not in SCALARS and not (part.startswith("list[") and part.endswith("]")):
            raise ValueError(f"bad type tag {tag!r}")
    return tuple(parts)


def item_tag(alt: str) -> str:
    """`list[X]` -> `X`."""
    return alt[5:-1]


def accepts_str(tag: str) -> bool:
    return any(a in ("str", "any") for a in alternatives(tag))


def _convert_one(value: Any, alt: str) -> tuple[bool, Any]:
    """Match `value` against one alternative, converting harmless differences."""
    if alt == "any":
        return True, value
    if alt == "None":
        return value is None, value
    if alt == "bool":
        return isinstance(value, bool), value
    if isinstance(value, bool):
        return False, value  # bool is an int subclass; never let True pass as 1.
    if alt == "int":
        if isinstance(value, int):
            return True, value
        # 1e5 in YAML is a float; an integral float means the integer.
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return True, int(value)
        return False, value
    if alt == "float":
        return (True, float(value)) if isinstance(value, int | float) else (False, value)
    if alt == "str":
        # TARGET_OPT: [0, 2] means ['0', '2']; YAML turned the digits into ints.
        if isinstance(value, int):
            return True, str(value)
        return isinstance(value, str), value
    if not isinstance(value, list | tuple):
        return False, value
    inner = item_tag(alt)
    out = []
    for item in value:
        ok, item = convert(item, inner)
        if not ok:
            return False, value
        out.append(item)
    return True, out


def convert(value: Any, tag: str) -> tuple[bool, Any]:
    """(matches, converted value). Tuples become lists, ints floats where floats are meant."""
    for alt in alternatives(tag):
        ok, converted = _convert_one(value, alt)
        if ok:
            return True, converted
    return False, value


def literal(text: str) -> Any:
    """PyTC (yacs) literal evaluation: "(30000, 35000)" -> [30000, 35000]; else the text."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text
    return tuples_to_lists(value)


def coerce(value: Any, tag: str) -> Any:
    """The value as the key's type when it can be read as one, else unchanged.

    Strings are literal-evaluated as yacs does, so that `STEPS: (30000, 35000)` and
    `BASE_LR: 1e-03` (a string in YAML 1.1) become numbers and `NAME: "'SGD'"` the string
    SGD, while `OUTPUT_NAME: '123'` stays the text the user wrote.
    """
    value = tuples_to_lists(value)
    if isinstance(value, str):
        decoded = literal(value)
        # yacs literal-evaluates every string value; where the key is a string key only a
        # string literal is taken ("'SGD'" -> SGD), so '123' stays the text the user wrote.
        if not accepts_str(tag) or isinstance(decoded, str):
            value = decoded
    ok, converted = convert(value, tag)
    return converted if ok else value


def matches(value: Any, tag: str) -> bool:
    return convert(value, tag)[0] and not isinstance(value, tuple)


def tuples_to_lists(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [tuples_to_lists(v) for v in value]
    return value


_WORDS = {
    "int": ("an integer", "integers"),
    "float": ("a number", "numbers"),
    "bool": ("true or false", "booleans"),
    "str": ("a string", "strings"),
    "None": ("null", "nulls"),
    "any": ("any value", "values"),
}


def describe(tag: str, plural: bool = False) -> str:
    """Human words for a tag: "list[list[str]]" -> "a list of lists of strings"."""
    words = []
    for alt in alternatives(tag):
        if alt in _WORDS:
            words.append(_WORDS[alt][1 if plural else 0])
        else:
            inner = describe(item_tag(alt), plural=True)
            words.append(f"lists of {inner}" if plural else f"a list of {inner}")
    return " or ".join(words)


def leaves(value: Any) -> Iterator[Any]:
    """Every non-list value inside (nested) lists, or the value itself."""
    if isinstance(value, list | tuple):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__
