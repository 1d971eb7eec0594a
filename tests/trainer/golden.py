"""PyTC v1.0.0's golden fixtures (`../shared/reference/pytc-golden/` beside the clone).

A missing folder fails loudly, saying where it looked: parity tests never skip.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

GOLDEN = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "pytc-golden"


@cache
def manifest() -> dict[str, Any]:
    path = GOLDEN / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"PyTC golden fixtures not found: looked for {path.resolve()}")
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def entries(category: str, under: str = "") -> list[dict[str, Any]]:
    """Manifest entries of a category whose file (or, for errors, call) lies `under`."""
    found = [
        e
        for e in manifest()["entries"]
        if e["category"] == category and (e["file"] or "").startswith(under)
    ]
    if not found:
        raise LookupError(f"no {category!r} fixtures under {under!r} in {GOLDEN.resolve()}")
    return found


def load(name: str) -> Any:
    """An .npz (dict-like of arrays) or .json fixture by its path in the folder."""
    path = GOLDEN / name
    if not path.is_file():
        raise FileNotFoundError(f"PyTC golden fixture missing: looked for {path.resolve()}")
    if name.endswith(".json"):
        return json.loads(path.read_text())
    return np.load(path)


def entry_id(entry: dict[str, Any]) -> str:
    return str(entry["file"] or entry["call"])
