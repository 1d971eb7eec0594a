"""Every suggestion validation makes, applied, validates, and the config then trains.

Table-driven: each case breaks a tiny, trainable config in one way the trainer would
refuse (or diverge on). Validation must report it before any run starts; its suggestions
(`LEAF: VALUE`, optionally `e.g. ...` or several joined by `; `) are applied as overrides,
rounds at most, until the config validates clean, and then it trains 3 iterations."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend.config import load_config, validate
from backend.config.problems import Problem
from backend.config.schema import KEYS
from tests.trainer.helpers import tiny_config, tiny_job
from tests.trainer.test_loop import of, train

# (case, overrides that break the tiny config, key validation must name)
CASES: list[tuple[str, list[str], str]] = [
    ("infinite lr", ["SOLVER.BASE_LR", "1e400"], "SOLVER.BASE_LR"),
    ("infinite mean", ["DATASET.MEAN", "-1e400"], "DATASET.MEAN"),
    ("OneCycle", ["SOLVER.LR_SCHEDULER_NAME", "OneCycle"], "SOLVER.LR_SCHEDULER_NAME"),
    ("steps backwards", ["SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS",
                         "[20, 10]"], "SOLVER.STEPS"),
    ("negative weight decay", ["SOLVER.WEIGHT_DECAY", "-0.1"], "SOLVER.WEIGHT_DECAY"),
    ("unknown optimizer", ["SOLVER.NAME", "Adagrad"], "SOLVER.NAME"),
    ("out planes", ["MODEL.OUT_PLANES", "3"], "MODEL.OUT_PLANES"),
    ("patch not halvable", ["MODEL.FILTERS", "[4, 8, 12]", "MODEL.INPUT_SIZE", "[1, 30, 30]"],
     "MODEL.INPUT_SIZE"),
    ("probabilities loss on logits (Lucchi)",
     ["MODEL.LOSS_OPTION", "[['WeightedBCE', 'DiceLoss']]", "MODEL.OUTPUT_ACT",
      "[['none', 'none']]"], "MODEL.OUTPUT_ACT"),
    ("a loss list short", ["MODEL.LOSS_WEIGHT", "[[1.0]]"], "MODEL.LOSS_WEIGHT"),
]  # fmt: skip

SUGGESTION = re.compile(r"^(?:e\.g\. )?([A-Z][A-Z0-9_]*): (.+)$")


def full_key(leaf: str, near: str) -> str:
    """The dotted key of `leaf`: in the problem's own section first, else the only one."""
    section = near.rsplit(".", 1)[0]
    if f"{section}.{leaf}" in KEYS:
        return f"{section}.{leaf}"
    (found,) = [name for name in KEYS if name.rsplit(".", 1)[-1] == leaf]
    return found


def as_overrides(problem: Problem) -> list[str]:
    """The suggestion of `problem` as KEY VALUE overrides ([] when it is advice in words)."""
    text = problem.suggestion
    if text.startswith("the default is "):
        return [problem.key, text.removeprefix("the default is ")]
    out: list[str] = []
    for part in text.split("; "):
        match = SUGGESTION.match(part)
        if match is None:
            return []
        yaml.safe_load(match.group(2))  # a YAML value, as the user would paste it
        out += [full_key(match.group(1), problem.key), match.group(2)]
    return out


def errors_of(tree: dict[str, Any], overrides: list[str]) -> list[Problem]:
    loaded = load_config(yaml.safe_dump(tree), overrides=overrides)
    return [p for p in validate(loaded) if p.is_error]


@pytest.mark.parametrize(("case", "broken", "key"), CASES, ids=[c[0] for c in CASES])
def test_suggestions_validate_and_train(
    tmp_path: Path, case: str, broken: list[str], key: str
) -> None:
    tree = tiny_config(tmp_path / "data", tmp_path / "out", ITERATION_TOTAL=3, ITERATION_VAL=3)
    assert errors_of(tree, []) == [], "the tiny config itself is valid"
    overrides = list(broken)
    problems = errors_of(tree, overrides)
    assert key in {p.key for p in problems}, [p.format() for p in problems]
    for _ in range(3):
        if not problems:
            break
        fixes = [as_overrides(p) for p in problems]
        assert all(fixes), f"{case}: a suggestion in words only: {problems}"
        overrides += [item for fix in fixes for item in fix]
        problems = errors_of(tree, overrides)
    assert problems == [], f"{case}: still refused after its suggestions: {problems}"

    job = tiny_job(tmp_path, ITERATION_TOTAL=3, ITERATION_VAL=3, overrides=overrides)
    code, events = train(replace(job, run_id=f"case-{len(overrides)}"))
    failed = of(events, "failed")
    assert code == 0 and not failed, f"{case}: {failed and failed[0]['message']}"
    assert of(events, "completed")[0]["iteration"] == 3
