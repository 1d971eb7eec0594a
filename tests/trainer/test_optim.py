"""Optimisers, LR schedules (hand-computed curves, resume), gradient clipping, errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from backend.trainer.optim import build_optimizer, build_scheduler, clip_gradients


def make_cfg(clip: dict[str, Any] | None = None, **solver: Any) -> dict[str, Any]:
    """A resolved config with PyTC's SOLVER defaults."""
    values: dict[str, Any] = {
        "NAME": "SGD",
        "LR_SCHEDULER_NAME": "MultiStepLR",
        "BASE_LR": 0.001,
        "BIAS_LR_FACTOR": 1.0,
        "WEIGHT_DECAY": 1e-4,
        "WEIGHT_DECAY_NORM": 0.0,
        "WEIGHT_DECAY_BIAS": 0.0,
        "MOMENTUM": 0.9,
        "BETAS": [0.9, 0.999],
        "GAMMA": 0.1,
        "STEPS": [30000, 35000],
        "ITERATION_TOTAL": 40000,
        "WARMUP_FACTOR": 0.001,
        "WARMUP_ITERS": 1000,
        "WARMUP_METHOD": "linear",
        "CLIP_GRADIENTS": {
            "ENABLED": False,
            "CLIP_TYPE": "value",
            "CLIP_VALUE": 1.0,
            "NORM_TYPE": 2.0,
        },
    }
    values.update(solver)
    values["CLIP_GRADIENTS"] = {**values["CLIP_GRADIENTS"], **(clip or {})}
    return {"SOLVER": values}


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 1, 1, bias=False))


def group_of(opt: torch.optim.Optimizer, param: Any) -> dict[str, Any]:
    return next(g for g in opt.param_groups if any(p is param for p in g["params"]))


def lr_curve(cfg: dict[str, Any], iterations: int) -> list[float]:
    """The learning rate used at iterations 0..iterations-1 (one scheduler step per iteration)."""
    opt = build_optimizer(cfg, tiny_model())
    sched = build_scheduler(cfg, opt)
    lrs = []
    for _ in range(iterations):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


# --- optimisers ------------------------------------------------------------------------------


def test_sgd_hyperparameters_and_groups() -> None:
    model = tiny_model()
    cfg = make_cfg(BASE_LR=0.02, WEIGHT_DECAY=1e-3, WEIGHT_DECAY_NORM=1e-5, BIAS_LR_FACTOR=2.0)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD)
    conv, norm, head = model[0], model[1], model[2]
    assert group_of(opt, conv.weight) | {"params": None} == group_of(opt, head.weight) | {
        "params": None
    }
    weight_group = group_of(opt, conv.weight)
    assert weight_group["lr"] == 0.02 and weight_group["weight_decay"] == 1e-3
    assert weight_group["momentum"] == 0.9
    bias_group = group_of(opt, conv.bias)
    assert bias_group["lr"] == pytest.approx(0.04) and bias_group["weight_decay"] == 0.0
    for p in (norm.weight, norm.bias):  # norm parameters: WEIGHT_DECAY_NORM, base LR
        assert group_of(opt, p)["weight_decay"] == 1e-5 and group_of(opt, p)["lr"] == 0.02
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize(
    ("name", "cls"), [("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW)]
)
def test_adam_family(name: str, cls: type[torch.optim.Optimizer]) -> None:
    model = tiny_model()
    opt = build_optimizer(make_cfg(NAME=name, BASE_LR=3e-4, BETAS=[0.8, 0.99]), model)
    assert type(opt) is cls
    group = group_of(opt, model[0].weight)
    assert group["lr"] == 3e-4 and group["betas"] == (0.8, 0.99)
    assert group["weight_decay"] == 1e-4


def test_frozen_parameters_are_left_out() -> None:
    model = tiny_model()
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(make_cfg(), model)
    assert all(p is not model[0].weight for g in opt.param_groups for p in g["params"])


def test_unsupported_optimizer() -> None:
    message = r"SOLVER\.NAME 'RMSprop' is not supported; supported: SGD, Adam, AdamW"
    with pytest.raises(ValueError, match=message):
        build_optimizer(make_cfg(NAME="RMSprop"), tiny_model())


# --- schedules -------------------------------------------------------------------------------


def test_multistep_curve() -> None:
    lrs = lr_curve(make_cfg(BASE_LR=0.1, STEPS=[3, 5], GAMMA=0.1), 7)
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_warmup_multistep_linear_curve() -> None:
    cfg = make_cfg(
        LR_SCHEDULER_NAME="WarmupMultiStepLR",
        BASE_LR=1.0,
        STEPS=[6],
        GAMMA=0.5,
        WARMUP_ITERS=4,
        WARMUP_FACTOR=0.2,
    )
    # Warm-up factor 0.2 * (1 - it/4) + it/4 for it < 4, then 1; halved from iteration 6.
    assert lr_curve(cfg, 8) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.5, 0.5])


