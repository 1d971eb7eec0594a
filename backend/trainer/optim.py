"""Optimiser, learning-rate schedule, SWA and gradient clipping from SOLVER.*, as PyTC does them.

Guarantees, checked against PyTC v1.0.0's own output (`shared/reference/pytc-golden/solver`):
- `build_optimizer` makes PyTC's param groups: one per parameter, in `model.modules()` order,
  so an optimizer `state_dict` saved here loads into PyTC's optimizer and back.
- `Schedule.step(index, loss)` after each 0-based iteration `index` does what PyTC's
  `Trainer.scheduler_step` does: the SWA schedule from SOLVER.SWA.START_ITER on, else the
  LR scheduler (ReduceLROnPlateau stepped with the training loss). After k steps a group's
  `lr` is the rate of iteration k, exactly PyTC's.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import LRScheduler, MultiStepLR, ReduceLROnPlateau
from torch.optim.swa_utils import SWALR, AveragedModel

from backend.config.schema import (
    CLIP_TYPES,
    SUPPORTED_OPTIMIZERS,
    SUPPORTED_SCHEDULERS,
    WARMUP_METHODS,
)

Config = Mapping[str, Any]

# One table for the trainer and the validator (backend.config.schema): what one accepts
# the other builds.
SUPPORTED_CLIP_TYPES = CLIP_TYPES
SUPPORTED_WARMUP_METHODS = WARMUP_METHODS
SWA_ANNEAL_STEPS = 10  # PyTC builds SWALR with torch's default cosine anneal over 10 steps

# Parameters of these layers get SOLVER.WEIGHT_DECAY_NORM (PyTC's list, less its own types).
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def _unsupported(key: str, value: Any, supported: Sequence[str]) -> ValueError:
    return ValueError(f"{key} {value!r} is not supported; supported: {', '.join(supported)}")


# --- optimiser -------------------------------------------------------------------------------


def param_groups(cfg: Config, model: nn.Module) -> list[dict[str, Any]]:
    """PyTC's groups: one per trainable parameter, in `model.modules()` order. Norm-layer
    parameters decay by WEIGHT_DECAY_NORM at BASE_LR; other biases learn at
    BASE_LR * BIAS_LR_FACTOR and decay by WEIGHT_DECAY_BIAS; the rest use BASE_LR and
    WEIGHT_DECAY. The layout is what makes optimizer state portable to and from PyTC."""
    solver = cfg["SOLVER"]
    base_lr, decay = float(solver["BASE_LR"]), float(solver["WEIGHT_DECAY"])
    norm_decay = float(solver.get("WEIGHT_DECAY_NORM", 0.0))
    bias_lr = base_lr * float(solver.get("BIAS_LR_FACTOR", 1.0))
    bias_decay = float(solver.get("WEIGHT_DECAY_BIAS", 0.0))

    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, _NORM_TYPES):
                lr, wd = base_lr, norm_decay
            elif name == "bias":
                lr, wd = bias_lr, bias_decay
            else:
                lr, wd = base_lr, decay
            groups.append({"params": [param], "lr": lr, "weight_decay": wd})
    return groups


def build_optimizer(cfg: Config, model: nn.Module) -> Optimizer:
    """SOLVER.NAME with BASE_LR, WEIGHT_DECAY(_NORM/_BIAS), MOMENTUM (SGD), BETAS (Adam/W)."""
    solver = cfg["SOLVER"]
    name = solver["NAME"]
    groups = param_groups(cfg, model)
    lr = float(solver["BASE_LR"])
    if name == "SGD":
        return SGD(groups, lr=lr, momentum=float(solver["MOMENTUM"]))
    beta1, beta2 = (float(b) for b in solver["BETAS"])
    if name == "Adam":
        return Adam(groups, lr=lr, betas=(beta1, beta2))
    if name == "AdamW":
        return AdamW(groups, lr=lr, betas=(beta1, beta2))
    raise _unsupported("SOLVER.NAME", name, SUPPORTED_OPTIMIZERS)


# --- learning-rate schedules -----------------------------------------------------------------


def warmup_factor(method: str, iteration: int, warmup_iters: int, factor: float) -> float:
    """LR multiplier during warm-up: `constant` holds `factor`, `linear` ramps from `factor`
    at iteration 0 to 1 at `warmup_iters`; 1 from then on."""
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return factor
    if method == "linear":
        alpha = iteration / warmup_iters
        return factor * (1.0 - alpha) + alpha
    raise _unsupported("SOLVER.WARMUP_METHOD", method, SUPPORTED_WARMUP_METHODS)


class _WarmupScheduler(LRScheduler):
    """A schedule in closed form of the iteration: resuming from `state_dict` only needs the
    iteration count, and no rounding error accumulates step by step. Attribute names are
    PyTC's, so the `state_dict` of either loads into the other."""

    def __init__(
        self, optimizer: Optimizer, *, warmup_iters: int, warmup_factor: float, warmup_method: str
    ) -> None:
        if warmup_method not in SUPPORTED_WARMUP_METHODS:
            raise _unsupported("SOLVER.WARMUP_METHOD", warmup_method, SUPPORTED_WARMUP_METHODS)
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.warmup_method = warmup_method
        super().__init__(optimizer)

    def _factor(self, iteration: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float | torch.Tensor]:
        it = self.last_epoch
        warm = warmup_factor(self.warmup_method, it, self.warmup_iters, self.warmup_factor)
        return [base * warm * self._factor(it) for base in self.base_lrs]


