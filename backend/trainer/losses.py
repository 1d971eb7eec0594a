"""PyTC v1.0.0's Criterion: per-target losses and regularisers on the split model output.

The output channels are split between MODEL.TARGET_OPT in order (channel counts from
`backend.config.targets`). For target i, loss j is

    LOSS_WEIGHT[i][j] * LOSS_OPTION[i][j](OUTPUT_ACT[i][j](x_i), target_i, weight_ij)

and regulariser k adds REGU_WEIGHT[k] * REGU_OPT[k](x_a, x_b, ...) on the channels of the
targets REGU_TARGET[k]. As in PyTC, 'relu' and 'elu' activate the target's channels in
place: later losses of that target and the regularisers see the activated values.
`weight_ij` is the pixel weight the data pipeline made (None: unweighted). Component
names are PyTC's: '{topt}_{Loss}_{i}_{j}' and '{topt_a}_{topt_b}_{Regu}_{k}'.

Before building, `criterion_problems` (the constraint table validation reads) is checked:
the trainer refuses exactly what validation reports as an error. Losses are computed in
float32 with autocast off, whatever the model ran in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.config.targets import (
    TargetOption,
    criterion_problems,
    parse_target,
    rows,
)
from backend.trainer.regularizers import REGULARIZERS, Regularizer

Config = Mapping[str, Any]
LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
Outputs = Tensor | Mapping[str, Tensor]


# --- the losses: (prediction, target, optional pixel weight) -> scalar ---------------------


def weighted_bce(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Binary cross-entropy on probabilities, mean over all elements."""
    return F.binary_cross_entropy(pred, target, _expand(weight, pred))


def weighted_bce_with_logits(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, eps: float = 0.0
) -> Tensor:
    """Binary cross-entropy on logits, the target clamped to [eps, 1 - eps]."""
    return F.binary_cross_entropy_with_logits(pred, target.clamp(eps, 1 - eps), weight)


def bce_focal(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    gamma: float = 2.0,
    alpha: float = 0.25,
    eps: float = 0.0,
) -> Tensor:
    """Focal loss on logits: BCE scaled by alpha_t (1 - p_t)^gamma (and the weight)."""
    prob = torch.sigmoid(pred)
    p_t = (1 - target) * (1 - prob) + target * prob
    scale = ((1 - alpha) * target + alpha * (1 - target)) * (1 - p_t) ** gamma
    if weight is not None:
        scale = scale * weight
    bce = F.binary_cross_entropy_with_logits(pred, target.clamp(eps, 1 - eps), reduction="none")
    return (scale * bce).mean()


def dice_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduce: bool = True,
    smooth: float = 100.0,
    power: float = 1,
) -> Tensor:
    """Soft Dice 1 - (2|P T| + s) / (|P^p| + |T^p| + s), per sample then averaged
    (`reduce`), or over the whole batch. The weight map is ignored, as in PyTC."""
    if target.shape != pred.shape:
        raise ValueError(f"DiceLoss: target {tuple(target.shape)} != pred {tuple(pred.shape)}")
    p, t = (pred.flatten(1), target.flatten(1)) if reduce else (pred.flatten(), target.flatten())
    dims = -1
    if power == 1:
        denominator = p.sum(dims) + t.sum(dims)
    else:
        denominator = (p**power).sum(dims) + (t**power).sum(dims)
    loss = 1 - (2.0 * (p * t).sum(dims) + smooth) / (denominator + smooth)
    return loss.mean()


def ws_dice(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    smooth: float = 100.0,
    power: float = 2.0,
    v2: float = 0.85,
    v1: float = 0.15,
) -> Tensor:
    """Weighted soft Dice on 2p - 1 and 2t - 1, foreground weighted v2, background v1."""
    p, t = pred.reshape(pred.shape[0], -1), target.reshape(pred.shape[0], -1)
    w = t * (v2 - v1) + v1
    gp, g = w * (2 * p - 1), w * (2 * t - 1)
    loss = 1 - (2.0 * (gp * g).sum(-1) + smooth) / (
        (gp**power).sum(-1) + (g**power).sum(-1) + smooth
    )
    return loss.mean()


