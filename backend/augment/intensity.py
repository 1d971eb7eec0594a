"""Intensity augmentations (PyTC v1.0.0): they change `image` and `img` targets only.

Grayscale, MissingParts, MotionBlur, CutBlur and CutNoise never touch a `mask` target
(labels keep every voxel), and never change the shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import cv2
import numpy as np
from scipy.ndimage import binary_dilation
from skimage.draw import line
from skimage.transform import resize

from backend.augment.base import IMAGE, Augmentation, Sample, Streams


def _images(sample: Sample, aug: Augmentation) -> list[str]:
    return [IMAGE, *(key for key, _ in aug.targets(sample, "img"))]


@dataclass
class Grayscale(Augmentation):
    """Contrast, brightness and gamma changes: one draw for the volume ('3D') or per slice.

    x * (1 + (r0 - 0.5) * contrast) + (r1 - 0.5) * brightness, clipped to [0, 1], then
    raised to 2 ** (2 r2 - 1); optionally inverted (1 - x). Mode 'mix' draws '2D' or '3D'
    but, as PyTC v1.0.0 does, always applies the whole-volume formula.
    """

    contrast_factor: float = 0.3
    brightness_factor: float = 0.3
    mode: Literal["2D", "3D", "mix"] = "mix"
    invert: bool = False
    invert_p: float = 0.0
    name: ClassVar[str] = "Grayscale"
    touches: ClassVar[str] = "image + img targets"

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        # One draw for the sample: every `img` target gets the same change.
        state = streams.state
        mode = self.mode
        if mode == "mix":
            state.rand()  # PyTC draws 2D or 3D here, then applies 3D either way
            mode = "3D"
        depth = sample[IMAGE].shape[-3]
        draws = state.rand(3 * depth if mode == "2D" else 3)
        invert = self.invert and state.rand() < self.invert_p
        for key in _images(sample, self):
            volume = np.array(sample[key], dtype=np.float32)
            if mode == "2D":
                for z in range(depth):
                    plane = volume[..., z, :, :]
                    volume[..., z, :, :] = self._adjust(plane, draws[3 * z : 3 * z + 3])
            else:
                volume = self._adjust(volume, draws)
            if invert:
                volume = np.clip(1.0 - volume, 0, 1)
            sample[key] = volume.astype(np.float32)
        return sample

    def _adjust(self, volume: np.ndarray, draws: np.ndarray) -> np.ndarray:
        out = volume * (1 + (draws[0] - 0.5) * self.contrast_factor)
        out = out + (draws[1] - 0.5) * self.brightness_factor
        out = np.clip(out, 0, 1)
        return np.asarray(out ** (2.0 ** (draws[2] * 2 - 1)), dtype=np.float32)


@dataclass
class MissingParts(Augmentation):
    """Blank a thick random line (filled with the slice mean) in some slices.

    Each slice gets one with probability P, at most one of two consecutive slices; the line
    crosses the slice, dilated `iterations` times.
    """

    iterations: int = 64
    name: ClassVar[str] = "MissingParts"
    touches: ClassVar[str] = "image + img targets"

    def _line_mask(self, shape: tuple[int, int], streams: Streams) -> np.ndarray:
        height, width = shape
        # As in PyTC v1.0.0, the top-to-bottom line draws its ends from numpy's global RNG.
        if streams.state.rand() < 0.5:
            draw = streams.numpy_global.randint
            x0, y0, x1, y1 = 0, draw(1, width - 2), height - 1, draw(1, width - 2)
        else:  # left column to right column
            draw = streams.state.randint
            x0, y0, x1, y1 = draw(1, height - 2), 0, draw(1, height - 2), width - 1
        mask = np.zeros(shape, dtype=bool)
        rr, cc = line(x0, y0, x1, y1)
        mask[rr, cc] = True
        return np.asarray(binary_dilation(mask, iterations=self.iterations))

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        depth = sample[IMAGE].shape[-3]
        shape = (int(sample[IMAGE].shape[-2]), int(sample[IMAGE].shape[-1]))
        masks: dict[int, np.ndarray] = {}
        z = 0
        while z < depth:
            if streams.state.rand() < self.p:
                masks[z] = self._line_mask(shape, streams)
                z += 1  # never two consecutive slices
            z += 1
        for key in _images(sample, self):
            volume = np.array(sample[key])
            for index, mask in masks.items():
                plane = volume[..., index, :, :]
                plane[..., mask] = plane.mean()
            sample[key] = volume
        return sample


@dataclass
class MotionBlur(Augmentation):
    """A horizontal or vertical line kernel (`kernel_size`) on `sections` random slices."""

    sections: int = 2
    kernel_size: int = 11
    name: ClassVar[str] = "MotionBlur"
    touches: ClassVar[str] = "image + img targets"

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        size = self.kernel_size
        kernel = np.zeros((size, size))
        if streams.python.random() > 0.5:
            kernel[(size - 1) // 2, :] = 1.0
        else:
            kernel[:, (size - 1) // 2] = 1.0
        kernel /= size
        depth = sample[IMAGE].shape[-3]
        chosen = streams.state.choice(depth, min(self.sections, depth), replace=False)
        for key in _images(sample, self):
            volume = np.array(sample[key])
            for z in chosen:
                volume[z] = cv2.filter2D(volume[z], -1, kernel)
            sample[key] = volume
        return sample


def _region(length: int, ratio: float, streams: Streams) -> tuple[int, int]:
    side = int(ratio * length)
    low = streams.state.randint(0, length - side)
    return low, low + side


@dataclass
class CutBlur(Augmentation):
    """Downsample a random cuboid (linear, anti-aliased) and upsample it back (nearest)."""

    length_ratio: float = 0.25
    down_ratio_min: float = 2.0
    down_ratio_max: float = 8.0
    downsample_z: bool = False
    name: ClassVar[str] = "CutBlur"
    touches: ClassVar[str] = "image + img targets"

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        depth, height, width = sample[IMAGE].shape[-3:]
        z = _region(depth, self.length_ratio, streams) if depth > 1 else (0, 1)
        y = _region(height, self.length_ratio, streams)
        x = _region(width, self.length_ratio, streams)
        ratio = streams.state.rand() * (self.down_ratio_max - self.down_ratio_min)
        ratio += self.down_ratio_min
        box = (slice(*z), slice(*y), slice(*x))
        for key in _images(sample, self):
            volume = np.array(sample[key])
            block = volume[box]
            scale = (ratio, ratio, ratio) if self.downsample_z and depth > 1 else (1, ratio, ratio)
            # At least one voxel per axis: PyTC raises OverflowError on a zero-sized axis.
            small = np.maximum((np.array(block.shape) / np.array(scale)).astype(int), 1)
            down = resize(
                block,
                small,
                order=1,
                mode="reflect",
                clip=True,
                preserve_range=True,
                anti_aliasing=True,
            )
            up = resize(
                down,
                block.shape,
                order=0,
                mode="reflect",
                clip=True,
                preserve_range=True,
                anti_aliasing=False,
            )
            volume[box] = up
            sample[key] = volume
        return sample


@dataclass
class CutNoise(Augmentation):
    """Uniform(-scale, scale) noise in a random cuboid, clipped to [0, 1]."""

    length_ratio: float = 0.25
    scale: float = 0.2
    name: ClassVar[str] = "CutNoise"
    touches: ClassVar[str] = "image + img targets"

    def __call__(self, sample: Sample, streams: Streams) -> Sample:
        depth, height, width = sample[IMAGE].shape[-3:]
        z = _region(depth, self.length_ratio, streams) if depth > 1 else (0, 1)
        y = _region(height, self.length_ratio, streams)
        x = _region(width, self.length_ratio, streams)
        box = (slice(*z), slice(*y), slice(*x))
        shape = sample[IMAGE][box].shape
        noise = streams.state.uniform(-self.scale, self.scale, shape)  # shared by img targets
        for key in _images(sample, self):
            volume = np.array(sample[key])
            volume[box] = np.clip(volume[box] + noise, 0, 1)
            sample[key] = volume
        return sample
