"""Checkpoints in PyTC's layout, both ways: PyTC resumes ours, and we resume PyTC's.

A checkpoint is `OUTPUT_PATH/checkpoint_%05d.pth.tar` (the number: iterations done), a
dict with PyTC's keys `state_dict` (the bare model, no `module.` prefix), `optimizer`
(PyTC's layout: one param group per parameter, see `optim.param_groups`), `lr_scheduler`
and `iteration`, plus Trainboard's: `scaler` (mixed precision), `best_dice`, `rng_state`
(and under DDP `rng_states`, every rank's, so each rank resumes its own), with SWA
`swa_model` / `swa_scheduler`, and `trainboard` (run id, attempt, seed, format version).
PyTC ignores the extras; a checkpoint without them (PyTC's) resumes here too. A DDP run's
checkpoint is written by rank 0 from the bare model: the same layout, no `module.`
prefix, loadable by a single process and by any number of ranks.
`checkpoint_best.pth.tar` is the same dict, written when validation Dice improves;
`checkpoint_swa.pth.tar` holds the SWA average as `{'state_dict': ...}` (bare keys).

A run resumes only from its own checkpoints (`resume_own`: the owner is the run id in
`trainboard`), falling back to its previous one when the latest is missing or torn.
`MODEL.PRE_MODEL` is read as PyTC reads it (`load_pre_model`).

Files are written beside their final name and renamed into place (`os.replace`), so a
crash mid-write never leaves a truncated checkpoint under a real name. Loading uses
`torch.load(weights_only=True)`: a checkpoint cannot run code on this machine.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.amp import GradScaler
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from backend.trainer.optim import Averaging, Schedule

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint_%05d.pth.tar"
BEST_NAME = "checkpoint_best.pth.tar"
SWA_NAME = "checkpoint_swa.pth.tar"
PYTC_KEYS = ("state_dict", "optimizer", "lr_scheduler", "iteration")


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""

    def __init__(self, message: str, path: str | Path) -> None:
        super().__init__(message)
        self.path = str(path)


def checkpoint_path(output_path: str | Path, iteration: int) -> Path:
    return Path(output_path) / (CHECKPOINT_NAME % iteration)


def best_path(output_path: str | Path) -> Path:
    return Path(output_path) / BEST_NAME


def swa_path(output_path: str | Path) -> Path:
    return Path(output_path) / SWA_NAME


@dataclass
class TrainingState:
    """Everything a checkpoint holds besides tensors' owners: enough to resume exactly."""

    model: nn.Module
    optimizer: Optimizer
    scheduler: Schedule | LRScheduler
    scaler: GradScaler
    iteration: int = 0
    best_dice: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    averaging: Averaging | None = None
    rng_states: list[torch.Tensor] | None = None  # DDP: every rank's, gathered at the save

    def to_dict(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "state_dict": bare_module(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "iteration": self.iteration,
            "scaler": self.scaler.state_dict(),
            "best_dice": self.best_dice,
            "rng_state": torch.get_rng_state(),
            "trainboard": {"format": FORMAT_VERSION, **self.meta},
        }
        if self.rng_states is not None:
            payload["rng_states"] = list(self.rng_states)
        if isinstance(self.scheduler, Schedule) and self.scheduler.swa is not None:
            payload["swa_scheduler"] = self.scheduler.swa.state_dict()
        if self.averaging is not None:
            payload["swa_model"] = self.averaging.model.state_dict()
        return payload


def bare_module(model: nn.Module) -> nn.Module:
    """The model inside a DataParallel/DDP wrapper, whose keys have no `module.` prefix."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def save_checkpoint(state: TrainingState, path: str | Path) -> Path:
    """Write `state` to `path` atomically (temporary file, fsync, rename)."""
    return save_dict(state.to_dict(), path)


def save_dict(payload: Mapping[str, Any], path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as handle:
            torch.save(dict(payload), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict (or a bare state dict) safely onto `device`."""
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"checkpoint {source} does not exist or is not a file", source)
    try:
        loaded = torch.load(source, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unpickling_error(source, exc) from exc
    except Exception as exc:  # a torn file fails anywhere in the unpickler (IndexError, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {source}: not a PyTorch checkpoint, or truncated ({reason})",
            source,
        ) from exc
    if not isinstance(loaded, dict):
        raise CheckpointError(f"checkpoint {source} is not a dict of tensors", source)
    return loaded


