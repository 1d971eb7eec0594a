"""What augmentation does to the chosen data: a few augmented samples as PNG images.

`preview(cfg, base_dir)` cuts `count` samples from the first training volume pair
(DATASET.IMAGE_NAME / LABEL_NAME under INPUT_PATH), runs the augmentor the config
describes on each, and returns the middle z-slice of every augmented patch (image and
label) with the names of the augmentations that ran. `grid_png` lays them out in one
image (`trainboard augment-preview`); the server sends them to the wizard's panel.

Bounded: at most MAX_SAMPLES samples; only the z-slices one sample needs are read (a
`.npy` stays memory-mapped), and never more than MAX_READ_VOXELS voxels; a patch larger
than MAX_SAMPLE_VOXELS is refused. Seeded: the same (config, seed) gives the same
images. With `confine_to`, every volume must lie inside that folder. Torch-free.
"""

from __future__ import annotations

import glob
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from backend.augment.base import Streams
from backend.augment.compose import Compose, build_augmentor
from backend.config.load import LoadedConfig
from backend.config.problems import Problem
from backend.config.validate import validate
from backend.security import PathError, confine
from backend.volumes import (
    VolumeError,
    colorize_labels,
    is_glob,
    read_slice,
    resolve_volume_paths,
    split_dataset,
    volume_info,
)

MAX_SAMPLES = 8
MAX_SAMPLE_VOXELS = 2**23  # 8 Mi voxels: (18, 680, 680), far above any PyTC patch
MAX_READ_VOXELS = 2**26  # the z-slices read for the samples: 64 Mi voxels at most
DISPLAY_SIZE = 160  # patches are shown at least this many pixels wide


class PreviewError(ValueError):
    """The preview cannot be made; the message says what to change.

    `code`: 'invalid_config' (a setting makes it impossible), 'invalid_volume' (the data
    cannot be read) or 'outside_data_root' (a volume lies outside `confine_to`).
    """

    def __init__(self, message: str, code: str = "invalid_config") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PreviewSample:
    """The middle z-slice of one augmented patch, and what was applied (in order)."""

    image_png: bytes
    label_png: bytes
    applied: tuple[str, ...]
    image: np.ndarray  # uint8 (y, x)
    label: np.ndarray  # uint8 RGB (y, x, 3)


def blocking_problems(loaded: LoadedConfig) -> list[Problem]:
    """The errors that stop a preview: a file that did not load, or a bad AUGMENTOR or
    DATASET setting. A model error does not: the data can be shown while it is fixed."""
    problems = validate(loaded, check_paths=False)
    return [
        p
        for p in problems
        if p.is_error and (not loaded.complete or str(p.key).split(".")[0] in _READ_SECTIONS)
    ]


_READ_SECTIONS = ("AUGMENTOR", "DATASET")


