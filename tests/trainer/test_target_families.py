"""Every target family trains: 3 iterations (and a validation) of the real loop on the tiny
demo volumes, with the loss PyTC trains it with, 2D or 3D as PyTC allows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.helpers import tiny_job
from tests.trainer.test_loop import of, train

# A 2-level 3D U-Net on 4-slice patches, for the families PyTC makes from 3D labels only.
THREE_D = [
    "MODEL.ARCHITECTURE", "unet_3d",
    "MODEL.INPUT_SIZE", "[4, 32, 32]",
    "MODEL.OUTPUT_SIZE", "[4, 32, 32]",
    "DATASET.DO_2D", "False",
    "DATASET.PAD_SIZE", "[1, 4, 4]",
]  # fmt: skip


Table = list[list[str]]


def _family(
    targets: list[str], planes: int, losses: tuple[Table, Table, Table], *extra: str
) -> list[str]:
    """Overrides: the targets, OUT_PLANES, (LOSS_OPTION, OUTPUT_ACT, WEIGHT_OPT), then extra."""
    names, acts, weights = losses
    return [
        "MODEL.TARGET_OPT", repr(targets),
        "MODEL.OUT_PLANES", str(planes),
        "MODEL.LOSS_OPTION", repr(names),
        "MODEL.OUTPUT_ACT", repr(acts),
        "MODEL.WEIGHT_OPT", repr(weights),
        "MODEL.LOSS_WEIGHT", repr([[1.0] * len(row) for row in names]),
        *extra,
    ]  # fmt: skip


BCE_DICE = ([["WeightedBCEWithLogitsLoss", "DiceLoss"]], [["none", "sigmoid"]], [["1", "0"]])
FOCAL_WS = ([["WeightedBCEFocalLoss", "WSDiceLoss"]], [["none", "sigmoid"]], [["1-1", "0"]])
MSE_TANH = ([["WeightedMSE"]], [["tanh"]], [["0"]])
CE = ([["WeightedCE"]], [["none"]], [["0"]])
FG_AND_DT = ([["WeightedBCEWithLogitsLoss"], ["WeightedMAE"]], [["none"], ["tanh"]], [["1"], ["1"]])
UNET_WEIGHT = ([["WeightedBCEWithLogitsLoss"]], [["none"]], [["2-10-5"]])


def _regularizer(name: str, targets: str, weight: str) -> tuple[str, ...]:
    return ("MODEL.REGU_OPT", f"['{name}']", "MODEL.REGU_TARGET", targets,
            "MODEL.REGU_WEIGHT", f"[{weight}]")  # fmt: skip


CLASS_WEIGHTS = ("MODEL.LOSS_KWARGS_KEY", "[[['class_weight']]]",
                 "MODEL.LOSS_KWARGS_VAL", "[[[[1.0, 2.0, 2.0, 2.0]]]]")  # fmt: skip

FAMILIES: dict[str, list[str]] = {
    "0 binary": _family(["0"], 1, BCE_DICE),
    "1 polarity + Nonoverlap": _family(
        ["1"], 3, BCE_DICE, *_regularizer("Nonoverlap", "[[0]]", "1.0")
    ),
    "1-1 exclusive polarity": _family(["1-1"], 3, CE),
    "2 affinity, eroded": _family(["2"], 2, BCE_DICE, "MODEL.LABEL_EROSION", "1"),
    "2 long-range affinity 3D": _family(["2-1-2-2-v2"], 3, BCE_DICE, *THREE_D),
    "3 small objects 3D": _family(["3-30-4-0"], 1, BCE_DICE, *THREE_D),
    "4 contour, focal + WS-Dice": _family(["4-1-1"], 1, FOCAL_WS),
    "5 instance distance 3D": _family(["5-3d-1-0-2.0-0"], 1, MSE_TANH, *THREE_D),
    "6 semantic distance + FgDT": _family(
        ["0", "6-2d-4-50"], 2, FG_AND_DT, *_regularizer("FgDT", "[[0, 1]]", "0.5")
    ),
    "7 flows": _family(["7"], 2, MSE_TANH),
    "9 semantic classes, class weights": _family(["9-4"], 4, CE, *CLASS_WEIGHTS),
    "U-Net weight 3D": _family(["0"], 1, UNET_WEIGHT, *THREE_D),
}


@pytest.mark.parametrize("overrides", FAMILIES.values(), ids=FAMILIES.keys())
def test_family_trains_three_iterations(tmp_path: Path, overrides: list[str]) -> None:
    job = tiny_job(tmp_path, overrides=overrides, ITERATION_TOTAL=3, ITERATION_VAL=3)
    code, events = train(job)
    failed: list[dict[str, Any]] = of(events, "failed")
    assert code == 0 and not failed, failed
    metrics = of(events, "metric")
    assert [m["iteration"] for m in metrics] == [1, 2, 3]
    for metric in metrics:
        assert math.isfinite(metric["loss"])
        assert metric["loss"] == pytest.approx(sum(metric["components"].values()), rel=1e-5)
    assert of(events, "validation"), "the run validated"
