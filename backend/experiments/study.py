"""From a sweep request to an Optuna study, and from a sweep's events back to the same study.

`parse_spec` checks a create request's shape (every refusal an `InvalidSweep` naming the
field and what to write) and returns the `sweep_created` data. `LiveStudy` wraps the
in-memory Optuna study: Optuna samples (TPE, random, grid) and prunes (median,
successive halving); the event log stays the only truth. `LiveStudy.rebuild(summary)`
makes the study from a sweep's events alone: every asked trial is added in number order
(`study.add_trial(create_trial(...))`), told ones finished with their state, value and
intermediate values, the others RUNNING with the values reported so far, so Optuna's trial
numbers are the sweep's and a restarted sweep neither repeats nor forgets a trial. A
seeded sweep seeds its sampler per trial (`trial_seed`), so after a restart it samples
what the first process would have.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState, create_trial

from backend.experiments.sweeps import SweepSummary, Trial

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger(__name__)

FIELDS = (
    "name",
    "config",
    "base",
    "overrides",
    "space",
    "objective",
    "trials",
    "parallel",
    "sampler",
    "pruner",
    "seed",
)
OBJECTIVES = {"max_dice": ("maximize", "dice"), "min_val_loss": ("minimize", "loss")}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "halving")
PARAM_TYPES = ("float", "int", "choice")
PARAM_FIELDS = ("type", "low", "high", "log", "choices")
MAX_TRIALS = 1000
MAX_PARALLEL = 64
MAX_PARAMS = 32
MAX_CHOICES = 100
MAX_GRID = 10_000
MEDIAN_STARTUP_TRIALS = 2  # complete trials before the median pruner judges others
_KEY = re.compile(r"^[A-Z][A-Z0-9_]*\.[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)?$")
# Optuna's system attributes a rebuilt trial must keep (the grid sampler's bookkeeping).
_KEPT_ATTRS = ("grid_id", "search_space")


class InvalidSweep(ValueError):
    """A sweep request of the wrong shape: HTTP 400, with the field it is about."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


