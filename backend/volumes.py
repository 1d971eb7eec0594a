"""Reading image and label volumes, and drawing them as PNG (numpy only: the server uses it).

Every volume comes back as a (z, y, x) array; a 2D image becomes z = 1.

Formats (the same ones PyTorch Connectomics reads):

- HDF5 (`.h5`, `.hdf5`): the first top-level dataset when none is named; name one with
  `file.h5:dataset` or the `dataset` argument. External links, virtual datasets and
  external storage (data in other files) are refused.
- TIFF (`.tif`, `.tiff`): a multi-page stack, or one page.
- PNG / JPEG stacks given as a glob (`image/*.png`), one slice per file in sorted name
  order; a single PNG/JPEG file is a one-slice volume.
- NumPy (`.npy`): memory-mapped read-only, so a big volume is not copied into memory.

Paths are taken as given: confining them to a data root is the server's job.
"""

from __future__ import annotations

import glob
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HDF5_SUFFIXES = (".h5", ".hdf5")
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPY_SUFFIXES = (".npy",)
SUPPORTED_SUFFIXES = HDF5_SUFFIXES + TIFF_SUFFIXES + IMAGE_SUFFIXES + NPY_SUFFIXES

_GLOB_CHARS = frozenset("*?[")
_SUPPORTED_TEXT = "HDF5 (.h5/.hdf5), TIFF (.tif/.tiff), NumPy (.npy), or a PNG/JPEG glob"