def weighted_mse(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Squared error summed over channels, averaged over batch and voxels (PyTC's norm)."""
    err = (pred - target) ** 2
    if weight is not None:
        err = err * weight
    return err.sum() / (pred.shape[0] * math.prod(pred.shape[2:]))


def weighted_mae(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Absolute error times the weight, mean over all elements (PyTC needs the weight)."""
    if weight is None:
        raise ValueError("WeightedMAE needs a pixel weight (WEIGHT_OPT '1' or a valid mask)")
    return ((pred - target).abs() * weight).mean()


def weighted_ce(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    class_weight: Sequence[float] | None = None,
) -> Tensor:
    """Cross-entropy over channels against int64 class indices (B, *S), times the weight."""
    classes = None
    if class_weight is not None:
        classes = torch.tensor(list(class_weight), dtype=pred.dtype, device=pred.device)
    loss = F.cross_entropy(pred, target.long(), weight=classes, reduction="none")
    if weight is not None:
        loss = loss * weight
    return loss.mean()


def label_smoothing_ce(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    classes: int = 10,
    cls_weights: Sequence[float] | None = None,
    smoothing: float = 0.2,
) -> Tensor:
    """PyTC's WeightedLS (not reachable from a config): CE against a smoothed one-hot."""
    log_prob = pred.log_softmax(dim=1)
    with torch.no_grad():
        true = torch.full_like(log_prob, smoothing / (classes - 1))
        true.scatter_(1, target.long().unsqueeze(1), 1.0 - smoothing)
    scale: Tensor | float = 1.0
    if cls_weights is not None:
        shape = (1, -1) + (1,) * (pred.ndim - 2)
        scale = torch.tensor(list(cls_weights), device=pred.device).view(shape)
    loss = torch.sum(-true * log_prob * scale, dim=1)
    if weight is not None:
        loss = loss * weight
    return loss.mean()


def _expand(weight: Tensor | None, like: Tensor) -> Tensor | None:
    # F.binary_cross_entropy wants the weight's full shape; a (B, 1, ...) map may broadcast.
    return None if weight is None else weight.expand_as(like)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "WeightedMSE": weighted_mse,
    "WeightedMAE": weighted_mae,
    "WeightedBCE": weighted_bce,
    "DiceLoss": dice_loss,
    "WeightedCE": weighted_ce,
    "WeightedBCEWithLogitsLoss": weighted_bce_with_logits,
    "WeightedBCEFocalLoss": bce_focal,
    "WSDiceLoss": ws_dice,
}
SUPPORTED_LOSSES = tuple(LOSSES)

# 'relu' / 'elu' are in place in PyTC: the result replaces the target's channels.
_IN_PLACE = ("relu", "elu")
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda x: x,
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: F.softmax(x, dim=1),
    "tanh": torch.tanh,
    "relu": F.relu,
    "elu": F.elu,
}
SUPPORTED_ACTIVATIONS = tuple(_ACTIVATIONS)


# --- the criterion ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LossTerm:
    """One configured loss: LOSS_OPTION[i][j] with its weight, activation and kwargs."""

    name: str
    fn: LossFn
    weight: float
    activation: str
    tag: str


@dataclass(frozen=True)
class TargetSpec:
    """One entry of TARGET_OPT and the losses applied to its channels."""

    opt: str
    channels: int
    terms: tuple[LossTerm, ...]
    classes: bool = False


@dataclass(frozen=True)
class ReguTerm:
    """One regulariser: REGU_OPT[k] on the targets REGU_TARGET[k], times REGU_WEIGHT[k]."""

    name: str
    fn: Regularizer
    targets: tuple[int, ...]
    weight: float
    tag: str


class Criterion:
    """`criterion(outputs, targets, weights) -> (total, components)`.

    outputs: (B, OUT_PLANES, *spatial) logits, or a mapping of such (DeepLab's 'out' /
    'aux': every key is scored and summed). targets[i]: (B, channels_i, *spatial), or
    (B, *spatial) class indices for '1-1' / '9-N'. weights[i][j]: the pixel weight of loss
    j of target i, or None. components maps each PyTC tag to its weighted value.
    """

    def __init__(
        self, targets: Sequence[TargetSpec], regularizers: Sequence[ReguTerm] = ()
    ) -> None:
        self.targets = tuple(targets)
        self.regularizers = tuple(regularizers)
        self.out_channels = sum(t.channels for t in self.targets)
        self.keys = [[term.tag for term in t.terms] for t in self.targets]

    def __call__(
        self,
        outputs: Outputs,
        targets: Sequence[Tensor],
        weights: Sequence[Sequence[Tensor | None]] | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        total, parts = self.compute(outputs, targets, weights)
        # One device-to-host copy for all components rather than one sync per loss.
        values = torch.stack(list(parts.values())).tolist() if parts else []
        return total, dict(zip(parts, values, strict=True))

    def compute(
        self,
        outputs: Outputs,
        targets: Sequence[Tensor],
        weights: Sequence[Sequence[Tensor | None]] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """As calling, but the components stay detached tensors on the device: no host
        sync, so a loop can convert them only on the iterations it logs."""
        if isinstance(outputs, Mapping):
            total: Tensor | None = None
            parts: dict[str, Tensor] = {}
            for key, value in outputs.items():
                part_total, part = self._evaluate(value, targets, weights, f"_{key}")
                total = part_total if total is None else total + part_total
                parts.update(part)
            if total is None:
                raise ValueError("the model returned no outputs")
            return total, parts
        return self._evaluate(outputs, targets, weights, "")

    def _evaluate(
        self,
        outputs: Tensor,
        targets: Sequence[Tensor],
        weights: Sequence[Sequence[Tensor | None]] | None,
        suffix: str,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        self._check_inputs(outputs, targets, weights)
        parts: dict[str, Tensor] = {}
        total = outputs.new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=outputs.device.type, enabled=False):
            split = list(torch.split(outputs.float(), [t.channels for t in self.targets], dim=1))
            for i, spec in enumerate(self.targets):
                target = targets[i].long() if spec.classes else targets[i].float()
                for j, term in enumerate(spec.terms):
                    activated = _ACTIVATIONS[term.activation](split[i])
                    if term.activation in _IN_PLACE:
                        split[i] = activated
                    pixel_weight = _pixel_weight(weights, i, j)
                    value = term.weight * term.fn(activated, target, pixel_weight)
                    total = total + value
                    parts[term.tag + suffix] = value.detach()
            for regu in self.regularizers:
                value = regu.weight * regu.fn(*(split[k] for k in regu.targets))
                total = total + value
                parts[regu.tag + suffix] = value.detach()
        return total, parts

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
    weights: Sequence[Sequence[Tensor | None]] | None, i: int, j: int
) -> Tensor | None:
    weight = None if weights is None else weights[i][j]
    return None if weight is None else weight.float()


# --- building from the resolved config -------------------------------------------------------


@dataclass(frozen=True)
class _Keys:
    """The per-target, per-loss keys read as PyTC reads them."""

    losses: list[list[Any]]
    acts: list[list[Any]]
    kwargs: list[list[dict[str, Any]]] = field(default_factory=list)


def _loss_kwargs(model: Config, losses: list[list[Any]]) -> list[list[dict[str, Any]]]:
    keys, vals = model.get("LOSS_KWARGS_KEY"), model.get("LOSS_KWARGS_VAL")
    if keys is None or vals is None:
        return [[{} for _ in row] for row in losses]
    return [
        [dict(zip(keys[i][j] or [], vals[i][j] or [], strict=True)) for j in range(len(row))]
        for i, row in enumerate(losses)
    ]


def _row(table: list[list[Any]], i: int, key: str, count: int) -> list[Any]:
    if i >= len(table):
        raise ValueError(f"MODEL.{key} has no entry for target {i}: give one list per target")
    row = table[i]
    if len(row) != count:
        raise ValueError(
            f"MODEL.{key}[{i}] has {len(row)} entries but MODEL.LOSS_OPTION[{i}] has {count}"
        )
    return row


def _target_spec(model: Config, keys: _Keys, i: int, target: TargetOption) -> TargetSpec:
    if i >= len(keys.losses):
        raise ValueError(f"MODEL.LOSS_OPTION has no entry for target {i} ({target.text!r})")
    names = [str(n) for n in keys.losses[i]]
    weights = _row(rows(model.get("LOSS_WEIGHT"), len(keys.losses)), i, "LOSS_WEIGHT", len(names))
    acts = _row(keys.acts, i, "OUTPUT_ACT", len(names))
    terms = []
    for j, name in enumerate(names):
        fn = partial(LOSSES[name], **keys.kwargs[i][j]) if keys.kwargs[i][j] else LOSSES[name]
        tag = f"{target.text}_{name}_{i}_{j}"
        terms.append(LossTerm(name, fn, float(weights[j]), str(acts[j]), tag))
    return TargetSpec(target.text, target.channels, tuple(terms), target.classes)


def _regularizers(model: Config, targets: list[TargetOption]) -> list[ReguTerm]:
    names = model.get("REGU_OPT") or []
    out = []
    for k, (name, pick, weight) in enumerate(
        zip(names, model.get("REGU_TARGET") or [], model.get("REGU_WEIGHT") or [], strict=True)
    ):
        indices = tuple(pick if isinstance(pick, list) else [pick])
        tag = "_".join([*(targets[t].text for t in indices), str(name), str(k)])
        out.append(ReguTerm(str(name), REGULARIZERS[str(name)], indices, float(weight), tag))
    return out


def _do_2d(cfg: Config) -> bool:
    return bool(cfg.get("DATASET", {}).get("DO_2D", False))


def build_criterion(cfg: Config) -> Criterion:
    """The criterion MODEL.TARGET_OPT / LOSS_OPTION / LOSS_WEIGHT / WEIGHT_OPT / OUTPUT_ACT /
    LOSS_KWARGS_* / REGU_* describe. Refuses (ValueError) every error of the constraint
    table validation reads, so a config that validates clean builds."""
    model = cfg["MODEL"]
    if not model.get("TARGET_OPT"):
        raise ValueError("MODEL.TARGET_OPT is empty: give at least one target")
    errors = [p for p in criterion_problems(cfg) if p.error]
    if errors:
        first = errors[0]
        hint = f"; {first.suggestion}" if first.suggestion else ""
        raise ValueError(f"{first.key} {first.message}{hint}")
    do_2d = _do_2d(cfg)
    targets = [parse_target(opt, do_2d) for opt in model["TARGET_OPT"]]
    losses = rows(model.get("LOSS_OPTION"), len(targets))
    keys = _Keys(
        losses=losses,
        acts=rows(model.get("OUTPUT_ACT"), len(targets)),
        kwargs=_loss_kwargs(model, losses) if len(losses) == len(targets) else [],
    )
    specs = [_target_spec(model, keys, i, t) for i, t in enumerate(targets)]
    return Criterion(specs, _regularizers(model, targets))


def _first_target(cfg: Config) -> TargetOption:
    return parse_target(cfg["MODEL"]["TARGET_OPT"][0], _do_2d(cfg))


def foreground(cfg: Config, outputs: Tensor) -> Tensor:
    """The first target's foreground probability, for validation Dice / IoU and the preview:
    its sigmoid for masks, 1 - P(class 0) for class targets ('1-1', '9-N'), (tanh + 1) / 2
    for distance transforms and flows (foreground where the distance is positive)."""
    target = _first_target(cfg)
    x = torch.split(outputs.float(), [target.channels, outputs.shape[1] - target.channels], 1)[0]
    if target.classes:
        return 1.0 - F.softmax(x, dim=1)[:, :1]
    if target.signed:
        return (torch.tanh(x) + 1.0) / 2.0
    return torch.sigmoid(x)


def foreground_truth(cfg: Config, target: Tensor) -> Tensor:
    """The first target as a 0 / 1 map shaped like `foreground`'s."""
    option = _first_target(cfg)
    if option.classes:
        return (target > 0).unsqueeze(1).float()
    if option.signed:
        return (target > 0).float()
    return target.float()


__all__ = [
    "Criterion",
    "build_criterion",
    "foreground",
    "foreground_truth",
    "gan_loss",
    "label_smoothing_ce",
]


def gan_loss(prediction: Tensor, target_is_real: bool, gan_mode: str = "lsgan") -> Tensor:
    """PyTC's GANLoss (not reachable from a config): 'lsgan' MSE or 'vanilla' BCE-with-logits
    against an all-real / all-fake label, 'wgangp' -/+ the mean prediction."""
    if gan_mode == "wgangp":
        return -prediction.mean() if target_is_real else prediction.mean()
    label = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
    if gan_mode == "lsgan":
        return F.mse_loss(prediction, label)
    if gan_mode == "vanilla":
        return F.binary_cross_entropy_with_logits(prediction, label)
    raise ValueError(f"GAN mode {gan_mode!r} is not lsgan, vanilla or wgangp")