def test_warmup_multistep_constant_curve() -> None:
    cfg = make_cfg(
        LR_SCHEDULER_NAME="WarmupMultiStepLR",
        BASE_LR=0.5,
        STEPS=[3],
        WARMUP_ITERS=2,
        WARMUP_FACTOR=0.1,
        WARMUP_METHOD="constant",
    )
    assert lr_curve(cfg, 5) == pytest.approx([0.05, 0.05, 0.5, 0.05, 0.05])


def test_warmup_cosine_curve() -> None:
    cfg = make_cfg(
        LR_SCHEDULER_NAME="WarmupCosineLR",
        BASE_LR=1.0,
        ITERATION_TOTAL=10,
        WARMUP_ITERS=2,
        WARMUP_FACTOR=0.5,
    )
    lrs = lr_curve(cfg, 13)

    def cosine(it: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * it / 10))

    assert lrs[0] == pytest.approx(0.5)  # warm-up factor 0.5 times cos(0) = 1
    assert lrs[1] == pytest.approx(0.75 * cosine(1))
    assert lrs[2] == pytest.approx(cosine(2))
    assert lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)
    # PyTC's formula is not clamped: past the end the cosine rises again (never reached:
    # training stops at ITERATION_TOTAL, which also sets the end on resume).
    assert lrs[11:] == pytest.approx([cosine(11), cosine(12)])


def test_multistep_reads_its_steps_in_any_order_as_torch_does() -> None:
    assert lr_curve(make_cfg(BASE_LR=0.1, STEPS=[5, 3], GAMMA=0.1), 7) == lr_curve(
        make_cfg(BASE_LR=0.1, STEPS=[3, 5], GAMMA=0.1), 7
    )


def test_bias_group_follows_its_own_base_rate() -> None:
    cfg = make_cfg(BASE_LR=0.1, BIAS_LR_FACTOR=2.0, STEPS=[1])
    model = tiny_model()
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt)
    opt.step()
    sched.step()
    assert group_of(opt, model[0].bias)["lr"] == pytest.approx(0.02)
    assert group_of(opt, model[0].weight)["lr"] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "overrides",
    [
        {"LR_SCHEDULER_NAME": "MultiStepLR", "BASE_LR": 0.1, "STEPS": [4, 9]},
        {"LR_SCHEDULER_NAME": "WarmupMultiStepLR", "STEPS": [6], "WARMUP_ITERS": 5},
        {"LR_SCHEDULER_NAME": "WarmupCosineLR", "ITERATION_TOTAL": 12, "WARMUP_ITERS": 3},
    ],
)
def test_state_round_trip_resumes_the_curve(overrides: dict[str, Any]) -> None:
    cfg = make_cfg(**overrides)
    model = tiny_model()
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt)
    for _ in range(7):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()

    resumed_opt = build_optimizer(cfg, tiny_model())
    resumed = build_scheduler(cfg, resumed_opt)
    resumed_opt.load_state_dict(saved_opt)
    resumed.load_state_dict(saved_sched)

    original: list[list[float]] = []
    replayed: list[list[float]] = []
    for _ in range(6):
        for o, s, out in ((opt, sched, original), (resumed_opt, resumed, replayed)):
            o.step()
            s.step()
            out.append([g["lr"] for g in o.param_groups])
    assert replayed == original
    assert resumed.last_epoch == sched.last_epoch == 13


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"LR_SCHEDULER_NAME": "PolyLR"},
            "SOLVER.LR_SCHEDULER_NAME 'PolyLR' is not supported; supported: "
            "MultiStepLR, WarmupMultiStepLR, WarmupCosineLR",
        ),
        (
            {"LR_SCHEDULER_NAME": "WarmupMultiStepLR", "WARMUP_METHOD": "exp"},
            "SOLVER.WARMUP_METHOD 'exp' is not supported; supported: linear, constant",
        ),
        (
            {"LR_SCHEDULER_NAME": "WarmupMultiStepLR", "STEPS": [5, 3]},
            r"SOLVER.STEPS must be increasing iterations, got \[5, 3\]",
        ),
        (
            {"LR_SCHEDULER_NAME": "WarmupCosineLR", "ITERATION_TOTAL": 0},
            "SOLVER.ITERATION_TOTAL must be positive",
        ),
    ],
)
def test_scheduler_errors(overrides: dict[str, Any], message: str) -> None:
    cfg = make_cfg(**overrides)
    with pytest.raises(ValueError, match=message):
        build_scheduler(cfg, build_optimizer(cfg, tiny_model()))