class WarmupMultiStepLR(_WarmupScheduler):
    """Warm-up, then the rate times GAMMA at each milestone passed."""

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        *,
        warmup_iters: int = 1000,
        warmup_factor: float = 0.001,
        warmup_method: str = "linear",
    ) -> None:
        self.milestones = _milestones(milestones)
        self.gamma = gamma
        super().__init__(
            optimizer,
            warmup_iters=warmup_iters,
            warmup_factor=warmup_factor,
            warmup_method=warmup_method,
        )

    def _factor(self, iteration: int) -> float:
        return float(self.gamma ** bisect_right(list(self.milestones), iteration))


class WarmupCosineLR(_WarmupScheduler):
    """Warm-up times a half cosine from the base rate at 0 to 0 at `max_iters` (PyTC: the two
    factors multiply; the cosine does not restart after warm-up)."""

    def __init__(
        self,
        optimizer: Optimizer,
        max_iters: int,
        *,
        warmup_iters: int = 1000,
        warmup_factor: float = 0.001,
        warmup_method: str = "linear",
    ) -> None:
        if max_iters < 1:
            raise ValueError(f"SOLVER.ITERATION_TOTAL must be positive, got {max_iters}")
        self.max_iters = max_iters
        super().__init__(
            optimizer,
            warmup_iters=warmup_iters,
            warmup_factor=warmup_factor,
            warmup_method=warmup_method,
        )

    def _factor(self, iteration: int) -> float:
        # PyTC does not clamp: past max_iters the cosine rises again, as PyTC's would.
        return 0.5 * (1.0 + math.cos(math.pi * iteration / self.max_iters))


def _milestones(steps: Iterable[Any]) -> list[int]:
    milestones = [int(s) for s in steps]
    if milestones != sorted(milestones):
        raise ValueError(f"SOLVER.STEPS must be increasing iterations, got {milestones}")
    return milestones


def build_scheduler(cfg: Config, optimizer: Optimizer) -> LRScheduler:
    """SOLVER.LR_SCHEDULER_NAME with STEPS/GAMMA, WARMUP_* and ITERATION_TOTAL."""
    solver = cfg["SOLVER"]
    name = solver["LR_SCHEDULER_NAME"]
    iters, factor = int(solver["WARMUP_ITERS"]), float(solver["WARMUP_FACTOR"])
    method = str(solver["WARMUP_METHOD"])
    gamma = float(solver["GAMMA"])
    if name == "MultiStepLR":
        # torch's counts its milestones: their order changes nothing (PyTC accepts any).
        steps = sorted(int(step) for step in solver["STEPS"])
        return MultiStepLR(optimizer, steps, gamma=gamma)
    if name == "WarmupMultiStepLR":
        milestones = _milestones(solver["STEPS"])
        return WarmupMultiStepLR(
            optimizer,
            milestones,
            gamma,
            warmup_iters=iters,
            warmup_factor=factor,
            warmup_method=method,
        )
    if name == "WarmupCosineLR":
        return WarmupCosineLR(
            optimizer,
            int(solver["ITERATION_TOTAL"]),
            warmup_iters=iters,
            warmup_factor=factor,
            warmup_method=method,
        )
    if name == "ReduceLROnPlateau":
        # PyTC's fixed settings; only the factor is configurable (GAMMA).
        return ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=gamma,
            patience=1000,
            threshold=0.001,
            threshold_mode="rel",
            cooldown=0,
            min_lr=1e-6,
            eps=1e-8,
        )
    raise _unsupported("SOLVER.LR_SCHEDULER_NAME", name, SUPPORTED_SCHEDULERS)


