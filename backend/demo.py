"""A small synthetic EM dataset, so Trainboard can be tried without real data (no torch).

`make_demo_dataset(directory)` draws anisotropic EM-like volumes: cells (warped Voronoi
regions) with dark membranes, textured cytoplasm with small vesicles, and mitochondria
(dark-rimmed elongated blobs with cristae) that carry their own instance ids. The
mitochondria are the segmentation target. It writes the volumes as TIFF stacks and two
PyTC configs (2D and 3D U-Net) that train on them out of the box.

Everything comes from `numpy.random.default_rng([seed, volume])`, so the same seed writes
the same bytes every time.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import ndimage

from backend.config.schema import AUGMENTATIONS

# (z, y, x). Small enough that the 2D demo trains on two CPU cores in about a minute.
TRAIN_SHAPE = (16, 256, 256)
VAL_SHAPE = (4, 256, 256)
# EM sections are thicker than a pixel is wide: one z step spans this many yx pixels.
Z_ANISOTROPY = 4.0

_TRAIN_STREAM = 0
_VAL_STREAM = 1


@dataclass(frozen=True, slots=True)
class DemoDataset:
    """Where `make_demo_dataset` wrote everything."""

    directory: Path
    train_image: Path
    train_label: Path
    train_cells: Path
    val_image: Path
    val_label: Path
    val_cells: Path
    config_2d: Path
    config_3d: Path

    @property
    def files(self) -> list[Path]:
        return [
            self.train_image,
            self.train_label,
            self.train_cells,
            self.val_image,
            self.val_label,
            self.val_cells,
            self.config_2d,
            self.config_3d,
        ]


@dataclass(frozen=True, slots=True)
class SyntheticVolume:
    """One drawn volume: the image and both label maps, all (z, y, x)."""

    image: np.ndarray  # uint8
    mitochondria: np.ndarray  # uint16 instance ids, 0 = background
    cells: np.ndarray  # uint16 cell ids, 0 = membrane


def make_demo_dataset(directory: Path, seed: int = 0) -> DemoDataset:
    """Write the demo volumes and configs into `directory` (created if needed)."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    out = DemoDataset(
        directory=directory,
        train_image=directory / "train_image.tif",
        train_label=directory / "train_label.tif",
        train_cells=directory / "train_cells.tif",
        val_image=directory / "val_image.tif",
        val_label=directory / "val_label.tif",
        val_cells=directory / "val_cells.tif",
        config_2d=directory / "demo_2d.yaml",
        config_3d=directory / "demo_3d.yaml",
    )
    train = synthesize_volume(TRAIN_SHAPE, np.random.default_rng([seed, _TRAIN_STREAM]))
    val = synthesize_volume(VAL_SHAPE, np.random.default_rng([seed, _VAL_STREAM]))
    _write_tiff(out.train_image, train.image)
    _write_tiff(out.train_label, train.mitochondria)
    _write_tiff(out.train_cells, train.cells)
    _write_tiff(out.val_image, val.image)
    _write_tiff(out.val_label, val.mitochondria)
    _write_tiff(out.val_cells, val.cells)
    _write_text(out.config_2d, _yaml(demo_config(directory, "2d")))
    _write_text(out.config_3d, _yaml(demo_config(directory, "3d")))
    return out


# ----------------------------------------------------------------------------- drawing


def synthesize_volume(shape: tuple[int, int, int], rng: np.random.Generator) -> SyntheticVolume:
    """Draw one EM-like volume of `shape` from `rng`."""
    cells = _draw_cells(shape, rng)
    membrane = _membranes(cells)
    mito = _draw_mitochondria(cells, membrane, rng)
    image = _render(cells, membrane, mito, rng)
    cell_ids = np.where(membrane, 0, cells).astype(np.uint16)
    return SyntheticVolume(image=image, mitochondria=mito.astype(np.uint16), cells=cell_ids)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]
) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field: np.ndarray = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma
    )
    return field / max(float(field.std()), 1e-6)


