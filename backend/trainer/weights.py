"""Pixel weights of the losses (MODEL.WEIGHT_OPT), exactly as PyTorch Connectomics v1.0.0.

`seg_to_weight(target, options, mask, seg)` returns one weight (or None) per option of a
target: '1' class balance, '1-1' class balance on the in-plane dilated foreground,
'2-w0-w1' the U-Net border weight of the label `seg`, anything else the valid mask (None
without one). PyTC's "no weight" placeholder (a (1,) array) is None here. numpy and scipy
only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from backend.config.targets import unet_weights, weight_kind

# The foreground share is clipped to [MIN_RATIO, 1 - MIN_RATIO] before balancing.
MIN_RATIO = 0.05
# U-Net weight: width of the border term, exp(-(d1 + d2)^2 / (2 SIGMA^2)).
SIGMA = 5.0


def balance(target: np.ndarray, mask: np.ndarray | None = None, dilate: bool = False) -> np.ndarray:
    """Class balance: the rarer of target != 0 / target == 0 (share within the mask, clipped)
    gets max(ww, 1-ww) / min(ww, 1-ww), the other 1; a uniform target gets the mask or 1.
    `dilate` ('1-1') weights the foreground dilated by a 3x3 in-plane box, after the share
    is taken. Multiplied by the mask."""
    if target.max() == target.min():
        if mask is not None:
            return _as_weight(mask)
        return np.ones(target.shape, np.float32)
    fg = (target != 0).astype(np.float64)
    if mask is not None:
        valid = mask.astype(np.float64)[np.newaxis]
        share = float((fg * valid).sum() / valid.sum())
    else:
        share = float(fg.mean())
    share = min(max(share, MIN_RATIO), 1.0 - MIN_RATIO)
    factor = max(share, 1.0 - share) / min(share, 1.0 - share)
    if dilate:
        if fg.ndim not in (3, 4):
            raise ValueError("WEIGHT_OPT '1-1' needs a target with a channel axis")
        box = np.ones([1] * (fg.ndim - 2) + [3, 3], bool)
        fg = ndimage.binary_dilation(fg != 0, box).astype(np.float64)
    rare = 1.0 - fg if share > 1.0 - share else fg
    weight = factor * rare + (1.0 - rare)
    if mask is not None:
        weight = weight * valid
    result: np.ndarray = weight.astype(np.float32)
    return result


def unet_border(seg: np.ndarray, w0: float, w1: float) -> np.ndarray:
    """(1, z, y, x): per slice with two or more instances, w0 exp(-(d1 + d2)^2 / 2 sigma^2)
    on background (d1, d2: distances to the two nearest instances) and w1 on foreground,
    clipped to [1, max(w0, w1)]; one instance: w1 on it; no foreground: 1."""
    if seg.ndim != 3:
        raise ValueError("WEIGHT_OPT '2-w0-w1' needs 3D labels (PyTC fails with DO_2D)")
    out = np.ones(seg.shape, np.float32)
    for z in np.nonzero((seg > 0).any(axis=(1, 2)))[0]:
        out[z] = _unet_slice(seg[z], w0, w1)
    return out[np.newaxis]


def _unet_slice(plane: np.ndarray, w0: float, w1: float) -> np.ndarray:
    ids = np.unique(plane)
    ids = ids[ids > 0]
    high = max(w0, w1)
    if ids.size < 2:
        single: np.ndarray = np.clip((plane != 0).astype(np.float32) * w1, 1.0, high)
        return single
    distances = np.stack([ndimage.distance_transform_edt(plane != i) for i in ids])
    nearest = np.partition(distances, 1, axis=0)
    fg = (plane != 0).astype(np.float32)
    weight = w0 * np.exp(-((nearest[0] + nearest[1]) ** 2) / (2 * SIGMA**2)) * (1 - fg)
    weight = weight + fg * w1
    clipped: np.ndarray = np.clip(weight, 1.0, high)
    return clipped


def _as_weight(mask: np.ndarray) -> np.ndarray:
    """The valid mask as a (1, ...) float32 weight."""
    result: np.ndarray = (mask != 0).astype(np.float32)[np.newaxis]
    return result


def make_weight(
    target: np.ndarray,
    option: str,
    mask: np.ndarray | None = None,
    seg: np.ndarray | None = None,
) -> np.ndarray | None:
    """The weight of one WEIGHT_OPT entry for one sample's target (None: no weight)."""
    kind = weight_kind(option)
    if kind.startswith("ratio"):
        return balance(target, mask, dilate=kind == "ratio-dilated")
    if kind == "unet":
        if seg is None:
            raise ValueError("WEIGHT_OPT '2-w0-w1' needs the label crop")
        return unet_border(seg, *unet_weights(option))
    return None if mask is None else _as_weight(mask)


def seg_to_weight(
    target: np.ndarray,
    options: Sequence[str],
    mask: np.ndarray | None = None,
    seg: np.ndarray | None = None,
) -> list[np.ndarray | None]:
    """One weight per WEIGHT_OPT entry of a target."""
    return [make_weight(target, str(o), mask, seg) for o in options]