def _unpickling_error(source: Path, exc: Exception) -> CheckpointError:
    # torch's message is long; keep the unpickler's own reason, which follows this marker.
    reason = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
    if "global" in reason.lower():
        return CheckpointError(
            f"checkpoint {source} holds Python objects a safe load refuses ({reason}); "
            "re-save it with only tensors and plain values (e.g. its state_dict)",
            source,
        )
    return CheckpointError(
        f"cannot read checkpoint {source}: not a PyTorch checkpoint, or truncated ({reason})",
        source,
    )


def model_weights(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model's weights from a PyTC/Trainboard checkpoint or a bare state dict, with
    DataParallel's `module.` prefixes stripped."""
    weights = checkpoint.get("state_dict", checkpoint)
    if not isinstance(weights, Mapping):
        raise ValueError("its state_dict is not a mapping of tensors")
    return {_strip_module(str(k)): v for k, v in weights.items() if isinstance(v, torch.Tensor)}


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


@dataclass(frozen=True)
class Restored:
    """What loading did: the iteration to continue from, and notes for `log` events."""

    iteration: int
    best_dice: float | None
    notes: list[tuple[str, str]]


def owner_of(checkpoint: Mapping[str, Any]) -> str | None:
    """The Trainboard run that wrote `checkpoint`; None for a PyTC (or other) checkpoint."""
    meta = checkpoint.get("trainboard")
    run_id = meta.get("run_id") if isinstance(meta, Mapping) else None
    return str(run_id) if run_id else None


def describe_owner(checkpoint: Mapping[str, Any]) -> str:
    owner = owner_of(checkpoint)
    return f"run {owner}'s checkpoint" if owner else "a PyTC checkpoint"


def resume_own(
    state: TrainingState,
    candidates: Sequence[str | Path],
    run_id: str,
    *,
    restart: bool = False,
    start_iteration: int = 0,
    rank: int = 0,
) -> Restored:
    """Resume a run from its own newest usable checkpoint among `candidates` (newest first).

    A checkpoint that is missing, unreadable or written by another run is skipped with a
    warning naming it, and the previous one is tried: a resume never loads someone else's
    weights, and a torn latest file costs only the iterations since the one before."""
    device = next(iter(state.model.parameters())).device
    skipped: list[tuple[str, str]] = []
    for path in dict.fromkeys(str(c) for c in candidates):
        try:
            checkpoint = read_checkpoint(path, device)
        except CheckpointError as exc:
            skipped.append(("warning", f"{exc}; falling back to the previous checkpoint"))
            continue
        owner = owner_of(checkpoint)
        if owner != run_id:
            whose = f"run {owner}" if owner else "no Trainboard run (a PyTC checkpoint)"
            skipped.append(
                (
                    "warning",
                    f"checkpoint {path} belongs to {whose}, not to run {run_id}: a resume "
                    "loads only the run's own checkpoints; falling back to the previous one",
                )
            )
            continue
        restored = restore_from(
            state, checkpoint, path, restart=restart, start_iteration=start_iteration, rank=rank
        )
        return Restored(restored.iteration, restored.best_dice, [*skipped, *restored.notes])
    tried = "; ".join(message for _, message in skipped) or "no checkpoint was given"
    raise CheckpointError(
        f"run {run_id} has no usable checkpoint of its own to resume from ({tried})",
        str(candidates[0]) if candidates else "",
    )


def restore(state: TrainingState, path: str | Path, *, restart: bool = False) -> Restored:
    """Resume from the checkpoint at `path`, whoever wrote it (see `restore_from`)."""
    device = next(iter(state.model.parameters())).device
    return restore_from(state, read_checkpoint(path, device), path, restart=restart)


def restore_from(
    state: TrainingState,
    checkpoint: Mapping[str, Any],
    path: str | Path,
    *,
    restart: bool = False,
    start_iteration: int = 0,
    rank: int = 0,
) -> Restored:
    """Model, optimizer, scheduler, iteration, and Trainboard's extras when present (scaler,
    RNG, SWA, best Dice). A PyTC checkpoint resumes too: the layouts are the same. A DDP
    rank takes its own RNG state (`rng_states[rank]`) when the checkpoint has one.

    With `restart` (SOLVER.ITERATION_RESTART) only the weights load and training starts at
    `start_iteration` (MODEL.PRE_MODEL_ITER) with a fresh optimizer and schedule, as PyTC."""
    _load_weights(state.model, checkpoint, path, strict=True)
    whose = describe_owner(checkpoint)
    if restart:
        note = (
            f"weights loaded from {path} ({whose}); SOLVER.ITERATION_RESTART: starting at "
            f"iteration {start_iteration} with a fresh optimizer and schedule"
        )
        return Restored(start_iteration, None, [("info", note)])
    missing = [key for key in PYTC_KEYS[1:] if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)}: it cannot be resumed; "
            "use it as MODEL.PRE_MODEL with SOLVER.ITERATION_RESTART: True (weights only)",
            path,
        )
    _load_optimizer(state.optimizer, checkpoint["optimizer"], path)
    _load_schedule(state, checkpoint, path)
    if checkpoint.get("scaler"):
        state.scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint.get("rng_state")
    per_rank = checkpoint.get("rng_states")
    if isinstance(per_rank, list) and rank < len(per_rank):
        rng = per_rank[rank]
    if isinstance(rng, torch.Tensor):
        torch.set_rng_state(rng.cpu())
    if state.averaging is not None and isinstance(checkpoint.get("swa_model"), Mapping):
        state.averaging.model.load_state_dict(checkpoint["swa_model"])
    best = checkpoint.get("best_dice")
    iteration = int(checkpoint["iteration"])
    note = f"resumed from {path} ({whose}) at iteration {iteration}"
    return Restored(iteration, float(best) if best is not None else None, [("info", note)])


