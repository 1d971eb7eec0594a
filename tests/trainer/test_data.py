"""Loading, padding, sampling, batching and validation tiling from a resolved config."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch

from backend.config.holdout import HELD_OUT_FRACTION, held_out_slices
from backend.trainer.data import (
    Batch,
    DataError,
    Normalization,
    PatchSampler,
    crop,
    load_training_data,
    make_batch,
    make_loader,
    validation_batches,
    validation_patches,
)


def make_cfg(root: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A minimal resolved config: what the data pipeline reads, PyTC defaults elsewhere."""
    cfg: dict[str, Any] = {
        "SYSTEM": {"NUM_CPUS": 0},
        "MODEL": {
            "INPUT_SIZE": [4, 16, 16],
            "IN_PLANES": 1,
            "TARGET_OPT": ["0"],
            "LOSS_OPTION": [["WeightedBCEWithLogitsLoss", "DiceLoss"]],
            "WEIGHT_OPT": [["1", "0"]],
        },
        "DATASET": {
            "INPUT_PATH": str(root),
            "IMAGE_NAME": "image.npy",
            "LABEL_NAME": "label.npy",
            "VAL_IMAGE_NAME": None,
            "VAL_LABEL_NAME": None,
            "PAD_SIZE": [1, 4, 4],
            "PAD_MODE": "reflect",
            "DO_2D": False,
            "MEAN": 0.5,
            "STD": 0.5,
            "REJECT_SAMPLING": {"SIZE_THRES": -1, "P": 0.95},
        },
        "AUGMENTOR": {
            "FLIP": {"ENABLED": True, "P": 1.0, "DO_ZTRANS": 0},
            "ROTATE": {"ENABLED": True, "ROT90": True, "P": 1.0},
        },
        "SOLVER": {"SAMPLES_PER_BATCH": 2},
    }
    for name, values in sections.items():
        cfg[name].update(values)
    return cfg


