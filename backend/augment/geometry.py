"""Geometric augmentations (PyTC v1.0.0): image and every target move together.

Rotate, Rescale, Flip, Elastic, MissingSection and MisAlignment. Images are interpolated
bilinearly (OpenCV) or linearly (scikit-image); `mask` targets by nearest neighbour, so a
label keeps exactly the ids it had (some may vanish at the border, none is invented).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.transform import resize

from backend.augment.base import IMAGE, Augmentation, Kind, Sample, Streams

# Dtypes OpenCV's warpAffine / remap take as they are; other labels travel as indices.
_CV_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def _interpolation(kind: Kind) -> int:
    return cv2.INTER_LINEAR if kind == "img" else cv2.INTER_NEAREST


def per_slice(
    volume: np.ndarray, kind: Kind, warp: Callable[[np.ndarray, int], np.ndarray]
) -> np.ndarray:
    """Apply a 2D OpenCV warp to every z-slice; labels of any integer dtype keep their ids."""
    flags = _interpolation(kind)
    if volume.dtype.type in _CV_DTYPES:
        return np.stack([warp(np.ascontiguousarray(s), flags) for s in volume]).astype(volume.dtype)
    ids, index = np.unique(volume, return_inverse=True)
    index = index.reshape(volume.shape).astype(np.uint16 if ids.size < 2**16 else np.float32)
    warped = np.stack([warp(np.ascontiguousarray(s), cv2.INTER_NEAREST) for s in index])
    return ids[warped.astype(np.int64)]


def _every(sample: Sample, aug: Augmentation) -> list[tuple[str, Kind]]:
    return [(IMAGE, "img"), *aug.targets(sample)]


@dataclass
class Flip(Augmentation):
    """Flip z, y, x and transpose y/x (and x/z with `do_ztrans`), each by a coin flip.

    Rule = randint(2, size=4 + do_ztrans) in the order z, y, x, yx-transpose, xz-transpose.
    Compose always applies it last, after the centre crop.
    """

    do_ztrans: int = 0
    name: ClassVar[str] = "Flip"

    @staticmethod
    def flip_and_swap(data: np.ndarray, rule: np.ndarray, do_ztrans: int = 0) -> np.ndarray:
        """(z, y, x) or (c, z, y, x) data under `rule` (PyTC's flip_and_swap)."""
        z = data.ndim - 3
        if rule[0]:
            data = np.flip(data, z)
        if rule[1]:
            data = np.flip(data, z + 1)
        if rule[2]:
            data = np.flip(data, z + 2)
        axes = list(range(data.ndim))
        if rule[3]:
            axes[z + 1], axes[z + 2] = axes[z + 2], axes[z + 1]
            data = data.transpose(axes)
        if do_ztrans and rule[4]:
            axes = list(range(data.ndim))
            axes[z], axes[z + 2] = axes[z + 2], axes[z]
            data = data.transpose(axes)
        return data

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        rule = streams.state.randint(2, size=4 + self.do_ztrans)
        # Transposes that would change the patch's shape are skipped (PyTC's patches are
        # square in yx, and cubic for DO_ZTRANS, where nothing is skipped).
        depth, height, width = sample[IMAGE].shape[-3:]
        rule[3] = rule[3] and height == width
        if self.do_ztrans:
            rule[4] = rule[4] and depth == width
        for key, _ in _every(sample, self):
            sample[key] = self.flip_and_swap(sample[key], rule, self.do_ztrans)
        return sample


@dataclass
class Rotate(Augmentation):
    """Rotate in the yx plane: k * 90 degrees (`rot90`), else any angle about the centre."""

    rot90: bool = True
    name: ClassVar[str] = "Rotate"

    @property
    def ratio(self) -> tuple[float, float, float]:
        return (1.0, 1.0, 1.0) if self.rot90 else (1.0, 1.42, 1.42)

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        targets = _every(sample, self)
        if self.rot90:
            k = streams.state.randint(0, 4)
            if sample[IMAGE].shape[-2] != sample[IMAGE].shape[-1]:
                k &= 2  # a quarter turn would change the shape of a non-square patch
            for key, _ in targets:
                sample[key] = np.rot90(sample[key], k, axes=(-2, -1))
            return sample
        height, width = sample[IMAGE].shape[-2:]
        angle = streams.state.rand() * 360.0
        matrix = cv2.getRotationMatrix2D((height / 2, width / 2), angle, 1)

        def warp(plane: np.ndarray, flags: int) -> np.ndarray:
            return cv2.warpAffine(
                plane, matrix, (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT
            )

        for key, kind in targets:
            sample[key] = per_slice(sample[key], kind, warp)
        return sample


@dataclass
class Rescale(Augmentation):
    """Zoom y and x by 1 / uniform(low, high): crop (random start) or zero-pad, resize back."""

    low: float = 0.8
    high: float = 1.25
    fix_aspect: bool = False
    name: ClassVar[str] = "Rescale"

    @property
    def ratio(self) -> tuple[float, float, float]:
        return (1.0, self.high, self.high)

    def _scale(self, streams: Streams) -> float:
        return 1.0 / (streams.state.rand() * (self.high - self.low) + self.low)

    @staticmethod
    def _window(length: int, scale: float, streams: Streams) -> tuple[int, int, bool]:
        """(start, end, crop?) of the scaled window along one axis; pads when it is longer."""
        scaled = int(scale * length)
        if scaled <= length:
            start = streams.state.randint(low=0, high=length - scaled + 1)
            return start, start + scaled, True
        extra = scaled - length
        return extra // 2, -(-extra // 2), False

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        sf_x = self._scale(streams)
        sf_y = sf_x if self.fix_aspect else self._scale(streams)
        shape = sample[IMAGE].shape
        y = self._window(shape[-2], sf_y, streams)
        x = self._window(shape[-1], sf_x, streams)
        for key, kind in _every(sample, self):
            sample[key] = self._apply(sample[key], kind, y, x)
        return sample

    @staticmethod
    def _apply(
        volume: np.ndarray, kind: Kind, y: tuple[int, int, bool], x: tuple[int, int, bool]
    ) -> np.ndarray:
        out = volume
        for axis, (a, b, is_crop) in ((-2, y), (-1, x)):
            if is_crop:
                index = [slice(None)] * out.ndim
                index[axis] = slice(a, b)
                out = out[tuple(index)]
            else:
                pad = [(0, 0)] * out.ndim
                pad[axis] = (a, b)
                out = np.pad(out, pad, mode="constant")
        image = kind == "img"
        resized = resize(
            out,
            volume.shape,
            order=1 if image else 0,
            mode="constant",
            cval=0,
            clip=True,
            preserve_range=True,
            anti_aliasing=image,
        )
        return np.asarray(resized).astype(volume.dtype)


@dataclass
class Elastic(Augmentation):
    """One smooth random displacement field (alpha, sigma) for every slice, OpenCV remap."""

    alpha: float = 16.0
    sigma: float = 4.0
    name: ClassVar[str] = "Elastic"

    @property
    def add(self) -> tuple[int, int, int]:
        margin = int(self.alpha) + 1  # the largest displacement, plus one for interpolation
        return (0, margin, margin)

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        height, width = sample[IMAGE].shape[-2:]
        state = streams.state
        dx = np.float32(gaussian_filter(state.rand(height, width) * 2 - 1, self.sigma) * self.alpha)
        dy = np.float32(gaussian_filter(state.rand(height, width) * 2 - 1, self.sigma) * self.alpha)
        x, y = np.meshgrid(np.arange(width), np.arange(height))
        map_x, map_y = (x + dx).astype(np.float32), (y + dy).astype(np.float32)

        def warp(plane: np.ndarray, flags: int) -> np.ndarray:
            return cv2.remap(plane, map_x, map_y, flags, borderMode=cv2.BORDER_CONSTANT)

        for key, kind in _every(sample, self):
            sample[key] = per_slice(sample[key], kind, warp)
        return sample


@dataclass
class MissingSection(Augmentation):
    """Delete `num_sections` slices chosen among 1 .. z-2 (z shrinks; no-op when z is 1)."""

    num_sections: int = 2
    name: ClassVar[str] = "MissingSection"

    @property
    def add(self) -> tuple[int, int, int]:
        return (math.ceil(self.num_sections / 2.0), 0, 0)

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        depth = sample[IMAGE].shape[-3]
        if depth - 2 < self.num_sections:
            return sample  # not enough inner slices (PyTC: no-op at z = 1, else it raises)
        index = streams.state.choice(
            np.array(range(1, depth - 1)), self.num_sections, replace=False
        )
        for key, _ in _every(sample, self):
            sample[key] = np.delete(sample[key], index, axis=-3)
        return sample


@dataclass
class MisAlignment(Augmentation):
    """Shift (or rotate) one slice (`slip`) or all slices from a random index (`translation`).

    With probability `rotate_ratio` by rotation (needs y == x, keeps the size); otherwise by
    translation, which crops y and x by `displacement`.
    """

    displacement: int = 16
    rotate_ratio: float = 0.0
    name: ClassVar[str] = "MisAlignment"

    @property
    def add(self) -> tuple[int, int, int]:
        half = math.ceil(self.displacement / 2.0)
        return (0, half, half)

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        depth, height, width = sample[IMAGE].shape[-3:]
        if depth < 3 or min(height, width) <= self.displacement:
            return sample  # no inner slice to move, or nothing left after the shift
        if streams.state.rand() < self.rotate_ratio and height == width:
            return self._rotate(sample, streams)  # rotation needs a square patch
        return self._translate(sample, streams)

    def _translate(self, sample: Sample, streams: Streams) -> Sample:
        state, d = streams.state, self.displacement
        depth, height, width = sample[IMAGE].shape[-3:]
        out_h, out_w = height - d, width - d
        x0, y0, x1, y1 = (state.randint(d) for _ in range(4))
        index = state.choice(np.array(range(1, depth - 1)), 1)[0]
        slip = state.rand() < 0.5
        for key, _ in _every(sample, self):
            volume = sample[key]
            out = np.array(volume[..., y0 : y0 + out_h, x0 : x0 + out_w])
            moved = volume[..., y1 : y1 + out_h, x1 : x1 + out_w]
            if slip:
                out[..., index, :, :] = moved[..., index, :, :]
            else:
                out[..., index:, :, :] = moved[..., index:, :, :]
            sample[key] = out
        return sample

    def _rotate(self, sample: Sample, streams: Streams) -> Sample:
        state = streams.state
        depth, height, width = sample[IMAGE].shape[-3:]
        # The angle that moves a corner by about `displacement` (capped: PyTC raises when
        # the patch is not larger than twice the displacement).
        reach = (self.displacement / 2.0) / max((height - self.displacement) / 2.0 * 1.42, 1e-9)
        half_angle = math.asin(min(reach, 1.0))
        angle = (state.rand() - 0.5) * 2.0 * math.degrees(half_angle) * 2.0
        matrix = cv2.getRotationMatrix2D((height / 2, height / 2), angle, 1)
        index = state.choice(np.array(range(1, depth - 1)), 1)[0]
        slip = state.rand() < 0.5
        moved = slice(index, index + 1) if slip else slice(index, None)

        def warp(plane: np.ndarray, flags: int) -> np.ndarray:
            return cv2.warpAffine(
                plane, matrix, (height, width), flags=flags, borderMode=cv2.BORDER_CONSTANT
            )

        for key, kind in _every(sample, self):
            volume = np.array(sample[key])
            volume[..., moved, :, :] = per_slice(volume[..., moved, :, :], kind, warp)
            sample[key] = volume
        return sample
