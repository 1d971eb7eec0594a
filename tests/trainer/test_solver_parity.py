"""The solver against PyTC v1.0.0's own output (`shared/reference/pytc-golden/solver`):
param groups of every optimizer, every LR schedule value 0..200, the scheduler state PyTC
saves, and OneCycle (which PyTC lists but cannot build) refused with a clear reason."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

from backend.config import load_config
from backend.trainer.models import build_model
from backend.trainer.optim import build_optimizer, build_schedule
from tests.reference import golden_dir, load


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = load(f"solver/{name}")
    return data


def resolved(overrides: list[str]) -> dict[str, Any]:
    loaded = load_config(text="", overrides=overrides)
    assert not [p for p in loaded.problems if p.is_error], loaded.problems
    return loaded.values


@cache
def fixture_model(overrides: tuple[str, ...]) -> nn.Module:
    torch.manual_seed(0)
    return build_model(resolved(list(overrides)))


PARAM_GROUP_FILES = sorted(p.name for p in golden_dir("solver").glob("param_groups_*.json"))


@pytest.mark.parametrize("name", PARAM_GROUP_FILES)
def test_param_groups_are_pytcs(name: str) -> None:
    fx = fixture(name)
    cfg = resolved(fx["config_overrides"])
    model = fixture_model(tuple(fx["config_overrides"]))
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = build_optimizer(cfg, model)
    assert type(optimizer).__name__ == fx["torch_class"]
    rows = [
        [names[id(g["params"][0])], i, g["lr"], g["weight_decay"]]
        for i, g in enumerate(optimizer.param_groups)
    ]
    assert all(len(g["params"]) == 1 for g in optimizer.param_groups)
    assert rows == [row[:4] for row in fx["rows"]]
    group0 = {k: v for k, v in optimizer.param_groups[0].items() if k not in ("params",)}
    expected = {k: tuple(v) if k == "betas" else v for k, v in fx["group0_hyperparameters"].items()}
    assert {k: group0[k] for k in expected} == expected


def schedules() -> list[str]:
    names = list(fixture("lr_schedules.json")["schedules"])
    assert len(names) >= 9
    return names


@pytest.mark.parametrize("schedule", schedules())
def test_every_learning_rate_0_to_200(schedule: str) -> None:
    data = fixture("lr_schedules.json")
    fx = data["schedules"][schedule]
    overrides = ["MODEL.ARCHITECTURE", "unet_3d", "MODEL.FILTERS", "[8,12,16,20,24]"]
    overrides += ["MODEL.OUT_PLANES", "3", "MODEL.INPUT_SIZE", "[9,65,65]"]
    overrides += data["settings"] + fx["config_overrides"]
    cfg = resolved(overrides)
    model = fixture_model(tuple(overrides[:8]))
    optimizer = build_optimizer(cfg, model)
    if "error" in fx:  # OneCycle: PyTC v1.0.0 cannot build it (AttributeError: MAX_ITER)
        with pytest.raises(ValueError, match="LR_SCHEDULER_NAME 'OneCycle' is not supported"):
            build_schedule(cfg, optimizer)
        return
    schedule_ = build_schedule(cfg, optimizer)
    names = [n for n, _ in model.named_parameters()]
    bias_index = names.index(fx["bias_group_param"]) if "bias_group_param" in fx else None
    lrs, bias_lrs = [], []
    for index in range(201):
        lrs.append(optimizer.param_groups[0]["lr"])
        if bias_index is not None:
            bias_lrs.append(optimizer.param_groups[bias_index]["lr"])
        optimizer.step()  # no gradients: a no-op that keeps torch's step-order check quiet
        schedule_.step(index, 1.0)  # PyTC's fixture steps ReduceLROnPlateau with loss 1.0
    assert lrs == pytest.approx(fx["lr_all_0_to_200"], rel=1e-12, abs=1e-15)
    for it, lr in fx.get("bias_group_lr_at", {}).items():
        assert bias_lrs[int(it)] == pytest.approx(lr, rel=1e-12, abs=1e-15)
    saved = fx["scheduler_state_dict_after_200"]
    ours = schedule_.state_dict()
    assert set(saved) <= set(ours), "PyTC's scheduler would miss keys of ours on resume"
    for key in ("base_lrs", "min_lrs", "_last_lr"):
        if key in saved:
            assert ours[key] == pytest.approx(saved[key], rel=1e-12, abs=1e-15), key
    assert ours["last_epoch"] == saved["last_epoch"]