# --- gradient clipping -----------------------------------------------------------------------


def linear_with_grads() -> nn.Linear:
    layer = nn.Linear(3, 2)
    layer.weight.grad = torch.tensor([[3.0, -4.0, 0.5], [0.0, 0.0, 0.0]])
    layer.bias.grad = torch.tensor([0.3, -0.4])
    return layer


def grad(param: torch.Tensor) -> torch.Tensor:
    assert param.grad is not None
    return param.grad


def test_clip_by_value() -> None:
    layer = linear_with_grads()
    clip_gradients(make_cfg(clip={"ENABLED": True, "CLIP_TYPE": "value", "CLIP_VALUE": 1.0}), layer)
    assert grad(layer.weight).tolist() == [[1.0, -1.0, 0.5], [0.0, 0.0, 0.0]]
    assert grad(layer.bias).tolist() == pytest.approx([0.3, -0.4])


def test_clip_by_norm_acts_per_parameter() -> None:
    layer = linear_with_grads()
    cfg = make_cfg(clip={"ENABLED": True, "CLIP_TYPE": "norm", "CLIP_VALUE": 1.0, "NORM_TYPE": 2.0})
    clip_gradients(cfg, layer)
    norm = math.sqrt(9 + 16 + 0.25)  # the weight's own norm; the bias (norm 0.5) is left alone
    expected = [[3 / norm, -4 / norm, 0.5 / norm], [0.0, 0.0, 0.0]]
    assert grad(layer.weight).tolist()[0] == pytest.approx(expected[0], rel=1e-5)
    assert grad(layer.weight).norm().item() == pytest.approx(1.0, rel=1e-5)
    assert grad(layer.bias).tolist() == pytest.approx([0.3, -0.4])


def test_clip_by_infinity_norm() -> None:
    layer = linear_with_grads()
    cfg = make_cfg(
        clip={"ENABLED": True, "CLIP_TYPE": "norm", "CLIP_VALUE": 2.0, "NORM_TYPE": float("inf")}
    )
    clip_gradients(cfg, layer)
    assert grad(layer.weight).abs().max().item() == pytest.approx(2.0, rel=1e-5)
    assert grad(layer.weight)[0, 0].item() == pytest.approx(1.5, rel=1e-5)


def test_clipping_disabled_is_a_no_op() -> None:
    layer = linear_with_grads()
    clip_gradients(make_cfg(clip={"CLIP_TYPE": "bogus"}), layer)
    assert grad(layer.weight).tolist() == [[3.0, -4.0, 0.5], [0.0, 0.0, 0.0]]


def test_clipping_skips_parameters_without_grad() -> None:
    layer = nn.Linear(2, 2)
    clip_gradients(make_cfg(clip={"ENABLED": True, "CLIP_TYPE": "norm"}), layer)
    assert layer.weight.grad is None


def test_unsupported_clip_type() -> None:
    cfg = make_cfg(clip={"ENABLED": True, "CLIP_TYPE": "adaptive"})
    with pytest.raises(
        ValueError, match="CLIP_TYPE 'adaptive' is not supported; supported: value, norm"
    ):
        clip_gradients(cfg, linear_with_grads())
