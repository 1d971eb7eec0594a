"""The Optuna study of a sweep, rebuilt from its events: a seeded sweep restarted after
any trial asks what it would have asked without the restart (no repeat of earlier values,
as one sampler for the whole sweep would after a restart)."""

from __future__ import annotations

from typing import Any

import pytest

from backend.experiments.study import LiveStudy, parse_spec, trial_seed
from backend.experiments.sweeps import SweepSummary, Trial

TRIALS = 6


def spec(sampler: str, seed: int | None = 7) -> dict[str, Any]:
    lr: dict[str, Any] = {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}
    if sampler == "grid":  # a grid takes choices only
        lr = {"type": "choice", "choices": [1e-3, 1e-2, 1e-1]}
    return parse_spec(
        {
            "config": "SOLVER:\n  BASE_LR: 0.01\n",
            "space": {
                "SOLVER.BASE_LR": lr,
                "SOLVER.SAMPLES_PER_BATCH": {"type": "choice", "choices": [1, 2, 4]},
                "MODEL.FILTERS": {"type": "choice", "choices": ["[4, 8]", "[8, 16]"]},
            },
            "objective": "max_dice",
            "trials": TRIALS,
            "sampler": sampler,
            "seed": seed,
        }
    )


def value_of(params: dict[str, Any]) -> float:
    return 1.0 / (1.0 + abs(params["SOLVER.BASE_LR"] - 0.01)) + params["SOLVER.SAMPLES_PER_BATCH"]


def asked(study: LiveStudy, numbers: range, done: list[Trial]) -> list[Trial]:
    """Ask and complete trials `numbers` in turn, after the `done` ones."""
    trials = list(done)
    for number in numbers:
        params, attrs = study.ask(number)
        study.tell(number, "complete", value_of(params))
        trials.append(
            Trial(number, f"run{number}", params, attrs, "complete", value_of(params), [])
        )
    return trials


@pytest.mark.parametrize("sampler", ["random", "tpe", "grid"])
@pytest.mark.parametrize("restart_after", [1, 3, 5])
def test_a_restarted_seeded_sweep_asks_what_it_would_have(sampler: str, restart_after: int) -> None:
    whole = asked(LiveStudy(spec(sampler)), range(TRIALS), [])
    before = whole[:restart_after]
    summary = SweepSummary("sweep-000000000000", spec=spec(sampler), trials=before)
    resumed = asked(LiveStudy.rebuild(summary), range(restart_after, TRIALS), before)
    assert [t.params for t in resumed] == [t.params for t in whole]
    assert len({repr(sorted(t.params.items())) for t in whole}) == TRIALS  # no repeats


def test_the_per_trial_seed_depends_on_both_the_seed_and_the_number() -> None:
    seeds = {trial_seed(seed, n) for seed in range(4) for n in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**32 for s in seeds)
    assert trial_seed(3, 9) == trial_seed(3, 9)
