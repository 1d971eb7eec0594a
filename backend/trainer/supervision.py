"""What the data pipeline calls: the targets and weights of one label crop, as PyTC's
VolumeDataset makes them from the resolved config.

Per crop: ids renumbered 1..N (DATASET.REDUCE_LABEL, default on; off when a target
starts with '9', whose ids are classes), squeezed to (y, x) with DATASET.DO_2D, then
`seg_to_targets` with MODEL.LABEL_EROSION / LABEL_DILATION and, per target, one weight
per WEIGHT_OPT entry (the valid mask and the label crop passed along). numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.config.targets import rows
from backend.trainer.targets import Rates, reduce_label, seg_to_targets
from backend.trainer.weights import seg_to_weight

Config = Mapping[str, Any]
Weights = list[list[np.ndarray | None]]


@dataclass(frozen=True, slots=True)
class Supervision:
    """The keys of the resolved config that make targets and weights."""

    options: tuple[str, ...]
    weight_options: tuple[tuple[str, ...], ...]
    erosion: Rates
    dilation: Rates
    reduce: bool
    do_2d: bool

    @classmethod
    def from_config(cls, cfg: Config) -> Supervision:
        model, dataset = cfg.get("MODEL", {}), cfg.get("DATASET", {})
        options = tuple(str(o) for o in model.get("TARGET_OPT", ["0"]))
        weight_rows = rows(model.get("WEIGHT_OPT", [["1"]]), len(options))
        loss_rows = rows(model.get("LOSS_OPTION", [["WeightedBCE"]]), len(options))
        weights = []
        for i in range(len(options)):
            count = len(loss_rows[i]) if i < len(loss_rows) else 1
            row = weight_rows[i] if i < len(weight_rows) else ["0"]
            # A single weight option covers every loss of its target.
            weights.append(tuple(str(w) for w in (row * count if len(row) == 1 else row)))
        return cls(
            options=options,
            weight_options=tuple(weights),
            erosion=_rates(_first_set(model.get("LABEL_EROSION"), dataset.get("LABEL_EROSION"))),
            dilation=_rates(model.get("LABEL_DILATION")),
            reduce=bool(dataset.get("REDUCE_LABEL", True))
            and not any(o.startswith("9") for o in options),
            do_2d=bool(dataset.get("DO_2D", False)),
        )

    def __call__(
        self, label: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[list[np.ndarray], Weights]:
        """Targets (one per TARGET_OPT) and weights (one per loss) of a (z, y, x) crop;
        with DO_2D a (1, y, x) crop gives 2D targets, as PyTC squeezes it."""
        seg = reduce_label(label) if self.reduce else label
        if self.do_2d and seg.ndim == 3:
            seg = seg[0]
            mask = None if mask is None else mask[0]
        made = seg_to_targets(seg, self.options, self.erosion, self.dilation)
        targets: list[np.ndarray] = []
        for option, target in zip(self.options, made, strict=True):
            if target is None:
                raise ValueError(f"target {option!r} produced nothing (PyTC returns None)")
            targets.append(target)
        weights = [
            seg_to_weight(target, row, mask, seg)
            for target, row in zip(targets, self.weight_options, strict=True)
        ]
        return targets, weights


def _first_set(*values: Any) -> Any:
    # MODEL.LABEL_EROSION, else the older DATASET.LABEL_EROSION.
    return next((v for v in values if v is not None), None)


def _rates(value: Any) -> Rates:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [int(v) for v in value]
    return int(value)
