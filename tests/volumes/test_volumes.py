"""Reading volumes in every supported format, names, headers and PNG thumbnails."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from backend.volumes import (
    VolumeError,
    VolumeInfo,
    colorize_labels,
    looks_like_labels,
    preview_png,
    read_slice,
    read_volume,
    resolve_volume_paths,
    split_dataset,
    thumbnail_png,
    volume_info,
)


def _volume(shape: tuple[int, ...] = (3, 5, 7), dtype: str = "uint8") -> np.ndarray:
    return (np.arange(int(np.prod(shape))) % 251).astype(dtype).reshape(shape)


def _decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


# ----------------------------------------------------------------------------- readers


def test_hdf5_first_dataset_when_none_named(tmp_path: Path) -> None:
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        f["a_first"] = _volume()
        f["b_second"] = _volume() + 1
    np.testing.assert_array_equal(read_volume(path), _volume())


def test_hdf5_named_dataset_by_suffix_or_argument(tmp_path: Path) -> None:
    path = tmp_path / "vol.hdf5"
    with h5py.File(path, "w") as f:
        f["main"] = _volume()
        f.create_group("group")["inner"] = _volume() + 2
    np.testing.assert_array_equal(read_volume(f"{path}:group/inner"), _volume() + 2)
    np.testing.assert_array_equal(read_volume(path, dataset="main"), _volume())
    assert split_dataset(f"{path}:main") == (path, "main")


def test_hdf5_missing_dataset_lists_the_ones_there(tmp_path: Path) -> None:
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        f["main"] = _volume()
    with pytest.raises(VolumeError, match=r"no dataset 'nope'.*main"):
        read_volume(f"{path}:nope")


def test_hdf5_external_link_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = _volume()
    path = tmp_path / "linking.h5"
    with h5py.File(path, "w") as f:
        f["data"] = h5py.ExternalLink(str(other), "data")
    with pytest.raises(VolumeError, match="another file"):
        read_volume(path)


def test_2d_image_becomes_one_slice(tmp_path: Path) -> None:
    path = tmp_path / "img.h5"
    with h5py.File(path, "w") as f:
        f["main"] = _volume((5, 7))
    assert read_volume(path).shape == (1, 5, 7)


def test_tiff_stack(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _volume((4, 6, 8), "uint16"), photometric="minisblack")
    volume = read_volume(path)
    assert volume.dtype == np.uint16
    np.testing.assert_array_equal(volume, _volume((4, 6, 8), "uint16"))


def test_rgb_tiff_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    with pytest.raises(VolumeError, match="single-channel"):
        read_volume(path)
    with pytest.raises(VolumeError, match="colour"):
        volume_info(path)


def test_png_stack_by_glob_is_sorted(tmp_path: Path) -> None:
    stack = _volume((3, 6, 9))
    (tmp_path / "image").mkdir()
    for z in (2, 0, 1):  # written out of order on purpose
        Image.fromarray(stack[z]).save(tmp_path / "image" / f"slice_{z:03d}.png")
    (tmp_path / "image" / "notes.txt").write_text("not a slice")
    np.testing.assert_array_equal(read_volume(tmp_path / "image" / "*"), stack)
    np.testing.assert_array_equal(read_volume(tmp_path / "image" / "*.png"), stack)


def test_single_png_and_jpeg(tmp_path: Path) -> None:
    Image.fromarray(_volume((6, 9))).save(tmp_path / "one.png")
    Image.fromarray(_volume((6, 9))).save(tmp_path / "one.jpg")
    np.testing.assert_array_equal(read_volume(tmp_path / "one.png"), _volume((1, 6, 9)))
    assert read_volume(tmp_path / "one.jpg").shape == (1, 6, 9)


def test_npy_is_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "vol.npy"
    np.save(path, _volume((4, 5, 6), "float32"))
    volume = read_volume(path)
    assert isinstance(volume, np.memmap)
    assert not volume.flags.writeable
    np.testing.assert_array_equal(volume, _volume((4, 5, 6), "float32"))


def test_npy_2d_stays_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "img.npy"
    np.save(path, _volume((5, 6)))
    volume = read_volume(path)
    assert volume.shape == (1, 5, 6)
    assert isinstance(volume, np.memmap)


def test_npy_with_objects_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(VolumeError, match="cannot read"):
        read_volume(path)


def test_leading_singleton_channel_dropped(tmp_path: Path) -> None:
    path = tmp_path / "chan.npy"
    np.save(path, _volume((1, 3, 4, 5)))
    assert read_volume(path).shape == (3, 4, 5)


def test_colour_volume_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "rgb.npy"
    np.save(path, _volume((2, 3, 4, 5)))
    with pytest.raises(VolumeError, match="single-channel"):
        read_volume(path)


# ----------------------------------------------------------------------------- errors


def test_missing_file_says_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match=r"no such file.*INPUT_PATH"):
        read_volume(tmp_path / "absent.h5")


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "volume.zarr"
    path.write_text("x")
    with pytest.raises(VolumeError, match="unsupported volume format"):
        read_volume(path)


def test_corrupt_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "broken.tif"
    path.write_bytes(b"this is not a tiff")
    with pytest.raises(VolumeError, match="cannot read it as tiff"):
        read_volume(path)


def test_glob_matching_nothing(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="matches no PNG/JPEG"):
        read_volume(tmp_path / "*.png")


def test_directory_is_not_a_volume(tmp_path: Path) -> None:
    (tmp_path / "dir.h5").mkdir()
    with pytest.raises(VolumeError, match="not a regular file"):
        read_volume(tmp_path / "dir.h5")


# ----------------------------------------------------------------------------- names


def test_resolve_at_joined_names(tmp_path: Path) -> None:
    paths = resolve_volume_paths(tmp_path, "a.h5@ sub/b.tif @/abs/c.npy")
    assert paths == [tmp_path / "a.h5", tmp_path / "sub" / "b.tif", Path("/abs/c.npy")]


def test_resolve_list_and_glob_stays_one_entry(tmp_path: Path) -> None:
    paths = resolve_volume_paths(str(tmp_path), ["image/*.png", "x.h5:main@y.h5"])
    assert paths == [tmp_path / "image" / "*.png", tmp_path / "x.h5:main", tmp_path / "y.h5"]


def test_resolve_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="no volume names"):
        resolve_volume_paths(tmp_path, " @ ")


# ----------------------------------------------------------------------------- info


def test_volume_info_hdf5_reads_no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        f["main"] = _volume((3, 5, 7), "uint16")

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("volume_info read voxel data")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", no_reading)
    info = volume_info(path)
    assert info == VolumeInfo((3, 5, 7), "uint16", "hdf5", path.stat().st_size)
    assert info.nbytes == 3 * 5 * 7 * 2


def test_volume_info_tiff_npy_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tifffile.imwrite(tmp_path / "v.tif", _volume((4, 5, 6)), photometric="minisblack")
    np.save(tmp_path / "v.npy", _volume((2, 3, 4), "float32"))
    (tmp_path / "s").mkdir()
    for z in range(3):
        Image.fromarray(_volume((5, 8))).save(tmp_path / "s" / f"{z}.png")

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("volume_info read voxel data")

    monkeypatch.setattr(tifffile, "imread", no_reading)
    monkeypatch.setattr(Image.Image, "load", no_reading)
    assert volume_info(tmp_path / "v.tif").shape == (4, 5, 6)
    npy = volume_info(tmp_path / "v.npy")
    assert (npy.shape, npy.dtype, npy.format) == ((2, 3, 4), "float32", "npy")
    stack = volume_info(tmp_path / "s" / "*.png")
    assert (stack.shape, stack.dtype, stack.format) == ((3, 5, 8), "uint8", "png-stack")
    assert stack.size_bytes == sum(p.stat().st_size for p in (tmp_path / "s").iterdir())


# ----------------------------------------------------------------------------- drawing


def test_read_slice_defaults_to_middle(tmp_path: Path) -> None:
    volume = _volume((5, 6, 7))
    tifffile.imwrite(tmp_path / "v.tif", volume, photometric="minisblack")
    np.save(tmp_path / "v.npy", volume)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["main"] = volume
    for name in ("v.tif", "v.npy", "v.h5"):
        np.testing.assert_array_equal(read_slice(tmp_path / name), volume[2])
        np.testing.assert_array_equal(read_slice(tmp_path / name, 4), volume[4])
    with pytest.raises(VolumeError, match="outside the volume"):
        read_slice(tmp_path / "v.npy", 9)


def test_thumbnail_png_decodes_and_fits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tifffile.imwrite(
        tmp_path / "v.tif",
        rng.integers(0, 255, (3, 300, 150), dtype=np.uint8),
        photometric="minisblack",
    )
    image = _decode(thumbnail_png(tmp_path / "v.tif", max_size=100))
    assert image.format == "PNG"
    assert image.size == (50, 100)


def test_thumbnail_of_labels_uses_colours(tmp_path: Path) -> None:
    labels = np.zeros((1, 40, 40), np.uint16)
    labels[0, 5:15, 5:15] = 3
    labels[0, 20:30, 20:30] = 7
    np.save(tmp_path / "labels.npy", labels)
    pixels = np.asarray(_decode(thumbnail_png(tmp_path / "labels.npy")).convert("RGB"))
    assert tuple(pixels[0, 0]) == (0, 0, 0)
    assert tuple(pixels[10, 10]) != tuple(pixels[25, 25])
    assert tuple(pixels[10, 10]) == tuple(colorize_labels(np.array([3]))[0])


def test_label_guess() -> None:
    rng = np.random.default_rng(1)
    assert not looks_like_labels(rng.integers(0, 255, (32, 32), dtype=np.uint8))
    assert not looks_like_labels(rng.random((32, 32)))
    blocks = np.kron(rng.integers(0, 9, (4, 4)), np.ones((8, 8), int)).astype(np.uint16)
    assert looks_like_labels(blocks)


def test_preview_png_is_three_panels() -> None:
    rng = np.random.default_rng(2)
    image = rng.random((64, 48)).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    pred = rng.random((64, 48))
    preview = _decode(preview_png(image, label, pred))
    assert preview.size == (3 * 48 + 2 * 4, 64)
    pixels = np.asarray(preview.convert("L"))
    label_panel = pixels[:, 52:100]
    assert set(np.unique(label_panel)) <= {0, 255}