def parse_spec(body: Mapping[str, Any]) -> dict[str, Any]:
    """The validated sweep spec (the `sweep_created` data, less what the service adds)."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidSweep(
            f"unknown field(s) {', '.join(map(repr, unknown))} in a sweep request; "
            f"the fields are {', '.join(FIELDS)}",
            fields=unknown,
        )
    config = body.get("config")
    if not isinstance(config, str) or not config.strip():
        raise InvalidSweep(
            "'config' (the YAML text of the base config) is required", field="config"
        )
    base = body.get("base")
    if base is not None and not isinstance(base, str):
        raise InvalidSweep("'base' must be the YAML text of a base config", field="base")
    overrides = body.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise InvalidSweep(
            "'overrides' must be a list of strings: KEY, VALUE, ...", field="overrides"
        )
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise InvalidSweep("'name' must be a string of at most 200 characters", field="name")
    objective = _one_of(body, "objective", tuple(OBJECTIVES), "max_dice")
    sampler = _one_of(body, "sampler", SAMPLERS, "tpe")
    pruner = _one_of(body, "pruner", PRUNERS, "none")
    trials = _int(body, "trials", None, 1, MAX_TRIALS)
    parallel = _int(body, "parallel", 1, 1, MAX_PARALLEL)
    seed = None if body.get("seed") is None else _int(body, "seed", None, 0, 2**32 - 1)
    space = parse_space(body.get("space"))
    if sampler == "grid":
        size = math.prod(len(values) for values in grid_space(space).values())
        if trials > size:
            raise InvalidSweep(
                f"the grid has {size} point(s) but 'trials' is {trials}: "
                f"set trials to at most {size}, or use the tpe or random sampler",
                field="trials",
            )
    return {
        "name": (name or "").strip() or f"sweep of {', '.join(space)}",
        "config": config,
        "base": base,
        "overrides": list(overrides),
        "space": space,
        "objective": objective,
        "trials": trials,
        "parallel": parallel,
        "sampler": sampler,
        "pruner": pruner,
        "seed": seed,
    }


def _one_of(body: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(key, default)
    if value is None:
        value = default
    if value not in allowed:
        raise InvalidSweep(f"'{key}' must be one of {', '.join(allowed)}, not {value!r}", field=key)
    return str(value)


def _int(body: Mapping[str, Any], key: str, default: int | None, low: int, high: int) -> int:
    value = body.get(key, default)
    if value is None:
        raise InvalidSweep(f"'{key}' is required: an integer from {low} to {high}", field=key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidSweep(
            f"'{key}' must be an integer from {low} to {high}, not {value!r}", field=key
        )
    return value


def parse_space(space: Any) -> dict[str, dict[str, Any]]:
    """The search space, checked: `{KEY: {type, low, high, log} | {type: choice, choices}}`."""
    if not isinstance(space, dict) or not space:
        raise InvalidSweep(
            "'space' must map config keys to ranges, for example "
            '{"SOLVER.BASE_LR": {"type": "float", "low": 1e-4, "high": 0.1, "log": true}}',
            field="space",
        )
    if len(space) > MAX_PARAMS:
        raise InvalidSweep(f"at most {MAX_PARAMS} parameters per sweep", field="space")
    return {key: _param(key, entry) for key, entry in space.items()}


def _param(key: Any, entry: Any) -> dict[str, Any]:
    where = f"space[{key!r}]"
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidSweep(
            f"{where}: a parameter is a config key like SOLVER.BASE_LR", field="space", key=key
        )
    if not isinstance(entry, dict):
        raise InvalidSweep(f"{where} must be an object with a 'type'", field="space", key=key)
    unknown = sorted(set(entry) - set(PARAM_FIELDS))
    if unknown:
        raise InvalidSweep(
            f"{where}: unknown field(s) {', '.join(unknown)}; use {', '.join(PARAM_FIELDS)}",
            field="space",
            key=key,
        )
    kind = entry.get("type")
    if kind not in PARAM_TYPES:
        raise InvalidSweep(
            f"{where}: 'type' must be one of {', '.join(PARAM_TYPES)}", field="space", key=key
        )
    if kind == "choice":
        return {"type": "choice", "choices": _choices(where, key, entry.get("choices"))}
    low, high, use_log = entry.get("low"), entry.get("high"), entry.get("log", False)
    number = int if kind == "int" else (int, float)
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise InvalidSweep(
                f"{where}: '{name}' must be {'an integer' if kind == 'int' else 'a number'}",
                field="space",
                key=key,
            )
    assert isinstance(low, int | float) and isinstance(high, int | float)
    if not low < high:
        raise InvalidSweep(
            f"{where}: 'low' ({low}) must be below 'high' ({high})", field="space", key=key
        )
    if not isinstance(use_log, bool):
        raise InvalidSweep(f"{where}: 'log' must be true or false", field="space", key=key)
    if use_log and low <= 0:
        raise InvalidSweep(
            f"{where}: a log range needs 'low' > 0 (it is {low})", field="space", key=key
        )
    cast = int if kind == "int" else float
    return {"type": kind, "low": cast(low), "high": cast(high), "log": use_log}


def _choices(where: str, key: str, choices: Any) -> list[Any]:
    if not isinstance(choices, list) or not 1 <= len(choices) <= MAX_CHOICES:
        raise InvalidSweep(
            f"{where}: 'choices' must be a list of 1 to {MAX_CHOICES} values",
            field="space",
            key=key,
        )
    for value in choices:
        if not isinstance(value, str | int | float | bool) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise InvalidSweep(
                f"{where}: choices must be numbers, strings or booleans, not {value!r}",
                field="space",
                key=key,
            )
    if len({repr(v) for v in choices}) != len(choices):
        raise InvalidSweep(f"{where}: 'choices' has duplicates", field="space", key=key)
    return list(choices)


def distributions(space: Mapping[str, Mapping[str, Any]]) -> dict[str, BaseDistribution]:
    """Optuna's distribution for every parameter of a (checked) space."""
    out: dict[str, BaseDistribution] = {}
    for key, p in space.items():
        if p["type"] == "choice":
            out[key] = CategoricalDistribution(p["choices"])
        elif p["type"] == "int":
            out[key] = IntDistribution(int(p["low"]), int(p["high"]), log=bool(p["log"]))
        else:
            out[key] = FloatDistribution(float(p["low"]), float(p["high"]), log=bool(p["log"]))
    return out


