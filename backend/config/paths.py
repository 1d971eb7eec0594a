"""Checks against this machine: folders and volumes exist, shapes agree, output writable.

Volume names are read as the trainer reads them (backend.volumes): several volumes joined
with '@' or listed, names relative to DATASET.INPUT_PATH, absolute names kept, a glob
(`image/*.png`) is one volume stacked from its 2D slices, `file.h5:name` names a dataset.
"""

from __future__ import annotations

import difflib
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.config.context import Checks, show
from backend.config.problems import ERROR, WARNING
from backend.config.shapes import HDF5_SUFFIXES, Shape, ShapeError, volume_shape

GLOB_CHARS = frozenset("*?[")
PAIRS = (
    ("DATASET.IMAGE_NAME", "DATASET.LABEL_NAME"),
    ("DATASET.VAL_IMAGE_NAME", "DATASET.VAL_LABEL_NAME"),
)


@dataclass(frozen=True, slots=True)
class Volume:
    name: str  # as written
    paths: tuple[Path, ...]  # one file, or the slices of a stack
    stack: bool
    dataset: str | None = None  # an HDF5 dataset named as `file.h5:dataset`


def split_names(value: Any) -> list[str]:
    """'a.h5@b.h5' or ['a.h5', 'b.h5@c.h5'] -> ['a.h5', 'b.h5', 'c.h5']."""
    items = value if isinstance(value, list) else [value]
    return [
        n.strip() for item in items if isinstance(item, str) for n in item.split("@") if n.strip()
    ]


def check_machine(checks: Checks, base_dir: Path) -> None:
    folder = _check_input_dir(checks, base_dir)
    for image_key, label_key in PAIRS:
        images = _resolve_key(checks, image_key, folder)
        labels = _resolve_key(checks, label_key, folder)
        if images and labels:
            _compare_shapes(checks, image_key, label_key, images, labels)
    _check_output_dir(checks, base_dir)
    _check_pretrained(checks, base_dir)
    _check_gpus(checks)


# --- folders and volumes ------------------------------------------------------------------


def _check_input_dir(checks: Checks, base_dir: Path) -> Path | None:
    """The input folder, or None when volume names cannot be resolved against it."""
    key = "DATASET.INPUT_PATH"
    if not checks.ok(key):
        return None
    written: str = checks.value(key)
    folder = base_dir / written
    if folder.is_dir():
        return folder
    suggestion = _did_you_mean(folder, base_dir) or "set DATASET.INPUT_PATH to your data folder"
    if not checks.user_set(key):
        message = f"is PyTC's placeholder {written!r}: no such folder"
    elif folder.exists():
        message = f"{str(folder)!r} is a file, not a folder"
    elif "@" in written:
        # PyTC pairs '@'-joined folders with the volumes; the trainer reads one folder.
        message = f"one folder per volume ({written!r}) is not supported"
        suggestion = "put the volumes in one folder, or give their names as absolute paths"
    else:
        message = f"folder {str(folder)!r} does not exist"
    checks.report(
        ERROR,
        key,
        message,
        expected="an existing folder holding the volumes",
        suggestion=suggestion,
    )
    return None


def _resolve_key(checks: Checks, key: str, folder: Path | None) -> list[Volume]:
    """The volumes `key` names; problems for those missing. Empty if any is missing."""
    if folder is None or not checks.ok(key):
        return []
    names = split_names(checks.value(key))
    volumes = [_resolve_one(checks, key, name, folder) for name in names]
    found = [v for v in volumes if v is not None]
    return found if len(found) == len(names) else []


def split_dataset(name: str) -> tuple[str, str | None]:
    """`file.h5:dataset` -> ('file.h5', 'dataset'), as backend.volumes reads HDF5 names."""
    lowered = name.lower()
    for suffix in HDF5_SUFFIXES:
        index = lowered.rfind(suffix + ":")
        if index >= 0:
            end = index + len(suffix)
            return name[:end], name[end + 1 :] or None
    return name, None


