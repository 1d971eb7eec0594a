"""The validation hold-out: one rule for the trainer and the warning `validate` gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.config.holdout import describe_slices, held_out_slices
from backend.config.load import load_config
from backend.config.validate import validate


@pytest.mark.parametrize(
    ("depth", "held"),
    [
        (1, range(1, 1)),
        (2, range(1, 2)),
        (6, range(5, 6)),
        (7, range(5, 7)),
        (16, range(13, 16)),
        (100, range(85, 100)),
    ],
)
def test_the_last_fifteen_percent_at_least_one_never_all(depth: int, held: range) -> None:
    assert held_out_slices(depth) == held


def test_description_names_the_slices() -> None:
    assert describe_slices("a.tif", 16) == "a.tif: slices 13-15 of 0-15 (3 of 16)"
    assert describe_slices("b.npy", 4) == "b.npy: slice 3 of 0-3 (1 of 4)"
    assert "single slice" in describe_slices("c.png", 1)


def config(tmp_path: Path, extra: str = "") -> str:
    return (
        "SYSTEM:\n  NUM_GPUS: 0\n"
        f"DATASET:\n  INPUT_PATH: {tmp_path}\n  IMAGE_NAME: a.npy@b.npy\n"
        f"  LABEL_NAME: la.npy@lb.npy\n  OUTPUT_PATH: {tmp_path / 'out'}\n{extra}"
    )


def holdout_problems(text: str, tmp_path: Path, check_paths: bool = True) -> list:  # type: ignore[type-arg]
    problems = validate(load_config(text=text), check_paths=check_paths, base_dir=tmp_path)
    return [p for p in problems if p.key == "DATASET.VAL_IMAGE_NAME"]


def test_warning_names_the_slices_of_every_training_volume(tmp_path: Path) -> None:
    for name, depth in (("a", 16), ("b", 7)):
        np.save(tmp_path / f"{name}.npy", np.zeros((depth, 32, 32), np.uint8))
        np.save(tmp_path / f"l{name}.npy", np.zeros((depth, 32, 32), np.uint8))
    (problem,) = holdout_problems(config(tmp_path), tmp_path)
    assert problem.level == "warning"
    assert "a.npy: slices 13-15 of 0-15 (3 of 16)" in problem.message
    assert "b.npy: slices 5-6 of 0-6 (2 of 7)" in problem.message
    assert "VAL_IMAGE_NAME" in problem.suggestion
    named = config(tmp_path, "  VAL_IMAGE_NAME: a.npy\n  VAL_LABEL_NAME: la.npy\n")
    assert holdout_problems(named, tmp_path) == []


def test_unreadable_volumes_still_warn_and_no_paths_no_warning(tmp_path: Path) -> None:
    (problem,) = holdout_problems(config(tmp_path), tmp_path)  # the files do not exist
    assert "last 15%" in problem.message
    assert holdout_problems(config(tmp_path), tmp_path, check_paths=False) == []


def mask_problems(text: str, tmp_path: Path) -> list:  # type: ignore[type-arg]
    problems = validate(load_config(text=text), base_dir=tmp_path)
    return [p for p in problems if p.key == "DATASET.VALID_MASK_NAME"]


def test_valid_masks_are_checked_as_the_trainer_reads_them(tmp_path: Path) -> None:
    for name, depth in (("a", 16), ("b", 7)):
        np.save(tmp_path / f"{name}.npy", np.zeros((depth, 32, 32), np.uint8))
        np.save(tmp_path / f"l{name}.npy", np.zeros((depth, 32, 32), np.uint8))
    np.save(tmp_path / "ma.npy", np.ones((16, 32, 32), np.uint8))
    np.save(tmp_path / "mb.npy", np.ones((7, 30, 32), np.uint8))
    good = config(tmp_path, "  VALID_MASK_NAME: ma.npy@ma.npy\n")
    (shape,) = mask_problems(good, tmp_path)
    assert "has shape [16, 32, 32] but image b.npy has [7, 32, 32]" in shape.message
    (count,) = mask_problems(config(tmp_path, "  VALID_MASK_NAME: ma.npy\n"), tmp_path)
    assert "1 volume(s) for 2 image volume(s)" in count.message
    (missing,) = mask_problems(config(tmp_path, "  VALID_MASK_NAME: ma.npy@nope.npy\n"), tmp_path)
    assert missing.level == "error" and "nope.npy" in missing.message
    np.save(tmp_path / "mb.npy", np.ones((7, 32, 32), np.uint8))
    assert mask_problems(config(tmp_path, "  VALID_MASK_NAME: ma.npy@mb.npy\n"), tmp_path) == []
