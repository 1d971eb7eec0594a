"""What every augmentation shares: the sample, target kinds, random streams, sample growth.

A sample is a dict of (z, y, x) arrays: `image` (float32 in [0, 1]) plus additional targets,
each of kind `img` (intensity changes apply) or `mask` (labels: only geometric changes,
nearest-neighbour, ids preserved). An augmentation with `skip` leaves those names untouched.

Randomness follows PyTC v1.0.0: most draws come from the `numpy.random.RandomState` of the
sample; a few PyTC draws come from numpy's global RNG and Python's `random` module.
`Streams` carries all three as explicit objects, so a sample's outcome is a function of
its seeds alone (never of global state), and a PyTC draw sequence can be replayed exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

Kind = Literal["img", "mask"]
Sample = dict[str, np.ndarray]
IMAGE = "image"


@dataclass
class Streams:
    """The three random streams PyTC's augmentations draw from.

    `state` is the sample's RandomState (PyTC's `random_state`), `numpy_global` stands for
    `np.random.*` and `python` for Python's `random.*`.
    """

    state: np.random.RandomState
    numpy_global: np.random.RandomState
    python: random.Random

    @classmethod
    def seeded(cls, seed: int, global_seed: int | None = None) -> Streams:
        """`state` from `seed`; the global stand-ins from `global_seed` (default: `seed`)."""
        other = seed if global_seed is None else global_seed
        return cls(
            np.random.RandomState(seed % 2**32),
            np.random.RandomState(other % 2**32),
            random.Random(other),
        )

    @classmethod
    def from_generator(cls, rng: np.random.Generator) -> Streams:
        """Streams drawn from a numpy Generator: reproducible from the generator's state."""
        seeds = rng.integers(0, 2**32, size=3, dtype=np.uint64)
        return cls(
            np.random.RandomState(int(seeds[0])),
            np.random.RandomState(int(seeds[1])),
            random.Random(int(seeds[2])),
        )


@dataclass
class Augmentation:
    """One PyTC augmentation: probability `p`, targets it skips, and how it grows the sample.

    `ratio` / `add` are PyTC's `sample_params`: the sample cut before augmentation is
    `ceil(size * ratio) + 2 * add` per axis (z, y, x), so that nothing invalid is left
    after the final centre crop.
    """

    p: float = 0.5
    skip: tuple[str, ...] = ()
    kinds: Mapping[str, Kind] = field(default_factory=lambda: {"label": "mask"})

    name: ClassVar[str] = "Augmentation"
    touches: ClassVar[str] = "image + all targets"

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"{self.name}: P {self.p} must lie in [0, 1]")

    @property
    def ratio(self) -> tuple[float, float, float]:
        return (1.0, 1.0, 1.0)

    @property
    def add(self) -> tuple[int, int, int]:
        return (0, 0, 0)

    def targets(self, sample: Sample, kind: Kind | None = None) -> Iterator[tuple[str, Kind]]:
        """(name, kind) of the additional targets present and not skipped (`kind` filters)."""
        for key, target_kind in self.kinds.items():
            if key in sample and key not in self.skip and kind in (None, target_kind):
                yield key, target_kind

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        raise NotImplementedError