def _input_size(cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    try:
        size = [int(s) for s in cfg["MODEL"]["INPUT_SIZE"]]
    except (TypeError, ValueError):
        raise PreviewError("MODEL.INPUT_SIZE must be three sizes (z, y, x)") from None
    if len(size) == 2:
        size.insert(0, 1)
    if len(size) != 3 or min(size) < 1:
        raise PreviewError(f"MODEL.INPUT_SIZE {size} must be three positive sizes (z, y, x)")
    if bool(cfg["DATASET"].get("DO_2D", False)):
        size[0] = 1
    return size[0], size[1], size[2]


def _volume(cfg: Mapping[str, Any], key: str, base_dir: Path, confine_to: Path | None) -> Path:
    dataset = cfg["DATASET"]
    root = Path(str(dataset.get("INPUT_PATH") or "."))
    if not root.is_absolute():
        root = base_dir / root
    names = dataset.get(key)
    if not names:
        raise PreviewError(f"DATASET.{key} is not set: choose the training volumes first")
    try:
        path = resolve_volume_paths(root, names)[0]
        if confine_to is not None:
            file, _ = split_dataset(path)
            slices = glob.glob(str(file)) if is_glob(file) else []
            for each in [str(file), *slices]:
                confine(confine_to, each)  # a symlinked slice must not lead out either
    except PathError as exc:
        message = f"DATASET.{key}: {exc}; volumes must lie in the data root"
        raise PreviewError(message, "outside_data_root") from None
    except (VolumeError, ValueError) as exc:
        raise PreviewError(f"DATASET.{key}: {exc}", "invalid_volume") from None
    return path


def _read_block(path: Path, first: int, depth: int, total: int) -> np.ndarray:
    """Slices first .. first + depth - 1, mirrored where they run past the volume."""
    index = np.arange(first, first + depth)
    period = max(2 * total - 2, 1)
    index = np.mod(index, period)
    index = np.where(index >= total, period - index, index)
    return np.stack([np.asarray(read_slice(path, int(z))) for z in index])


def _load(
    cfg: Mapping[str, Any], sample: tuple[int, int, int], base_dir: Path, confine_to: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """The z-slices the samples need: image scaled to [0, 1], label as read."""
    image_path = _volume(cfg, "IMAGE_NAME", base_dir, confine_to)
    label_path = _volume(cfg, "LABEL_NAME", base_dir, confine_to)
    try:
        info = volume_info(image_path)
        label_info = volume_info(label_path)
    except VolumeError as exc:
        raise PreviewError(str(exc), "invalid_volume") from None
    if info.shape != label_info.shape:
        raise PreviewError(
            f"image {image_path.name} {list(info.shape)} and label {label_path.name} "
            f"{list(label_info.shape)} differ in shape",
            "invalid_volume",
        )
    total, height, width = info.shape
    if sample[0] * height * width > MAX_READ_VOXELS:
        raise PreviewError(
            f"previewing needs {sample[0]} slices of {height} x {width}: more than "
            f"{MAX_READ_VOXELS:,} voxels; preview on a smaller volume"
        )
    first = max(0, total // 2 - sample[0] // 2)
    try:
        raw = _read_block(image_path, first, sample[0], total)
        label = _read_block(label_path, first, sample[0], total)
    except VolumeError as exc:
        raise PreviewError(str(exc), "invalid_volume") from None
    if raw.dtype == np.uint8:
        image = raw.astype(np.float32) / 255.0
    else:
        low, high = float(np.min(raw)), float(np.max(raw))
        image = (raw.astype(np.float32) - low) / (high - low if high > low else 1.0)
    return image, label


def _cut(volume: np.ndarray, origin: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """A (z, size) block at `origin` in y and x, mirrored where it runs past the volume."""
    grids = []
    for start, length, n in zip(origin, size, volume.shape[1:], strict=True):
        index = np.arange(start, start + length)
        period = max(2 * n - 2, 1)
        index = np.mod(index, period)
        grids.append(np.where(index >= n, period - index, index))
    return volume[:, grids[0][:, None], grids[1][None, :]]


def preview(
    cfg: Mapping[str, Any],
    base_dir: Path,
    count: int = 4,
    seed: int = 0,
    confine_to: Path | None = None,
) -> list[PreviewSample]:
    """`count` augmented samples of the first training volume pair (see the module doc)."""
    if not 1 <= count <= MAX_SAMPLES:
        raise PreviewError(f"count must be 1 to {MAX_SAMPLES}, got {count}")
    patch = _input_size(cfg)
    compose = build_augmentor(cfg, patch) or Compose([], patch)
    sample = compose.sample_size
    if math.prod(sample) > MAX_SAMPLE_VOXELS:
        raise PreviewError(
            f"the augmentor needs samples of {list(sample)} for MODEL.INPUT_SIZE "
            f"{list(patch)}: too large to preview (at most {MAX_SAMPLE_VOXELS:,} voxels)"
        )
    image, label = _load(cfg, sample, base_dir, confine_to)
    out = []
    for index in range(count):
        rng = np.random.default_rng([seed % 2**63, index])
        origin = tuple(
            int(rng.integers(0, max(n - s, 0) + 1)) if n >= s else (n - s) // 2
            for n, s in zip(image.shape[1:], sample[1:], strict=True)
        )
        block = {
            "image": _cut(image, (origin[0], origin[1]), (sample[1], sample[2])),
            "label": _cut(label, (origin[0], origin[1]), (sample[1], sample[2])),
        }
        applied = compose.apply(block, Streams.from_generator(rng))
        middle = applied.sample["image"].shape[0] // 2
        grey = (np.clip(applied.sample["image"][middle], 0, 1) * 255 + 0.5).astype(np.uint8)
        colours = colorize_labels(applied.sample["label"][middle])
        out.append(PreviewSample(_png(grey), _png(colours), applied.applied, grey, colours))
    return out


def _enlarge(array: np.ndarray) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(array))
    factor = max(1, math.ceil(DISPLAY_SIZE / max(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    _enlarge(array).save(buffer, format="PNG")
    return buffer.getvalue()


def grid_png(samples: list[PreviewSample]) -> bytes:
    """One PNG: a row per sample, image and label side by side, what ran written below."""
    tiles = [(_enlarge(s.image).convert("RGB"), _enlarge(s.label)) for s in samples]
    width, height = tiles[0][0].size
    caption, gap = 28, 8
    grid = Image.new(
        "RGB", (2 * width + 3 * gap, len(tiles) * (height + caption + gap) + gap), "white"
    )
    draw = ImageDraw.Draw(grid)
    for row, ((image, label), sample) in enumerate(zip(tiles, samples, strict=True)):
        top = gap + row * (height + caption + gap)
        grid.paste(image, (gap, top))
        grid.paste(label, (2 * gap + width, top))
        text = ", ".join(sample.applied) or "nothing applied"
        for line, chunk in enumerate(_wrap(text, max(8, (2 * width) // 6))):
            draw.text((gap, top + height + 2 + 12 * line), chunk, fill="black")
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line][:2]
