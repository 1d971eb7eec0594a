"""Shapes of volumes on disk, read from headers only (no torch, no full loads).

Validation compares image and label shapes before a run starts; a multi-gigabyte volume
must not be read for that. Each format is probed the cheap way: the .npy header through
a memory map, the TIFF series metadata, the HDF5 dataset header, the PNG/JPEG header of
the first slice of a stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

Shape = tuple[int, ...]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


class ShapeError(ValueError):
    """The file exists but its shape cannot be read (corrupt, or a format we do not know)."""


def volume_shape(paths: Sequence[Path], stack: bool, dataset: str | None = None) -> Shape | None:
    """Shape of one volume: a single file, or a stack of 2D slices (z = number of files).

    None when the format is one we do not probe (a PyTC tile .json, a folder).
    """
    if stack:
        return stack_shape(paths)
    return file_shape(paths[0], dataset)


def file_shape(path: Path, dataset: str | None = None) -> Shape | None:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _npy_shape(path)
        if suffix in TIFF_SUFFIXES:
            return _tiff_shape(path)
        if suffix in HDF5_SUFFIXES:
            return _hdf5_shape(path, dataset)
        if suffix in IMAGE_SUFFIXES:
            return (1, *_image_size(path))
    except ShapeError:
        raise
    except Exception as exc:  # each reader raises its own kinds; all mean "unreadable"
        raise ShapeError(f"{path.name}: {exc}") from exc
    return None


def stack_shape(paths: Sequence[Path]) -> Shape | None:
    """A glob of 2D slices: (number of slices, height, width of the first slice)."""
    if not paths:
        return None
    first = paths[0]
    if first.suffix.lower() in IMAGE_SUFFIXES:
        try:
            return (len(paths), *_image_size(first))
        except Exception as exc:
            raise ShapeError(f"{first.name}: {exc}") from exc
    shape = file_shape(first)
    if shape is None:
        return None
    return (len(paths), *shape[-2:])


def _npy_shape(path: Path) -> Shape:
    # mmap_mode reads the header and maps the data lazily: nothing is loaded.
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return tuple(int(n) for n in array.shape)


def _tiff_shape(path: Path) -> Shape:
    try:
        import tifffile
    except ImportError as exc:
        raise ShapeError("tifffile is not installed") from exc
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ShapeError(f"{path.name}: no image data")
        return tuple(int(n) for n in tif.series[0].shape)


def _hdf5_shape(path: Path, dataset: str | None) -> Shape:
    """The named dataset, else the first one, as PyTC reads an HDF5 volume."""
    try:
        import h5py
    except ImportError as exc:
        raise ShapeError("h5py is not installed") from exc
    with h5py.File(path, "r") as f:
        if dataset is not None:
            if not isinstance(f.get(dataset), h5py.Dataset):
                raise ShapeError(f"{path.name}: no dataset {dataset!r}")
            return tuple(int(n) for n in f[dataset].shape)
        found: list[tuple[int, ...]] = []

        def visit(_name: str, obj: object) -> bool | None:
            if isinstance(obj, h5py.Dataset):
                found.append(tuple(int(n) for n in obj.shape))
                return True  # stop at the first one
            return None

        f.visititems(visit)
        if not found:
            raise ShapeError(f"{path.name}: no dataset in the file")
        return found[0]


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:  # reads the header; pixels load lazily
        width, height = im.size
    return height, width
