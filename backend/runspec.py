"""From a create request to a run, and from a run to the job its trainer child gets.

A create request is `{name?, config, base?, overrides?, log_path?, seed?, reuse_output?,
start?}` (the body of `POST /api/runs`); any other field is refused, naming the nearest
known one. `created_data` validates it with `backend.config`, reporting every problem at
once, checks that the output folder is not another run's (`backend.outputs`), and returns
the data of the run's `created` event; `job_for` turns that data back into a `TrainJob`
for one attempt. Torch-free: the server imports this.

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

import difflib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backend import outputs
from backend.config import load_config, validate
from backend.config.problems import Problem
from backend.events import Event
from backend.execution.job import TrainJob
from backend.outputs import KnownRun, OutputInUse
from backend.runs import RunService, new_run_id

__all__ = [
    "FIELDS",
    "InvalidConfig",
    "InvalidRequest",
    "OutputInUse",
    "check_fields",
    "config_source",
    "created_data",
    "job_for",
]

# The fields of a create request (the command id travels beside them, not among them).
FIELDS = ("name", "config", "base", "overrides", "log_path", "seed", "reuse_output", "start")

log = logging.getLogger(__name__)
_SEED_MAX = 2**32 - 1  # numpy's seed range


class InvalidRequest(ValueError):
    """A create request of the wrong shape (not a config problem): HTTP 400."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


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
    runs: Mapping[str, KnownRun] | None = None,
) -> dict[str, Any]:
    """The `created` event data for a request; InvalidRequest, InvalidConfig or
    OutputInUse (the output folder is another run's, per `runs` and the folder itself)
    if unusable.

    Warnings do not block: they are kept in the data (`warnings`) so the run can show them.
    """
    _known_fields(request)
    config, base, overrides = config_source(request)
    name, log_path = _optional_str(request, "name"), _optional_str(request, "log_path")
    seed = _seed(request)
    reuse = _flag(request, "reuse_output")
    _flag(request, "start")  # the caller starts the run; its shape is checked here
    loaded = load_config(text=config, base_text=base, overrides=overrides)
    problems = _unique(validate(loaded, check_paths=check_paths, base_dir=base_dir))
    if any(p.is_error for p in problems):
        raise InvalidConfig(problems)
    root = Path(os.path.abspath(base_dir or Path.cwd()))
    values = loaded.values
    _make_paths_absolute(values, root)
    output_path = str(values["DATASET"]["OUTPUT_PATH"])
    if check_paths:
        overridden = outputs.check(output_path, run_id, runs or {}, reuse=reuse)
        if overridden is not None:
            problems.append(_reused(output_path, overridden))
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
    data = created_data(
        request, run_id, check_paths=check_paths, base_dir=base_dir, runs=service.runs
    )
    event = await service.create(data, run_id)
    if check_paths:
        claim_output(data, run_id)
    return event


def claim_output(created: Mapping[str, Any], run_id: str) -> None:
    """Mark the new run's output folder as its own (see `backend.outputs`). A folder that
    cannot be written is not fatal here: the trainer reports it when it saves."""
    try:
        outputs.claim(str(created["output_path"]), run_id, str(created.get("name") or ""))
    except OSError as exc:
        log.warning("run %s: cannot mark its output folder: %s", run_id, exc)


def job_for(
    run_id: str,
    created: Mapping[str, Any],
    attempt: int,
    resume_from: str | None = None,
    options: Mapping[str, Any] | None = None,
    own_checkpoints: Sequence[str] = (),
) -> TrainJob:
    """The job for one attempt of a run, from the data of its `created` event.

    The stored YAML is the resolved config, so it loads back to the same values. It is
    not re-validated: paths may have changed since, and the child reports that itself.
    `own_checkpoints` (newest first, from the run's `checkpoint` events) lets the child
    resume only from a checkpoint of this run.
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
        own_checkpoints=tuple(own_checkpoints),
        options=dict(options or {}),
    )


# --- reading the request --------------------------------------------------------------------


def _known_fields(request: Mapping[str, Any]) -> None:
    if not isinstance(request, Mapping):
        raise InvalidRequest("the request must be a JSON object")
    check_fields(request, FIELDS, "the create request")


def check_fields(request: Mapping[str, Any], fields: Sequence[str], what: str) -> None:
    """InvalidRequest for a field `what` does not define, naming the nearest one it does."""
    for key in request:
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise InvalidRequest(
                f"unknown field '{key}' in {what}; {hint}the fields are: {', '.join(fields)}",
                field=key,
                suggestion=near[0] if near else None,
            )


def _flag(request: Mapping[str, Any], key: str) -> bool:
    value = request.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be true or false")
    return value


def config_source(request: Mapping[str, Any]) -> tuple[str, str | None, list[str]]:
    """The request's `config`, `base` and `overrides` (numbers pass as text); InvalidRequest."""
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


def _reused(output_path: str, owner: outputs.Owner) -> Problem:
    whose = f"run '{owner.run_id}' ({owner.name})" if owner.run_id else str(owner.name)
    return Problem(
        "warning",
        "DATASET.OUTPUT_PATH",
        f"{output_path} belongs to {whose}; reused as asked: its checkpoints with the same "
        "names will be overwritten",
        expected="a folder of this run's own",
        suggestion="give each run its own OUTPUT_PATH to keep every run's checkpoints",
    )


def _unique(problems: list[Problem]) -> list[Problem]:
    # The loader and the validator may both notice the same thing; say it once.
    return list(dict.fromkeys(problems))
