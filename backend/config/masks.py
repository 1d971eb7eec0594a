"""Validation of DATASET.VALID_MASK_NAME against the machine, as the trainer reads it.

The trainer refuses a run whose valid masks are missing, unreadable, fewer or more than
the image volumes, or of another shape than their image (`backend.trainer.data`); these
checks report the same first, at the key. Torch-free: headers only.
"""

from __future__ import annotations

from pathlib import Path

from backend.config.context import Checks
from backend.config.problems import ERROR
from backend.volumes import VolumeError, resolve_volume_paths, volume_info

KEY = "DATASET.VALID_MASK_NAME"


def check_valid_masks(checks: Checks, base_dir: Path) -> None:
    """Errors for valid masks the trainer would refuse (nothing when none are named)."""
    names = checks.value(KEY)
    if not names or names == "None" or not checks.ok(KEY, "DATASET.IMAGE_NAME"):
        return
    root = Path(str(checks.value("DATASET.INPUT_PATH") or "."))
    if not root.is_absolute():
        root = base_dir / root
    try:
        masks = resolve_volume_paths(root, names)
        images = resolve_volume_paths(root, checks.value("DATASET.IMAGE_NAME"))
    except (VolumeError, ValueError, TypeError) as exc:
        checks.report(ERROR, KEY, str(exc), expected="valid mask volumes under INPUT_PATH")
        return
    if len(masks) != len(images):
        checks.report(
            ERROR,
            KEY,
            f"names {len(masks)} volume(s) for {len(images)} image volume(s)",
            expected="one valid mask per image volume, joined with '@'",
            near=("DATASET.IMAGE_NAME",),
        )
        return
    for mask, image in zip(masks, images, strict=True):
        try:
            mask_shape = volume_info(mask).shape
        except VolumeError as exc:
            checks.report(ERROR, KEY, str(exc), expected="a readable volume")
            continue
        try:
            image_shape = volume_info(image).shape
        except VolumeError:
            continue  # reported at DATASET.IMAGE_NAME
        if mask_shape != image_shape:
            checks.report(
                ERROR,
                KEY,
                f"valid mask {mask.name} has shape {list(mask_shape)} but image "
                f"{image.name} has {list(image_shape)}",
                expected="a mask with its image's z, y, x",
            )
