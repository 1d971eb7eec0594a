"""Fast, strict JSON for the event path: orjson, with the stdlib's refusal of NaN/Infinity.

Use it for what Trainboard itself writes and reads back: events from the trainer's
emitter, rows of the event store, the hub's event frames. Writing refuses a value that
JSON cannot hold exactly (the event log must never turn a NaN into null); `loads` is plain
orjson, for text this module wrote. JSON from or to a client (REST bodies, WebSocket
commands, API responses) goes through `backend.wire` instead: bounded reading of untrusted
text, and writing that never fails.

orjson is about ten times faster than `json` at the small dicts of floats that make up
nearly all events, but it writes a non-finite float as `null` where `json.dumps(...,
allow_nan=False)` raises. `dumps` keeps the strict contract: output that holds `null`
(rare: a failed event's `iteration: null`, a cleaned NaN) is checked with the stdlib,
which raises on a non-finite value, so a NaN is never silently stored as null.
Integers beyond 64 bits and non-string keys, which orjson refuses, go through the stdlib.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson

_strict = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode


def dumps(value: Any) -> bytes:
    """Compact JSON bytes; ValueError for a non-finite float or absurd nesting, TypeError
    for what JSON cannot hold (as `json.dumps(value, allow_nan=False)` would)."""
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:
        # Non-str keys, big ints or deep nesting (the stdlib copes), or its own TypeError.
        try:
            return _strict(value).encode()
        except RecursionError as exc:
            raise ValueError("too deeply nested for JSON") from exc
    if b"null" in encoded:
        _strict(value)  # raises ValueError if a null came from NaN or Infinity
    return encoded


def dumps_text(value: Any) -> str:
    """`dumps` as text."""
    return dumps(value).decode()


def dumps_many(values: Sequence[Any]) -> list[str]:
    """`dumps_text` of each value, with the same errors, for a batch of events: one
    search for `null` over the whole batch instead of one per value (metric events,
    nearly all of them, hold none)."""
    try:
        # Each encoding is decoded as soon as it is made: holding the bytes objects
        # (orjson over-allocates them) until the batch is done costs more than encoding.
        texts = [encoded.decode() for encoded in map(orjson.dumps, values)]
    except orjson.JSONEncodeError:
        return [dumps_text(value) for value in values]
    if "null" in "".join(texts):
        return [dumps_text(value) for value in values]  # the strict check, value by value
    return texts


loads = orjson.loads
