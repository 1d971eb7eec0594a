"""The validation hold-out: which z-slices training gives up when no VAL_* volumes are named.

One rule, read by the trainer (`backend.trainer.data` splits the volumes with it) and by
validation (`check_holdout` warns with the slices it takes), so what the warning names is
what the run holds out. Torch-free.
"""

from __future__ import annotations

import math
from pathlib import Path

from backend.config.context import Checks
from backend.config.problems import WARNING
from backend.volumes import VolumeError, resolve_volume_paths, volume_info

# This share of each training volume's z-slices (at least one) is held out for
# validation, taken from the end of the stack.
HELD_OUT_FRACTION = 0.15


def held_out_slices(depth: int, fraction: float = HELD_OUT_FRACTION) -> range:
    """The z-slices held out of a training volume `depth` slices deep (empty when < 2)."""
    if depth < 2:
        return range(depth, depth)
    count = min(depth - 1, max(1, math.ceil(depth * fraction)))
    return range(depth - count, depth)


def describe_slices(name: str, depth: int) -> str:
    """'train.tif: slices 13-15 of 0-15 (3 of 16)'."""
    held = held_out_slices(depth)
    if not held:
        return f"{name}: a single slice, nothing can be held out"
    span = f"slice {held.start}" if len(held) == 1 else f"slices {held.start}-{held.stop - 1}"
    return f"{name}: {span} of 0-{depth - 1} ({len(held)} of {depth})"


def _has(value: object) -> bool:
    return bool(value) and value != "None"


def _training_depths(checks: Checks, base_dir: Path) -> list[tuple[str, int]] | None:
    """(name, z-depth) of every training image volume; None when one cannot be read."""
    root = Path(str(checks.value("DATASET.INPUT_PATH") or "."))
    if not root.is_absolute():
        root = base_dir / root
    try:
        paths = resolve_volume_paths(root, checks.value("DATASET.IMAGE_NAME"))
        return [(path.name, int(volume_info(path).shape[0])) for path in paths]
    except (VolumeError, OSError, ValueError, TypeError):
        return None  # the path checks report what is wrong with the volumes


def check_holdout(checks: Checks, base_dir: Path | None = None) -> None:
    """Warn, naming the slices when the volumes can be read, that training gives up the
    last HELD_OUT_FRACTION of its z-slices because no validation volumes are named."""
    if _has(checks.value("DATASET.VAL_IMAGE_NAME")) or not _has(checks.value("DATASET.IMAGE_NAME")):
        return
    share = f"{HELD_OUT_FRACTION:.0%}"
    depths = _training_depths(checks, base_dir) if base_dir is not None else None
    if depths:
        where = "; ".join(describe_slices(name, depth) for name, depth in depths)
        message = f"no validation volumes: these z-slices are held out of training ({where})"
    else:
        message = (
            f"no validation volumes: the last {share} of the z-slices (at least one) of every "
            "training volume are held out of training"
        )
    checks.report(
        WARNING,
        "DATASET.VAL_IMAGE_NAME",
        message,
        expected="validation volumes, or the hold-out this warning describes",
        suggestion="set DATASET.VAL_IMAGE_NAME and VAL_LABEL_NAME to train on every slice",
        near=("DATASET.IMAGE_NAME",),
    )
