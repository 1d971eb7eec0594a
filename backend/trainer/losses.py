"""PyTC's training criterion: per-target losses on slices of the model output.

MODEL.TARGET_OPT lists the targets; the output channels are split between them in order
(`_target_channels`). For target i, loss j is

    LOSS_WEIGHT[i][j] * LOSS_OPTION[i][j](OUTPUT_ACT[i][j](output_i), target_i, weight_ij)

and the total is their sum. `weight_ij` is the pixel weight map the data pipeline supplies
when WEIGHT_OPT[i][j] is '1' (class balance); '0' means unweighted.

Losses are computed in float32 with autocast off, whatever the model ran in: mixed
precision stays safe (BCE on probabilities is not autocast-safe, Dice sums overflow fp16).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

Config = Mapping[str, Any]
LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]

SUPPORTED_TARGETS = ("0", "2", "4")
SUPPORTED_ACTIVATIONS = ("none", "sigmoid", "softmax", "tanh")

# PyTC's DiceLoss default: a large smoothing term keeps near-empty patches from dominating.
DICE_SMOOTH = 100.0


def _target_channels(opt: str, do_2d: bool) -> int:
    """Output channels a target option takes: '0' binary 1, '2' affinity 3 (2 in 2D: no z
    edge), '4' / '4-x-y' instance boundary 1. Private twin of the config package's helper."""
    kind = str(opt).split("-")[0]
    if kind == "0" or kind == "4":
        return 1
    if kind == "2":
        return 2 if do_2d else 3
    raise ValueError(
        f"MODEL.TARGET_OPT {opt!r} is not supported; supported: "
        "'0' (binary), '2' (affinity), '4' or '4-x-y' (instance boundary)"
    )


# --- the losses: (prediction, target, optional pixel weight) -> scalar ---------------------


