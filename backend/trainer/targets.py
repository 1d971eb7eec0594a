"""Training targets and pixel weights made from label patches, as PyTorch Connectomics does.

Labels are (z, y, x) instance ids (0 = background). Each MODEL.TARGET_OPT entry becomes a
float32 array (C, z, y, x); in 2D training the caller squeezes z away.

- '0'      binary foreground: label > 0 (1 channel).
- '2'      affinity to the previous voxel along each axis: 1 where both voxels belong to
           the same non-zero instance (3 channels z, y, x; 2 channels y, x in 2D). The
           first voxel along an axis has no neighbour in the patch and gets 0.
- '4-S-B'  instance boundary, per z slice (1 channel): a pixel is boundary when its
           (2S+1)^2 window holds two different ids; with B = 1 (the default) a
           foreground/background edge counts, with B = 0 only edges between two
           instances. '4' means '4-1-1'.

WEIGHT_OPT per loss: '0' no weight (None), '1' PyTC's class-balance weight: the rarer of
foreground/background (ratio clipped to [0.05, 0.95]) is weighted by the majority/minority
ratio, the other class by 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_MIN_RATIO = 0.05


class TargetError(ValueError):
    """A TARGET_OPT or WEIGHT_OPT this module does not make."""


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One parsed TARGET_OPT entry."""

    kind: str  # "binary", "affinity" or "boundary"
    boundary_size: int = 1
    boundary_background: bool = True

    def channels(self, do_2d: bool) -> int:
        if self.kind == "affinity":
            return 2 if do_2d else 3
        return 1


def parse_target(option: str) -> TargetSpec:
    """Parse '0', '2', '4' or '4-S-B' into a TargetSpec."""
    parts = str(option).strip().split("-")
    head = parts[0]
    if head == "0" and len(parts) == 1:
        return TargetSpec("binary")
    if head == "2" and len(parts) == 1:
        return TargetSpec("affinity")
    if head == "4" and len(parts) <= 3:
        try:
            numbers = [int(p) for p in parts[1:]]
        except ValueError:
            numbers = [-1]
        size = numbers[0] if numbers else 1
        background = numbers[1] if len(numbers) > 1 else 1
        if size >= 1 and background in (0, 1):
            return TargetSpec("boundary", size, bool(background))
    raise TargetError(
        f"TARGET_OPT '{option}' is not supported; use '0' (binary), '2' (affinity) "
        "or '4' / '4-S-B' (instance boundary, S >= 1, B 0 or 1)"
    )


def binary_target(label: np.ndarray) -> np.ndarray:
    """(1, z, y, x) foreground mask."""
    return (np.asarray(label) > 0).astype(np.float32)[np.newaxis]


def affinity_target(label: np.ndarray, do_2d: bool = False) -> np.ndarray:
    """Affinities to the previous voxel along z, y, x (only y, x when `do_2d`)."""
    seg = np.asarray(label)
    axes = (1, 2) if do_2d else (0, 1, 2)
    out = np.zeros((len(axes), *seg.shape), dtype=np.float32)
    for channel, axis in enumerate(axes):
        here = [slice(None)] * 3
        before = [slice(None)] * 3
        here[axis] = slice(1, None)
        before[axis] = slice(None, -1)
        current, previous = seg[tuple(here)], seg[tuple(before)]
        out[channel][tuple(here)] = (current == previous) & (current > 0)
    return out


def boundary_target(label: np.ndarray, size: int = 1, background: bool = True) -> np.ndarray:
    """(1, z, y, x) instance boundaries, each z slice on its own (EM is anisotropic)."""
    seg = np.asarray(label).astype(np.int64)
    window = (1, 2 * size + 1, 2 * size + 1)
    # 'mirror' is numpy's 'reflect' padding, which PyTC uses at the patch border.
    high = ndimage.maximum_filter(seg, size=window, mode="mirror")
    if background:
        low = ndimage.minimum_filter(seg, size=window, mode="mirror")
        edge = (high > 0) & (high != low)
    else:
        # Background must not count as a neighbour: lift it above every id first.
        lifted = np.where(seg == 0, np.iinfo(np.int64).max, seg)
        low = ndimage.minimum_filter(lifted, size=window, mode="mirror")
        edge = (high > 0) & (low != np.iinfo(np.int64).max) & (high != low)
    result: np.ndarray = edge.astype(np.float32)[np.newaxis]
    return result


def make_target(label: np.ndarray, spec: TargetSpec, do_2d: bool = False) -> np.ndarray:
    """The (C, z, y, x) target of one label patch."""
    if spec.kind == "binary":
        return binary_target(label)
    if spec.kind == "affinity":
        return affinity_target(label, do_2d)
    return boundary_target(label, spec.boundary_size, spec.boundary_background)


def make_targets(
    label: np.ndarray, options: Sequence[str], do_2d: bool = False
) -> list[np.ndarray]:
    """One target per TARGET_OPT entry, in order."""
    return [make_target(label, parse_target(option), do_2d) for option in options]


def class_balance_weight(target: np.ndarray) -> np.ndarray:
    """PyTC's `weight_binary_ratio`: up-weight the rarer class of a (binary) target."""
    foreground = np.asarray(target) != 0
    ratio = float(np.count_nonzero(foreground)) / max(foreground.size, 1)
    ratio = min(max(ratio, _MIN_RATIO), 1.0 - _MIN_RATIO)
    factor = max(ratio, 1.0 - ratio) / min(ratio, 1.0 - ratio)
    weight = np.ones(foreground.shape, dtype=np.float32)
    # Mostly foreground (affinities): weight background up; else (masks, boundaries) foreground.
    if ratio > 0.5:
        weight[~foreground] = factor
    else:
        weight[foreground] = factor
    return weight


def make_weight(target: np.ndarray, option: str) -> np.ndarray | None:
    """The pixel weight of one loss: None for '0', class balance for '1'."""
    if str(option) == "0":
        return None
    if str(option) == "1":
        return class_balance_weight(target)
    raise TargetError(f"WEIGHT_OPT '{option}' is not supported; use '0' (none) or '1' (balance)")


def make_weights(
    targets: Sequence[np.ndarray], options: Sequence[Sequence[str]]
) -> list[list[np.ndarray | None]]:
    """WEIGHT_OPT[i][j] applied to target i: one weight (or None) per loss of each target."""
    if len(options) != len(targets):
        raise TargetError(
            f"WEIGHT_OPT has {len(options)} entries but TARGET_OPT {len(targets)}; "
            "give one list of weight options per target"
        )
    return [
        [make_weight(target, option) for option in per_target]
        for target, per_target in zip(targets, options, strict=True)
    ]
