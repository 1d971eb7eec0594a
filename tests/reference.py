"""PyTC v1.0.0's reference material, read in place from `<repo>/../shared/reference/`.

The one place the parity tests find it: CI clones main with `shared/` beside it. A missing
folder or file fails loudly, naming the path looked in: parity tests never skip.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = (Path(__file__).resolve().parents[1] / ".." / "shared" / "reference").resolve()


def reference_dir(*parts: str) -> Path:
    """A folder of the reference material (e.g. `"pytc-golden", "models"`); missing: an error."""
    path = REFERENCE.joinpath(*parts)
    if not path.is_dir():
        raise FileNotFoundError(f"PyTC reference material not found: looked in {path}")
    return path


def golden_dir(*parts: str) -> Path:
    """A folder of the golden fixtures (`pytc-golden/`)."""
    return reference_dir("pytc-golden", *parts)


def golden_path(name: str) -> Path:
    """A golden fixture file by its path in `pytc-golden/`; missing: an error naming it."""
    path = golden_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"PyTC golden fixture missing: looked for {path}")
    return path


@cache
def manifest() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(golden_path("manifest.json").read_text())
    return result


def entries(category: str, under: str = "") -> list[dict[str, Any]]:
    """Manifest entries of a category whose file (or, for errors, call) lies `under`."""
    found = [
        e
        for e in manifest()["entries"]
        if e["category"] == category and (e["file"] or "").startswith(under)
    ]
    if not found:
        raise LookupError(f"no {category!r} fixtures under {under!r} in {golden_dir()}")
    return found


def load(name: str) -> Any:
    """An .npz (dict-like of arrays) or .json fixture by its path in `pytc-golden/`."""
    path = golden_path(name)
    if name.endswith(".json"):
        return json.loads(path.read_text())
    return np.load(path)


def entry_id(entry: dict[str, Any]) -> str:
    return str(entry["file"] or entry["call"])