def write_volumes(
    root: Path, shape: tuple[int, int, int] = (20, 32, 32), stem: str = "", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A random uint8 image and a label with a few blobs (about 10% foreground)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    label = np.zeros(shape, np.uint16)
    _, y, x = shape
    label[:, y // 4 : y // 4 + y // 6, x // 4 : x // 4 + x // 3] = 1
    label[:, 3 * y // 4 :, 3 * x // 4 :] = 2
    np.save(root / f"image{stem}.npy", image)
    np.save(root / f"label{stem}.npy", label)
    return image, label


@pytest.fixture
def cfg(tmp_path: Path) -> dict[str, Any]:
    write_volumes(tmp_path)
    return make_cfg(tmp_path)


# ----------------------------------------------------------------------------- loading


def test_held_out_validation_is_the_last_slices(cfg: dict[str, Any]) -> None:
    data = load_training_data(cfg)
    assert data.held_out
    n_val = int(np.ceil(20 * HELD_OUT_FRACTION))
    assert held_out_slices(20) == range(20 - n_val, 20)  # what validation warns about
    assert data.train[0].shape == (20 - n_val, 32, 32)
    assert data.val[0].shape == (n_val, 32, 32)
    full = np.load(Path(cfg["DATASET"]["INPUT_PATH"]) / "image.npy")
    np.testing.assert_array_equal(data.val[0].image, full[-n_val:])
    # Views of the memory map, not copies.
    assert isinstance(data.train[0].image, np.memmap)
    assert isinstance(data.val[0].label, np.memmap)


def test_validation_volumes_when_named(tmp_path: Path) -> None:
    write_volumes(tmp_path)
    write_volumes(tmp_path, (3, 16, 24), stem="_val", seed=1)
    cfg = make_cfg(
        tmp_path, DATASET={"VAL_IMAGE_NAME": "image_val.npy", "VAL_LABEL_NAME": "label_val.npy"}
    )
    data = load_training_data(cfg)
    assert not data.held_out
    assert data.train[0].shape == (20, 32, 32)
    assert data.val[0].shape == (3, 16, 24)
    assert "held out" not in data.describe()


def test_several_volumes_joined_with_at(tmp_path: Path) -> None:
    write_volumes(tmp_path, (10, 32, 32), stem="_a")
    write_volumes(tmp_path, (10, 24, 40), stem="_b", seed=1)
    tifffile.imwrite(
        tmp_path / "image_c.tif", np.zeros((6, 20, 20), np.uint8), photometric="minisblack"
    )
    tifffile.imwrite(
        tmp_path / "label_c.tif", np.zeros((6, 20, 20), np.uint8), photometric="minisblack"
    )
    cfg = make_cfg(
        tmp_path,
        DATASET={
            "IMAGE_NAME": "image_a.npy@image_b.npy@image_c.tif",
            "LABEL_NAME": "label_a.npy@label_b.npy@label_c.tif",
        },
        SOLVER={"SAMPLES_PER_BATCH": 8},
    )
    data = load_training_data(cfg)
    assert [p.shape[1:] for p in data.train] == [(32, 32), (24, 40), (20, 20)]
    sampler = PatchSampler(cfg, data)
    used = {p.volume for i in range(10) for p in sampler.patches(i)}
    assert used == {0, 1, 2}


def test_mismatched_volumes_are_clear_errors(tmp_path: Path) -> None:
    write_volumes(tmp_path)
    np.save(tmp_path / "small.npy", np.zeros((2, 3, 4), np.uint16))
    with pytest.raises(DataError, match="voxel for voxel"):
        load_training_data(make_cfg(tmp_path, DATASET={"LABEL_NAME": "small.npy"}))
    with pytest.raises(DataError, match="one label volume per image"):
        load_training_data(make_cfg(tmp_path, DATASET={"LABEL_NAME": "label.npy@label.npy"}))
    with pytest.raises(DataError, match="no such file"):
        load_training_data(make_cfg(tmp_path, DATASET={"IMAGE_NAME": "absent.h5"}))
    with pytest.raises(DataError, match="LABEL_NAME is not set"):
        load_training_data(make_cfg(tmp_path, DATASET={"LABEL_NAME": None}))


def test_normalisation() -> None:
    uint8 = Normalization.of(np.array([0, 51, 255], np.uint8), mean=0.5, std=0.5)
    np.testing.assert_allclose(uint8(np.array([0, 51, 255], np.uint8)), [-1.0, -0.6, 1.0])
    floats = np.array([10.0, 15.0, 20.0], np.float32)
    minmax = Normalization.of(floats, mean=0.0, std=1.0)
    np.testing.assert_allclose(minmax(floats), [0.0, 0.5, 1.0])
    flat = Normalization.of(np.full(3, 7, np.uint16), mean=0.5, std=0.25)
    assert np.isfinite(flat(np.full(3, 7, np.uint16))).all()


def test_memmap_survives_pickling(cfg: dict[str, Any]) -> None:
    data = load_training_data(cfg)
    clone = pickle.loads(pickle.dumps(data))
    assert isinstance(clone.val[0].image, np.memmap)
    np.testing.assert_array_equal(clone.val[0].image, data.val[0].image)
    np.testing.assert_array_equal(clone.train[0].label, data.train[0].label)


# ----------------------------------------------------------------------------- padding


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "constant", "edge", "wrap"])
def test_crop_matches_numpy_pad(mode: str) -> None:
    volume = np.arange(3 * 5 * 6).reshape(3, 5, 6)
    pad = (2, 7, 3)  # wider than the volume along y: repeated mirroring
    padded = np.pad(volume, [(p, p) for p in pad], mode=mode)  # type: ignore[call-overload]
    rng = np.random.default_rng(0)
    for _ in range(50):
        size = tuple(int(rng.integers(1, n + 1)) for n in padded.shape)
        start = tuple(
            int(rng.integers(0, n - s + 1)) for n, s in zip(padded.shape, size, strict=True)
        )
        expected = padded[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))]
        raw_start = [s - p for s, p in zip(start, pad, strict=True)]
        np.testing.assert_array_equal(crop(volume, raw_start, size, mode), expected)