def _resolve_one(checks: Checks, key: str, name: str, folder: Path) -> Volume | None:
    file_name, dataset = split_dataset(name)
    path = Path(file_name) if os.path.isabs(file_name) else folder / file_name
    if GLOB_CHARS & set(file_name):
        matched = tuple(sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file()))
        if matched:
            return Volume(name, matched, stack=True)
        parent = path.parent
        checks.report(
            ERROR,
            key,
            f"no files match {name!r}"
            + ("" if parent.is_dir() else f" ({str(parent)!r} does not exist)"),
            expected="a pattern matching the 2D slices of a stack",
            suggestion=_folder_contents(parent)
            if parent.is_dir()
            else _did_you_mean(parent, folder),
        )
        return None
    if path.exists():
        return Volume(name, (path,), stack=False, dataset=dataset)
    checks.report(
        ERROR,
        key,
        f"volume {name!r} does not exist ({str(path)!r})",
        expected="an existing file (.h5, .tif, .npy, .png stack, ...)",
        suggestion=_did_you_mean(path, folder),
    )
    return None


def _did_you_mean(path: Path, relative_to: Path) -> str:
    """Close names at the first missing part of `path`: the usual typo is there."""
    missing = path
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent
    parent = missing.parent
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return ""
    close = difflib.get_close_matches(missing.name, entries, n=3, cutoff=0.5)
    if not close:
        return ""
    shown = [_relative(parent / c, relative_to) for c in close]
    return "did you mean " + " or ".join(repr(s) for s in shown) + "?"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _folder_contents(folder: Path, limit: int = 5) -> str:
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return ""
    if not entries:
        return f"{str(folder)!r} is empty"
    more = ", ..." if len(entries) > limit else ""
    return f"{str(folder)!r} holds " + ", ".join(entries[:limit]) + more


# --- shapes -------------------------------------------------------------------------------


def _shape(checks: Checks, key: str, volume: Volume) -> Shape | None:
    try:
        return volume_shape(volume.paths, volume.stack, volume.dataset)
    except ShapeError as exc:
        checks.report(
            ERROR, key, f"cannot read volume {volume.name!r}: {exc}", expected="a readable volume"
        )
        return None


def _compare_shapes(
    checks: Checks, image_key: str, label_key: str, images: list[Volume], labels: list[Volume]
) -> None:
    if len(images) != len(labels):
        checks.report(
            ERROR,
            label_key,
            f"names {len(labels)} volume(s) for {len(images)} image volume(s)",
            expected="one label volume per image volume",
            near=(image_key,),
        )
        return
    for image, label in zip(images, labels, strict=True):
        image_shape = _shape(checks, image_key, image)
        label_shape = _shape(checks, label_key, label)
        if image_shape is None or label_shape is None:
            continue
        spatial = _spatial(image_shape, len(label_shape))
        if spatial != label_shape:
            checks.report(
                ERROR,
                label_key,
                f"label {label.name!r} has shape {show(list(label_shape))} but image "
                f"{image.name!r} has {show(list(image_shape))}",
                expected="labels with the image's z, y, x",
                suggestion="check that the label belongs to the image and has the same size",
            )
        else:
            _check_patch_fits(checks, image, spatial)


def _spatial(image_shape: Shape, label_ndim: int) -> Shape:
    """Drop a leading channel axis an image may have (c, z, y, x) that its label has not."""
    if len(image_shape) == label_ndim + 1:
        return image_shape[1:]
    return image_shape


