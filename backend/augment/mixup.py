"""PyTC v1.0.0's MixupAugmentor: blend some images of a batch with another one of it.

Not part of PyTC's training loop at v1.0.0 (no config key builds it); provided for parity
and tested against PyTC's output. Draws come from a Python `random.Random`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mixup:
    """`num_aug` images (distinct) each become ratio * itself + (1 - ratio) * another one,
    ratio uniform in [min_ratio, max_ratio]. A float `num_aug` is a fraction of the batch."""

    min_ratio: float = 0.7
    max_ratio: float = 0.9
    num_aug: int | float = 2

    def __call__(self, batch: np.ndarray, rng: random.Random) -> np.ndarray:
        count = batch.shape[0]
        chosen = int(self.num_aug) if isinstance(self.num_aug, int) else int(count * self.num_aug)
        indices = list(range(count))
        major = rng.sample(indices, chosen)
        minor = [rng.sample([i for i in indices if i != m], 1)[0] for m in major]
        out = np.array(batch)
        for m, n in zip(major, minor, strict=True):
            ratio = rng.uniform(self.min_ratio, self.max_ratio)
            out[m] = out[m] * ratio + out[n] * (1 - ratio)
        return out
