"""Checkpoints both ways, against PyTC v1.0.0's layout (`pytc-golden/solver/checkpoint.json`).

PyTC is not installed here, so its side is written from the fixture's description, not from
our code: `pytc_optimizer` builds PyTC's groups by the README's rules, `PytcWarmupCosineLR`
is PyTC's scheduler by its formula and attribute names, and `pytc_update_checkpoint` loads a
file the way `Trainer.update_checkpoint` does (filter keys, copy matching shapes, then
optimizer, lr_scheduler and iteration).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.amp import GradScaler
from torch.optim.lr_scheduler import LRScheduler

from backend.config import load_config
from backend.trainer.checkpoint import TrainingState, load_pre_model, save_checkpoint
from backend.trainer.models import build_model
from backend.trainer.optim import build_optimizer, build_schedule
from tests.reference import load

NORM_TYPES = (nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm3d, nn.LayerNorm)


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = load(f"solver/{name}")
    return data


CHECKPOINT = fixture("checkpoint.json")
LRS = fixture("lr_schedules.json")["schedules"]["WarmupCosineLR_linear"]["lr_all_0_to_200"]


def config() -> dict[str, Any]:
    loaded = load_config(text="", overrides=CHECKPOINT["config_overrides"])
    values: dict[str, Any] = loaded.values
    return values


def fresh_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(config())


# --- PyTC's side, from the fixture description ----------------------------------------------


def pytc_optimizer(model: nn.Module) -> torch.optim.SGD:
    """One group per parameter in model.modules() order; norm params decay by 0 (defaults)."""
    groups = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            decay = 0.0 if isinstance(module, NORM_TYPES) or name == "bias" else 1e-4
            groups.append({"params": [param], "lr": 0.01, "weight_decay": decay})
    return torch.optim.SGD(groups, 0.01, momentum=0.9)


class PytcWarmupCosineLR(LRScheduler):
    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.max_iters, self.warmup_factor, self.warmup_iters = 200, 0.001, 10
        self.warmup_method = "linear"
        super().__init__(optimizer)

    def get_lr(self) -> list[float | torch.Tensor]:
        it = self.last_epoch
        alpha = it / self.warmup_iters
        warm = self.warmup_factor * (1 - alpha) + alpha if it < self.warmup_iters else 1.0
        cosine = 0.5 * (1.0 + math.cos(math.pi * it / self.max_iters))
        return [base * warm * cosine for base in self.base_lrs]


def train_with_random_grads(
    model: nn.Module, optimizer: torch.optim.Optimizer, step: Any, iterations: int
) -> None:
    generator = torch.Generator().manual_seed(1)
    for index in range(iterations):
        for param in model.parameters():
            param.grad = torch.randn(param.shape, generator=generator) * 1e-3
        optimizer.step()
        step(index)


def pytc_update_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler
) -> int:
    checkpoint = torch.load(path, map_location="cpu")  # torch's default: weights_only
    own = model.state_dict()
    for key, value in checkpoint["state_dict"].items():
        if key in own and own[key].size() == value.size():
            own[key] = value
    model.load_state_dict(own)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["lr_scheduler"])
    iteration: int = checkpoint["iteration"]
    return iteration


# --- the tests -------------------------------------------------------------------------------


def test_ours_has_pytcs_layout_and_pytc_resumes_it(tmp_path: Path) -> None:
    cfg = config()
    model = fresh_model(0)
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, optimizer)
    train_with_random_grads(model, optimizer, lambda i: schedule.step(i, 1.0), 50)
    state = TrainingState(model, optimizer, schedule, GradScaler("cuda", enabled=False), 50)
    path = save_checkpoint(state, tmp_path / "checkpoint_00050.pth.tar")

    saved = CHECKPOINT["save_checkpoint"]
    ours = torch.load(path, map_location="cpu")
    assert ours["iteration"] == saved["iteration_value"] == 50
    assert list(ours["state_dict"])[:6] == saved["state_dict_first_keys"]
    assert len(ours["state_dict"]) == saved["top_level"]["state_dict"]["len"]
    assert len(ours["optimizer"]["param_groups"]) == saved["optimizer_param_groups_len"]
    group0 = ours["optimizer"]["param_groups"][0]
    assert set(group0) == set(saved["optimizer_param_group0"])
    assert group0["lr"] == pytest.approx(saved["optimizer_param_group0"]["lr"], rel=1e-12)
    assert set(ours["lr_scheduler"]) == set(saved["lr_scheduler"])
    assert ours["lr_scheduler"]["base_lrs"] == saved["lr_scheduler"]["base_lrs"]

    pytc_model = fresh_model(1)
    pytc_opt = pytc_optimizer(pytc_model)
    pytc_sched = PytcWarmupCosineLR(pytc_opt)
    assert pytc_update_checkpoint(path, pytc_model, pytc_opt, pytc_sched) == 50
    for a, b in zip(model.state_dict().values(), pytc_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert len(pytc_opt.state) == 86 and all(
        "momentum_buffer" in s for s in pytc_opt.state.values()
    )
    # PyTC goes on from the rate of iteration 50, with our momentum, on its own schedule.
    assert pytc_opt.param_groups[0]["lr"] == pytest.approx(LRS[50], rel=1e-12)
    pytc_opt.step()
    pytc_sched.step()
    assert pytc_opt.param_groups[0]["lr"] == pytest.approx(LRS[51], rel=1e-12)


def pytc_checkpoint(path: Path) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A checkpoint as PyTC's save_checkpoint(49) writes it, made by PyTC's side only."""
    model = fresh_model(2)
    optimizer = pytc_optimizer(model)
    scheduler = PytcWarmupCosineLR(optimizer)
    train_with_random_grads(model, optimizer, lambda i: scheduler.step(), 50)
    torch.save(
        {
            "iteration": 50,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
        },
        path,
    )
    return model, optimizer


