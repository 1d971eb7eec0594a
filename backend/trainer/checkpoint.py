"""Checkpoints PyTC can read, and resuming or fine-tuning from them.

A checkpoint is `OUTPUT_PATH/checkpoint_%05d.pth.tar` (the number: iterations done), a
dict with PyTC's keys `state_dict` (the bare model, no `module.` prefix), `optimizer`,
`lr_scheduler` and `iteration`, plus Trainboard's: `scaler` (mixed precision),
`best_dice`, `rng_state` and `trainboard` (run id, attempt, seed, format version).
`checkpoint_best.pth.tar` is the same dict, written when validation Dice improves.

Files are written beside their final name and renamed into place (`os.replace`), so a
crash mid-write never leaves a truncated checkpoint under a real name. Loading uses
`torch.load(weights_only=True)`: a checkpoint cannot run code on this machine.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.amp import GradScaler
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint_%05d.pth.tar"
BEST_NAME = "checkpoint_best.pth.tar"
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


@dataclass
class TrainingState:
    """Everything a checkpoint holds besides tensors' owners: enough to resume exactly."""

    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    scaler: GradScaler
    iteration: int = 0
    best_dice: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state_dict": bare_module(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "iteration": self.iteration,
            "scaler": self.scaler.state_dict(),
            "best_dice": self.best_dice,
            "rng_state": torch.get_rng_state(),
            "trainboard": {"format": FORMAT_VERSION, **self.meta},
        }


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
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"cannot read checkpoint {source}: {exc}", source) from exc
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
    """What `restore` did: the iteration to continue from, and notes for `log` events."""

    iteration: int
    best_dice: float | None
    notes: list[tuple[str, str]]


def restore(state: TrainingState, path: str | Path, *, restart: bool = False) -> Restored:
    """Resume from a checkpoint: model, optimizer, scheduler, scaler, iteration, RNG.

    With `restart` (SOLVER.ITERATION_RESTART) only the weights load; the iteration count,
    optimizer and schedule start afresh, as PyTC does."""
    device = next(iter(state.model.parameters())).device
    checkpoint = read_checkpoint(path, device)
    _load_weights(state.model, checkpoint, path, strict=True)
    if restart:
        note = f"weights loaded from {path}; SOLVER.ITERATION_RESTART: starting at iteration 0"
        return Restored(0, None, [("info", note)])
    missing = [key for key in PYTC_KEYS[1:] if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)}: it cannot be resumed; "
            "use it as MODEL.PRE_MODEL (weights only) or set SOLVER.ITERATION_RESTART",
            path,
        )
    try:
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        state.scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if checkpoint.get("scaler"):
            state.scaler.load_state_dict(checkpoint["scaler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not match this optimizer or schedule "
            f"(SOLVER.NAME / LR_SCHEDULER_NAME changed?): {exc}",
            path,
        ) from exc
    rng = checkpoint.get("rng_state")
    if isinstance(rng, torch.Tensor):
        torch.set_rng_state(rng.cpu())
    best = checkpoint.get("best_dice")
    iteration = int(checkpoint["iteration"])
    note = f"resumed from {path} at iteration {iteration}"
    return Restored(iteration, float(best) if best is not None else None, [("info", note)])


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
