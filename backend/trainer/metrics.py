"""Validation metrics for binary predictions: Dice and IoU over a whole volume.

Counts (true positives, false positives, false negatives) accumulate over every tile
and only then become scores: a mean of per-tile scores would weight an almost empty
tile as much as a full one. The counts stay on the device until `dice`/`iou` read them,
so accumulating costs no host synchronisation per tile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

THRESHOLD = 0.5


@dataclass
class BinaryCounts:
    """Running TP/FP/FN counts of thresholded predictions against binary targets."""

    threshold: float = THRESHOLD
    _counts: Tensor | None = field(default=None, repr=False)

    def add(self, probabilities: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Count one tile. `probabilities` in [0, 1]; `target` > 0.5 is foreground; `mask`
        (optional, same shape, nonzero = counted) excludes padding."""
        pred = probabilities > self.threshold
        truth = target > 0.5
        if mask is not None:
            keep = mask.bool()
            pred, truth = pred & keep, truth & keep
        tp = (pred & truth).sum()
        fp = (pred & ~truth).sum()
        fn = (~pred & truth).sum()
        counts = torch.stack([tp, fp, fn]).to(torch.int64)
        self._counts = counts if self._counts is None else self._counts + counts

    @property
    def values(self) -> tuple[int, int, int]:
        if self._counts is None:
            return 0, 0, 0
        tp, fp, fn = (int(v) for v in self._counts.tolist())
        return tp, fp, fn

    @property
    def dice(self) -> float:
        return dice_score(*self.values)

    @property
    def iou(self) -> float:
        return iou_score(*self.values)


def dice_score(tp: int, fp: int, fn: int) -> float:
    """2TP / (2TP + FP + FN); 1.0 when prediction and target are both empty."""
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def iou_score(tp: int, fp: int, fn: int) -> float:
    """TP / (TP + FP + FN); 1.0 when prediction and target are both empty."""
    denominator = tp + fp + fn
    return 1.0 if denominator == 0 else tp / denominator
