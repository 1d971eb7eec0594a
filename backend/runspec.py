"""From a create request to a run, and from a run to the job its trainer child gets.

A create request is `{name?, config, base?, overrides?, log_path?, seed?}` (the body of
`POST /api/runs`). `created_data` validates it with `backend.config`, reporting every
problem at once, and returns the data of the run's `created` event; `job_for` turns that
data back into a `TrainJob` for one attempt. Torch-free: the server imports this.

Paths: relative paths in the config are relative to `base_dir` (default: the working
directory), as validation reads them. The resolved config makes DATASET.INPUT_PATH,
DATASET.OUTPUT_PATH and MODEL.PRE_MODEL absolute, so that the child, and a resume after
the server restarted elsewhere, read the files that were validated. `output_path` is
DATASET.OUTPUT_PATH. The log folder (events.jsonl, train.log, previews) defaults to
`<OUTPUT_PATH>/log/<run_id>`: one folder per run, because the child appends to
`events.jsonl` and crash recovery must read that run's lines only. That is why the run
id is chosen before the `created` event exists (see `create_run`). A `log_path` given in
the request is used as it is (made absolute).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backend.config import load_config, validate
from backend.config.problems import Problem
from backend.events import Event
from backend.job import TrainJob
from backend.runs import RunService, new_run_id

_SEED_MAX = 2**32 - 1  # numpy's seed range


class InvalidRequest(ValueError):
    """A create request of the wrong shape (not a config problem): HTTP 400."""


class InvalidConfig(Exception):
    """The config has errors. `problems` holds every problem found, warnings included."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        errors = self.errors
        shown = "; ".join(p.format() for p in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        super().__init__(f"the config has {len(errors)} error(s): {shown}{more}")

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    def to_json(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.problems]


def created_data(
    request: Mapping[str, Any],
    run_id: str,
    *,
    check_paths: bool = True,
    base_dir: Path | None = None,
) -> dict[str, Any]:
    """The `created` event data for a request; InvalidRequest or InvalidConfig if unusable.

    Warnings do not block: they are kept in the data (`warnings`) so the run can show them.
    """
    config, base, overrides = _source(request)
    name, log_path = _optional_str(request, "name"), _optional_str(request, "log_path")
    seed = _seed(request)
    loaded = load_config(text=config, base_text=base, overrides=overrides)
    problems = _unique(validate(loaded, check_paths=check_paths, base_dir=base_dir))
    if any(p.is_error for p in problems):
        raise InvalidConfig(problems)
    root = Path(os.path.abspath(base_dir or Path.cwd()))
    values = loaded.values
    _make_paths_absolute(values, root)
    output_path = str(values["DATASET"]["OUTPUT_PATH"])
    if check_paths:
        problems += _earlier_checkpoints(output_path)
    return {
        "name": name or _default_name(values),
        "config": loaded.to_yaml(),
        "source": {"config": config, "base": base, "overrides": overrides},
        "output_path": output_path,
        "log_path": _absolute(root, log_path or os.path.join(output_path, "log", run_id)),
        "seed": seed,
        "total_iterations": int(values["SOLVER"]["ITERATION_TOTAL"]),
        "warnings": [p.to_json() for p in problems],
    }


async def create_run(
    service: RunService,
    request: Mapping[str, Any],
    *,
    check_paths: bool = True,
    base_dir: Path | None = None,
) -> Event:
    """Validate a create request and create the run (Idle). Nothing is stored on error."""
    run_id = new_run_id()
    data = created_data(request, run_id, check_paths=check_paths, base_dir=base_dir)
    return await service.create(data, run_id)


def job_for(
    run_id: str,
    created: Mapping[str, Any],
    attempt: int,
    resume_from: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> TrainJob:
    """The job for one attempt of a run, from the data of its `created` event.

    The stored YAML is the resolved config, so it loads back to the same values. It is
    not re-validated: paths may have changed since, and the child reports that itself.
    """
    loaded = load_config(text=str(created["config"]))
    errors = [p for p in loaded.problems if p.is_error]
    if errors:
        # Only a log written by an incompatible Trainboard gets here.
        raise InvalidConfig(errors)
    return TrainJob(
        run_id=run_id,
        attempt=attempt,
        config=loaded.values,
        output_path=str(created["output_path"]),
        log_path=str(created["log_path"]),
        seed=int(created.get("seed") or 0),
        resume_from=resume_from,
        options=dict(options or {}),
    )


# --- reading the request --------------------------------------------------------------------


def _source(request: Mapping[str, Any]) -> tuple[str, str | None, list[str]]:
    if not isinstance(request, Mapping):
        raise InvalidRequest("the request must be a JSON object")
    config = request.get("config")
    if not isinstance(config, str):
        raise InvalidRequest("'config' (the YAML text of the config) is required")
    base = request.get("base")
    if base is not None and not isinstance(base, str):
        raise InvalidRequest("'base' must be the YAML text of the base config")
    overrides = request.get("overrides") or []
    if not isinstance(overrides, list) or not all(
        isinstance(item, str | int | float) and not isinstance(item, bool) for item in overrides
    ):
        raise InvalidRequest(
            "'overrides' must be a list of strings: KEY, VALUE, ... "
            '(for example ["SOLVER.BASE_LR", "0.01"])'
        )
    return config, base, [str(item) for item in overrides]


def _optional_str(request: Mapping[str, Any], key: str) -> str | None:
    """A short optional string option (a name, a path), stripped; None when blank."""
    value = request.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{key}' must be a string")
    return value.strip() or None


def _seed(request: Mapping[str, Any]) -> int:
    seed = request.get("seed")
    if seed is None:
        return 0
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _SEED_MAX:
        raise InvalidRequest(f"'seed' must be an integer from 0 to {_SEED_MAX}")
    return seed


def _default_name(values: Mapping[str, Any]) -> str:
    folder = Path(str(values["DATASET"]["OUTPUT_PATH"])).name or "run"
    return f"{folder} {time.strftime('%Y-%m-%d %H:%M')}"


def _make_paths_absolute(values: dict[str, Any], root: Path) -> None:
    dataset, model = values["DATASET"], values["MODEL"]
    if isinstance(dataset.get("INPUT_PATH"), str):
        # '@' joins one folder per volume (PyTC).
        folders = dataset["INPUT_PATH"].split("@")
        dataset["INPUT_PATH"] = "@".join(_absolute(root, f) for f in folders)
    dataset["OUTPUT_PATH"] = _absolute(root, str(dataset["OUTPUT_PATH"]))
    if isinstance(model.get("PRE_MODEL"), str) and model["PRE_MODEL"]:
        model["PRE_MODEL"] = _absolute(root, model["PRE_MODEL"])


def _absolute(root: Path, path: str) -> str:
    return os.path.normpath(os.path.join(root, path))


def _earlier_checkpoints(output_path: str) -> list[Problem]:
    """Warn when this run would write over another run's checkpoints (same file names)."""
    folder = Path(output_path)
    found = sorted(folder.glob("checkpoint_*.pth.tar")) if folder.is_dir() else []
    if not found:
        return []
    return [
        Problem(
            "warning",
            "DATASET.OUTPUT_PATH",
            f"{output_path} already holds {len(found)} checkpoint file(s) of an earlier run; "
            "this run will overwrite those with the same names",
            expected="a new or empty folder",
            suggestion="give this run its own OUTPUT_PATH (a new subfolder) to keep them",
        )
    ]


def _unique(problems: list[Problem]) -> list[Problem]:
    # The loader and the validator may both notice the same thing; say it once.
    return list(dict.fromkeys(problems))
