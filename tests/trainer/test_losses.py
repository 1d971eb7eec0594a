"""Losses and regularisers against PyTC v1.0.0's own values (`pytc-golden/losses/single`)
and hand-computed ones; the per-target criterion, predictions, configuration errors.
The full Criterion against PyTC's is in test_criterion_parity.py."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

from backend.trainer import regularizers
from backend.trainer.losses import (
    LOSSES,
    build_criterion,
    dice_loss,
    foreground,
    foreground_truth,
    gan_loss,
    label_smoothing_ce,
    weighted_bce,
    weighted_bce_with_logits,
    weighted_mae,
    weighted_mse,
)
from tests.config.test_criterion_constraints import REFUSED, apply_fixes
from tests.config.test_criterion_constraints import config as constraint_config
from tests.reference import entries, entry_id, load


def make_cfg(do_2d: bool = False, **model: Any) -> dict[str, Any]:
    """A resolved config with the MODEL keys the criterion reads (PyTC defaults otherwise)."""
    values: dict[str, Any] = {
        "TARGET_OPT": ["0"],
        "OUT_PLANES": 1,
        "LOSS_OPTION": [["WeightedBCEWithLogitsLoss"]],
        "LOSS_WEIGHT": [[1.0]],
        "WEIGHT_OPT": [["1"]],
        "OUTPUT_ACT": [["none"]],
    }
    values.update(model)
    return {"MODEL": values, "DATASET": {"DO_2D": do_2d}}


def t(values: list[Any]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def close(a: torch.Tensor | float, b: float) -> None:
    value = float(a.detach()) if isinstance(a, torch.Tensor) else a
    assert value == pytest.approx(b, rel=1e-5, abs=1e-6)


# --- the loss functions ----------------------------------------------------------------------


def test_bce_on_probabilities() -> None:
    pred, target = t([[[0.8, 0.3]]]), t([[[1.0, 0.0]]])
    close(weighted_bce(pred, target, None), -(math.log(0.8) + math.log(0.7)) / 2)


def test_bce_with_class_balance_weight() -> None:
    pred, target, weight = t([[[0.8, 0.3]]]), t([[[1.0, 0.0]]]), t([[[2.0, 1.0]]])
    close(weighted_bce(pred, target, weight), -(2 * math.log(0.8) + math.log(0.7)) / 2)


def test_bce_with_logits() -> None:
    logits, target = t([[[0.0, 2.0]]]), t([[[1.0, 0.0]]])
    expected = (math.log(2.0) + math.log(1.0 + math.e**2)) / 2
    close(weighted_bce_with_logits(logits, target, None), expected)
    weight = t([[[3.0, 0.0]]])
    close(weighted_bce_with_logits(logits, target, weight), 3 * math.log(2.0) / 2)


def test_weight_broadcasts_over_channels() -> None:
    logits, target = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    weight = t([[[1.0, 0.0]]])  # (1, 1, 2): one map for all three channels
    close(weighted_bce_with_logits(logits, target, weight), math.log(2.0) / 2)


def test_dice_per_sample_with_pytc_smoothing() -> None:
    pred = t([[[1.0, 0.5, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])
    target = t([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 1.0]]])
    first = 1 - (2 * 1.5 + 100) / (1.5 + 2 + 100)
    second = 1 - (0 + 100) / (0 + 2 + 100)
    close(dice_loss(pred, target, None), (first + second) / 2)
    # The weight map is ignored (PyTC): Dice balances classes by itself.
    close(dice_loss(pred, target, torch.full_like(pred, 5.0)), (first + second) / 2)


def test_mse_sums_channels_and_averages_batch_and_voxels() -> None:
    pred = t([[[1.0, 2.0], [0.0, 1.0]]])  # (B=1, C=2, 2 voxels)
    target = torch.zeros(1, 2, 2)
    close(weighted_mse(pred, target, None), (1 + 4 + 0 + 1) / (1 * 2))
    weight = t([[[1.0, 0.5], [1.0, 2.0]]])
    close(weighted_mse(pred, target, weight), (1 + 2 + 0 + 2) / 2)


def test_mae() -> None:
    pred, target = t([[[1.0, -3.0]]]), t([[[0.0, 0.0]]])
    close(weighted_mae(pred, target, t([[[2.0, 0.0]]])), 1.0)
    with pytest.raises(ValueError, match="needs a pixel weight"):  # PyTC: TypeError
        weighted_mae(pred, target, None)


# --- the criterion ---------------------------------------------------------------------------


def test_default_bce_with_logits_criterion() -> None:
    crit = build_criterion(make_cfg())
    logits, target = t([[[0.0, 2.0]]]), t([[[1.0, 0.0]]])
    total, parts = crit(logits, [target], [[None]])
    expected = (math.log(2.0) + math.log(1.0 + math.e**2)) / 2
    close(total, expected)
    assert parts == pytest.approx({"0_WeightedBCEWithLogitsLoss_0_0": expected})


def test_output_activation_applied_per_loss() -> None:
    cfg = make_cfg(
        LOSS_OPTION=[["WeightedBCE", "DiceLoss"]],
        LOSS_WEIGHT=[[1.0, 1.0]],
        WEIGHT_OPT=[["0", "0"]],
        OUTPUT_ACT=[["sigmoid", "sigmoid"]],
    )
    logits, target = t([[[0.0, 2.0]]]), t([[[1.0, 0.0]]])
    _, parts = build_criterion(cfg)(logits, [target], [[None, None]])
    p = torch.sigmoid(logits)
    close(parts["0_WeightedBCE_0_0"], float(weighted_bce(p, target, None)))
    s = 1 / (1 + math.exp(-2))
    close(parts["0_DiceLoss_0_1"], 1 - (2 * 0.5 + 100) / (0.5 + s + 1 + 100))


def test_multi_target_split_weights_and_components() -> None:
    cfg = make_cfg(
        TARGET_OPT=["0", "2", "4-1-1"],
        OUT_PLANES=5,
        LOSS_OPTION=[["WeightedBCEWithLogitsLoss", "DiceLoss"], ["WeightedMSE"], ["WeightedMAE"]],
        LOSS_WEIGHT=[[1.0, 0.5], [2.0], [3.0]],
        WEIGHT_OPT=[["1", "0"], ["0"], ["1"]],
        OUTPUT_ACT=[["none", "sigmoid"], ["tanh"], ["none"]],
    )
    crit = build_criterion(cfg)
    torch.manual_seed(0)
    out = torch.randn(2, 5, 2, 3, 3)
    targets = [torch.rand(2, c, 2, 3, 3).round() for c in (1, 3, 1)]
    bce_w = torch.rand(2, 1, 2, 3, 3)
    mae_w = torch.rand(2, 1, 2, 3, 3)
    total, parts = crit(out, targets, [[bce_w, None], [None], [mae_w]])

    x0, x2, x4 = out[:, :1], out[:, 1:4], out[:, 4:]
    expected = {
        "0_WeightedBCEWithLogitsLoss_0_0": float(weighted_bce_with_logits(x0, targets[0], bce_w)),
        "0_DiceLoss_0_1": 0.5 * float(dice_loss(torch.sigmoid(x0), targets[0], None)),
        "2_WeightedMSE_1_0": 2.0 * float(weighted_mse(torch.tanh(x2), targets[1], None)),
        "4-1-1_WeightedMAE_2_0": 3.0 * float(weighted_mae(x4, targets[2], mae_w)),
    }
    assert parts == pytest.approx(expected, rel=1e-5)
    close(total, sum(expected.values()))


def test_loss_weight_scales_the_term() -> None:
    logits, target = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4).round()
    one, _ = build_criterion(make_cfg())(logits, [target], [[None]])
    quarter, _ = build_criterion(make_cfg(LOSS_WEIGHT=[[0.25]]))(logits, [target], [[None]])
    close(quarter, 0.25 * float(one))


def test_weights_may_be_omitted() -> None:
    crit = build_criterion(make_cfg())
    logits, target = torch.randn(1, 1, 4), torch.ones(1, 1, 4)
    a, _ = crit(logits, [target])
    b, _ = crit(logits, [target], [[None]])
    close(a, float(b))


def test_affinity_in_2d_takes_two_channels() -> None:
    cfg = make_cfg(do_2d=True, TARGET_OPT=["2"], OUT_PLANES=2)
    total, _ = build_criterion(cfg)(torch.randn(1, 2, 4, 4), [torch.ones(1, 2, 4, 4)])
    assert total.ndim == 0


def test_gradient_reaches_outputs() -> None:
    logits = torch.randn(2, 1, 3, 3, requires_grad=True)
    total, _ = build_criterion(make_cfg())(logits, [torch.ones(2, 1, 3, 3)])
    torch.autograd.backward(total)
    assert logits.grad is not None and (logits.grad < 0).all()  # push logits up toward 1


def test_mixed_precision_outputs_give_float32_loss() -> None:
    cfg = make_cfg(
        LOSS_OPTION=[["WeightedBCE", "DiceLoss"]],
        LOSS_WEIGHT=[[1.0, 1.0]],
        WEIGHT_OPT=[["1", "0"]],
        OUTPUT_ACT=[["sigmoid", "sigmoid"]],
    )
    logits = torch.randn(2, 1, 4, 4)
    target = torch.rand(2, 1, 4, 4).round()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = logits.to(torch.bfloat16).requires_grad_()
        total, _ = build_criterion(cfg)(half, [target.to(torch.uint8)], [[None, None]])
    assert total.dtype == torch.float32
    torch.autograd.backward(total)
    assert half.grad is not None and half.grad.dtype == torch.bfloat16
    full, _ = build_criterion(cfg)(logits.to(torch.bfloat16).float(), [target])
    close(total, float(full))


def test_compute_keeps_components_on_device() -> None:
    crit = build_criterion(make_cfg())
    _, parts = crit.compute(torch.randn(1, 1, 4), [torch.ones(1, 1, 4)])
    assert isinstance(parts["0_WeightedBCEWithLogitsLoss_0_0"], torch.Tensor)
    assert not parts["0_WeightedBCEWithLogitsLoss_0_0"].requires_grad


def test_same_loss_twice_keeps_both_components() -> None:
    cfg = make_cfg(
        LOSS_OPTION=[["DiceLoss", "DiceLoss"]],
        LOSS_WEIGHT=[[1.0, 2.0]],
        WEIGHT_OPT=[["0", "0"]],
        OUTPUT_ACT=[["sigmoid", "sigmoid"]],
    )
    _, parts = build_criterion(cfg)(torch.randn(1, 1, 4), [torch.ones(1, 1, 4)])
    assert set(parts) == {"0_DiceLoss_0_0", "0_DiceLoss_0_1"}
    close(parts["0_DiceLoss_0_1"], 2 * parts["0_DiceLoss_0_0"])


# --- validation maps -------------------------------------------------------------------------


def test_foreground_of_each_kind_of_first_target() -> None:
    out = torch.randn(2, 4, 3, 3)
    binary = make_cfg(TARGET_OPT=["0", "2"], OUT_PLANES=4, do_2d=True)
    torch.testing.assert_close(foreground(binary, out), torch.sigmoid(out[:, :1]))
    classes = make_cfg(TARGET_OPT=["9-4"], OUT_PLANES=4)
    background = torch.softmax(out, dim=1)[:, :1]
    torch.testing.assert_close(foreground(classes, out), 1 - background)
    labels = torch.tensor([[[0, 2, 3]]])
    assert foreground_truth(classes, labels).tolist() == [[[[0.0, 1.0, 1.0]]]]
    distance = make_cfg(TARGET_OPT=["6"], OUT_PLANES=1)
    torch.testing.assert_close(foreground(distance, out[:, :1]), (torch.tanh(out[:, :1]) + 1) / 2)
    assert foreground_truth(distance, torch.tensor([[-0.5, 0.2]])).tolist() == [[0.0, 1.0]]


# --- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"LOSS_OPTION": [["FocalLoss"]]}, r"\[0\]\[0\] 'FocalLoss' is not a PyTC loss"),
        ({"OUTPUT_ACT": [["gelu"]]}, r"\[0\]\[0\] 'gelu' is not a PyTC activation"),
        (
            {"LOSS_OPTION": [["WeightedBCE"]]},
            r"\[0\]\[0\] is 'none', but WeightedBCE takes probabilities; "
            r"OUTPUT_ACT: \[\['sigmoid'\]\]",
        ),
        ({"OUT_PLANES": 3}, r"MODEL.OUT_PLANES is 3, but the targets need 1 channels"),
        ({"TARGET_OPT": ["5"]}, r"'5': PyTC v1.0.0's Criterion needs all 5 fields"),
        ({"TARGET_OPT": ["9-3"], "OUT_PLANES": 3}, r"holds class indices, only WeightedCE"),
        (
            {"LOSS_WEIGHT": [[1.0, 2.0]]},
            r"MODEL.LOSS_WEIGHT\[0\] has 2 entries but MODEL.LOSS_OPTION\[0\] has 1",
        ),
        ({"OUTPUT_ACT": []}, "MODEL.OUTPUT_ACT has no entry for target 0"),
        ({"TARGET_OPT": []}, "MODEL.TARGET_OPT is empty"),
        (
            {"REGU_OPT": ["Nonoverlap"], "REGU_TARGET": [[0]], "REGU_WEIGHT": [1.0]},
            r"Nonoverlap reads channels 0, 1, 2",
        ),
    ],
)
def test_configuration_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_criterion(make_cfg(**overrides))


def test_input_errors() -> None:
    crit = build_criterion(make_cfg())
    with pytest.raises(ValueError, match="model output has 2 channels"):
        crit(torch.zeros(1, 2, 4), [torch.zeros(1, 1, 4)])
    with pytest.raises(ValueError, match="expected 1 targets, got 2"):
        crit(torch.zeros(1, 1, 4), [torch.zeros(1, 1, 4)] * 2)
    with pytest.raises(ValueError, match="one entry"):
        crit(torch.zeros(1, 1, 4), [torch.zeros(1, 1, 4)], [[None, None]])


# --- against PyTC v1.0.0: every loss and regulariser call of the fixtures --------------------

_CALLABLES: dict[str, Callable[..., torch.Tensor]] = {
    **LOSSES,
    "WeightedLS": label_smoothing_ce,
    "BinaryReg": regularizers.binary,
    "ForegroundDTConsistency": regularizers.foreground_dt,
    "ContourDTConsistency": regularizers.contour_dt,
    "FgContourConsistency": regularizers.foreground_contour,
    "NonoverlapReg": regularizers.nonoverlap,
}
SINGLE = entries("losses", "losses/single/")


def _call(entry: dict[str, Any]) -> torch.Tensor:
    name = entry["call"].split("(")[0]
    kwargs = dict(entry["inputs"]["class_kwargs"])
    arrays = load(entry["file"])
    given = {k: torch.from_numpy(arrays[k]) for k in arrays.files if k != "loss"}
    if name == "GANLoss":
        return gan_loss(given["prediction"], "target_is_real=True" in entry["call"], **kwargs)
    if "tsz_h" in kwargs:
        kwargs["half"] = kwargs.pop("tsz_h")
    if name in LOSSES or name == "WeightedLS":
        weight = given["weight_mask"] if "weight_mask=weight_mask" in entry["call"] else None
        return _CALLABLES[name](given["pred"], given["target"], weight, **kwargs)
    preds = [given[k] for k in ("pred", "pred1", "pred2") if k in given]
    mask = {"mask": given["mask"]} if "mask" in given else {}
    return _CALLABLES[name](*preds, **mask, **kwargs)


@pytest.mark.parametrize("entry", [e for e in SINGLE if e["status"] == "ok"], ids=entry_id)
def test_matches_pytc(entry: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    expected = float(load(entry["file"])["loss"])
    assert float(_call(entry)) == pytest.approx(expected, rel=0, abs=1e-5 * max(1, abs(expected)))


@pytest.mark.parametrize("entry", [e for e in SINGLE if e["status"] == "error"], ids=entry_id)
def test_refuses_what_pytc_cannot_compute(entry: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _call(entry)


# --- one table for validation and trainer ------------------------------------------------------


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_trainer_refuses_what_validation_reports_and_builds_its_fix(case: Any) -> None:
    _, model, _, words = case
    values = constraint_config(**copy.deepcopy(model))
    with pytest.raises(ValueError, match=re.escape(words)):
        build_criterion(values)
    apply_fixes(values)
    criterion = build_criterion(values)
    assert criterion.out_channels == values["MODEL"]["OUT_PLANES"]
