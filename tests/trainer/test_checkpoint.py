"""Checkpoints: PyTC keys, atomic writes, resume, restart, fine-tuning; metrics and device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from backend.trainer.checkpoint import (
    PYTC_KEYS,
    CheckpointError,
    TrainingState,
    checkpoint_path,
    load_pretrained,
    read_checkpoint,
    restore,
    save_checkpoint,
    save_dict,
)
from backend.trainer.device import choose_device
from backend.trainer.metrics import BinaryCounts, dice_score, iou_score
from backend.trainer.optim import Schedule


def make_state(seed: int = 0, out: int = 1) -> TrainingState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, out, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2, 4], 0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return TrainingState(model, optimizer, scheduler, scaler, meta={"run_id": "r"})


def torch_scheduler(state: TrainingState) -> LRScheduler:
    assert isinstance(state.scheduler, LRScheduler)
    return state.scheduler


def first_weight(state: TrainingState) -> torch.Tensor:
    weight: torch.Tensor = state.model.state_dict()["0.weight"]
    return weight


def train_steps(state: TrainingState, n: int) -> None:
    for _ in range(n):
        loss = state.model(torch.ones(2, 1, 6, 6)).pow(2).mean()
        loss.backward()
        state.optimizer.step()
        state.optimizer.zero_grad()
        torch_scheduler(state).step()
        state.iteration += 1


def test_pytc_keys_and_name(tmp_path: Path) -> None:
    state = make_state()
    train_steps(state, 3)
    path = save_checkpoint(state, checkpoint_path(tmp_path, 3))
    assert path.name == "checkpoint_00003.pth.tar"
    loaded = read_checkpoint(path)
    assert set(PYTC_KEYS) <= set(loaded)
    assert loaded["iteration"] == 3
    assert not any(k.startswith("module.") for k in loaded["state_dict"])
    assert loaded["trainboard"]["run_id"] == "r"
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file left"


def test_resume_restores_everything(tmp_path: Path) -> None:
    state = make_state(seed=1)
    train_steps(state, 3)
    path = save_checkpoint(state, tmp_path / "c.pth.tar")
    fresh = make_state(seed=2)
    restored = restore(fresh, path)
    assert restored.iteration == 3
    assert torch_scheduler(fresh).get_last_lr() == torch_scheduler(state).get_last_lr()
    for a, b in zip(
        state.model.state_dict().values(), fresh.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    train_steps(state, 2)
    train_steps(fresh, 2)
    for a, b in zip(state.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(a, b), "optimizer state came back too"


def test_restart_loads_weights_only(tmp_path: Path) -> None:
    state = make_state(seed=1)
    train_steps(state, 3)
    path = save_checkpoint(state, tmp_path / "c.pth.tar")
    fresh = make_state(seed=2)
    restored = restore(fresh, path, restart=True)
    assert restored.iteration == 0
    assert torch_scheduler(fresh).last_epoch == 0 and not fresh.optimizer.state
    assert torch.equal(first_weight(fresh), first_weight(state))


def test_pretrained_strips_module_prefix(tmp_path: Path) -> None:
    state = make_state(seed=1)
    wrapped = {f"module.{k}": v for k, v in state.model.state_dict().items()}
    path = save_dict({"state_dict": wrapped, "iteration": 9}, tmp_path / "p.pth.tar")
    fresh = make_state(seed=2)
    notes = load_pretrained(fresh.model, path)
    assert torch.equal(first_weight(fresh), first_weight(state))
    assert notes[0][0] == "info"


def test_pretrained_shape_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    path = save_checkpoint(make_state(out=3), tmp_path / "p.pth.tar")
    with pytest.raises(CheckpointError, match=r"differ in shape .*OUT_PLANES"):
        load_pretrained(make_state(out=1).model, path)


def test_weights_only_checkpoint_cannot_resume(tmp_path: Path) -> None:
    path = save_dict(make_state().model.state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="lacks optimizer"):
        restore(make_state(), path)


def test_unreadable_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pth.tar")


def test_dice_and_iou_accumulate_counts_over_tiles() -> None:
    counts = BinaryCounts()
    # Tile 1: 1 TP, 1 FP; tile 2: 1 FN and a masked-out false positive.
    counts.add(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1.0, 0.0, 0.0]))
    counts.add(torch.tensor([0.2, 0.9]), torch.tensor([1.0, 0.0]), mask=torch.tensor([True, False]))
    assert counts.values == (1, 1, 1)
    assert counts.dice == pytest.approx(2 / 4)
    assert counts.iou == pytest.approx(1 / 3)
    assert dice_score(0, 0, 0) == 1.0 and iou_score(0, 0, 0) == 1.0


def test_cpu_device_warns_when_gpus_were_asked_for() -> None:
    previous = torch.get_num_threads()
    cfg: dict[str, Any] = {"SYSTEM": {"NUM_GPUS": 2}, "MODEL": {"MIXED_PRECESION": True}}
    try:
        choice = choose_device(cfg, threads=1)
    finally:
        torch.set_num_threads(previous)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert choice.device.type == "cpu" and not choice.amp
    levels = dict((m.split()[0], lvl) for lvl, m in choice.notes)
    assert levels == {"SYSTEM.NUM_GPUS": "warning", "MODEL.MIXED_PRECESION": "info"}
    assert choice.name == "cpu (1 threads)"


def test_checkpoint_with_python_objects_is_refused_safely(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "pickled.pth.tar"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError, match="safe load refuses"):
        read_checkpoint(path)


def solver_state(name: str, scheduler: str, seed: int = 0) -> TrainingState:
    from backend.trainer.optim import build_optimizer, build_schedule
    from tests.trainer.test_optim import make_cfg

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))
    cfg = make_cfg(NAME=name, LR_SCHEDULER_NAME=scheduler, STEPS=[2, 4])
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, optimizer)
    return TrainingState(model, optimizer, schedule, torch.amp.GradScaler("cuda", enabled=False))


@pytest.mark.parametrize(
    ("saved", "resumed", "words"),
    [
        (("SGD", "MultiStepLR"), ("Adam", "MultiStepLR"),
         "holds SGD optimizer state but SOLVER.NAME builds Adam"),
        (("Adam", "MultiStepLR"), ("AdamW", "MultiStepLR"),
         "holds Adam optimizer state but SOLVER.NAME builds AdamW"),
        (("SGD", "WarmupCosineLR"), ("SGD", "MultiStepLR"),
         "holds WarmupCosineLR scheduler state but SOLVER.LR_SCHEDULER_NAME builds MultiStepLR"),
        (("SGD", "ReduceLROnPlateau"), ("SGD", "WarmupMultiStepLR"),
         "holds ReduceLROnPlateau scheduler state"),
    ],
)  # fmt: skip
def test_a_changed_solver_is_named_on_resume(
    tmp_path: Path, saved: tuple[str, str], resumed: tuple[str, str], words: str
) -> None:
    state = solver_state(*saved)
    train_steps_with(state, 2)
    path = save_checkpoint(state, tmp_path / "c.pth.tar")
    with pytest.raises(CheckpointError, match=words) as caught:
        restore(solver_state(*resumed, seed=1), path)
    assert "ITERATION_RESTART: True" in str(caught.value)


def test_another_models_optimizer_state_is_named(tmp_path: Path) -> None:
    state = make_state()
    path = save_checkpoint(state, tmp_path / "c.pth.tar")
    other = solver_state("Adam", "MultiStepLR")  # the same model, one group per parameter
    checkpoint = read_checkpoint(path)
    checkpoint["trainboard"]["run_id"] = "r"
    with pytest.raises(CheckpointError, match="has 1 optimizer parameter groups, this model 6"):
        restore(other, save_dict(checkpoint, tmp_path / "d.pth.tar"))


def test_reduce_on_plateau_resumes_its_patience(tmp_path: Path) -> None:
    state = solver_state("SGD", "ReduceLROnPlateau")
    train_steps_with(state, 3)
    path = save_checkpoint(state, tmp_path / "c.pth.tar")
    fresh = solver_state("SGD", "ReduceLROnPlateau", seed=1)
    restore(fresh, path)
    assert isinstance(fresh.scheduler, Schedule) and isinstance(state.scheduler, Schedule)
    assert fresh.scheduler.state_dict() == state.scheduler.state_dict()
    assert fresh.scheduler.state_dict()["num_bad_epochs"] == 2  # loss 1.0 three times


def train_steps_with(state: TrainingState, n: int) -> None:
    """As `train_steps`, stepping the schedule as the loop does (with the loss)."""
    assert isinstance(state.scheduler, Schedule)
    for index in range(n):
        loss = state.model(torch.ones(2, 1, 6, 6)).pow(2).mean()
        loss.backward()
        state.optimizer.step()
        state.optimizer.zero_grad()
        state.scheduler.step(index, 1.0)
        state.iteration += 1
