"""Training data from the resolved config: volumes, random patches, batches, validation tiles.

The API the training loop uses::

    data = load_training_data(cfg)                     # TrainingData: train + val volumes
    sampler = PatchSampler(cfg, data, seed=run_seed)   # random patches, reproducible
    batch = make_batch(cfg, sampler, iteration)        # Batch(iteration, image, targets, weights)
    for batch in make_loader(cfg, data, seed=run_seed, start_iteration=it, stop_iteration=n):
        ...                                            # the same batches, NUM_CPUS workers
    for val in validation_batches(cfg, data):          # ValBatch: tiles covering val volumes
        ...

Reproducibility: the patches of iteration i come from a generator seeded with
(seed, i) alone, so batch i is the same whether the run started at 0 or resumed at i,
and whatever the number of workers.

Shapes: `Batch.image` is (B, IN_PLANES, z, y, x), or (B, IN_PLANES, y, x) with DO_2D;
`Batch.targets[i]` is (B, channels_i, *spatial) for MODEL.TARGET_OPT[i];
`Batch.weights[i][j]` is the pixel weight (same shape as targets[i]) of loss j of target
i, or None when WEIGHT_OPT[i][j] is '0'. That is what `losses.Criterion` takes.

Volumes: DATASET.IMAGE_NAME / LABEL_NAME (`@`-joined for several) under INPUT_PATH. The
validation volumes are VAL_IMAGE_NAME / VAL_LABEL_NAME; without them the last
HELD_OUT_FRACTION of every training volume's slices is held out (never sampled for
training). Padding (PAD_SIZE, PAD_MODE) is virtual: a patch reaching past the edge reads
mirrored indices, so a memory-mapped `.npy` is never copied, only the patches are.
Images are scaled to [0, 1] (uint8 / 255, anything else min-max per volume), then
(x - MEAN) / STD.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from backend.config.holdout import HELD_OUT_FRACTION, held_out_slices
from backend.config.schema import PAD_MODES
from backend.trainer.augment import Augmenter
from backend.trainer.supervision import Supervision
from backend.volumes import VolumeError, read_volume, resolve_volume_paths

Config = Mapping[str, Any]
Shape3 = tuple[int, int, int]

# Rejection sampling gives up after this many draws and keeps the last patch, so a
# volume with almost no foreground cannot stall training.
MAX_REJECTIONS = 100


class DataError(ValueError):
    """The configured data cannot be used; the message says what to change."""


# ----------------------------------------------------------------------------- config


def _section(cfg: Config, name: str) -> Mapping[str, Any]:
    value = cfg.get(name, {})
    return value if isinstance(value, Mapping) else {}


def _do_2d(cfg: Config) -> bool:
    return bool(_section(cfg, "DATASET").get("DO_2D", False))


def patch_size(cfg: Config) -> Shape3:
    """MODEL.INPUT_SIZE as (z, y, x); z is 1 in 2D training."""
    size = [int(s) for s in _section(cfg, "MODEL").get("INPUT_SIZE", (8, 256, 256))]
    if len(size) == 2:
        size.insert(0, 1)
    if len(size) != 3 or min(size) < 1:
        raise DataError(f"MODEL.INPUT_SIZE {size} must be three positive sizes (z, y, x)")
    if _do_2d(cfg):
        size[0] = 1
    return size[0], size[1], size[2]


def _pad_size(cfg: Config) -> Shape3:
    pad = [int(p) for p in _section(cfg, "DATASET").get("PAD_SIZE", (2, 64, 64))]
    if len(pad) == 2:
        pad.insert(0, 0)
    if len(pad) != 3 or min(pad) < 0:
        raise DataError(f"DATASET.PAD_SIZE {pad} must be three sizes >= 0 (z, y, x)")
    if _do_2d(cfg):
        pad[0] = 0  # 2D patches are single slices: padding z would only repeat slices
    return pad[0], pad[1], pad[2]


def _pad_mode(cfg: Config) -> str:
    mode = str(_section(cfg, "DATASET").get("PAD_MODE", "reflect"))
    if mode not in PAD_MODES:
        raise DataError(f"DATASET.PAD_MODE '{mode}' is not one of {', '.join(PAD_MODES)}")
    return mode


# ----------------------------------------------------------------------------- volumes


@dataclass(frozen=True, slots=True)
class Normalization:
    """raw -> (raw - low) / (high - low) -> (x - mean) / std, as float32."""

    low: float
    high: float
    mean: float = 0.5
    std: float = 0.5

    @classmethod
    def of(cls, image: np.ndarray, mean: float, std: float) -> Normalization:
        if image.dtype == np.uint8:
            return cls(0.0, 255.0, mean, std)
        # One streaming pass; for a memmap this reads the file, it does not copy it.
        low, high = float(np.min(image)), float(np.max(image))
        return cls(low, high if high > low else low + 1.0, mean, std)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return self.standardize(self.scale(raw))

    def scale(self, raw: np.ndarray) -> np.ndarray:
        """raw -> [0, 1]: what the augmentations take."""
        return (raw.astype(np.float32) - np.float32(self.low)) / np.float32(self.high - self.low)

    def standardize(self, scaled: np.ndarray) -> np.ndarray:
        """[0, 1] -> (x - MEAN) / STD: what the model takes."""
        return (scaled - np.float32(self.mean)) / np.float32(self.std)


@dataclass
class VolumePair:
    """An image volume, its label volume (both (z, y, x), raw) and how to normalise it.

    `image` / `label` may be read-only memmaps (from `.npy`). `source` remembers where a
    memmap came from, so pickling (DataLoader workers under spawn) reopens the file
    instead of copying the volume.
    """

    image: np.ndarray
    label: np.ndarray
    name: str
    normalization: Normalization
    source: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    mask: np.ndarray | None = None  # DATASET.VALID_MASK_NAME: where the label is annotated

    @property
    def shape(self) -> Shape3:
        z, y, x = self.image.shape
        return int(z), int(y), int(x)

    def z_range(self, start: int, stop: int, name: str) -> VolumePair:
        """Slices start:stop as a new pair (views: nothing is copied)."""
        source = {k: (path, z0 + start, z0 + stop) for k, (path, z0, _) in self.source.items()}
        mask = None if self.mask is None else self.mask[start:stop]
        return VolumePair(
            self.image[start:stop],
            self.label[start:stop],
            name,
            self.normalization,
            source,
            mask,
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in self.source:
            state[key] = None  # reopened from the file in __setstate__
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for key, (path, start, stop) in self.source.items():
            setattr(self, key, read_volume(Path(path))[start:stop])


@dataclass
class TrainingData:
    """Training and validation volume pairs; `held_out` when val was cut from train."""

    train: list[VolumePair]
    val: list[VolumePair]
    held_out: bool = False

    def describe(self) -> str:
        def shapes(pairs: list[VolumePair]) -> str:
            return ", ".join(f"{p.name} {'x'.join(map(str, p.shape))}" for p in pairs)

        origin = "held out from training" if self.held_out else "validation volumes"
        return f"train: {shapes(self.train)}; val ({origin}): {shapes(self.val)}"


def _read(path: Path, what: str) -> tuple[np.ndarray, tuple[str, int, int] | None]:
    try:
        array = read_volume(path)
    except VolumeError as exc:
        raise DataError(f"{what}: {exc}") from exc
    source = (str(path), 0, int(array.shape[0])) if isinstance(array, np.memmap) else None
    return array, source


def _label_dtype_ok(label: np.ndarray) -> bool:
    return bool(np.issubdtype(label.dtype, np.integer) or label.dtype == np.bool_) or bool(
        np.issubdtype(label.dtype, np.floating)
    )


def _load_pairs(
    cfg: Config,
    image_key: str,
    label_key: str,
    mean: float,
    std: float,
    mask_key: str | None = None,
) -> list[VolumePair]:
    dataset = _section(cfg, "DATASET")
    root = dataset.get("INPUT_PATH", ".")
    names = dataset.get(image_key)
    label_names = dataset.get(label_key)
    if not names:
        raise DataError(f"DATASET.{image_key} is not set: name the image volume(s)")
    if not label_names:
        raise DataError(f"DATASET.{label_key} is not set: training needs label volume(s)")
    images = resolve_volume_paths(root, names)
    labels = resolve_volume_paths(root, label_names)
    if len(images) != len(labels):
        raise DataError(
            f"DATASET.{image_key} names {len(images)} volume(s) but {label_key} names "
            f"{len(labels)}: give one label volume per image volume, joined with '@'"
        )
    mask_names = dataset.get(mask_key) if mask_key else None
    masks: list[Path | None] = [None] * len(images)
    if mask_names:
        masks = list(resolve_volume_paths(root, mask_names))
        if len(masks) != len(images):
            raise DataError(
                f"DATASET.{mask_key} names {len(masks)} volume(s) for {len(images)} image "
                "volume(s): give one valid mask per image volume, joined with '@'"
            )
    pairs = []
    for image_path, label_path, mask_path in zip(images, labels, masks, strict=True):
        image, image_src = _read(image_path, f"DATASET.{image_key}")
        label, label_src = _read(label_path, f"DATASET.{label_key}")
        if image.shape != label.shape:
            raise DataError(
                f"image {image_path.name} is {image.shape} but label {label_path.name} is "
                f"{label.shape} (z, y, x): every label must match its image voxel for voxel"
            )
        if not _label_dtype_ok(label):
            raise DataError(f"label {label_path.name} has dtype {label.dtype}; save integer ids")
        mask, mask_src = None, None
        if mask_path is not None:
            mask, mask_src = _read(mask_path, f"DATASET.{mask_key}")
            if mask.shape != image.shape:
                raise DataError(
                    f"valid mask {mask_path.name} is {mask.shape} but image {image_path.name} "
                    f"is {image.shape} (z, y, x): the mask must match its image"
                )
        found = (("image", image_src), ("label", label_src), ("mask", mask_src))
        source = {k: v for k, v in found if v is not None}
        norm = Normalization.of(image, mean, std)
        pairs.append(VolumePair(image, label, image_path.name, norm, source, mask))
    return pairs


def hold_out(
    pair: VolumePair, fraction: float = HELD_OUT_FRACTION
) -> tuple[VolumePair, VolumePair]:
    """Split a pair into (train, val): the last `fraction` of z slices (at least one)."""
    depth = pair.shape[0]
    if depth < 2:
        raise DataError(
            f"{pair.name} has a single slice, nothing to hold out for validation: "
            "set DATASET.VAL_IMAGE_NAME and VAL_LABEL_NAME"
        )
    split = held_out_slices(depth, fraction).start
    train = pair.z_range(0, split, pair.name)
    val = pair.z_range(split, depth, f"{pair.name}[{split}:{depth}]")
    return train, val


def load_training_data(cfg: Config, shard: tuple[int, int] = (0, 1)) -> TrainingData:
    """Read the training volumes and the validation volumes (or hold some slices out).

    A DDP rank passes `shard` (rank, ranks): with DATASET.DISTRIBUTED it trains on its
    share of the training volumes only (`distribute_volumes`, as PyTC); validation
    volumes stay whole on every rank (the ranks split the tiles instead)."""
    dataset = _section(cfg, "DATASET")
    mean, std = float(dataset.get("MEAN", 0.5)), float(dataset.get("STD", 0.5))
    if std <= 0:
        raise DataError(f"DATASET.STD must be > 0, got {std}")
    train = _load_pairs(cfg, "IMAGE_NAME", "LABEL_NAME", mean, std, "VALID_MASK_NAME")
    if dataset.get("VAL_IMAGE_NAME"):
        val = _load_pairs(cfg, "VAL_IMAGE_NAME", "VAL_LABEL_NAME", mean, std)
        return TrainingData(_distributed(cfg, train, shard), val, held_out=False)
    splits = [hold_out(pair) for pair in train]
    own = _distributed(cfg, [s[0] for s in splits], shard)
    return TrainingData(own, [s[1] for s in splits], held_out=True)


def _distributed(cfg: Config, train: list[VolumePair], shard: tuple[int, int]) -> list[VolumePair]:
    rank, ranks = shard
    if ranks <= 1 or not _section(cfg, "DATASET").get("DISTRIBUTED", False):
        return train
    return distribute_volumes(train, rank, ranks)


def distribute_volumes(items: Sequence[Any], rank: int, ranks: int) -> list[Any]:
    """PyTC's `_distribute_data`: ceil(n / ranks) items per rank, the list repeated
    cyclically so that every rank gets as many (3 volumes on 2 ranks: [0, 1], [2, 0])."""
    per = math.ceil(len(items) / ranks)
    extended = [items[i % len(items)] for i in range(ranks * per)]
    return extended[rank * per : (rank + 1) * per]


# ----------------------------------------------------------------------------- cropping


def _axis_index(start: int, size: int, n: int, mode: str) -> tuple[slice | np.ndarray, bool]:
    """Indices along one axis for [start, start + size) of a length-n axis, padded by `mode`.

    Returns (slice when fully inside else an index array, whether any index was outside).
    """
    if start >= 0 and start + size <= n:
        return slice(start, start + size), False
    idx = np.arange(start, start + size)
    if mode == "reflect":  # mirror without repeating the edge: ... 2 1 | 0 1 2 ... n-1 | n-2
        period = max(2 * n - 2, 1)
        idx = np.mod(idx, period)
        idx = np.where(idx >= n, period - idx, idx)
    elif mode == "symmetric":  # mirror repeating the edge: ... 1 0 | 0 1 ... n-1 | n-1
        idx = np.mod(idx, 2 * n)
        idx = np.where(idx >= n, 2 * n - 1 - idx, idx)
    elif mode == "wrap":  # periodic: ... n-1 | 0 1 ... n-1 | 0 ...
        idx = np.mod(idx, n)
    elif mode == "edge":  # repeat the edge value
        idx = np.clip(idx, 0, n - 1)
    else:  # constant: any in-range index; the caller zeroes what lay outside
        idx = np.clip(idx, 0, n - 1)
    return idx, True


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], mode: str) -> np.ndarray:
    """A (z, y, x) block at `start` (may be negative or past the end) as if `array` were
    padded with `mode` ('constant' pads with 0). Reads only the block; returns a copy."""
    indices = []
    outside = []
    for s, n, length in zip(start, size, array.shape, strict=True):
        index, out = _axis_index(int(s), int(n), int(length), mode)
        indices.append(index)
        outside.append(out)
    if not any(outside):
        return np.array(array[tuple(indices)])
    grids = [np.arange(i.start, i.stop) if isinstance(i, slice) else i for i in indices]
    block = np.array(array[np.ix_(*grids)])
    if mode == "constant":
        for axis, (s, n, length) in enumerate(zip(start, size, array.shape, strict=True)):
            positions = np.arange(int(s), int(s) + int(n))
            bad = (positions < 0) | (positions >= length)
            if bad.any():
                where: list[slice | np.ndarray] = [slice(None)] * 3
                where[axis] = bad
                block[tuple(where)] = 0
    return block


# ----------------------------------------------------------------------------- sampling


@dataclass(frozen=True, slots=True)
class Patch:
    """One training sample: normalised image (z, y, x) float32 and label (z, y, x) int64."""

    image: np.ndarray
    label: np.ndarray
    volume: int
    position: Shape3  # origin in the unpadded volume's coordinates (negative in the pad)
    mask: np.ndarray | None = None  # the valid mask (1 annotated), when the volume has one


def _as_ids(label: np.ndarray) -> np.ndarray:
    if np.issubdtype(label.dtype, np.floating):
        ids: np.ndarray = np.rint(label).astype(np.int64)
        return ids
    return label.astype(np.int64)


def iteration_rng(seed: int, iteration: int) -> np.random.Generator:
    """The generator of one iteration: a function of (seed, iteration) only."""
    return np.random.default_rng([seed % 2**64, iteration % 2**64])


class PatchSampler:
    """Random training patches of MODEL.INPUT_SIZE from the training volumes.

    A volume is picked with probability proportional to its number of sample positions
    (padding included), then a position uniformly. The sample is cut at the augmentor's
    `sample_size` (larger than the patch where augmentations need room), scaled to
    [0, 1], augmented by PyTC's augmentor (which crops it to the patch) and standardised.
    With REJECT_SAMPLING.SIZE_THRES > 0 a patch with fewer foreground voxels (after
    augmentation) is redrawn with probability P. Iterating yields `make_batch` for
    start_iteration, start_iteration + 1, ... forever.
    """

    def __init__(
        self,
        cfg: Config,
        data: TrainingData,
        seed: int = 0,
        start_iteration: int = 0,
        streams: int = 1,
    ) -> None:
        if not data.train:
            raise DataError("no training volumes: set DATASET.IMAGE_NAME and LABEL_NAME")
        self.cfg = cfg
        self.data = data
        self.seed = int(seed)
        self.start_iteration = int(start_iteration)
        self.size = patch_size(cfg)
        self.pad = _pad_size(cfg)
        self.mode = _pad_mode(cfg)
        self.do_2d = _do_2d(cfg)
        self.augmenter = Augmenter.from_config(cfg, self.size)
        self.sample_size = self.augmenter.sample_size
        reject = _section(_section(cfg, "DATASET"), "REJECT_SAMPLING")
        self.reject_threshold = int(reject.get("SIZE_THRES", -1))
        self.reject_diversity = int(reject.get("DIVERSITY", -1))
        self.reject_p = float(reject.get("P", 0.95))
        self.valid_ratio = float(_section(cfg, "DATASET").get("VALID_RATIO", 0.5))
        self.batch_size = int(_section(cfg, "SOLVER").get("SAMPLES_PER_BATCH", 2))
        self.streams = max(1, int(streams))
        if self.batch_size % self.streams:
            raise DataError(
                f"SOLVER.SAMPLES_PER_BATCH {self.batch_size} cannot be split into "
                f"{self.streams} rank streams: use a multiple of {self.streams}"
            )
        counts = [self._positions(pair.shape) for pair in data.train]
        self.volume_p = np.array(counts, dtype=np.float64) / float(sum(counts))

    def _positions(self, shape: Shape3) -> int:
        return math.prod(
            max(1, n + 2 * p - s + 1)
            for n, p, s in zip(shape, self.pad, self.sample_size, strict=True)
        )

    def _origin(self, rng: np.random.Generator, shape: Shape3) -> Shape3:
        origin = []
        for n, p, s in zip(shape, self.pad, self.sample_size, strict=True):
            span = n + 2 * p - s
            # A volume smaller than the patch even when padded: centre it, pad the rest.
            offset = int(rng.integers(0, span + 1)) if span >= 0 else span // 2
            origin.append(offset - p)
        return origin[0], origin[1], origin[2]

    def _position(self, rng: np.random.Generator) -> tuple[int, Shape3, np.ndarray]:
        """A random volume and sample origin, and the sample's label."""
        index = int(rng.choice(len(self.data.train), p=self.volume_p))
        origin = self._origin(rng, self.data.train[index].shape)
        label = crop(self.data.train[index].label, origin, self.sample_size, self.mode)
        return index, origin, label

    def _augmented(
        self, index: int, origin: Shape3, label: np.ndarray, rng: np.random.Generator
    ) -> Patch:
        pair = self.data.train[index]
        raw = crop(pair.image, origin, self.sample_size, self.mode)
        mask = None if pair.mask is None else crop(pair.mask, origin, self.sample_size, "constant")
        image, label, mask = self.augmenter(pair.normalization.scale(raw), label, rng, mask)
        valid = None if mask is None else (mask != 0).astype(np.float32)
        return Patch(pair.normalization.standardize(image), _as_ids(label), index, origin, valid)

    def _invalid(self, patch: Patch) -> bool:
        """PyTC: a patch whose valid share is not above VALID_RATIO is always redrawn."""
        return patch.mask is not None and float(patch.mask.mean()) <= self.valid_ratio

    def _poor(self, label: np.ndarray) -> bool:
        """PyTC's rejection test: fewer than SIZE_THRES foreground voxels, or fewer than
        DIVERSITY distinct values (background included)."""
        if self.reject_threshold > 0 and np.count_nonzero(label) < self.reject_threshold:
            return True
        return self.reject_diversity > 0 and np.unique(label).size < self.reject_diversity

    def sample(self, rng: np.random.Generator) -> Patch:
        """One augmented, normalised patch, drawn from `rng`.

        Rejection sampling judges the augmented patch, as PyTC does: what the model sees
        passes `_poor` (or is one of the 1 - P kept anyway). A sample holding less than
        half of SIZE_THRES in all of its (larger) extent cannot get there, so it is
        rejected before paying for its augmentation.
        """
        rejecting = self.reject_threshold > 0 or self.reject_diversity > 0
        masked = any(pair.mask is not None for pair in self.data.train)
        position = self._position(rng)
        for _ in range(MAX_REJECTIONS if rejecting or masked else 0):
            hopeless = 2 * np.count_nonzero(position[2]) < self.reject_threshold
            if not hopeless:
                patch = self._augmented(*position, rng)
                if self._invalid(patch):
                    position = self._position(rng)
                    continue
                if not rejecting or not self._poor(patch.label):
                    return patch
            if rng.random() > self.reject_p:  # keep a poor patch now and then
                return patch if not hopeless else self._augmented(*position, rng)
            position = self._position(rng)
        return self._augmented(*position, rng)

    def patches(self, iteration: int, count: int | None = None) -> list[Patch]:
        """The `count` (default SAMPLES_PER_BATCH) patches of `iteration`.

        With `streams` S > 1 they are S equal parts, part s drawn from the generator of
        (seed + s, iteration): the global batch of an S-rank DDP run whose rank r draws
        from (seed + r, iteration), made in one process (to compare the two)."""
        count = count or self.batch_size
        if self.streams == 1:
            rng = iteration_rng(self.seed, iteration)
            return [self.sample(rng) for _ in range(count)]
        share = count // self.streams
        parts = [iteration_rng(self.seed + s, iteration) for s in range(self.streams)]
        return [self.sample(rng) for rng in parts for _ in range(share)]

    def batch(self, iteration: int) -> Batch:
        return make_batch(self.cfg, self, iteration)

    def __iter__(self) -> Iterator[Batch]:
        for iteration in itertools.count(self.start_iteration):
            yield self.batch(iteration)