def test_a_pytc_checkpoint_resumes_here_as_pre_model(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_00050.pth.tar"
    theirs, their_opt = pytc_checkpoint(path)
    saved = torch.load(path)
    assert set(saved["lr_scheduler"]) == set(CHECKPOINT["save_checkpoint"]["lr_scheduler"])

    cfg = config()
    model = fresh_model(3)
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, optimizer)
    state = TrainingState(model, optimizer, schedule, GradScaler("cuda", enabled=False))
    restored = load_pre_model(state, path, restart=False)

    expected = CHECKPOINT["update_checkpoint_resume"]
    assert restored.iteration == expected["start_iter"] == 50
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected["lr_group0_after_load"])
    assert schedule.scheduler.last_epoch == expected["scheduler_last_epoch"]
    assert any("a PyTC checkpoint" in message for _, message in restored.notes)
    for a, b in zip(theirs.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for mine, their in zip(optimizer.param_groups, their_opt.param_groups, strict=True):
        ours_buf = optimizer.state[mine["params"][0]]["momentum_buffer"]
        assert torch.equal(ours_buf, their_opt.state[their["params"][0]]["momentum_buffer"])
    optimizer.step()
    schedule.step(50, 1.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LRS[51], rel=1e-12)


def test_iteration_restart_loads_a_pytc_checkpoints_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_00050.pth.tar"
    theirs, _ = pytc_checkpoint(path)
    cfg = config()
    model = fresh_model(3)
    optimizer = build_optimizer(cfg, model)
    state = TrainingState(
        model, optimizer, build_schedule(cfg, optimizer), GradScaler("cuda", enabled=False)
    )
    restored = load_pre_model(state, path, restart=True, start_iteration=7)
    expected = CHECKPOINT["update_checkpoint_ITERATION_RESTART"]
    assert restored.iteration == expected["start_iter"] == 7
    assert len(optimizer.state) == expected["optimizer_state_len"] == 0
    assert torch.equal(
        next(iter(theirs.state_dict().values())), next(iter(model.state_dict().values()))
    )