def _load_optimizer(optimizer: Optimizer, saved: Any, path: str | Path) -> None:
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    if not isinstance(groups, list):
        raise CheckpointError(f"checkpoint {path}: its optimizer entry is not a state dict", path)
    ours = optimizer.param_groups
    if len(groups) != len(ours):
        raise CheckpointError(
            f"checkpoint {path} has {len(groups)} optimizer parameter groups, this model "
            f"{len(ours)}: it was saved for another model (MODEL.* changed?) or with another "
            "grouping; resume with SOLVER.ITERATION_RESTART: True to load its weights only",
            path,
        )
    saved_kind, our_kind = _optimizer_kind(groups[0]), _optimizer_kind(ours[0])
    if saved_kind != our_kind:
        raise CheckpointError(
            f"checkpoint {path} holds {saved_kind} optimizer state but SOLVER.NAME builds "
            f"{our_kind}: set SOLVER.NAME back, or SOLVER.ITERATION_RESTART: True",
            path,
        )
    try:
        optimizer.load_state_dict(dict(saved))
    except (ValueError, KeyError, RuntimeError) as exc:
        message = f"checkpoint {path}: its optimizer state does not fit: {exc}"
        raise CheckpointError(message, path) from exc


def _optimizer_kind(group: Mapping[str, Any]) -> str:
    """SGD, Adam or AdamW from a param group's hyperparameters (their state dicts differ)."""
    if "momentum" in group:
        return "SGD"
    if "betas" in group:
        decoupled = group.get("decoupled_weight_decay")
        return "AdamW" if decoupled else "Adam"
    return "unknown"


# Which scheduler wrote a state dict, from the attributes only it has.
_SCHEDULER_MARKS: tuple[tuple[str, str], ...] = (
    ("patience", "ReduceLROnPlateau"),
    ("max_iters", "WarmupCosineLR"),
    ("warmup_iters", "WarmupMultiStepLR"),
    ("milestones", "MultiStepLR"),
)


def scheduler_kind(state: Mapping[str, Any]) -> str:
    return next((name for mark, name in _SCHEDULER_MARKS if mark in state), "unknown")