# ----------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """One training step's input, targets and pixel weights (see the module docstring)."""

    iteration: int
    image: torch.Tensor
    targets: list[torch.Tensor]
    weights: list[list[torch.Tensor | None]]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(
            self.iteration,
            move(self.image),
            [move(t) for t in self.targets],
            [[None if w is None else move(w) for w in row] for row in self.weights],
        )


def _spatial(array: np.ndarray, do_2d: bool) -> np.ndarray:
    """(C, z, y, x) -> (C, y, x) in 2D (z is 1 there)."""
    return array[:, 0] if do_2d else array


def _stack(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))


def targets_and_weights(
    cfg: Config,
    labels: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None = None,
) -> tuple[list[torch.Tensor], list[list[torch.Tensor | None]]]:
    """Batched targets and pixel weights of (z, y, x) label patches, per TARGET_OPT
    (`backend.trainer.supervision`: PyTC's targets and weights of each crop, the valid
    mask of each patch passed along)."""
    supervise = Supervision.from_config(cfg)
    per_mask = list(masks) if masks is not None else [None] * len(labels)
    samples = [supervise(label, mask) for label, mask in zip(labels, per_mask, strict=True)]
    targets = [_stack([s[0][i] for s in samples]) for i in range(len(supervise.options))]
    weights: list[list[torch.Tensor | None]] = []
    for i, row in enumerate(supervise.weight_options):
        # PyTC weighs each sample by its own class ratio; None: no weight for this loss.
        maps = [[s[1][i][j] for s in samples] for j in range(len(row))]
        weights.append([_stack_weights(m) for m in maps])
    return targets, weights