def grid_space(space: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The grid sampler's values: choices, or every integer of an int range."""
    grid: dict[str, list[Any]] = {}
    for key, p in space.items():
        if p["type"] == "choice":
            grid[key] = list(p["choices"])
        elif p["type"] == "int" and p["high"] - p["low"] < MAX_GRID:
            grid[key] = list(range(int(p["low"]), int(p["high"]) + 1))
        else:
            raise InvalidSweep(
                f"space[{key!r}]: the grid sampler needs 'choice' or 'int' parameters; "
                "give choices, or use the tpe or random sampler",
                field="space",
                key=key,
            )
    return grid


def direction(objective: str) -> Literal["minimize", "maximize"]:
    return "maximize" if OBJECTIVES[objective][0] == "maximize" else "minimize"


def metric_of(objective: str, validation: Mapping[str, Any]) -> float | None:
    """The objective's value in one `validation` event's data (dice, or the loss)."""
    value = validation.get(OBJECTIVES[objective][1])
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def final_value(objective: str, intermediate: list[list[float]]) -> float | None:
    """A finished trial's objective: its best validation Dice, or its lowest val loss."""
    values = [v for _, v in intermediate]
    if not values:
        return None
    return max(values) if direction(objective) == "maximize" else min(values)


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial `number` of a sweep seeded `seed` (32 bits)."""
    digest = hashlib.blake2b(f"{seed}:{number}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def _sampler(spec: Mapping[str, Any], seed: int | None = None) -> optuna.samplers.BaseSampler:
    if spec["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec["sampler"] == "grid":
        return optuna.samplers.GridSampler(grid_space(spec["space"]), seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(spec: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    if spec["pruner"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS)
    if spec["pruner"] == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


_STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}


class LiveStudy:
    """The in-memory Optuna study of one sweep, always rebuilt from its events."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec
        self.objective = str(spec["objective"])
        self.distributions = distributions(spec["space"])
        self.study = optuna.create_study(
            direction=direction(self.objective),
            sampler=_sampler(spec, spec.get("seed")),
            pruner=_pruner(spec),
        )
        self.live: dict[int, optuna.Trial] = {}  # asked, not yet told

    @classmethod
    def rebuild(cls, summary: SweepSummary) -> LiveStudy:
        """The study a sweep's events describe: its trials, in number order."""
        live = cls(summary.spec)
        for trial in summary.trials:
            live._add(trial)
        return live

    def _add(self, trial: Trial) -> None:
        intermediate = {int(step): float(v) for step, v in trial.intermediate}
        state = _STATES.get(trial.state, TrialState.RUNNING)
        value = trial.value if state is TrialState.COMPLETE else None
        if state is TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        attrs = {k: v for k, v in trial.system_attrs.items() if k in _KEPT_ATTRS}
        self.study.add_trial(
            create_trial(
                state=state,
                value=value,
                params=dict(trial.params),
                distributions={k: self.distributions[k] for k in trial.params},
                system_attrs=attrs,
                intermediate_values=intermediate,
            )
        )
        if state is TrialState.RUNNING:
            frozen = self.study.get_trials(deepcopy=False)[-1]
            self.live[trial.number] = optuna.Trial(self.study, frozen._trial_id)

    def ask(self, number: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Sample trial `number` (the next one): its params and the attrs to record.

        A seeded sweep gets a sampler seeded for this trial (`trial_seed`): what it draws
        depends on the seed, the trial's number and the trials before it, all of which a
        rebuilt study has, so a sweep restarted after a crash asks what it would have
        asked without one (one sampler for the whole sweep would start its random stream
        again after a restart, and propose trial 0's values anew)."""
        seed = self.spec.get("seed")
        if seed is not None:
            self.study.sampler = _sampler(self.spec, trial_seed(int(seed), number))
        trial = self.study.ask(self.distributions)
        if trial.number != number:  # the study is rebuilt from events: this cannot drift
            raise RuntimeError(f"Optuna asked trial {trial.number}, the sweep expects {number}")
        self.live[number] = trial
        frozen = self.study.get_trials(deepcopy=False)[trial.number]
        attrs = {k: v for k, v in frozen.system_attrs.items() if k in _KEPT_ATTRS}
        return dict(trial.params), attrs

    def report(self, number: int, step: int, value: float) -> bool:
        """Report an intermediate value; whether the pruner says to stop the trial now."""
        trial = self.live.get(number)
        if trial is None:
            return False
        frozen = self.study.get_trials(deepcopy=False)[number]
        if step not in frozen.intermediate_values:
            trial.report(value, step)
        return bool(trial.should_prune())

    def intermediate(self, number: int) -> list[list[float]]:
        """The values reported for a trial so far, as [step, value] pairs by step."""
        frozen = self.study.get_trials(deepcopy=False)[number]
        return [[step, value] for step, value in sorted(frozen.intermediate_values.items())]

    def value(self, number: int) -> float | None:
        """A finished trial's objective value (None when it never validated)."""
        return final_value(self.objective, self.intermediate(number))

    def last(self, number: int) -> float | None:
        """The last value reported (a pruned trial's value, as Optuna takes it)."""
        reported = self.intermediate(number)
        return reported[-1][1] if reported else None

    def tell(self, number: int, state: str, value: float | None) -> None:
        trial = self.live.pop(number, None)
        if trial is None:
            return
        optuna_state = _STATES[state]
        if optuna_state is TrialState.COMPLETE and value is None:
            optuna_state = TrialState.FAIL
        values = value if optuna_state is TrialState.COMPLETE else None
        self.study.tell(trial, values, state=optuna_state)

    def importances(self) -> dict[str, float]:
        """Optuna's parameter importances; InvalidSweep when there are too few trials."""
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(complete) < 2:
            raise InvalidSweep(
                f"importances need at least 2 complete trials; this sweep has {len(complete)}: "
                "ask again once more trials have finished",
                complete=len(complete),
            )
        try:
            found = optuna.importance.get_param_importances(self.study)
        except (RuntimeError, ValueError) as exc:
            raise InvalidSweep(f"Optuna cannot compute importances yet: {exc}") from None
        return {k: float(v) for k, v in found.items()}
