"""What each target family costs the data workers, against the affinity target '2'.

Touching instances like PyTC's fixture labels (Voronoi cells of seeds, ids shuffled, small
objects and pockets), tiled to a crop size; per family, the median of `--repeat` calls of
`seg_to_targets` on one crop, in ms and as a ratio to '2' (PyTC's most used target)
measured in the same run:

    .venv/bin/python bench/targets.py [--size 8 256 256] [--repeat 3]

Figures depend on the machine; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.trainer.targets import seg_to_targets

FAMILIES = (
    "0", "1", "2", "2-1-3-3-v2", "3-30-4-0", "4-1-1", "4-1-0",
    "5-2d-0-0-5.0-0", "5-3d-1-0-4.0-0", "6", "6-3d-8-50", "7", "9-4",
)  # fmt: skip


def voronoi_label(shape: tuple[int, int, int], cells: int, seed: int = 0) -> np.ndarray:
    """Touching instances: each voxel takes the id of its nearest seed (z counts 4x)."""
    rng = np.random.default_rng(seed)
    seeds = rng.random((cells, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    scaled = (grid[..., np.newaxis, :] - seeds) * np.array([4.0, 1.0, 1.0])
    nearest = np.argmin((scaled**2).sum(-1), axis=-1)
    label = rng.permutation(cells)[nearest] + 1
    label[rng.random(shape) < 0.002] = 0  # small background pockets
    result: np.ndarray = label.astype(np.uint16)
    return result


def median_ms(label: np.ndarray, option: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        seg_to_targets(label, [option])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(8, 256, 256))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(args.size)
    label = voronoi_label(shape, cells=max(4, shape[1] * shape[2] // 400))
    print(f"crop {list(shape)}, {len(np.unique(label)) - 1} instances")
    median_ms(label, "2", 1)  # warm-up: first calls pay for imports and caches
    reference = median_ms(label, "2", args.repeat)
    for option in FAMILIES:
        ms = median_ms(label, option, args.repeat)
        print(f"target={option:16s} ms={ms:9.1f} ratio_to_affinity={ms / reference:7.1f}")


if __name__ == "__main__":
    main()