def _stack_weights(maps: Sequence[np.ndarray | None]) -> torch.Tensor | None:
    present = [m for m in maps if m is not None]
    return _stack(present) if len(present) == len(maps) else None


def make_batch(cfg: Config, sampler: PatchSampler, iteration: int) -> Batch:
    """Batch `iteration`: SOLVER.SAMPLES_PER_BATCH patches with targets and weights."""
    count = int(_section(cfg, "SOLVER").get("SAMPLES_PER_BATCH", sampler.batch_size))
    patches = sampler.patches(iteration, count)
    do_2d = _do_2d(cfg)
    channels = int(_section(cfg, "MODEL").get("IN_PLANES", 1))
    images = [_spatial(np.repeat(p.image[np.newaxis], channels, axis=0), do_2d) for p in patches]
    targets, weights = targets_and_weights(
        cfg, [p.label for p in patches], [p.mask for p in patches]
    )
    return Batch(iteration, _stack(images), targets, weights)


class BatchDataset(IterableDataset[Batch]):
    """Batches start_iteration .. stop_iteration - 1 (forever when stop is None).

    With DataLoader workers, worker w of n makes iterations start + w, start + w + n, ...
    and the DataLoader interleaves them round-robin, so the order is unchanged.
    """

    def __init__(
        self,
        cfg: Config,
        data: TrainingData,
        seed: int = 0,
        start_iteration: int = 0,
        stop_iteration: int | None = None,
        streams: int = 1,
    ) -> None:
        super().__init__()
        self.sampler = PatchSampler(cfg, data, seed, start_iteration, streams)
        self.start = int(start_iteration)
        self.stop = stop_iteration

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        first = self.start + worker
        steps: Iterable[int] = (
            itertools.count(first, workers)
            if self.stop is None
            else range(first, self.stop, workers)
        )
        for iteration in steps:
            yield self.sampler.batch(iteration)