def test_crop_inside_reads_a_copy() -> None:
    volume = np.arange(27).reshape(3, 3, 3)
    block = crop(volume, (1, 0, 1), (2, 2, 2), "reflect")
    block[:] = -1
    assert volume.min() == 0


def test_patches_reach_into_the_padding(cfg: dict[str, Any]) -> None:
    sampler = PatchSampler(cfg, load_training_data(cfg))
    origins = [p.position for i in range(30) for p in sampler.patches(i)]
    assert min(o[1] for o in origins) < 0 and min(o[2] for o in origins) < 0


def test_unknown_pad_mode(cfg: dict[str, Any]) -> None:
    cfg["DATASET"]["PAD_MODE"] = "mean"  # numpy's, but it needs the whole padded volume
    with pytest.raises(DataError, match="PAD_MODE"):
        PatchSampler(cfg, load_training_data(cfg))


# ----------------------------------------------------------------------------- batches


def test_3d_batch_shapes(cfg: dict[str, Any]) -> None:
    cfg["MODEL"].update(TARGET_OPT=["0", "2"], WEIGHT_OPT=[["1", "0"], ["1"]])
    cfg["MODEL"]["LOSS_OPTION"] = [["WeightedBCEWithLogitsLoss", "DiceLoss"], ["WeightedBCE"]]
    batch = make_batch(cfg, PatchSampler(cfg, load_training_data(cfg)), 0)
    assert batch.image.shape == (2, 1, 4, 16, 16)
    assert batch.image.dtype == torch.float32
    assert [t.shape for t in batch.targets] == [(2, 1, 4, 16, 16), (2, 3, 4, 16, 16)]
    assert batch.weights[0][0] is not None and batch.weights[0][0].shape == (2, 1, 4, 16, 16)
    assert batch.weights[0][1] is None
    assert batch.weights[1][0] is not None and batch.weights[1][0].shape == (2, 3, 4, 16, 16)


def test_2d_batch_squeezes_z(cfg: dict[str, Any]) -> None:
    cfg["DATASET"]["DO_2D"] = True
    cfg["MODEL"].update(INPUT_SIZE=[1, 24, 24], TARGET_OPT=["2"], WEIGHT_OPT=[["0", "0"]])
    cfg["SOLVER"]["SAMPLES_PER_BATCH"] = 3
    batch = make_batch(cfg, PatchSampler(cfg, load_training_data(cfg)), 5)
    assert batch.image.shape == (3, 1, 24, 24)
    assert batch.targets[0].shape == (3, 2, 24, 24)
    assert batch.weights == [[None, None]]


INTENSITY_OFF = {
    name: {"ENABLED": False}
    for name in ("GRAYSCALE", "MISSINGPARTS", "MOTIONBLUR", "CUTBLUR", "CUTNOISE")
}
# Geometric augmentations that move voxels without interpolating them.
EXACT_GEOMETRY = {
    **INTENSITY_OFF,
    "FLIP": {"ENABLED": True, "P": 1.0, "DO_ZTRANS": 1},
    "ROTATE": {"ENABLED": True, "ROT90": True, "P": 1.0},
    "RESCALE": {"ENABLED": False},
    "ELASTIC": {"ENABLED": False},
    "MISSINGSECTION": {"ENABLED": True, "P": 1.0},
    "MISALIGNMENT": {"ENABLED": True, "P": 1.0, "ROTATE_RATIO": 0.0, "DISPLACEMENT": 4},
}


