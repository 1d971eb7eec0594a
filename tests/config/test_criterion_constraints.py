"""The constraint table of targets, weights, losses and regularisers (backend/config/targets.py):
every PyTC v1.0.0 form is read, what PyTC cannot train is refused with the reason, and every
suggested fix, applied, validates (and builds the trainer's criterion: test_losses.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from backend.config.targets import (
    OptionError,
    criterion_problems,
    parse_target,
    target_channels,
)

# Every option of the fixtures' split table that PyTC trains, with its channels (3D, 2D).
CHANNELS = {
    "0": (1, 1), "0-1-3": (1, 1), "1": (3, 3), "1-1": (3, 3), "2": (3, 2),
    "2-1-1-1-v1": (3, 2), "2-2-3-3-v2": (3, 2), "3-30-4-0": (1, None), "4-1-1": (1, 1),
    "4-0-0": (1, 1), "5-2d-0-0-1.0-0": (1, None), "5-3d-1-0-4.0-2": (1, None), "6": (1, 1),
    "6-3d-4-20": (1, 1), "7": (2, 2), "9-4": (4, 4), "9-12": (12, 12),
}  # fmt: skip


@pytest.mark.parametrize(("option", "channels"), CHANNELS.items())
def test_channels(option: str, channels: tuple[int, int | None]) -> None:
    assert target_channels(option, do_2d=False) == channels[0]
    if channels[1] is None:
        with pytest.raises(OptionError, match=r"2D|3D"):
            target_channels(option, do_2d=True)
    else:
        assert target_channels(option, do_2d=True) == channels[1]


def test_kinds() -> None:
    assert parse_target("9-4").classes and parse_target("1-1").classes
    assert not parse_target("1").classes
    assert all(parse_target(o).signed for o in ("5-2d-0-0-1.0-0", "6", "7"))


def config(**model: Any) -> dict[str, Any]:
    """A config that trains: one binary target, BCE-with-logits + Dice; `model` overrides."""
    values: dict[str, Any] = {
        "TARGET_OPT": ["0"],
        "OUT_PLANES": 1,
        "LOSS_OPTION": [["WeightedBCEWithLogitsLoss", "DiceLoss"]],
        "LOSS_WEIGHT": [[1.0, 0.5]],
        "WEIGHT_OPT": [["1", "0"]],
        "OUTPUT_ACT": [["none", "sigmoid"]],
    }
    do_2d = model.pop("DO_2D", False)
    values.update(model)
    return {"MODEL": values, "DATASET": {"DO_2D": do_2d}}


# (case, MODEL overrides, key reported, words of the message): each wrong in PyTC too.
REFUSED = [
    ("bare 4", {"TARGET_OPT": ["4"]}, "MODEL.TARGET_OPT", "needs 4-S-B"),
    ("bare 5", {"TARGET_OPT": ["5"]}, "MODEL.TARGET_OPT", "all 5 fields"),
    ("bare 9", {"TARGET_OPT": ["9"]}, "MODEL.TARGET_OPT", "class count"),
    ("8", {"TARGET_OPT": ["8-3-5-2d-0-0-1.0-0"]}, "MODEL.TARGET_OPT", "no channel count"),
    ("pni", {"TARGET_OPT": ["2-1-1-1-pni"]}, "MODEL.TARGET_OPT", "v1 or -v2"),
    ("7-0", {"TARGET_OPT": ["7-0"], "OUT_PLANES": 2}, "MODEL.TARGET_OPT", "3 channels"),
    ("1-0", {"TARGET_OPT": ["1-0"], "OUT_PLANES": 3}, "MODEL.TARGET_OPT", "'1-1'"),
    ("5 in 2D", {"TARGET_OPT": ["5-2d-0-0-1.0-0"], "DO_2D": True}, "MODEL.TARGET_OPT", "2D"),
    ("quantized", {"TARGET_OPT": ["5-3d-0-1-1.0-0"], "OUT_PLANES": 11}, "MODEL.TARGET_OPT",
     "quantized"),
    ("out planes", {"OUT_PLANES": 3}, "MODEL.OUT_PLANES", "need 1 channels"),
    ("unknown loss", {"LOSS_OPTION": [["JaccardLoss", "DiceLoss"]]}, "MODEL.LOSS_OPTION",
     "not a PyTC loss"),
    ("CE on a mask", {"LOSS_OPTION": [["WeightedCE", "DiceLoss"]]}, "MODEL.LOSS_OPTION",
     "needs class indices"),
    ("Dice on classes", {"TARGET_OPT": ["9-3"], "OUT_PLANES": 3}, "MODEL.LOSS_OPTION",
     "only WeightedCE"),
    ("raw BCE", {"LOSS_OPTION": [["WeightedBCE", "DiceLoss"]]}, "MODEL.OUTPUT_ACT",
     "takes probabilities"),
    ("unknown activation", {"OUTPUT_ACT": [["gelu", "sigmoid"]]}, "MODEL.OUTPUT_ACT",
     "not a PyTC activation"),
    ("MAE without weight", {"LOSS_OPTION": [["WeightedMAE", "DiceLoss"]],
                            "WEIGHT_OPT": [["0", "0"]]}, "MODEL.WEIGHT_OPT", "fails without one"),
    ("bad U-Net weight", {"WEIGHT_OPT": [["2-10", "0"]]}, "MODEL.WEIGHT_OPT", "2-w0-w1"),
    ("dilated balance on 2D classes", {"TARGET_OPT": ["9-3"], "OUT_PLANES": 3, "DO_2D": True,
                                       "LOSS_OPTION": [["WeightedCE"]], "LOSS_WEIGHT": [[1.0]],
                                       "WEIGHT_OPT": [["1-1"]], "OUTPUT_ACT": [["none"]]},
     "MODEL.WEIGHT_OPT", "has none"),
    ("U-Net weight in 2D", {"WEIGHT_OPT": [["2-10-5", "0"]], "DO_2D": True}, "MODEL.WEIGHT_OPT",
     "3D labels only"),
    ("erosion rates", {"TARGET_OPT": ["0", "4-1-1"], "OUT_PLANES": 2,
                       "LOSS_OPTION": [["DiceLoss"], ["DiceLoss"]], "LABEL_EROSION": [1],
                       "LOSS_WEIGHT": [[1.0], [1.0]], "WEIGHT_OPT": [["0"], ["0"]],
                       "OUTPUT_ACT": [["sigmoid"], ["sigmoid"]]},
     "MODEL.LABEL_EROSION", "1 rates for 2 targets"),
    ("kwargs row short", {"LOSS_KWARGS_KEY": [[]], "LOSS_KWARGS_VAL": [[]]},
     "MODEL.LOSS_KWARGS_KEY", "one entry per loss"),
    ("unknown kwarg", {"LOSS_KWARGS_KEY": [[["gamma"], []]], "LOSS_KWARGS_VAL": [[[2.0], []]]},
     "MODEL.LOSS_KWARGS_KEY", "takes ['size_average', 'reduce', 'eps']"),
    ("class weights", {"TARGET_OPT": ["9-3"], "OUT_PLANES": 3, "LOSS_OPTION": [["WeightedCE"]],
                       "LOSS_WEIGHT": [[1.0]], "WEIGHT_OPT": [["0"]], "OUTPUT_ACT": [["none"]],
                       "LOSS_KWARGS_KEY": [[["class_weight"]]],
                       "LOSS_KWARGS_VAL": [[[[1.0, 2.0]]]]},
     "MODEL.LOSS_KWARGS_KEY", "2 values for the 3 classes"),
    ("regulariser table", {"REGU_OPT": ["Binary"], "REGU_TARGET": [[0]], "REGU_WEIGHT": []},
     "MODEL.REGU_OPT", "one entry per regulariser"),
    ("unknown regulariser", {"REGU_OPT": ["Curvature"], "REGU_TARGET": [[0]],
                             "REGU_WEIGHT": [1.0]}, "MODEL.REGU_OPT", "not a PyTC regulariser"),
    ("regulariser arity", {"REGU_OPT": ["FgDT"], "REGU_TARGET": [[0]], "REGU_WEIGHT": [1.0]},
     "MODEL.REGU_TARGET", "reads 2 target(s)"),
    ("Nonoverlap on a mask", {"REGU_OPT": ["Nonoverlap"], "REGU_TARGET": [[0]],
                              "REGU_WEIGHT": [1.0]}, "MODEL.REGU_TARGET", "channels 0, 1, 2"),
]  # fmt: skip


def apply_fixes(values: dict[str, Any], rounds: int = 6) -> list[Any]:
    """Apply the first error's fix until none is left (the suggestions converge); in place.

    The errors last seen: empty when fewer than `rounds` fixes left none."""
    errors: list[Any] = []
    for _ in range(rounds):
        errors = [p for p in criterion_problems(values) if p.error]
        if not errors:
            break
        for dotted, value in errors[0].fix.items():
            section, leaf = dotted.split(".")
            values[section][leaf] = value
    return errors


@pytest.mark.parametrize(
    ("model", "key", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused_with_a_fix_that_validates(model: dict[str, Any], key: str, words: str) -> None:
    values = config(**copy.deepcopy(model))
    errors = [p for p in criterion_problems(values) if p.error]
    assert errors and errors[0].key == key and words in errors[0].message, errors
    assert errors[0].fix and errors[0].suggestion
    errors = apply_fixes(values)
    assert not errors, errors


def test_pytc_forms_that_train_are_clean() -> None:
    clean = [
        config(),
        config(TARGET_OPT=["0", "4-1-1", "6"], OUT_PLANES=3,
               LOSS_OPTION=[["WeightedBCEWithLogitsLoss", "DiceLoss"]] * 2 + [["WeightedMSE"]],
               LOSS_WEIGHT=[[1.0, 0.5], [1.0, 0.5], [5.0]],
               WEIGHT_OPT=[["1", "0"], ["1-1", "0"], ["0"]],
               OUTPUT_ACT=[["none", "sigmoid"], ["none", "sigmoid"], ["tanh"]],
               LABEL_EROSION=[1, 2, 4]),
        config(TARGET_OPT=["9-5", "0"], OUT_PLANES=6,
               LOSS_OPTION=[["WeightedCE"], ["WeightedBCEWithLogitsLoss", "DiceLoss"]],
               LOSS_WEIGHT=[[2.0], [1.0, 1.0]], WEIGHT_OPT=[["0"], ["1", "0"]],
               OUTPUT_ACT=[["none"], ["none", "sigmoid"]],
               LOSS_KWARGS_KEY=[[["class_weight"]], [[], []]],
               LOSS_KWARGS_VAL=[[[[1.0, 2.0, 3.0, 4.0, 5.0]]], [[], []]]),
        config(TARGET_OPT=["1"], OUT_PLANES=3, REGU_OPT=["Nonoverlap"], REGU_TARGET=[[0]],
               REGU_WEIGHT=[4.0]),
        config(TARGET_OPT=["2"], OUT_PLANES=3, WEIGHT_OPT=[["2-10-5", "0"]]),
        config(TARGET_OPT=["2"], OUT_PLANES=2, DO_2D=True),
    ]  # fmt: skip
    for values in clean:
        assert criterion_problems(values) == [], values


def test_logits_loss_after_a_sigmoid_is_only_a_warning() -> None:
    problems = criterion_problems(config(OUTPUT_ACT=[["sigmoid", "sigmoid"]]))
    assert [(p.key, p.error) for p in problems] == [("MODEL.OUTPUT_ACT", False)]
    assert problems[0].fix == {"MODEL.OUTPUT_ACT": [["none", "sigmoid"]]}


def test_mae_weighs_by_the_valid_mask_when_there_is_one() -> None:
    values = config(LOSS_OPTION=[["WeightedMAE", "DiceLoss"]], WEIGHT_OPT=[["0", "0"]])
    assert [p.key for p in criterion_problems(values)] == ["MODEL.WEIGHT_OPT"]
    values["DATASET"]["VALID_MASK_NAME"] = "mask.h5"
    assert criterion_problems(values) == []
