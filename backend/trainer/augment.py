"""The trainer's use of PyTC's augmentor (`backend.augment`) on one training sample.

`Augmenter.from_config(cfg, patch)` holds the `Compose` the config describes and the
sample size it needs; `augmenter(image, label, rng)` turns a sample cut at `sample_size`
(image scaled to [0, 1], raw label ids) into an augmented patch of the model's input size.

Every random choice comes from the `numpy.random.Generator` passed in (PyTC's three
streams are seeded from it), so one generator state gives one outcome: sampling stays
reproducible whatever the number of DataLoader workers, and a resumed run gets the
same patches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from backend.augment import Compose, Streams, build_augmentor

Shape3 = tuple[int, int, int]

# One OpenCV thread per process: a data worker is one core's worth of work, and OpenCV's
# own thread pool would only compete with the model and the other workers.
cv2.setNumThreads(1)


@dataclass(frozen=True)
class Augmenter:
    """PyTC's augmentor for patches of `patch` (None when AUGMENTOR.ENABLED is off)."""

    compose: Compose | None
    patch: Shape3

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], patch: Shape3) -> Augmenter:
        return cls(build_augmentor(cfg, patch), patch)

    @property
    def sample_size(self) -> Shape3:
        """What to cut from the volume: larger than the patch where augmentations need it."""
        return self.compose.sample_size if self.compose is not None else self.patch

    @property
    def names(self) -> list[str]:
        return self.compose.names if self.compose is not None else []

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray,
        rng: np.random.Generator,
        mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Augmented (image, label, valid mask) of the patch size, contiguous copies. The
        valid mask moves with the label (PyTC's `valid_mask` target, a `mask`)."""
        if self.compose is None:
            kept = None if mask is None else np.ascontiguousarray(mask)
            return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(label), kept
        sample = {"image": image, "label": label}
        if mask is not None:
            sample["valid_mask"] = mask
        out = self.compose(sample, Streams.from_generator(rng))
        return out["image"], out["label"], out.get("valid_mask")