def _image_encodes_label(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    blocks = (rng.random((12, 8, 8)) > 0.7).astype(np.uint8)
    label = np.kron(blocks, np.ones((1, 5, 5), np.uint8))  # 5 x 5 px squares
    np.save(tmp_path / "image.npy", (label * 200 + 20).astype(np.uint8))
    np.save(tmp_path / "label.npy", label)


def test_labels_follow_the_augmented_image(tmp_path: Path) -> None:
    # The image encodes the label: any mismatch between their transforms would show.
    _image_encodes_label(tmp_path)
    cfg = make_cfg(tmp_path, AUGMENTOR=EXACT_GEOMETRY)
    cfg["MODEL"]["INPUT_SIZE"] = [8, 8, 8]
    sampler = PatchSampler(cfg, load_training_data(cfg))
    assert sampler.sample_size == (10, 12, 12)  # MissingSection + MisAlignment need room
    for i in range(10):
        for patch in sampler.patches(i):
            assert patch.image.shape == patch.label.shape == (8, 8, 8)
            np.testing.assert_array_equal(patch.image > 0, patch.label > 0)


def test_labels_follow_interpolating_augmentations_too(tmp_path: Path) -> None:
    # Rescale, Elastic and rotation by any angle interpolate the image bilinearly and the
    # label by nearest neighbour: they may disagree only along edges.
    _image_encodes_label(tmp_path)
    geometry = {
        **INTENSITY_OFF,
        "ROTATE": {"ENABLED": True, "ROT90": False, "P": 1.0},
        "RESCALE": {"P": 1.0},
        "ELASTIC": {"P": 1.0},
    }
    cfg = make_cfg(tmp_path, AUGMENTOR=geometry)
    cfg["MODEL"]["INPUT_SIZE"] = [4, 12, 12]
    cfg["DATASET"]["VAL_IMAGE_NAME"] = "image.npy"
    cfg["DATASET"]["VAL_LABEL_NAME"] = "label.npy"
    sampler = PatchSampler(cfg, load_training_data(cfg))
    agree = [np.mean((p.image > 0) == (p.label > 0)) for i in range(6) for p in sampler.patches(i)]
    assert np.mean(agree) > 0.9


def test_default_pipeline_is_pytc_s(cfg: dict[str, Any]) -> None:
    # No AUGMENTOR keys beyond FLIP and ROTATE: PyTC's defaults switch on nine more.
    sampler = PatchSampler(cfg, load_training_data(cfg))
    assert sampler.augmenter.names == [
        "Rotate",
        "Rescale",
        "Elastic",
        "Grayscale",
        "MissingParts",
        "MissingSection",
        "MisAlignment",
        "MotionBlur",
        "CutBlur",
        "CutNoise",
        "Flip",
    ]
    # ceil(16 * 1.25) + 2 * 17 (Elastic) + 2 * 8 (MisAlignment); z + 2 (MissingSection)
    assert sampler.sample_size == (6, 70, 70)
    patch = sampler.patches(0)[0]
    assert patch.image.shape == patch.label.shape == (4, 16, 16)
    assert patch.image.dtype == np.float32 and patch.label.dtype == np.int64


def test_augmentor_off_cuts_plain_patches(cfg: dict[str, Any]) -> None:
    cfg["AUGMENTOR"] = {"ENABLED": False}
    data = load_training_data(cfg)
    sampler = PatchSampler(cfg, data)
    assert sampler.sample_size == (4, 16, 16)
    for patch in sampler.patches(2):
        expected = crop(data.train[0].label, patch.position, (4, 16, 16), "reflect")
        np.testing.assert_array_equal(patch.label, expected)


def test_2d_pipeline_leaves_out_the_z_augmentations(cfg: dict[str, Any]) -> None:
    cfg["DATASET"]["DO_2D"] = True
    cfg["MODEL"].update(INPUT_SIZE=[1, 24, 24])
    sampler = PatchSampler(cfg, load_training_data(cfg))
    assert "MissingSection" not in sampler.augmenter.names
    assert "MisAlignment" not in sampler.augmenter.names
    assert sampler.sample_size[0] == 1
    assert all(p.image.shape == (1, 24, 24) for i in range(3) for p in sampler.patches(i))


def _same(a: Batch, b: Batch) -> bool:
    return bool(
        a.iteration == b.iteration
        and torch.equal(a.image, b.image)
        and all(torch.equal(x, y) for x, y in zip(a.targets, b.targets, strict=True))
    )


def test_batches_depend_only_on_seed_and_iteration(cfg: dict[str, Any]) -> None:
    data = load_training_data(cfg)
    first = PatchSampler(cfg, data, seed=11)
    second = PatchSampler(cfg, data, seed=11)
    assert _same(make_batch(cfg, first, 3), make_batch(cfg, second, 3))
    assert not torch.equal(first.batch(3).image, first.batch(4).image)
    assert not torch.equal(first.batch(3).image, PatchSampler(cfg, data, seed=12).batch(3).image)


def test_resumed_stream_continues_the_uninterrupted_one(cfg: dict[str, Any]) -> None:
    data = load_training_data(cfg)
    uninterrupted = iter(PatchSampler(cfg, data, seed=5))
    straight = [next(uninterrupted) for _ in range(6)]
    resumed = iter(PatchSampler(cfg, data, seed=5, start_iteration=4))
    assert [b.iteration for b in straight] == [0, 1, 2, 3, 4, 5]
    assert _same(next(resumed), straight[4])
    assert _same(next(resumed), straight[5])


def test_loader_in_process_and_with_workers_agree(cfg: dict[str, Any]) -> None:
    data = load_training_data(cfg)
    local = list(make_loader(cfg, data, seed=2, start_iteration=3, stop_iteration=8))
    cfg["SYSTEM"]["NUM_CPUS"] = 2
    pooled = list(make_loader(cfg, data, seed=2, start_iteration=3, stop_iteration=8))
    assert [b.iteration for b in local] == [3, 4, 5, 6, 7]
    assert len(pooled) == len(local)
    assert all(_same(a, b) for a, b in zip(local, pooled, strict=True))


def test_rejection_sampling_raises_foreground(tmp_path: Path) -> None:
    label = np.zeros((4, 64, 64), np.uint16)
    label[:, 40:48, 40:48] = 1  # about 1.6% foreground
    np.save(tmp_path / "image.npy", np.zeros(label.shape, np.uint8))
    np.save(tmp_path / "label.npy", label)
    plain = make_cfg(tmp_path, SOLVER={"SAMPLES_PER_BATCH": 4})
    plain["MODEL"]["INPUT_SIZE"] = [1, 16, 16]
    plain["DATASET"]["VAL_IMAGE_NAME"] = "image.npy"
    plain["DATASET"]["VAL_LABEL_NAME"] = "label.npy"
    rejecting = make_cfg(tmp_path, SOLVER={"SAMPLES_PER_BATCH": 4})
    rejecting["MODEL"]["INPUT_SIZE"] = [1, 16, 16]
    rejecting["DATASET"].update(plain["DATASET"], REJECT_SAMPLING={"SIZE_THRES": 10, "P": 1.0})
    for config in (plain, rejecting):  # up to 100 augmented candidates a patch: keep it cheap
        config["AUGMENTOR"] = {**INTENSITY_OFF, "ELASTIC": False, "MISALIGNMENT": False}

    def foreground(config: dict[str, Any]) -> float:
        sampler = PatchSampler(config, load_training_data(config))
        return float(np.mean([(p.label > 0).mean() for i in range(25) for p in sampler.patches(i)]))

    assert foreground(rejecting) > 4 * foreground(plain)
    sampler = PatchSampler(rejecting, load_training_data(rejecting))
    assert all(np.count_nonzero(p.label) >= 10 for p in sampler.patches(0))


# ----------------------------------------------------------------------------- validation


def test_validation_tiles_cover_every_voxel_once(cfg: dict[str, Any]) -> None:
    cfg["MODEL"]["INPUT_SIZE"] = [2, 12, 12]  # does not divide the 3x32x32 held-out part
    data = load_training_data(cfg)
    val = data.val[0]
    rebuilt = np.full(val.shape, -1, np.int64)
    counted = 0
    for tile in validation_patches(cfg, data):
        assert tile.image.shape == (1, 2, 12, 12)
        z, y, x = tile.origin
        region = rebuilt[z : z + 2, y : y + 12, x : x + 12]
        inside = tile.mask[: region.shape[0], : region.shape[1], : region.shape[2]]
        assert inside.all() and tile.mask.sum() == region.size
        region[...] = tile.label[: region.shape[0], : region.shape[1], : region.shape[2]]
        assert (tile.label[~tile.mask] == 0).all()
        counted += int(tile.mask.sum())
    assert counted == int(np.prod(val.shape))
    np.testing.assert_array_equal(rebuilt, np.asarray(val.label))


def test_validation_2d_tiles_and_batches(cfg: dict[str, Any]) -> None:
    cfg["DATASET"]["DO_2D"] = True
    cfg["MODEL"]["INPUT_SIZE"] = [1, 16, 16]
    data = load_training_data(cfg)
    tiles = list(validation_patches(cfg, data))
    assert len(tiles) == data.val[0].shape[0] * 4
    assert tiles[0].image.shape == (1, 16, 16) and tiles[0].label.shape == (16, 16)
    assert [t.z for t in tiles[:5]] == [0, 0, 0, 0, 1]
    expected = (np.asarray(data.val[0].image[0, :16, :16], np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(tiles[0].image[0].numpy(), expected, rtol=1e-6)
    batches = list(validation_batches(cfg, data, batch_size=5))
    assert [len(b.tiles) for b in batches] == [5, 5, 2]
    first = batches[0]
    assert first.image.shape == (5, 1, 16, 16)
    assert first.targets[0].shape == (5, 1, 16, 16)
    assert first.mask.shape == (5, 1, 16, 16) and bool(first.mask.all())
    assert first.weights[0][0] is not None and first.weights[0][1] is None


def test_rejection_by_diversity_asks_for_distinct_ids(tmp_path: Path) -> None:
    label = np.zeros((4, 64, 64), np.uint16)
    label[:, 4:12, 4:12] = 1
    label[:, 40:48, 40:48] = 2  # few patches hold background and both ids
    np.save(tmp_path / "image.npy", np.zeros(label.shape, np.uint8))
    np.save(tmp_path / "label.npy", label)
    cfg = make_cfg(tmp_path, SOLVER={"SAMPLES_PER_BATCH": 4})
    cfg["MODEL"]["INPUT_SIZE"] = [1, 16, 16]
    cfg["DATASET"].update(VAL_IMAGE_NAME="image.npy", VAL_LABEL_NAME="label.npy")
    cfg["AUGMENTOR"] = {"ENABLED": False}
    cfg["DATASET"]["REJECT_SAMPLING"] = {"SIZE_THRES": -1, "DIVERSITY": 2, "P": 1.0}
    sampler = PatchSampler(cfg, load_training_data(cfg))
    assert all(np.unique(p.label).size >= 2 for i in range(5) for p in sampler.patches(i))


def test_valid_masks_move_with_labels_reject_and_weigh(tmp_path: Path) -> None:
    write_volumes(tmp_path)
    mask = np.zeros((20, 32, 32), np.uint8)
    mask[:, :, :20] = 1  # the left 20 columns are annotated
    np.save(tmp_path / "mask.npy", mask)
    cfg = make_cfg(tmp_path, AUGMENTOR={**INTENSITY_OFF, "FLIP": {"ENABLED": True, "P": 1.0}})
    cfg["DATASET"].update(VALID_MASK_NAME="mask.npy", VALID_RATIO=0.5)
    data = load_training_data(cfg)
    assert data.train[0].mask is not None and data.val[0].mask is not None
    assert pickle.loads(pickle.dumps(data)).train[0].mask.shape == data.train[0].mask.shape
    sampler = PatchSampler(cfg, data)
    patches = [p for i in range(6) for p in sampler.patches(i)]
    assert all(p.mask is not None and p.mask.mean() > 0.5 for p in patches)
    batch = make_batch(cfg, sampler, 0)  # WEIGHT_OPT '1' is multiplied by the mask
    weight = batch.weights[0][0]
    assert weight is not None
    stacked = np.stack([p.mask for p in sampler.patches(0) if p.mask is not None])
    masks = torch.from_numpy(stacked)[:, None]
    assert torch.all(weight[masks == 0] == 0) and torch.all(weight[masks == 1] > 0)
    cfg["DATASET"]["VALID_MASK_NAME"] = "mask.npy@mask.npy"
    with pytest.raises(DataError, match="one valid mask per image volume"):
        load_training_data(cfg)
