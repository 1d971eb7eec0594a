"""PyTC v1.0.0's data augmentations, torch-free (the server renders previews with them).

`build_augmentor(cfg)` gives the `Compose` a config describes; `Streams` carries the random
streams a sample draws from. The trainer runs it in its DataLoader workers; the server and
`trainboard augment-preview` run it to show what augmentation does (`preview.py`).
"""

from backend.augment.base import IMAGE, Augmentation, Kind, Sample, Streams
from backend.augment.compose import (
    BUILD_ORDER,
    NOT_APPLIED,
    Applied,
    Compose,
    build_augmentor,
    target_kinds,
)
from backend.augment.geometry import Elastic, Flip, MisAlignment, MissingSection, Rescale, Rotate
from backend.augment.intensity import CutBlur, CutNoise, Grayscale, MissingParts, MotionBlur
from backend.augment.mixup import Mixup

__all__ = [
    "BUILD_ORDER",
    "IMAGE",
    "NOT_APPLIED",
    "Applied",
    "Augmentation",
    "Compose",
    "CutBlur",
    "CutNoise",
    "Elastic",
    "Flip",
    "Grayscale",
    "Kind",
    "MisAlignment",
    "MissingParts",
    "MissingSection",
    "Mixup",
    "MotionBlur",
    "Rescale",
    "Rotate",
    "Sample",
    "Streams",
    "build_augmentor",
    "target_kinds",
]