def _identity(batch: Any) -> Any:
    # With batch_size=None the DataLoader hands over each item as is: already a Batch.
    return batch


def data_workers(cfg: Config) -> int:
    """SYSTEM.NUM_CPUS, capped at the machine's cores (more workers only contend)."""
    wanted = int(_section(cfg, "SYSTEM").get("NUM_CPUS", 0))
    return max(0, min(wanted, os.cpu_count() or 1))


def make_loader(
    cfg: Config,
    data: TrainingData,
    seed: int = 0,
    start_iteration: int = 0,
    stop_iteration: int | None = None,
    *,
    streams: int = 1,
    workers: int | None = None,
) -> Iterable[Batch]:
    """The batches of a run, made in-process (NUM_CPUS 0) or by DataLoader workers
    (`workers`: default NUM_CPUS; a DDP rank gets its share)."""
    dataset = BatchDataset(cfg, data, seed, start_iteration, stop_iteration, streams)
    workers = data_workers(cfg) if workers is None else workers
    if workers == 0:
        return dataset
    return DataLoader(
        dataset,
        batch_size=None,  # the dataset yields whole batches
        num_workers=workers,
        collate_fn=_identity,
        prefetch_factor=2,
    )


# ----------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValTile:
    """One validation tile of MODEL.INPUT_SIZE.

    `image` is model-ready: (IN_PLANES, z, y, x), or (IN_PLANES, y, x) in 2D. `label` and
    `mask` have the spatial shape; `mask` is False where the tile reaches past the volume
    (there the image is padded and the label 0): count metrics only where it is True.
    Tiles do not overlap, so summing over tiles counts every voxel once.
    """

    image: torch.Tensor
    label: np.ndarray
    mask: np.ndarray
    volume: int
    z: int
    origin: Shape3