def _check_patch_fits(checks: Checks, image: Volume, shape: Shape) -> None:
    if not checks.ok("MODEL.INPUT_SIZE", "DATASET.PAD_SIZE", "DATASET.DO_2D") or len(shape) < 2:
        return
    zyx = (1, *shape) if len(shape) == 2 else shape[-3:]
    size = checks.value("MODEL.INPUT_SIZE")
    pad = checks.value("DATASET.PAD_SIZE")
    axes = (1, 2) if checks.value("DATASET.DO_2D") else (0, 1, 2)
    room = [zyx[i] + 2 * pad[i] for i in range(3)]
    if all(size[i] <= room[i] for i in axes):
        return
    fitted = [min(size[i], room[i]) if i in axes else size[i] for i in range(3)]
    checks.report(
        ERROR,
        "MODEL.INPUT_SIZE",
        f"patch {show(size)} is larger than volume {image.name!r} {show(list(zyx))} "
        f"with padding {show(pad)}",
        expected=f"at most {show(room)} (volume + 2 x PAD_SIZE)",
        suggestion=f"INPUT_SIZE: {show(fitted)} or a larger DATASET.PAD_SIZE",
    )


# --- output, pretrained weights, devices --------------------------------------------------


def _check_output_dir(checks: Checks, base_dir: Path) -> None:
    key = "DATASET.OUTPUT_PATH"
    if not checks.ok(key):
        return
    path = base_dir / checks.value(key)
    reason = output_dir_problem(path)
    if reason:
        checks.report(
            ERROR,
            key,
            reason,
            expected="a folder that exists and is writable, or can be created",
            suggestion="choose a folder you can write to",
        )


def output_dir_problem(path: Path) -> str:
    """Why `path` cannot hold checkpoints ('' if it can): it or its nearest parent."""
    if path.exists():
        if not path.is_dir():
            return f"{str(path)!r} is a file, not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{str(path)!r} is not writable"
        return ""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {str(path)!r}: {str(parent)!r} is a file"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {str(path)!r}: {str(parent)!r} is not writable"
    return ""


def _check_pretrained(checks: Checks, base_dir: Path) -> None:
    key = "MODEL.PRE_MODEL"
    if not checks.ok(key) or not checks.value(key):
        return
    path = base_dir / checks.value(key)
    if not path.is_file():
        checks.report(
            ERROR,
            key,
            f"pretrained weights {str(path)!r} do not exist",
            expected="an existing checkpoint file, or '' to start from scratch",
            suggestion=_did_you_mean(path, base_dir),
        )


def visible_gpus() -> int:
    """CUDA devices this process could use, found without importing torch."""
    devices = len(glob.glob("/dev/nvidia[0-9]*"))
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return devices
    ids = []
    for item in env.split(","):
        if not item.strip() or item.strip().startswith("-"):
            break  # CUDA stops at the first invalid id
        ids.append(item)
    return min(len(ids), devices)


def _data_parallel_processes(checks: Checks) -> bool:
    """PyTC's DDP switches (SYSTEM.PARALLEL DDP, SYSTEM / DATASET.DISTRIBUTED) are on."""
    names = ("SYSTEM.PARALLEL", "SYSTEM.DISTRIBUTED", "DATASET.DISTRIBUTED")
    values = {name: checks.value(name) for name in names if checks.ok(name)}
    return values.get("SYSTEM.PARALLEL") == "DDP" or any(
        values.get(name) is True for name in names[1:]
    )


def _check_gpus(checks: Checks) -> None:
    key = "SYSTEM.NUM_GPUS"
    if not checks.ok(key):
        return
    wanted = checks.value(key)
    have = visible_gpus()
    if wanted > have:
        uses = f"{have} GPU(s)" if have else "the CPU"
        if have > 1 and _data_parallel_processes(checks):
            # DDP's batch is per process: fewer processes is a smaller global batch.
            uses += f" in {have} DDP processes of SOLVER.SAMPLES_PER_BATCH each"
        checks.report(
            WARNING,
            key,
            f"{wanted} GPU(s) asked for, {have} visible: training uses {uses}",
            expected=f"at most {have}",
            suggestion=f"NUM_GPUS: {have}",
        )
