"""PyTC v1.0.0's augmentor: the list built from cfg["AUGMENTOR"], composed as PyTC does.

`build_augmentor(cfg)` reads the resolved config (missing keys take PyTC's defaults from
the schema) and returns a `Compose`, or None with `AUGMENTOR.ENABLED: False`. Order and
draws are PyTC's:

1. the enabled augmentations in build order Rotate, Rescale, Flip, Elastic, Grayscale,
   MissingParts, MissingSection, MisAlignment, MotionBlur, CutBlur, CutNoise
   (MissingSection and MisAlignment only in 3D); Flip is taken out of the list;
2. per sample `ran = state.rand(len(list))`; the list runs in reverse, item i when
   `ran[i] < p`;
3. every array is centre-cropped to MODEL.INPUT_SIZE (z from a random start when
   MissingSection left more slices than needed);
4. Flip, when `state.rand() < FLIP.P`; then, with AUGMENTOR.SMOOTH, mask targets are
   smoothed.

`sample_size` is what the sampler must cut so that the crop is always valid:
`ceil(size * ratio) + 2 * add`, accumulated over the list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from backend.augment.base import IMAGE, Augmentation, Kind, Sample, Streams
from backend.augment.geometry import Elastic, Flip, MisAlignment, MissingSection, Rescale, Rotate
from backend.augment.intensity import CutBlur, CutNoise, Grayscale, MissingParts, MotionBlur
from backend.config.schema import KEYS

Config = Mapping[str, Any]
Shape3 = tuple[int, int, int]

# Config section -> augmentation, in PyTC's build order.
BUILD_ORDER = (
    "ROTATE",
    "RESCALE",
    "FLIP",
    "ELASTIC",
    "GRAYSCALE",
    "MISSINGPARTS",
    "MISSINGSECTION",
    "MISALIGNMENT",
    "MOTIONBLUR",
    "CUTBLUR",
    "CUTNOISE",
)
ONLY_3D = ("MISSINGSECTION", "MISALIGNMENT")
# In PyTC v1.0.0 but not applied here (see docs/data.md): a warning when switched on.
NOT_APPLIED = ("COPYPASTE",)


def _setting(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif not isinstance(node, Mapping) and part == "ENABLED" and isinstance(node, bool):
            return node  # `ELASTIC: True` stands for the section's switch
        else:
            return KEYS[dotted].default
    return node


def _make(section: str, cfg: Config, kinds: Mapping[str, Kind]) -> Augmentation:
    def key(leaf: str) -> Any:
        return _setting(cfg, f"AUGMENTOR.{section}.{leaf}")

    common: dict[str, Any] = {
        "p": float(key("P")),
        "skip": tuple(str(s) for s in key("SKIP") or ()),
        "kinds": kinds,
    }
    match section:
        case "ROTATE":
            return Rotate(rot90=bool(key("ROT90")), **common)
        case "RESCALE":
            return Rescale(fix_aspect=bool(key("FIX_ASPECT")), **common)
        case "FLIP":
            return Flip(do_ztrans=int(key("DO_ZTRANS")), **common)
        case "ELASTIC":
            return Elastic(alpha=float(key("ALPHA")), sigma=float(key("SIGMA")), **common)
        case "GRAYSCALE":
            return Grayscale(**common)
        case "MISSINGPARTS":
            return MissingParts(iterations=int(key("ITER")), **common)
        case "MISSINGSECTION":
            return MissingSection(num_sections=int(key("NUM_SECTION")), **common)
        case "MISALIGNMENT":
            return MisAlignment(
                displacement=int(key("DISPLACEMENT")),
                rotate_ratio=float(key("ROTATE_RATIO")),
                **common,
            )
        case "MOTIONBLUR":
            return MotionBlur(
                sections=int(key("SECTIONS")), kernel_size=int(key("KERNEL_SIZE")), **common
            )
        case "CUTBLUR":
            return CutBlur(
                length_ratio=float(key("LENGTH_RATIO")),
                down_ratio_min=float(key("DOWN_RATIO_MIN")),
                down_ratio_max=float(key("DOWN_RATIO_MAX")),
                downsample_z=bool(key("DOWNSAMPLE_Z")),
                **common,
            )
        case "CUTNOISE":
            return CutNoise(
                length_ratio=float(key("LENGTH_RATIO")), scale=float(key("SCALE")), **common
            )
    raise KeyError(section)


def target_kinds(cfg: Config) -> dict[str, Kind]:
    """AUGMENTOR.ADDITIONAL_TARGETS_NAME -> _TYPE (PyTC default: label -> mask)."""
    names = _setting(cfg, "AUGMENTOR.ADDITIONAL_TARGETS_NAME") or []
    kinds = _setting(cfg, "AUGMENTOR.ADDITIONAL_TARGETS_TYPE") or []
    out: dict[str, Kind] = {}
    for name, kind in zip(names, kinds, strict=False):
        out[str(name)] = "img" if str(kind) == "img" else "mask"
    out.setdefault("valid_mask", "mask")  # PyTC adds the valid mask (when there is one)
    return out


def _input_size(cfg: Config) -> Shape3:
    size = [int(s) for s in _setting(cfg, "MODEL.INPUT_SIZE")]
    if len(size) == 2:
        size.insert(0, 1)
    if bool(_setting(cfg, "DATASET.DO_2D")):
        size[0] = 1
    return size[0], size[1], size[2]


def build_augmentor(cfg: Config, input_size: Sequence[int] | None = None) -> Compose | None:
    """The augmentor cfg describes (None with AUGMENTOR.ENABLED False)."""
    if not bool(_setting(cfg, "AUGMENTOR.ENABLED")):
        return None
    do_2d = bool(_setting(cfg, "DATASET.DO_2D"))
    kinds = target_kinds(cfg)
    transforms: list[Augmentation] = []
    for section in BUILD_ORDER:
        if do_2d and section in ONLY_3D:
            continue
        if bool(_setting(cfg, f"AUGMENTOR.{section}.ENABLED")):
            transforms.append(_make(section, cfg, kinds))
    size = tuple(int(s) for s in input_size) if input_size is not None else _input_size(cfg)
    return Compose(
        transforms,
        input_size=(size[0], size[1], size[2]),
        smooth=bool(_setting(cfg, "AUGMENTOR.SMOOTH")),
        kinds=kinds,
    )


@dataclass(frozen=True)
class Applied:
    """One sample after the augmentor, and the names of what ran (in application order)."""

    sample: Sample
    applied: tuple[str, ...]


class Compose:
    """The augmentation list composed as PyTC's `Compose` (see the module docstring)."""

    def __init__(
        self,
        transforms: Sequence[Augmentation],
        input_size: Shape3,
        smooth: bool = False,
        kinds: Mapping[str, Kind] | None = None,
    ) -> None:
        self.flip = next((t for t in transforms if isinstance(t, Flip)), None)
        self.transforms = [t for t in transforms if not isinstance(t, Flip)]
        self.input_size = input_size
        self.smooth = smooth
        self.kinds: Mapping[str, Kind] = kinds if kinds is not None else {"label": "mask"}
        self.sample_size = self._sample_size()

    def _sample_size(self) -> Shape3:
        size = list(self.input_size)
        for t in self.transforms:
            size = [math.ceil(s * r) + 2 * a for s, r, a in zip(size, t.ratio, t.add, strict=True)]
        return size[0], size[1], size[2]

    @property
    def names(self) -> list[str]:
        """The augmentations in PyTC's list order (Flip last: it always runs last)."""
        return [t.name for t in self.transforms] + ([self.flip.name] if self.flip else [])

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        return self.apply(sample, streams).sample

    def apply(self, sample: Sample, streams: Streams) -> Applied:
        """Augment `sample` (arrays of `sample_size`); returns arrays of `input_size`."""
        sample = dict(sample)
        sample[IMAGE] = sample[IMAGE].astype(np.float32)
        applied: list[str] = []
        ran = streams.state.rand(len(self.transforms))
        for draw, t in zip(ran, reversed(self.transforms), strict=True):
            if draw < t.p:
                sample = t(sample, streams)
                applied.append(t.name)
        sample = self.crop(sample, streams)
        if self.flip is not None and streams.state.rand() < self.flip.p:
            sample = self.flip(sample, streams)
            applied.append(self.flip.name)
        if self.smooth:
            for key, kind in self.kinds.items():
                if kind == "mask" and key in sample:
                    sample[key] = smooth_mask(sample[key])
        return Applied({k: np.ascontiguousarray(v) for k, v in sample.items()}, tuple(applied))

    def crop(self, sample: Sample, streams: Streams) -> Sample:
        """Centre-crop y and x to input_size; z from a random start when it is longer."""
        depth, height, width = sample[IMAGE].shape[-3:]
        size_z, size_y, size_x = self.input_size
        z0 = streams.numpy_global.choice(depth - size_z + 1, 1)[0] if depth > size_z else 0
        y0, x0 = (height - size_y) // 2, (width - size_x) // 2
        box = (slice(int(z0), int(z0) + size_z), slice(y0, y0 + size_y), slice(x0, x0 + size_x))
        return {key: value[(..., *box)] for key, value in sample.items()}


def smooth_mask(label: np.ndarray) -> np.ndarray:
    """PyTC's AUGMENTOR.SMOOTH: per slice and id (in increasing order), the id's mask is
    Gaussian-smoothed (sigma 2, edges repeated) and thresholded at 0.5, twice, then written
    back over the slice as it stands, so a later id wins where two meet."""
    out = np.array(label)
    for z in range(out.shape[0]):
        plane = out[z]
        for index in np.unique(plane):
            if index == 0:
                continue
            binary = (plane == index).astype(np.float64)
            for _ in range(2):
                binary = (gaussian_filter(binary, 2.0, mode="nearest") > 0.5).astype(np.float64)
            plane[plane == index] = 0
            plane[binary > 0] = index
    return out