def _tile_origins(shape: Shape3, size: Shape3) -> Iterator[Shape3]:
    (depth, height, width), (sz, sy, sx) = shape, size
    yield from itertools.product(range(0, depth, sz), range(0, height, sy), range(0, width, sx))


def _tile_places(cfg: Config, data: TrainingData) -> Iterator[tuple[int, Shape3]]:
    """(volume, origin) of every validation tile, in (volume, z, y, x) order."""
    size = patch_size(cfg)
    for index, pair in enumerate(data.val):
        for origin in _tile_origins(pair.shape, size):
            yield index, origin


def _make_tile(cfg: Config, data: TrainingData, index: int, origin: Shape3) -> ValTile:
    size = patch_size(cfg)
    do_2d = _do_2d(cfg)
    pair = data.val[index]
    channels = int(_section(cfg, "MODEL").get("IN_PLANES", 1))
    image = pair.normalization(crop(pair.image, origin, size, _pad_mode(cfg)))
    label = _as_ids(crop(pair.label, origin, size, "constant"))
    inside = [(np.arange(o, o + s) < n) for o, s, n in zip(origin, size, pair.shape, strict=True)]
    mask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    planes = np.repeat(image[np.newaxis], channels, axis=0)
    return ValTile(
        image=torch.from_numpy(np.ascontiguousarray(_spatial(planes, do_2d))),
        label=label[0] if do_2d else label,
        mask=mask[0] if do_2d else mask,
        volume=index,
        z=origin[0],
        origin=origin,
    )