def _coarse_noise(rng: np.random.Generator, shape: tuple[int, int, int], step: int) -> np.ndarray:
    """Very smooth unit noise: drawn on a grid `step` times coarser in yx, then upsampled
    (a wide Gaussian on the full grid costs far more for the same look)."""
    depth, height, width = shape
    coarse = _smooth_noise(rng, (depth, -(-height // step) + 1, -(-width // step) + 1), (2, 3, 3))
    zoomed: np.ndarray = ndimage.zoom(coarse, (1, step, step), order=1, grid_mode=False)
    return zoomed[:, :height, :width]


def _draw_cells(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Cell ids from a Voronoi diagram whose coordinates are warped into curved walls."""
    depth, height, width = shape
    # Roughly one cell per 90x90 px area per 90 px of (anisotropic) depth.
    extent = depth * Z_ANISOTROPY * height * width
    n_cells = max(4, round(extent / 90.0**3 * 4))
    seeds = np.ones(shape, dtype=bool)
    points = np.column_stack([rng.integers(0, s, n_cells) for s in shape])
    seeds[points[:, 0], points[:, 1], points[:, 2]] = False
    # The nearest seed of every voxel (in physical units) is its cell.
    _, nearest = ndimage.distance_transform_edt(
        seeds, sampling=(Z_ANISOTROPY, 1.0, 1.0), return_indices=True
    )
    owner = np.zeros(shape, dtype=np.int32)
    owner[points[:, 0], points[:, 1], points[:, 2]] = np.arange(1, n_cells + 1)
    cells = owner[nearest[0], nearest[1], nearest[2]]
    # Warp: look each voxel up at a smoothly displaced position, so walls bend.
    warp = [10.0 * _coarse_noise(rng, shape, 8) for _ in range(2)]
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    coords = np.stack([zz, yy + warp[0], xx + warp[1]])
    warped: np.ndarray = ndimage.map_coordinates(cells, coords, order=0, mode="nearest")
    return warped.astype(np.int32)


def _membranes(cells: np.ndarray) -> np.ndarray:
    """Cell walls: voxels whose in-plane neighbour belongs to another cell, thickened."""
    edge = np.zeros(cells.shape, dtype=bool)
    edge[:, 1:, :] |= cells[:, 1:, :] != cells[:, :-1, :]
    edge[:, :, 1:] |= cells[:, :, 1:] != cells[:, :, :-1]
    result: np.ndarray = ndimage.binary_dilation(edge, structure=np.ones((1, 2, 2), dtype=bool))
    return result


def _draw_mitochondria(
    cells: np.ndarray, membrane: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Instance ids of elongated ellipsoids, each inside one cell and apart from the others."""
    shape = cells.shape
    depth, height, width = shape
    mito = np.zeros(shape, dtype=np.int32)
    # Keep mitochondria off the walls: distance (in px) to the nearest membrane voxel.
    wall_distance = ndimage.distance_transform_edt(~membrane, sampling=(Z_ANISOTROPY, 1.0, 1.0))
    target = int(0.11 * mito.size)  # about 11% of the voxels are mitochondria
    next_id, tries, filled = 1, 0, 0
    while filled < target and tries < 4000:
        tries += 1
        centre = np.array([rng.uniform(0, depth), rng.uniform(0, height), rng.uniform(0, width)])
        semi_long = rng.uniform(9.0, 22.0)
        semi_short = rng.uniform(5.0, 8.5)
        semi_z = rng.uniform(1.2, 3.5)  # in slices
        angle = rng.uniform(0.0, math.pi)
        # Only the bounding box around the centre is computed.
        reach = math.ceil(semi_long) + 1
        z0, z1 = _span(centre[0], math.ceil(semi_z) + 1, depth)
        y0, y1 = _span(centre[1], reach, height)
        x0, x1 = _span(centre[2], reach, width)
        zz, yy, xx = np.meshgrid(
            np.arange(z0, z1) - centre[0],
            np.arange(y0, y1) - centre[1],
            np.arange(x0, x1) - centre[2],
            indexing="ij",
        )
        along = yy * math.cos(angle) + xx * math.sin(angle)
        across = -yy * math.sin(angle) + xx * math.cos(angle)
        inside = (zz / semi_z) ** 2 + (along / semi_long) ** 2 + (across / semi_short) ** 2 <= 1
        box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        cz, cy, cx = (min(int(c), s - 1) for c, s in zip(centre, shape, strict=True))
        own_cell = cells[box] == cells[cz, cy, cx]
        body = inside & own_cell & (wall_distance[box] > 3.0)
        if np.count_nonzero(body) < 60:
            continue
        # Separate instances: no voxel of this one may come within 2 px of another.
        near_other = ndimage.binary_dilation(mito[box] > 0, structure=np.ones((1, 5, 5), bool))
        if np.any(body & near_other):
            continue
        mito[box][body] = next_id
        next_id += 1
        filled += int(np.count_nonzero(body))
    return mito


def _span(centre: float, reach: int, size: int) -> tuple[int, int]:
    return max(0, int(centre) - reach), min(size, int(centre) + reach + 1)


def _render(
    cells: np.ndarray, membrane: np.ndarray, mito: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Grey values: bright textured cytoplasm, dark walls, dark-rimmed striped mitochondria."""
    shape = cells.shape
    n_cells = int(cells.max()) + 1
    # Each cell has its own cytoplasm brightness, like real tissue.
    cell_tone = rng.uniform(150.0, 190.0, n_cells).astype(np.float32)
    image = cell_tone[cells]
    image += 10.0 * _smooth_noise(rng, shape, (0.5, 2.0, 2.0))
    image += 6.0 * _smooth_noise(rng, shape, (0.3, 0.8, 0.8))
    image = _add_vesicles(image, membrane | (mito > 0), rng)
    image = _add_lysosomes(image, membrane | (mito > 0), rng)
    # Mitochondria: a dark envelope, a mid-grey matrix crossed by darker cristae.
    body = mito > 0
    interior = ndimage.binary_erosion(body, structure=np.ones((1, 5, 5), bool))
    rim = body & ~interior
    stripes = 0.5 + 0.5 * np.sin(np.indices(shape, dtype=np.float32)[1] * 0.9)
    cristae = _smooth_noise(rng, shape, (0.5, 1.0, 1.0))
    matrix = 110.0 - 25.0 * stripes * (cristae > -0.3) + 8.0 * cristae
    image = np.where(interior, matrix, image)
    image = np.where(rim, 60.0, image)
    image = np.where(membrane, 55.0 + 10.0 * _smooth_noise(rng, shape, (0.5, 1.5, 1.5)), image)
    # The microscope: a little blur, slice-to-slice brightness drift, shot noise.
    image = np.asarray(ndimage.gaussian_filter(image, sigma=(0.3, 1.0, 1.0)), np.float32)
    image += rng.normal(0.0, 4.0, (shape[0], 1, 1)).astype(np.float32)
    image += rng.normal(0.0, 12.0, shape).astype(np.float32)
    pixels: np.ndarray = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return pixels


def _add_vesicles(image: np.ndarray, occupied: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small round dark-rimmed vesicles: distractors the network must not call mitochondria."""
    shape = image.shape
    count = int(image.size / 6000)
    zz = rng.integers(0, shape[0], count)
    yy = rng.integers(0, shape[1], count)
    xx = rng.integers(0, shape[2], count)
    centres = np.zeros(shape, dtype=bool)
    centres[zz, yy, xx] = True
    centres &= ~occupied
    distance = ndimage.distance_transform_edt(~centres, sampling=(Z_ANISOTROPY, 1.0, 1.0))
    radius = 3.0
    ring = (distance > radius - 1.2) & (distance <= radius)
    core = distance <= radius - 1.2
    image = np.where(ring & ~occupied, 85.0, image)
    return np.where(core & ~occupied, image - 15.0, image).astype(np.float32)


def _add_lysosomes(image: np.ndarray, occupied: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round, evenly dark bodies about as wide as a mitochondrion but without its rim and
    cristae: the distractors that make the network learn shape and texture, not darkness."""
    depth, height, width = image.shape
    count = int(image.size / 20000)
    keep_out = ndimage.binary_dilation(occupied, structure=np.ones((1, 5, 5), bool))
    for _ in range(count):
        cz, cy, cx = (float(rng.uniform(0, n)) for n in image.shape)
        radius = float(rng.uniform(4.0, 7.0))
        tone = float(rng.uniform(70.0, 95.0))
        reach = int(radius) + 1
        z0, z1 = _span(cz, 1, depth)
        y0, y1 = _span(cy, reach, height)
        x0, x1 = _span(cx, reach, width)
        zz, yy, xx = np.meshgrid(
            (np.arange(z0, z1) - cz) * Z_ANISOTROPY,
            np.arange(y0, y1) - cy,
            np.arange(x0, x1) - cx,
            indexing="ij",
        )
        box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        blob = (zz**2 + yy**2 + xx**2 <= radius**2) & ~keep_out[box]
        image[box][blob] = tone
    return image


# ----------------------------------------------------------------------------- writing


def _write_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    # Write beside, then rename: a reader never sees half a file.
    partial = path.with_name(path.name + ".partial")
    tifffile.imwrite(partial, np.ascontiguousarray(array), photometric="minisblack")
    partial.replace(path)


def _write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


class _ConfigDumper(yaml.SafeDumper):
    """Sections as blocks, lists inline (`[1, 128, 128]`), as PyTC configs are written."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # never `&id001` anchors, even for equal lists


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_ConfigDumper.add_representer(list, _represent_list)


def _yaml(config: dict[str, Any]) -> str:
    header = "# Trainboard demo config, written by `trainboard demo-data`. PyTC format.\n"
    body = yaml.dump(config, Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False)
    return header + body


def _disabled_augmentations() -> dict[str, Any]:
    # The demo trains in about a minute with FLIP and ROTATE only; it switches PyTC's other
    # default augmentations off explicitly (they pay off over longer training), so the
    # config says what it trains with. `trainboard augment-preview` shows them all.
    return {name: {"ENABLED": False} for name in AUGMENTATIONS if name not in DEMO_AUGMENTATIONS}


DEMO_AUGMENTATIONS = ("FLIP", "ROTATE")


def demo_config(directory: Path, kind: str) -> dict[str, Any]:
    """The PyTC config for the demo, `kind` "2d" or "3d", with absolute paths."""
    if kind not in ("2d", "3d"):
        raise ValueError(f"demo config kind must be '2d' or '3d', not {kind!r}")
    do_2d = kind == "2d"
    directory = Path(directory).resolve()
    filters = [16, 32, 64, 128] if do_2d else [12, 24, 48, 64]
    input_size = [1, 128, 128] if do_2d else [8, 64, 64]
    # Measured on two CPU cores: the 2D demo passes validation Dice 0.85 by about
    # iteration 50 and ends near 0.94 (about a minute); the 3D demo is near 0.94 by 100.
    iterations = 200
    return {
        # Patches cost milliseconds: a worker process would only compete with the model.
        "SYSTEM": {"NUM_GPUS": 0, "NUM_CPUS": 0},
        "MODEL": {
            "ARCHITECTURE": "unet_2d" if do_2d else "unet_3d",
            "BLOCK_TYPE": "residual",
            "FILTERS": filters,
            "ISOTROPY": [False, False, True, True],
            "INPUT_SIZE": input_size,
            "OUTPUT_SIZE": list(input_size),
            "IN_PLANES": 1,
            "OUT_PLANES": 1,
            "NORM_MODE": "bn",
            "ACT_MODE": "elu",
            "TARGET_OPT": ["0"],
            "LOSS_OPTION": [["WeightedBCEWithLogitsLoss", "DiceLoss"]],
            "LOSS_WEIGHT": [[1.0, 1.0]],
            "WEIGHT_OPT": [["1", "0"]],
            "OUTPUT_ACT": [["none", "sigmoid"]],
        },
        "DATASET": {
            "INPUT_PATH": str(directory),
            "IMAGE_NAME": "train_image.tif",
            "LABEL_NAME": "train_label.tif",
            "VAL_IMAGE_NAME": "val_image.tif",
            "VAL_LABEL_NAME": "val_label.tif",
            "OUTPUT_PATH": str(directory / "outputs" / f"demo_{kind}"),
            "PAD_SIZE": [0, 16, 16] if do_2d else [2, 16, 16],
            "PAD_MODE": "reflect",
            "DO_2D": do_2d,
            "MEAN": 0.5,
            "STD": 0.5,
        },
        "AUGMENTOR": {
            "ROTATE": {"ENABLED": True, "ROT90": True, "P": 1.0},
            "FLIP": {"ENABLED": True, "P": 1.0, "DO_ZTRANS": 0},
            **_disabled_augmentations(),
        },
        "SOLVER": {
            "NAME": "Adam",
            "LR_SCHEDULER_NAME": "WarmupCosineLR",
            "BASE_LR": 0.002,
            "WARMUP_ITERS": 20,
            "WEIGHT_DECAY": 0.0001,
            "SAMPLES_PER_BATCH": 4,
            "ITERATION_TOTAL": iterations,
            "ITERATION_SAVE": 100,
            "ITERATION_VAL": 50,
        },
        "MONITOR": {"ITERATION_NUM": [10, 50]},
    }


# ----------------------------------------------------------------------------- CLI


def add_demo_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `demo-data DIR [--seed N]` on a CLI's subcommands."""
    parser = subparsers.add_parser(
        "demo-data",
        help="write a small synthetic EM dataset and 2D/3D demo configs",
        description="Write a synthetic EM dataset (mitochondria segmentation) and two "
        "PyTC configs that train on it: demo_2d.yaml and demo_3d.yaml.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="where to write the files")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.set_defaults(func=_demo_command)


def _demo_command(args: argparse.Namespace) -> int:
    try:
        dataset = make_demo_dataset(args.directory, seed=args.seed)
    except OSError as exc:
        print(f"error: cannot write the demo dataset to {args.directory}: {exc}", file=sys.stderr)
        return 1
    print(f"Wrote the demo dataset to {dataset.directory}:")
    for path in dataset.files:
        print(f"  {path.name:<16} {path.stat().st_size:>10,} bytes")
    print(f"Train on it with the config {dataset.config_2d} (2D) or {dataset.config_3d} (3D).")
    return 0
