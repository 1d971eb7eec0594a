"""Who owns an output folder, so that no run writes over another run's checkpoints.

Checkpoints go directly into a run's `DATASET.OUTPUT_PATH` (PyTC's habit), under names
that repeat from run to run (`checkpoint_00020.pth.tar`, `checkpoint_best.pth.tar`). A
folder therefore belongs to one run, and another run may write into it only when asked
to explicitly (`reuse_output`). A folder is another run's when, in this order:

1. a run of the event store was created with it as its output path (the newest such
   run is named);
2. its marker file `.trainboard-owner.json`, written when a run is created, names a run
   (this is how a run made by `trainboard train --db other.db` is known);
3. it holds checkpoint files but no marker: an unknown run's (an older Trainboard's, or
   PyTC's own), named as such.

A run always owns its own folder (a resume writes into it). Paths are compared after
resolving symlinks; a known run's folder is resolved once per process (a create checks
thousands of runs). Torch-free and store-free: callers pass the runs they know.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

MARKER = ".trainboard-owner.json"
CHECKPOINT_GLOB = "checkpoint_*.pth.tar"
_SUFFIX = re.compile(r"^(?P<stem>.*?)-(?P<n>\d+)$")
_MAX_PROPOSALS = 10_000


class KnownRun(Protocol):
    """What ownership needs to know of a run (a `RunSummary` is one)."""

    @property
    def output_path(self) -> str | None: ...

    @property
    def name(self) -> str: ...

    @property
    def created_at(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Owner:
    """The run a folder belongs to; `run_id` is None for checkpoints of an unknown run."""

    run_id: str | None
    name: str | None
    state: str | None = None

    def to_json(self, *, with_state: bool = False) -> dict[str, Any]:
        shown: dict[str, Any] = {"run_id": self.run_id, "name": self.name}
        if with_state:
            shown["state"] = self.state
        return shown


class OutputInUse(Exception):
    """A create whose output folder is another run's: HTTP 409 `output_in_use`."""

    def __init__(self, output_path: str, owner: Owner, proposed: str) -> None:
        self.output_path = output_path
        self.owner = owner
        self.proposed = proposed
        whose = f"run '{owner.run_id}' ({owner.name})" if owner.run_id else owner.name
        super().__init__(
            f"the output folder {output_path} belongs to {whose}: this run would overwrite "
            f"its checkpoints. Use the free folder {proposed} (set DATASET.OUTPUT_PATH), or "
            "ask to reuse the folder explicitly (reuse_output: true, --reuse-output)"
        )

    def details(self) -> dict[str, Any]:
        return {
            "output_path": self.output_path,
            "owner": self.owner.to_json(),
            "proposed": self.proposed,
        }


def owner_of(path: str, run_id: str | None, runs: Mapping[str, KnownRun]) -> Owner | None:
    """The run other than `run_id` that owns the folder `path`; None if it is free or its own."""
    real = os.path.realpath(path)
    users = [
        (run.created_at or 0.0, rid, run)
        for rid, run in runs.items()
        if run.output_path and _resolved(run.output_path) == real
    ]
    if any(rid == run_id for _, rid, _ in users):
        return None
    if users:
        _, rid, run = max(users, key=lambda user: (user[0], user[1]))
        return Owner(rid, run.name, _state(run))
    marker = read_marker(real)
    if marker is not None:
        marked = marker.get("run_id")
        if marked == run_id:
            return None
        return Owner(str(marked), str(marker.get("name") or ""), _state(runs.get(str(marked))))
    found = checkpoints_in(real)
    if found:
        return Owner(None, f"an unknown run ({found} checkpoint file(s), no Trainboard marker)")
    return None


def propose(path: str, runs: Mapping[str, KnownRun]) -> str:
    """`path` if it is free, else the first free sibling `<name>-2`, `<name>-3`, ..."""
    return path if owner_of(path, None, runs) is None else _free_sibling(path, runs)


def _free_sibling(path: str, runs: Mapping[str, KnownRun]) -> str:
    folder = Path(path)
    match = _SUFFIX.match(folder.name)
    stem, first = (match["stem"], int(match["n"]) + 1) if match else (folder.name, 2)
    taken = {_resolved(r.output_path) for r in runs.values() if r.output_path}
    for n in range(first, first + _MAX_PROPOSALS):
        candidate = str(folder.with_name(f"{stem}-{n}"))
        if os.path.realpath(candidate) in taken:
            continue
        if read_marker(candidate) is None and not checkpoints_in(candidate):
            return candidate
    raise RuntimeError(f"no free folder next to {path}")  # ten thousand siblings taken


def check(
    path: str, run_id: str, runs: Mapping[str, KnownRun], *, reuse: bool = False
) -> Owner | None:
    """OutputInUse unless `path` is free, `run_id`'s own, or reused on purpose (then the
    owner it overrides is returned, to be reported as a warning)."""
    owner = owner_of(path, run_id, runs)
    if owner is None or reuse:
        return owner
    raise OutputInUse(path, owner, _free_sibling(path, runs))


def claim(path: str, run_id: str, name: str) -> None:
    """Write the marker naming `run_id` (creating the folder): the newest run to use a
    folder is named by it. Written beside its final name and renamed into place."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{MARKER}.{os.getpid()}.partial"
    partial.write_text(json.dumps({"run_id": run_id, "name": name}) + "\n", encoding="utf-8")
    os.replace(partial, folder / MARKER)


def read_marker(path: str) -> dict[str, Any] | None:
    """The marker of a folder, or None if it has none (or an unreadable one)."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("run_id") else None


def checkpoints_in(path: str) -> int:
    folder = Path(path)
    try:
        return sum(1 for _ in folder.glob(CHECKPOINT_GLOB)) if folder.is_dir() else 0
    except OSError:
        return 0


def describe(path: str, runs: Mapping[str, KnownRun]) -> dict[str, Any]:
    """`POST /api/paths/output`: the folder's owner (if any) and a free folder to propose."""
    owner = owner_of(path, None, runs)
    return {
        "path": path,
        "owner": None if owner is None else owner.to_json(with_state=True),
        "proposed": path if owner is None else _free_sibling(path, runs),
    }


@lru_cache(maxsize=1 << 16)
def _resolved(known_output_path: str) -> str:
    """A known run's folder with symlinks resolved (cached: it does not move)."""
    return os.path.realpath(known_output_path)


def _state(run: Any) -> str | None:
    state = getattr(run, "state", None)
    return None if state is None else str(state)