def validation_patches(cfg: Config, data: TrainingData) -> Iterator[ValTile]:
    """Non-overlapping tiles covering every validation volume, in (volume, z, y, x) order."""
    for index, origin in _tile_places(cfg, data):
        yield _make_tile(cfg, data, index, origin)


def _val_batch_size(cfg: Config, batch_size: int | None) -> int:
    return batch_size or int(_section(cfg, "SOLVER").get("SAMPLES_PER_BATCH", 2))


def count_validation_batches(cfg: Config, data: TrainingData, batch_size: int | None = None) -> int:
    """How many batches `validation_batches` yields in all (from shapes; nothing is read)."""
    tiles = sum(1 for _ in _tile_places(cfg, data))
    return math.ceil(tiles / _val_batch_size(cfg, batch_size))


@dataclass
class ValBatch:
    """Validation tiles stacked for one forward pass, with their targets and weights."""

    image: torch.Tensor
    targets: list[torch.Tensor]
    weights: list[list[torch.Tensor | None]]
    label: np.ndarray  # (B, *spatial) ids
    mask: torch.Tensor  # (B, 1, *spatial) bool: voxels inside the volume
    tiles: list[ValTile]


def validation_batches(
    cfg: Config,
    data: TrainingData,
    batch_size: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[ValBatch]:
    """`validation_patches` in batches (default SOLVER.SAMPLES_PER_BATCH). With `shard`
    (rank, ranks) only batches j with j % ranks == rank are made (the others are skipped
    before anything is read), so DDP ranks split a validation between them."""
    size = _val_batch_size(cfg, batch_size)
    rank, ranks = shard
    do_2d = _do_2d(cfg)
    places = _tile_places(cfg, data)
    for j in itertools.count():
        spots = list(itertools.islice(places, size))
        if not spots:
            return
        if j % ranks != rank:
            continue
        chunk = [_make_tile(cfg, data, index, origin) for index, origin in spots]
        # Targets are made from (z, y, x) labels; 2D tiles carry (y, x).
        labels = [t.label[np.newaxis] if do_2d else t.label for t in chunk]
        targets, weights = targets_and_weights(cfg, labels)
        yield ValBatch(
            image=torch.stack([t.image for t in chunk]),
            targets=targets,
            weights=weights,
            label=np.stack([t.label for t in chunk]),
            mask=torch.from_numpy(np.stack([t.mask for t in chunk]))[:, np.newaxis],
            tiles=chunk,
        )