def weighted_bce(pred: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """Binary cross-entropy on probabilities, mean over all elements."""
    return F.binary_cross_entropy(pred, target, _expand(weight, pred))


def weighted_bce_with_logits(pred: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """Binary cross-entropy on logits (the numerically stable form), mean over all elements."""
    return F.binary_cross_entropy_with_logits(pred, target, _expand(weight, pred))


def dice_loss(pred: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """Soft Dice per sample, averaged over the batch: 1 - (2|P*T| + s) / (|P| + |T| + s).

    The weight map is ignored, as in PyTC: Dice is already balanced by construction."""
    p, t = pred.flatten(1), target.flatten(1)
    dice = (2.0 * (p * t).sum(1) + DICE_SMOOTH) / (p.sum(1) + t.sum(1) + DICE_SMOOTH)
    return (1.0 - dice).mean()


def weighted_mse(pred: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """Squared error summed over channels, averaged over batch and voxels (PyTC's norm)."""
    err = (pred - target) ** 2
    if weight is not None:
        err = err * weight
    return err.sum() / (pred.shape[0] * math.prod(pred.shape[2:]))


def weighted_mae(pred: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """Absolute error, mean over all elements."""
    err = (pred - target).abs()
    if weight is not None:
        err = err * weight
    return err.mean()


def _expand(weight: Tensor | None, like: Tensor) -> Tensor | None:
    # F.binary_cross_entropy wants the weight's full shape; a (B, 1, ...) map may broadcast.
    return None if weight is None else weight.expand_as(like)


LOSSES: dict[str, LossFn] = {
    "WeightedBCE": weighted_bce,
    "WeightedBCEWithLogitsLoss": weighted_bce_with_logits,
    "DiceLoss": dice_loss,
    "WeightedMSE": weighted_mse,
    "WeightedMAE": weighted_mae,
}
SUPPORTED_LOSSES = tuple(LOSSES)

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda x: x,
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: F.softmax(x, dim=1),
    "tanh": torch.tanh,
}

# A loss that takes probabilities, with the activations that produce them.
_NEEDS_PROBABILITIES = {"WeightedBCE": ("sigmoid", "softmax")}


# --- the criterion ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LossTerm:
    """One configured loss: LOSS_OPTION[i][j] with its weight, activation and weighting."""

    name: str
    fn: LossFn
    weight: float
    activation: str
    use_pixel_weight: bool


@dataclass(frozen=True)
class TargetSpec:
    """One entry of TARGET_OPT and the losses applied to its channels."""

    opt: str
    channels: int
    terms: tuple[LossTerm, ...]


class Criterion:
    """`criterion(outputs, targets, weights) -> (total, components)`.

    outputs: (B, OUT_PLANES, *spatial) logits. targets[i]: (B, channels_i, *spatial).
    weights[i][j]: pixel weights for loss j of target i, or None. components maps
    "i/LossName" (i the target's index) to that term's weighted value; they sum to total.
    """

    def __init__(self, targets: Sequence[TargetSpec]) -> None:
        self.targets = tuple(targets)
        self.out_channels = sum(t.channels for t in self.targets)
        self.keys = _component_keys(self.targets)

    def __call__(
        self,
        outputs: Tensor,
        targets: Sequence[Tensor],
        weights: Sequence[Sequence[Tensor | None]] | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        total, parts = self.compute(outputs, targets, weights)
        # One device-to-host copy for all components rather than one sync per loss.
        values = torch.stack(list(parts.values())).tolist() if parts else []
        return total, dict(zip(parts, values, strict=True))

    def compute(
        self,
        outputs: Tensor,
        targets: Sequence[Tensor],
        weights: Sequence[Sequence[Tensor | None]] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """As calling, but the components stay detached tensors on the device: no host
        sync, so a loop can convert them only on the iterations it logs."""
        self._check_inputs(outputs, targets, weights)
        parts: dict[str, Tensor] = {}
        total = outputs.new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=outputs.device.type, enabled=False):
            for i, (spec, x) in enumerate(zip(self.targets, self._split(outputs), strict=True)):
                target = targets[i].float()
                activated: dict[str, Tensor] = {}  # one activation per kind, shared by losses
                for j, term in enumerate(spec.terms):
                    if term.activation not in activated:
                        activated[term.activation] = _ACTIVATIONS[term.activation](x)
                    pixel_weight = _pixel_weight(term, weights, i, j)
                    value = term.weight * term.fn(activated[term.activation], target, pixel_weight)
                    total = total + value
                    parts[self.keys[i][j]] = value.detach()
        return total, parts

    def _split(self, outputs: Tensor) -> tuple[Tensor, ...]:
        return torch.split(outputs.float(), [t.channels for t in self.targets], dim=1)

    def _check_inputs(
        self,
        outputs: Tensor,
        targets: Sequence[Tensor],
        weights: Sequence[Sequence[Tensor | None]] | None,
    ) -> None:
        if outputs.shape[1] != self.out_channels:
            raise ValueError(
                f"model output has {outputs.shape[1]} channels but MODEL.TARGET_OPT "
                f"{[t.opt for t in self.targets]} needs {self.out_channels}"
            )
        if len(targets) != len(self.targets):
            raise ValueError(f"expected {len(self.targets)} targets, got {len(targets)}")
        shape = [len(t.terms) for t in self.targets]
        if weights is not None and [len(row) for row in weights] != shape:
            raise ValueError(
                f"weights must hold one entry (tensor or None) per loss, shaped {shape}, "
                f"got {[len(row) for row in weights]}"
            )


def _pixel_weight(
    term: LossTerm, weights: Sequence[Sequence[Tensor | None]] | None, i: int, j: int
) -> Tensor | None:
    weight = weights[i][j] if term.use_pixel_weight and weights is not None else None
    return None if weight is None else weight.float()


def _component_keys(targets: Sequence[TargetSpec]) -> list[list[str]]:
    keys: list[list[str]] = []
    seen: set[str] = set()
    for i, spec in enumerate(targets):
        row = []
        for j, term in enumerate(spec.terms):
            key = f"{i}/{term.name}"
            if key in seen:  # the same loss twice on one target: keep both, by position
                key = f"{key}#{j}"
            seen.add(key)
            row.append(key)
        keys.append(row)
    return keys


# --- building from the resolved config -------------------------------------------------------


def _per_loss(model_cfg: Config, key: str, i: int, count: int) -> list[Any]:
    """Row i of a per-target, per-loss key (LOSS_WEIGHT, WEIGHT_OPT, OUTPUT_ACT)."""
    rows = model_cfg[key]
    if i >= len(rows):
        raise ValueError(f"MODEL.{key} has no entry for target {i}: give one list per target")
    row = rows[i]
    if isinstance(row, str | int | float):
        row = [row] * count  # a bare value applies to every loss of the target
    if len(row) != count:
        raise ValueError(
            f"MODEL.{key}[{i}] has {len(row)} entries but MODEL.LOSS_OPTION[{i}] has {count}"
        )
    return list(row)


def _loss_term(name: str, weight: Any, activation: str, weight_opt: Any, where: str) -> LossTerm:
    if name not in LOSSES:
        raise ValueError(
            f"MODEL.LOSS_OPTION{where} {name!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_LOSSES)}"
        )
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"MODEL.OUTPUT_ACT{where} {activation!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ACTIVATIONS)}"
        )
    allowed = _NEEDS_PROBABILITIES.get(name)
    if allowed is not None and activation not in allowed:
        raise ValueError(
            f"{name} takes probabilities, so MODEL.OUTPUT_ACT{where} must be one of "
            f"{', '.join(allowed)} (got {activation!r}); or use WeightedBCEWithLogitsLoss "
            "with OUTPUT_ACT 'none'"
        )
    return LossTerm(name, LOSSES[name], float(weight), activation, str(weight_opt) != "0")


def _target_spec(model_cfg: Config, i: int, opt: str, do_2d: bool) -> TargetSpec:
    options = model_cfg["LOSS_OPTION"]
    if i >= len(options):
        raise ValueError(f"MODEL.LOSS_OPTION has no entry for target {i} ({opt!r})")
    names = [options[i]] if isinstance(options[i], str) else list(options[i])
    n = len(names)
    weights = _per_loss(model_cfg, "LOSS_WEIGHT", i, n)
    acts = _per_loss(model_cfg, "OUTPUT_ACT", i, n)
    weight_opts = _per_loss(model_cfg, "WEIGHT_OPT", i, n)
    terms = tuple(
        _loss_term(names[j], weights[j], acts[j], weight_opts[j], f"[{i}][{j}]") for j in range(n)
    )
    return TargetSpec(str(opt), _target_channels(str(opt), do_2d), terms)


def _do_2d(cfg: Config) -> bool:
    return bool(cfg.get("DATASET", {}).get("DO_2D", False))


def build_criterion(cfg: Config) -> Criterion:
    """The criterion MODEL.TARGET_OPT / LOSS_OPTION / LOSS_WEIGHT / WEIGHT_OPT / OUTPUT_ACT
    describe; its channel split must add up to MODEL.OUT_PLANES."""
    model_cfg = cfg["MODEL"]
    do_2d = _do_2d(cfg)
    specs = [
        _target_spec(model_cfg, i, opt, do_2d) for i, opt in enumerate(model_cfg["TARGET_OPT"])
    ]
    if not specs:
        raise ValueError("MODEL.TARGET_OPT is empty: give at least one target")
    criterion = Criterion(specs)
    out_planes = int(model_cfg["OUT_PLANES"])
    if criterion.out_channels != out_planes:
        raise ValueError(
            f"MODEL.OUT_PLANES is {out_planes} but MODEL.TARGET_OPT "
            f"{list(model_cfg['TARGET_OPT'])} produces {criterion.out_channels} channels"
        )
    return criterion


def predict(cfg: Config, outputs: Tensor) -> list[Tensor]:
    """Per-target predictions for validation metrics: the output split by target, each
    through its natural activation (sigmoid for binary, affinity and boundary maps), float32."""
    do_2d = _do_2d(cfg)
    sizes = [_target_channels(str(opt), do_2d) for opt in cfg["MODEL"]["TARGET_OPT"]]
    if sum(sizes) != outputs.shape[1]:
        raise ValueError(f"outputs have {outputs.shape[1]} channels, targets need {sum(sizes)}")
    # Every supported target is a map of independent probabilities, hence sigmoid for all.
    return [torch.sigmoid(x) for x in torch.split(outputs.float(), sizes, dim=1)]
