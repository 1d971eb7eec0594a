"""Geometric augmentations applied identically to an image patch and its label patch.

Trainboard implements AUGMENTOR.FLIP and AUGMENTOR.ROTATE (the 90° kind), as PyTC does:

- FLIP (probability P): flip z, y and x each with probability 1/2, transpose y/x with
  probability 1/2 when the patch is square in yx, and with DO_ZTRANS also transpose
  z/x with probability 1/2 when the patch is as deep as it is wide (isotropic patches).
- ROTATE (probability P): rotate in the yx plane by k * 90°, k uniform in 0..3 (only 0
  or 2 when the patch is not square in yx, so its shape never changes). With ROT90
  False PyTC rotates by any angle; Trainboard still rotates by 90° steps.

Every random choice comes from the `numpy.random.Generator` passed in, so one generator
state gives one outcome: that is what makes sampling reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class AugmentConfig:
    """The parts of cfg["AUGMENTOR"] Trainboard applies."""

    flip: bool = True
    flip_p: float = 1.0
    flip_ztrans: bool = False
    rotate: bool = True
    rotate_p: float = 1.0

    @classmethod
    def from_config(cls, augmentor: Mapping[str, Any]) -> AugmentConfig:
        flip = _section(augmentor.get("FLIP", True))
        rotate = _section(augmentor.get("ROTATE", True))
        return cls(
            flip=bool(flip.get("ENABLED", True)),
            flip_p=float(flip.get("P", 1.0)),
            flip_ztrans=bool(int(flip.get("DO_ZTRANS", 0))),
            rotate=bool(rotate.get("ENABLED", True)),
            rotate_p=float(rotate.get("P", 1.0)),
        )


def _section(value: Any) -> Mapping[str, Any]:
    # Old configs write `FLIP: True`; the resolved config uses sections. Accept both.
    if isinstance(value, Mapping):
        return value
    return {"ENABLED": bool(value)}


@dataclass(frozen=True, slots=True)
class FlipRule:
    """Which flips/transposes one sample gets (PyTC's `rule`)."""

    z: bool = False
    y: bool = False
    x: bool = False
    transpose_yx: bool = False
    transpose_zx: bool = False


def draw_flip(rng: np.random.Generator, shape: tuple[int, int, int], ztrans: bool) -> FlipRule:
    """Draw a FlipRule for a (z, y, x) patch; transposes only where they keep the shape."""
    bits = rng.integers(0, 2, size=5)
    _, height, width = shape
    return FlipRule(
        z=bool(bits[0]),
        y=bool(bits[1]),
        x=bool(bits[2]),
        transpose_yx=bool(bits[3]) and height == width,
        transpose_zx=ztrans and bool(bits[4]) and shape[0] == width,
    )


def apply_flip(array: np.ndarray, rule: FlipRule) -> np.ndarray:
    """Apply `rule` to a (z, y, x) array (a view; copy before handing to torch)."""
    if rule.z:
        array = array[::-1, :, :]
    if rule.y:
        array = array[:, ::-1, :]
    if rule.x:
        array = array[:, :, ::-1]
    if rule.transpose_yx:
        array = array.transpose(0, 2, 1)
    if rule.transpose_zx:
        array = array.transpose(2, 1, 0)
    return array


def draw_rotation(rng: np.random.Generator, shape: tuple[int, int, int]) -> int:
    """Quarter turns k in 0..3; only 0 or 2 when yx is not square (shape must not change)."""
    k = int(rng.integers(0, 4))
    return k if shape[1] == shape[2] else k & 2


def apply_rotation(array: np.ndarray, k: int) -> np.ndarray:
    """Rotate a (z, y, x) array by k * 90° in the yx plane."""
    return np.rot90(array, k, axes=(1, 2))


def augment(
    image: np.ndarray,
    label: np.ndarray,
    config: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip then rotate image and label the same way; returns contiguous copies.

    Draws from `rng` in a fixed order whatever fires, so the stream after one sample
    never depends on which augmentations it got.
    """
    shape = (int(image.shape[0]), int(image.shape[1]), int(image.shape[2]))
    flip_fires = rng.random() < config.flip_p
    rule = draw_flip(rng, shape, config.flip_ztrans)
    rotate_fires = rng.random() < config.rotate_p
    k = draw_rotation(rng, shape)
    if config.flip and flip_fires:
        image, label = apply_flip(image, rule), apply_flip(label, rule)
    if config.rotate and rotate_fires:
        image, label = apply_rotation(image, k), apply_rotation(label, k)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
