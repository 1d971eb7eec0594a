"""JSON as the server reads it from clients and writes it to them (REST bodies, WebSocket frames).

Reading is strict and bounded: UTF-8 JSON with finite numbers only (no `NaN`, no
`Infinity`, no number that overflows to infinity) and at most `MAX_DEPTH` levels of
nesting, checked by orjson while it parses and then on the parsed value; anything else is
a `WireError` whose message says what is wrong and where. Writing never fails on a value
the server holds: a non-finite float becomes `null`, and what orjson cannot write (an
integer beyond 64 bits, very deep nesting) falls back to the standard library.

Use it at the client boundary only. Events that Trainboard stores and replays use
`backend.jsontext`, whose writing is strict instead (a NaN there is an error, not null).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse

# Deeper than any request the protocol defines (a create body is two levels deep), and
# shallow enough that echoing or storing a value can never hit a recursion limit.
MAX_DEPTH = 32
_NON_FINITE = ("NaN", "Infinity")  # orjson points past the sign of -Infinity
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class WireError(ValueError):
    """Text that is not JSON the server accepts; the message says what and where."""


def loads(data: bytes | bytearray | str) -> Any:
    """The JSON value of `data`, or `WireError`."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WireError(_explain(exc)) from None
    _check_depth(value)
    return value


def _explain(exc: orjson.JSONDecodeError) -> str:
    where = f"line {exc.lineno} column {exc.colno}"
    literal = next((t for t in _NON_FINITE if exc.doc.startswith(t, exc.pos)), None)
    if literal is not None:
        return f"{literal} at {where} is not JSON: send a finite number, or null"
    if exc.msg.startswith("depth limit"):
        return f"nested deeper than {MAX_DEPTH} levels at {where}"
    if "infinity" in exc.msg:
        return f"the number at {where} is too large (it would be infinite): send a finite number"
    return f"{exc.msg} at {where}"


def _check_depth(value: Any) -> None:
    """Refuse more than `MAX_DEPTH` levels of arrays and objects, naming the first too deep.

    Level by level, with exact type checks (orjson makes plain dicts and lists): about a
    second for the 1.3 million containers of a 4 MB body on a busy machine.
    """
    level = [value] if type(value) in (dict, list) else []
    for _ in range(MAX_DEPTH):
        below: list[Any] = []
        add = below.append
        for node in level:
            for item in node.values() if type(node) is dict else node:
                if type(item) is list or type(item) is dict:
                    add(item)
        if not below:
            return
        level = below
    path = (_path_to_depth(value, MAX_DEPTH + 1) or "").removeprefix(".")
    shown = path if len(path) <= 60 else path[:57] + "..."
    raise WireError(f"nested deeper than {MAX_DEPTH} levels (at {shown or 'the top'})")


def _path_to_depth(node: Any, depth: int) -> str | None:
    """Where (`.a.b[0]`) a container `depth` levels down from `node` is, if there is one."""
    if depth == 1:
        return ""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        if isinstance(child, dict | list):
            rest = _path_to_depth(child, depth - 1)
            if rest is not None:
                return (f"[{key}]" if isinstance(node, list) else f".{key}") + rest
    return None


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value`; never fails on non-finite floats (written as null)."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: a huge integer, nesting past its limit
        text = json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"), default=str)
        return text.encode()


def dumps_text(value: Any) -> str:
    """`dumps` as text, for WebSocket text frames."""
    return dumps(value).decode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSONResponse, written with `dumps`: a non-finite float is null, not a 500."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
