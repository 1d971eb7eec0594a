"""Losses against hand-computed values, the per-target criterion, predictions, errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from backend.trainer.losses import (
    _target_channels,
    build_criterion,
    dice_loss,
    predict,
    weighted_bce,
    weighted_bce_with_logits,
    weighted_mae,
    weighted_mse,
)


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
    close(weighted_mae(pred, target, None), 2.0)
    close(weighted_mae(pred, target, t([[[2.0, 0.0]]])), 1.0)


@pytest.mark.parametrize(
    ("opt", "do_2d", "channels"),
    [("0", False, 1), ("2", False, 3), ("2", True, 2), ("4", False, 1), ("4-1-1", True, 1)],
)
def test_target_channels(opt: str, do_2d: bool, channels: int) -> None:
    assert _target_channels(opt, do_2d) == channels


def test_target_channels_unsupported() -> None:
    with pytest.raises(ValueError, match=r"'5' is not supported; supported: '0'"):
        _target_channels("5", False)


# --- the criterion ---------------------------------------------------------------------------


def test_default_bce_with_logits_criterion() -> None:
    crit = build_criterion(make_cfg())
    logits, target = t([[[0.0, 2.0]]]), t([[[1.0, 0.0]]])
    total, parts = crit(logits, [target], [[None]])
    expected = (math.log(2.0) + math.log(1.0 + math.e**2)) / 2
    close(total, expected)
    assert parts == pytest.approx({"0/WeightedBCEWithLogitsLoss": expected})


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
    close(parts["0/WeightedBCE"], float(weighted_bce(p, target, None)))
    s = 1 / (1 + math.exp(-2))
    close(parts["0/DiceLoss"], 1 - (2 * 0.5 + 100) / (0.5 + s + 1 + 100))


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
    ignored = torch.full((2, 3, 2, 3, 3), 7.0)  # WEIGHT_OPT '0': not applied
    total, parts = crit(out, targets, [[bce_w, torch.ones(1)], [ignored], [mae_w]])

    x0, x2, x4 = out[:, :1], out[:, 1:4], out[:, 4:]
    expected = {
        "0/WeightedBCEWithLogitsLoss": float(weighted_bce_with_logits(x0, targets[0], bce_w)),
        "0/DiceLoss": 0.5 * float(dice_loss(torch.sigmoid(x0), targets[0], None)),
        "1/WeightedMSE": 2.0 * float(weighted_mse(torch.tanh(x2), targets[1], None)),
        "2/WeightedMAE": 3.0 * float(weighted_mae(x4, targets[2], mae_w)),
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
    assert isinstance(parts["0/WeightedBCEWithLogitsLoss"], torch.Tensor)
    assert not parts["0/WeightedBCEWithLogitsLoss"].requires_grad


def test_same_loss_twice_keeps_both_components() -> None:
    cfg = make_cfg(
        LOSS_OPTION=[["DiceLoss", "DiceLoss"]],
        LOSS_WEIGHT=[[1.0, 2.0]],
        WEIGHT_OPT=[["0", "0"]],
        OUTPUT_ACT=[["sigmoid", "sigmoid"]],
    )
    _, parts = build_criterion(cfg)(torch.randn(1, 1, 4), [torch.ones(1, 1, 4)])
    assert set(parts) == {"0/DiceLoss", "0/DiceLoss#1"}
    close(parts["0/DiceLoss#1"], 2 * parts["0/DiceLoss"])


# --- predictions -----------------------------------------------------------------------------


def test_predict_splits_and_applies_sigmoid() -> None:
    cfg = make_cfg(TARGET_OPT=["0", "2"], OUT_PLANES=4)
    out = torch.randn(2, 4, 2, 3, 3, dtype=torch.bfloat16)
    binary, affinity = predict(cfg, out)
    assert binary.shape == (2, 1, 2, 3, 3) and affinity.shape == (2, 3, 2, 3, 3)
    assert binary.dtype == torch.float32
    torch.testing.assert_close(affinity, torch.sigmoid(out[:, 1:].float()))


def test_predict_channel_mismatch() -> None:
    with pytest.raises(ValueError, match="outputs have 2 channels, targets need 1"):
        predict(make_cfg(), torch.zeros(1, 2, 4))


# --- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"LOSS_OPTION": [["FocalLoss"]]},
            r"MODEL.LOSS_OPTION\[0\]\[0\] 'FocalLoss' is not supported; supported: WeightedBCE, "
            "WeightedBCEWithLogitsLoss, DiceLoss, WeightedMSE, WeightedMAE",
        ),
        (
            {"OUTPUT_ACT": [["relu"]]},
            r"MODEL.OUTPUT_ACT\[0\]\[0\] 'relu' is not supported; "
            "supported: none, sigmoid, softmax, tanh",
        ),
        (
            {"LOSS_OPTION": [["WeightedBCE"]]},
            r"WeightedBCE takes probabilities, so MODEL.OUTPUT_ACT\[0\]\[0\] must be one of "
            "sigmoid, softmax",
        ),
        ({"OUT_PLANES": 3}, r"MODEL.OUT_PLANES is 3 but MODEL.TARGET_OPT \['0'\] produces 1"),
        ({"TARGET_OPT": ["9-3"]}, r"MODEL.TARGET_OPT '9-3' is not supported"),
        (
            {"LOSS_WEIGHT": [[1.0, 2.0]]},
            r"MODEL.LOSS_WEIGHT\[0\] has 2 entries but MODEL.LOSS_OPTION\[0\] has 1",
        ),
        ({"OUTPUT_ACT": []}, "MODEL.OUTPUT_ACT has no entry for target 0"),
        ({"TARGET_OPT": []}, "MODEL.TARGET_OPT is empty"),
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