def _load_schedule(state: TrainingState, checkpoint: Mapping[str, Any], path: str | Path) -> None:
    saved = checkpoint["lr_scheduler"]
    ours = state.scheduler.state_dict()
    if not isinstance(saved, Mapping) or scheduler_kind(saved) != scheduler_kind(ours):
        kind = scheduler_kind(saved) if isinstance(saved, Mapping) else "no"
        raise CheckpointError(
            f"checkpoint {path} holds {kind} scheduler state but SOLVER.LR_SCHEDULER_NAME "
            f"builds {scheduler_kind(ours)}: set it back, or SOLVER.ITERATION_RESTART: True",
            path,
        )
    loaded = dict(saved)
    if "max_iters" in ours:
        # As PyTC: the cosine ends at this config's ITERATION_TOTAL, not the saved one.
        loaded["max_iters"] = ours["max_iters"]
    state.scheduler.load_state_dict(loaded)
    swa = checkpoint.get("swa_scheduler")
    if isinstance(state.scheduler, Schedule) and state.scheduler.swa is not None and swa:
        state.scheduler.swa.load_state_dict(dict(swa))


def load_pre_model(
    state: TrainingState, path: str | Path, *, restart: bool, start_iteration: int = 0
) -> Restored:
    """MODEL.PRE_MODEL as PyTC reads it: the weights always; then, unless
    SOLVER.ITERATION_RESTART, the optimizer, schedule and iteration the checkpoint holds
    (PyTC resumes from PRE_MODEL). The notes say whose checkpoint it is."""
    device = next(iter(state.model.parameters())).device
    checkpoint = read_checkpoint(path, device)
    whose = describe_owner(checkpoint)
    resumable = all(key in checkpoint for key in PYTC_KEYS[1:])
    if resumable and not restart:
        restored = restore_from(state, checkpoint, path)
        note = (
            f"MODEL.PRE_MODEL {path} is {whose} with optimizer and schedule: resumed at "
            f"iteration {restored.iteration}, as PyTC does; set SOLVER.ITERATION_RESTART: "
            "True to fine-tune from its weights only"
        )
        return Restored(restored.iteration, None, [*restored.notes, ("warning", note)])
    notes = _load_weights(state.model, checkpoint, path, strict=False)
    notes[0] = ("info", f"{notes[0][1]} ({whose}, MODEL.PRE_MODEL)")
    return Restored(start_iteration, None, notes)


def load_pretrained(model: nn.Module, path: str | Path) -> list[tuple[str, str]]:
    """MODEL.PRE_MODEL: load weights only (fine-tuning). Shape mismatches are an error;
    missing or extra keys are a warning (e.g. a different output head)."""
    checkpoint = read_checkpoint(path, next(iter(model.parameters())).device)
    return _load_weights(model, checkpoint, path, strict=False)


def _load_weights(
    model: nn.Module, checkpoint: Mapping[str, Any], path: str | Path, *, strict: bool
) -> list[tuple[str, str]]:
    try:
        weights = model_weights(checkpoint)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}", path) from exc
    target = bare_module(model)
    own = target.state_dict()
    mismatched = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in weights.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        shown = "; ".join(mismatched[:3]) + (" ..." if len(mismatched) > 3 else "")
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: {len(mismatched)} tensors differ "
            f"in shape ({shown}). Check MODEL.ARCHITECTURE, FILTERS, IN_PLANES and "
            "OUT_PLANES against the config that produced it.",
            path,
        )
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if (strict and (missing or unexpected)) or len(missing) == len(own):
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: {len(missing)} model tensors missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})",
            path,
        )
    target.load_state_dict(weights, strict=False)
    notes: list[tuple[str, str]] = [("info", f"loaded {len(weights)} weight tensors from {path}")]
    if missing or unexpected:
        notes.append(
            (
                "warning",
                f"{path}: {len(missing)} model tensors not in the checkpoint keep their "
                f"initial values (e.g. {missing[:3]}); {len(unexpected)} checkpoint tensors "
                f"unused (e.g. {unexpected[:3]})",
            )
        )
    return notes