@dataclass
class Schedule:
    """The LR scheduler and, with SOLVER.SWA.ENABLED, the SWA schedule that replaces it from
    `swa_start` on (PyTC builds both at start; the SWA one leaves the rate alone until used)."""

    scheduler: LRScheduler
    swa: SWALR | None = None
    swa_start: int = 0

    def step(self, index: int, loss: float) -> None:
        """After 0-based iteration `index`, whose training loss was `loss`."""
        if self.swa is not None and index >= self.swa_start:
            self.swa.step()
        elif isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """The LR scheduler's state: PyTC's `lr_scheduler` entry."""
        return self.scheduler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(dict(state))


def build_schedule(cfg: Config, optimizer: Optimizer) -> Schedule:
    scheduler = build_scheduler(cfg, optimizer)
    swa = cfg["SOLVER"].get("SWA") or {}
    if not swa.get("ENABLED"):
        return Schedule(scheduler)
    swa_lr = float(cfg["SOLVER"]["BASE_LR"]) * float(swa["LR_FACTOR"])
    swalr = SWALR(optimizer, swa_lr=swa_lr, anneal_epochs=SWA_ANNEAL_STEPS)
    return Schedule(scheduler, swalr, int(swa["START_ITER"]))


# --- stochastic weight averaging -------------------------------------------------------------


@dataclass
class Averaging:
    """SOLVER.SWA's averaged model: updated after iteration `index` when index >= START_ITER
    and index % MERGE_ITER == 0 (PyTC's rule); `checkpoint_swa.pth.tar` holds its weights."""

    model: AveragedModel
    start: int
    every: int
    bn_update_iters: int

    def maybe_update(self, index: int, model: nn.Module) -> None:
        if index >= self.start and index % self.every == 0:
            self.model.update_parameters(model)

    @property
    def updates(self) -> int:
        return int(self.model.n_averaged.item())


def build_averaging(cfg: Config, model: nn.Module) -> Averaging | None:
    swa = cfg["SOLVER"].get("SWA") or {}
    if not swa.get("ENABLED"):
        return None
    return Averaging(
        AveragedModel(model),
        start=int(swa["START_ITER"]),
        every=max(1, int(swa["MERGE_ITER"])),
        bn_update_iters=int(swa["BN_UPDATE_ITER"]),
    )


# --- gradient clipping -----------------------------------------------------------------------


def clip_gradients(cfg: Config, model: nn.Module) -> None:
    """Clip gradients in place per SOLVER.CLIP_GRADIENTS; call between backward and step
    (after `GradScaler.unscale_` under mixed precision). A no-op unless ENABLED.

    As in PyTC (Detectron2's clipper), both modes act on each parameter separately: `value`
    clamps every element to +-CLIP_VALUE; `norm` rescales each parameter's gradient whose
    NORM_TYPE-norm exceeds CLIP_VALUE down to CLIP_VALUE."""
    clip = cfg["SOLVER"]["CLIP_GRADIENTS"]
    if not clip["ENABLED"]:
        return
    kind, max_value = clip["CLIP_TYPE"], float(clip["CLIP_VALUE"])
    if kind == "value":
        torch.nn.utils.clip_grad_value_(model.parameters(), max_value)
    elif kind == "norm":
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        _clip_each_norm(grads, max_value, float(clip["NORM_TYPE"]))
    else:
        raise _unsupported("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", kind, SUPPORTED_CLIP_TYPES)


def _clip_each_norm(grads: list[torch.Tensor], max_norm: float, norm_type: float) -> None:
    if not grads:
        return
    # Batched (foreach) kernels rather than a norm and a scale per parameter; no host sync.
    scales = torch._foreach_add(torch._foreach_norm(grads, norm_type), 1e-6)
    torch._foreach_reciprocal_(scales)
    torch._foreach_mul_(scales, max_norm)
    torch._foreach_clamp_max_(scales, 1.0)
    torch._foreach_mul_(grads, scales)