class VolumeError(Exception):
    """A volume that cannot be read; the message says what is wrong and what to do."""


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """What a volume is, learned from its header where the format allows.

    `shape` is (z, y, x); `size_bytes` is what the file(s) occupy on disk.
    """

    shape: tuple[int, int, int]
    dtype: str
    format: str
    size_bytes: int

    @property
    def nbytes(self) -> int:
        """Bytes the volume takes once read into memory."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


# ----------------------------------------------------------------------------- names


def is_glob(name: str | Path) -> bool:
    """True when `name` is a glob pattern (a slice stack), not one file."""
    return any(ch in _GLOB_CHARS for ch in str(name))


def resolve_volume_paths(input_path: str | Path, names: str | Sequence[str]) -> list[Path]:
    """Expand PyTC volume names into paths: `a.h5@b.h5` is two volumes.

    Relative names are joined to `input_path`, absolute ones kept. A glob name
    (`image/*.png`) stays one entry: it is one volume, a stack of slices.
    """
    parts = [names] if isinstance(names, str) else list(names)
    base = Path(input_path)
    paths: list[Path] = []
    for part in parts:
        for name in str(part).split("@"):
            name = name.strip()
            if name:
                path = Path(name)
                paths.append(path if path.is_absolute() else base / path)
    if not paths:
        raise VolumeError(
            f"no volume names in {names!r}: give one file name, or several joined with '@'"
        )
    return paths


def split_dataset(path: str | Path, dataset: str | None = None) -> tuple[Path, str | None]:
    """Split `file.h5:dataset` into the file and the dataset name."""
    text = str(path)
    for suffix in HDF5_SUFFIXES:
        marker = suffix + ":"
        index = text.lower().rfind(marker)
        if index >= 0:
            named = text[index + len(marker) :]
            return Path(text[: index + len(suffix)]), dataset or named or None
    return Path(text), dataset


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if is_glob(path):
        return "jpeg-stack" if suffix in (".jpg", ".jpeg") else "png-stack"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in NPY_SUFFIXES:
        return "npy"
    if suffix in IMAGE_SUFFIXES:
        return "jpeg" if suffix in (".jpg", ".jpeg") else "png"
    raise VolumeError(
        f"{path}: unsupported volume format '{suffix or path.name}'; "
        f"use {_SUPPORTED_TEXT} (convert the file, or give the right extension)"
    )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VolumeError(
            f"{path}: no such file; check DATASET.INPUT_PATH and the volume name "
            "(names are relative to INPUT_PATH unless absolute)"
        )
    if not path.is_file():
        raise VolumeError(f"{path}: not a regular file; name a volume file (or a glob of slices)")


def _stack_files(pattern: Path) -> list[Path]:
    # Non-recursive on purpose: `**` does not walk a directory tree here.
    files = sorted(Path(p) for p in glob.glob(str(pattern), recursive=False))
    files = [f for f in files if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise VolumeError(
            f"{pattern}: the glob matches no PNG/JPEG files; check the pattern "
            "(e.g. 'image/*.png', relative to DATASET.INPUT_PATH)"
        )
    return files


# ----------------------------------------------------------------------------- reading


def read_volume(path: str | Path, dataset: str | None = None) -> np.ndarray:
    """Read a whole volume as a (z, y, x) array (`.npy` stays memory-mapped, read-only)."""
    path, dataset = split_dataset(path, dataset)
    fmt = _format_of(path)
    if fmt in ("png-stack", "jpeg-stack"):
        return np.stack([_read_image(f) for f in _stack_files(path)])
    _check_file(path)
    try:
        if fmt == "hdf5":
            return _read_hdf5(path, dataset)
        if fmt == "tiff":
            return _as_zyx(path, _read_tiff(path))
        if fmt == "npy":
            return _as_zyx(path, _open_npy(path))
        return _read_image(path)[np.newaxis]
    except VolumeError:
        raise
    except Exception as exc:  # every reader has its own errors; all mean "unreadable"
        raise _unreadable(path, fmt, exc) from exc


def read_slice(path: str | Path, z: int | None = None, dataset: str | None = None) -> np.ndarray:
    """Read one z slice (the middle one by default) without reading the whole volume."""
    path, dataset = split_dataset(path, dataset)
    fmt = _format_of(path)
    if fmt in ("png-stack", "jpeg-stack"):
        files = _stack_files(path)
        return _read_image(files[_clamp(z, len(files))])
    _check_file(path)
    try:
        if fmt == "hdf5":
            return _read_hdf5_slice(path, dataset, z)
        if fmt == "tiff":
            return _read_tiff_slice(path, z)
        if fmt == "npy":
            volume = _as_zyx(path, _open_npy(path))
            return np.asarray(volume[_clamp(z, volume.shape[0])])
        return _read_image(path)
    except VolumeError:
        raise
    except Exception as exc:
        raise _unreadable(path, fmt, exc) from exc


def volume_info(path: str | Path, dataset: str | None = None) -> VolumeInfo:
    """Shape, dtype, format and size on disk, from headers (no voxel data is read)."""
    path, dataset = split_dataset(path, dataset)
    fmt = _format_of(path)
    if fmt in ("png-stack", "jpeg-stack"):
        files = _stack_files(path)
        height, width, dtype = _image_header(files[0])
        size = sum(f.stat().st_size for f in files)
        return VolumeInfo((len(files), height, width), dtype, fmt, size)
    _check_file(path)
    size = path.stat().st_size
    try:
        if fmt == "hdf5":
            import h5py

            with h5py.File(path, "r") as f:
                ds = _hdf5_dataset(f, path, dataset)
                shape, dtype = tuple(int(s) for s in ds.shape), str(ds.dtype)
        elif fmt == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = _tiff_series(path, tif)
                shape, dtype = tuple(int(s) for s in series.shape), str(series.dtype)
        elif fmt == "npy":
            array = _open_npy(path)
            shape, dtype = tuple(int(s) for s in array.shape), str(array.dtype)
        else:
            height, width, dtype = _image_header(path)
            shape = (height, width)
    except VolumeError:
        raise
    except Exception as exc:
        raise _unreadable(path, fmt, exc) from exc
    return VolumeInfo(_zyx_shape(path, shape), dtype, fmt, size)


def _unreadable(path: Path, fmt: str, exc: Exception) -> VolumeError:
    return VolumeError(
        f"{path}: cannot read it as {fmt} ({type(exc).__name__}: {exc}); "
        "check the file is complete and really in that format"
    )


def _clamp(z: int | None, depth: int) -> int:
    if z is None:
        return depth // 2
    if not -depth <= z < depth:
        raise VolumeError(f"slice z={z} is outside the volume (0..{depth - 1}); pick another z")
    return z % depth


def _zyx_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    # Leading singleton axes (a channel of 1, say) are harmless; anything else is not a volume.
    dims = list(shape)
    while len(dims) > 3 and dims[0] == 1:
        dims.pop(0)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 2:
        dims.insert(0, 1)
    if len(dims) != 3:
        raise VolumeError(
            f"{path}: shape {tuple(shape)} is not a 2D image or a 3D (z, y, x) volume; "
            "save a single-channel volume (drop colour/channel axes)"
        )
    return dims[0], dims[1], dims[2]


def _as_zyx(path: Path, array: np.ndarray) -> np.ndarray:
    # reshape, not squeeze+copy: a memmap stays a memmap view.
    return array.reshape(_zyx_shape(path, array.shape))


def _open_npy(path: Path) -> np.ndarray:
    # allow_pickle stays False: a .npy holding objects is refused, never unpickled.
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if not isinstance(array, np.ndarray):
        raise VolumeError(f"{path}: not a single array; save one array with numpy.save")
    return array


def _tiff_series(path: Path, tif: Any) -> Any:
    series = tif.series[0]
    # Trailing samples are colour (RGB) pixels; leading ones (planar) read as slices.
    if str(series.axes).endswith("S"):
        raise VolumeError(
            f"{path}: a colour (RGB) TIFF of shape {tuple(series.shape)}; "
            "save the volume as single-channel (grey) slices"
        )
    return series


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return np.asarray(_tiff_series(path, tif).asarray())


def _read_tiff_slice(path: Path, z: int | None) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = _tiff_series(path, tif)
        shape = _zyx_shape(path, tuple(series.shape))
        index = _clamp(z, shape[0])
        if len(tif.pages) == shape[0]:  # one page per slice: read just that page
            page = np.asarray(tif.pages[index].asarray())
            return page.reshape(shape[1:])
        whole: np.ndarray = np.asarray(series.asarray()).reshape(shape)
        return np.asarray(whole[index])


def _hdf5_dataset(f: Any, path: Path, name: str | None) -> Any:
    import h5py

    if name is None:
        names = list(f.keys())
        if not names:
            raise VolumeError(f"{path}: the HDF5 file holds no datasets; write one (e.g. 'main')")
        name = names[0]
    link = f.get(name, getlink=True)
    if link is None:
        raise VolumeError(
            f"{path}: no dataset '{name}'; the file holds {sorted(f.keys())}, "
            "name one as 'file.h5:dataset'"
        )
    if isinstance(link, h5py.ExternalLink):
        raise VolumeError(f"{path}: '{name}' links to another file; copy the data into this file")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise VolumeError(
            f"{path}: '{name}' is a group, not a dataset; name the dataset as 'file.h5:group/name'"
        )
    if ds.is_virtual or ds.external:
        raise VolumeError(
            f"{path}: '{name}' keeps its data in other files; write a plain dataset instead"
        )
    return ds


def _read_hdf5(path: Path, name: str | None) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        ds = _hdf5_dataset(f, path, name)
        return np.asarray(ds[()]).reshape(_zyx_shape(path, tuple(ds.shape)))


def _read_hdf5_slice(path: Path, name: str | None, z: int | None) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        ds = _hdf5_dataset(f, path, name)
        shape = _zyx_shape(path, tuple(ds.shape))
        index = _clamp(z, shape[0])
        if len(ds.shape) == 3:  # read just that slice from the file
            return np.asarray(ds[index])
        whole: np.ndarray = np.asarray(ds[()]).reshape(shape)
        return np.asarray(whole[index])


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as opened:
            # EM slices are grey: colour (or 1-bit) is only how the file stores them.
            grey_modes = ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "1")
            image = opened.convert("L") if opened.mode in grey_modes else opened
            return np.asarray(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, "image", exc) from exc


def _image_header(path: Path) -> tuple[int, int, str]:
    try:
        with Image.open(path) as image:  # lazy: opening reads only the header
            width, height = image.size
            mode = image.mode
    except (OSError, ValueError) as exc:
        raise _unreadable(path, "image", exc) from exc
    dtype = {"I;16": "uint16", "I;16B": "uint16", "I": "int32", "F": "float32"}.get(mode, "uint8")
    return height, width, dtype


# ----------------------------------------------------------------------------- drawing


def normalize_for_display(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Map an image to uint8 with percentile contrast stretching (robust to outliers)."""
    values = np.asarray(image, dtype=np.float32)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, np.uint8)
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    scaled: np.ndarray = (np.nan_to_num(values, nan=float(lo)) - lo) / (hi - lo)
    grey: np.ndarray = (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return grey


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """RGB uint8 image of instance ids: 0 black, every id its own stable bright colour."""
    ids = np.asarray(labels).astype(np.uint64)
    # A multiplicative hash spreads neighbouring ids to unrelated colours.
    hashed = (ids * np.uint64(2654435761)) & np.uint64(0xFFFFFF)
    rgb = np.stack(
        [(hashed >> np.uint64(shift)) & np.uint64(0xFF) for shift in (16, 8, 0)], axis=-1
    ).astype(np.uint8)
    rgb = (rgb // 2 + 100).astype(np.uint8)  # keep colours away from black
    rgb[ids == 0] = 0
    return rgb


def looks_like_labels(slice_: np.ndarray) -> bool:
    """Guess whether an integer slice is a label map: labels are piecewise constant."""
    array = np.asarray(slice_)
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        return False
    if array.ndim != 2 or array.shape[1] < 2:
        return True
    # EM images are noisy: neighbouring pixels rarely agree. Label maps mostly do.
    same = np.count_nonzero(array[:, 1:] == array[:, :-1])
    return bool(same >= 0.5 * array[:, 1:].size)


def _to_rgb(slice_: np.ndarray, label: bool) -> np.ndarray:
    array = np.asarray(slice_)
    if label:
        if array.dtype == np.bool_ or int(array.max(initial=0)) <= 1:
            grey = (array > 0).astype(np.uint8) * 255  # a binary mask reads best as white
            return np.repeat(grey[..., None], 3, axis=-1)
        return colorize_labels(array)
    grey = normalize_for_display(array)
    return np.repeat(grey[..., None], 3, axis=-1)


def _fit(rgb: np.ndarray, max_size: int, label: bool) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    scale = max_size / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        # Nearest for ids: averaging colours of two labels invents a third.
        resample = Image.Resampling.NEAREST if label else Image.Resampling.BILINEAR
        image = image.resize(size, resample)
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_png(
    path: str | Path,
    z: int | None = None,
    max_size: int = 256,
    *,
    label: bool | None = None,
    dataset: str | None = None,
) -> bytes:
    """PNG bytes of slice `z` (the middle one by default), at most `max_size` pixels a side.

    Images get percentile contrast; label maps (`label=True`, or guessed when None) get a
    colour per instance id.
    """
    slice_ = read_slice(path, z, dataset)
    is_label = looks_like_labels(slice_) if label is None else label
    return _png(_fit(_to_rgb(slice_, is_label), max_size, is_label))


def preview_png(
    image_slice: np.ndarray,
    label_slice: np.ndarray,
    pred_slice: np.ndarray,
    max_size: int = 256,
) -> bytes:
    """PNG of image | label | prediction side by side (prediction: probabilities in [0, 1])."""
    pred = np.clip(np.nan_to_num(np.asarray(pred_slice, dtype=np.float32)), 0.0, 1.0)
    pred_rgb = np.repeat((pred * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)
    panels = [
        _fit(_to_rgb(image_slice, label=False), max_size, label=False),
        _fit(_to_rgb(label_slice, label=True), max_size, label=True),
        _fit(pred_rgb, max_size, label=False),
    ]
    gap = 4
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    height = max(p.height for p in panels)
    canvas = Image.new("RGB", (width, height), (32, 32, 32))
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + gap
    return _png(canvas)
