"""What every augmentation must keep: shapes, value ranges, label ids, what it may touch.

Table-driven over all augmentations on small random samples (images in [0, 1], labels with
a few ids) and several seeds; the parity tests check PyTC's exact outputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from backend.augment import (
    Augmentation,
    CutBlur,
    CutNoise,
    Elastic,
    Flip,
    Grayscale,
    MisAlignment,
    MissingParts,
    MissingSection,
    MotionBlur,
    Rescale,
    Rotate,
    Sample,
    Streams,
    build_augmentor,
)
from backend.augment.compose import BUILD_ORDER, smooth_mask

SEEDS = range(4)
GEOMETRIC: dict[str, Callable[[], Augmentation]] = {
    "Flip": lambda: Flip(p=1.0),
    "Flip_ztrans": lambda: Flip(p=1.0, do_ztrans=1),
    "Rotate_rot90": lambda: Rotate(p=1.0),
    "Rotate_any_angle": lambda: Rotate(p=1.0, rot90=False),
    "Rescale": lambda: Rescale(p=1.0),
    "Elastic": lambda: Elastic(p=1.0),
    "MissingSection": lambda: MissingSection(p=1.0),
    "MisAlignment_translate": lambda: MisAlignment(p=1.0),
    "MisAlignment_rotate": lambda: MisAlignment(p=1.0, rotate_ratio=1.0),
}
INTENSITY: dict[str, Callable[[], Augmentation]] = {
    "Grayscale": lambda: Grayscale(p=1.0),
    "Grayscale_2D": lambda: Grayscale(p=1.0, mode="2D"),
    "MissingParts": lambda: MissingParts(p=1.0, iterations=3),
    "MotionBlur": lambda: MotionBlur(p=1.0),
    "CutBlur": lambda: CutBlur(p=1.0, length_ratio=0.4),
    "CutNoise": lambda: CutNoise(p=1.0, length_ratio=0.4, scale=0.3),
}
ALL = {**GEOMETRIC, **INTENSITY}


def sample(shape: tuple[int, int, int] = (8, 24, 24), seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint16)
    label[:, 2:10, 3:12] = 3
    label[:, 12:20, 8:22] = 9
    label[2:5, 14:18, 1:6] = 40
    return {
        "image": rng.random(shape, dtype=np.float32),
        "label": label,
        "image2": rng.random(shape, dtype=np.float32),
    }


def run(make: Callable[[], Augmentation], seed: int, **kinds: str) -> tuple[Sample, Sample]:
    augmentation = make()
    augmentation.kinds = {"label": "mask", "image2": "img", **kinds}  # type: ignore[dict-item]
    before = sample(seed=seed + 100)
    out = augmentation({k: v.copy() for k, v in before.items()}, Streams.seeded(seed))
    return before, out


@pytest.mark.parametrize("name", sorted(ALL))
def test_labels_keep_their_ids_and_dtype(name: str) -> None:
    for seed in SEEDS:
        before, out = run(ALL[name], seed)
        assert out["label"].dtype == before["label"].dtype
        assert set(np.unique(out["label"])) <= set(np.unique(before["label"])), name


@pytest.mark.parametrize("name", sorted(ALL))
def test_images_stay_in_range_and_float32(name: str) -> None:
    for seed in SEEDS:
        _, out = run(ALL[name], seed)
        for key in ("image", "image2"):
            assert out[key].dtype == np.float32
            assert out[key].min() >= 0.0 and out[key].max() <= 1.0, (name, key)


@pytest.mark.parametrize("name", sorted(INTENSITY))
def test_intensity_augmentations_leave_masks_and_shape_alone(name: str) -> None:
    changed = 0
    for seed in SEEDS:
        before, out = run(INTENSITY[name], seed)
        np.testing.assert_array_equal(out["label"], before["label"])
        assert out["image"].shape == before["image"].shape
        changed += int(not np.array_equal(out["image"], before["image"]))
        changed += int(not np.array_equal(out["image2"], before["image2"]))
    assert changed > 0, f"{name} never changed an image"


@pytest.mark.parametrize("name", sorted(ALL))
def test_skipped_targets_are_untouched(name: str) -> None:
    augmentation = ALL[name]()
    augmentation.kinds = {"label": "mask", "image2": "img"}
    augmentation.skip = ("label", "image2")
    before = sample()
    out = augmentation({k: v.copy() for k, v in before.items()}, Streams.seeded(3))
    np.testing.assert_array_equal(out["label"], before["label"])
    np.testing.assert_array_equal(out["image2"], before["image2"])


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_geometric_augmentations_move_image_and_label_together(name: str) -> None:
    # The image is the label itself (scaled): after any geometric change, wherever the
    # warped image is exactly an id's value, the label must hold that id (nearest
    # neighbour keeps ids; bilinear blends only at edges).
    for seed in SEEDS:
        augmentation = GEOMETRIC[name]()
        base = sample(seed=seed)
        base["image"] = base["label"].astype(np.float32) / 40.0
        out = augmentation(base, Streams.seeded(seed))
        assert out["image"].shape == out["label"].shape
        exact = np.isclose(out["image"] * 40.0, np.round(out["image"] * 40.0), atol=1e-4)
        interior = exact & np.isin(np.round(out["image"] * 40), [3, 9, 40])
        agree = out["label"][interior] == np.round(out["image"][interior] * 40)
        assert agree.mean() > 0.97, (name, seed, agree.mean())


def test_rot90_and_flip_permute_voxels() -> None:
    for make in (GEOMETRIC["Rotate_rot90"], GEOMETRIC["Flip"]):
        for seed in SEEDS:
            before, out = run(make, seed)
            np.testing.assert_array_equal(
                np.sort(out["image"], None), np.sort(before["image"], None)
            )


def test_missing_section_deletes_inner_slices_only() -> None:
    for seed in SEEDS:
        before, out = run(GEOMETRIC["MissingSection"], seed)
        assert out["image"].shape == (6, 24, 24)
        kept = [
            z for z in range(8) if any(np.array_equal(before["image"][z], o) for o in out["image"])
        ]
        assert len(kept) == 6 and kept[0] == 0 and kept[-1] == 7
    single = sample((1, 24, 24))
    out = MissingSection(p=1.0)({k: v.copy() for k, v in single.items()}, Streams.seeded(0))
    np.testing.assert_array_equal(out["image"], single["image"])


def test_misalignment_translation_crops_by_the_displacement() -> None:
    _, out = run(lambda: MisAlignment(p=1.0, displacement=6), 0)
    assert out["image"].shape == (8, 18, 18) and out["label"].shape == (8, 18, 18)


def test_cut_noise_stays_in_one_cuboid_within_scale() -> None:
    for seed in SEEDS:
        before, out = run(INTENSITY["CutNoise"], seed)
        diff = np.abs(out["image"] - before["image"])
        assert diff.max() <= 0.3 + 1e-6
        extent = [int(np.ptp(axis)) + 1 for axis in np.nonzero(diff)]
        limit = [int(0.4 * 8), int(0.4 * 24), int(0.4 * 24)]
        assert all(e <= m for e, m in zip(extent, limit, strict=True)), (extent, limit)


def test_grayscale_3d_keeps_the_order_of_intensities() -> None:
    before, out = run(lambda: Grayscale(p=1.0, mode="3D"), 1)
    order = np.argsort(before["image"], axis=None)
    assert np.all(np.diff(out["image"].ravel()[order]) >= -1e-7)


def test_missing_parts_fills_with_the_slice_mean_never_two_neighbours() -> None:
    for seed in SEEDS:
        before, out = run(lambda: MissingParts(p=1.0, iterations=2), seed)
        changed = [z for z in range(8) if not np.array_equal(out["image"][z], before["image"][z])]
        assert changed and all(b - a >= 2 for a, b in itertools.pairwise(changed))
        for z in changed:
            filled = out["image"][z][out["image"][z] != before["image"][z]]
            np.testing.assert_allclose(filled, before["image"][z].mean(), rtol=1e-6)


def test_motion_blur_touches_at_most_its_sections() -> None:
    before, out = run(lambda: MotionBlur(p=1.0, sections=2), 0)
    changed = [z for z in range(8) if not np.array_equal(out["image"][z], before["image"][z])]
    assert 1 <= len(changed) <= 2


def test_elastic_without_displacement_is_the_identity() -> None:
    before, out = run(lambda: Elastic(p=1.0, alpha=0.0), 0)
    np.testing.assert_array_equal(out["image"], before["image"])
    np.testing.assert_array_equal(out["label"], before["label"])


def test_labels_of_any_integer_dtype_keep_their_ids() -> None:
    base = sample()
    base["label"] = base["label"].astype(np.int64) * 100_000  # beyond OpenCV's dtypes
    for make in (GEOMETRIC["Rotate_any_angle"], GEOMETRIC["Elastic"]):
        out = make()({k: v.copy() for k, v in base.items()}, Streams.seeded(2))
        assert out["label"].dtype == np.int64
        assert set(np.unique(out["label"])) <= set(np.unique(base["label"]))


def test_probability_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"P 1\.5"):
        Flip(p=1.5)


# --- Compose ------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {"MODEL": {"INPUT_SIZE": [8, 32, 32]}},
    "any_angle": {"MODEL": {"INPUT_SIZE": [8, 32, 32]}, "AUGMENTOR": {"ROTATE": {"ROT90": False}}},
    "2d": {"MODEL": {"INPUT_SIZE": [1, 33, 33]}, "DATASET": {"DO_2D": True}},
    "cube_ztrans": {"MODEL": {"INPUT_SIZE": [16, 16, 16]}, "AUGMENTOR": {"FLIP": {"DO_ZTRANS": 1}}},
    "non_square": {"MODEL": {"INPUT_SIZE": [4, 24, 32]}},
}


def _all_on(cfg: dict[str, Any]) -> dict[str, Any]:
    """Every augmentation with P 1: the worst case for the sample size."""
    augmentor = dict(cfg.get("AUGMENTOR", {}))
    for section in BUILD_ORDER:
        augmentor[section] = {**augmentor.get(section, {}), "P": 1.0}
    return {**cfg, "AUGMENTOR": augmentor}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_compose_turns_a_sample_into_a_patch(name: str) -> None:
    for cfg in (CONFIGS[name], _all_on(CONFIGS[name])):
        augmentor = build_augmentor(cfg)
        assert augmentor is not None
        for seed in SEEDS:
            base = sample(augmentor.sample_size, seed)
            applied = augmentor.apply(base, Streams.seeded(seed))
            for key in ("image", "label"):
                assert applied.sample[key].shape == augmentor.input_size, (name, key)
                assert applied.sample[key].flags.c_contiguous
            assert set(np.unique(applied.sample["label"])) <= set(np.unique(base["label"]))
            assert set(applied.applied) <= set(augmentor.names)


def test_compose_is_a_function_of_its_seeds() -> None:
    augmentor = build_augmentor(CONFIGS["defaults"])
    assert augmentor is not None
    base = sample(augmentor.sample_size)
    one = augmentor.apply(dict(base), Streams.seeded(5))
    two = augmentor.apply(dict(base), Streams.seeded(5))
    other = augmentor.apply(dict(base), Streams.seeded(6))
    np.testing.assert_array_equal(one.sample["image"], two.sample["image"])
    assert one.applied == two.applied
    assert not np.array_equal(one.sample["image"], other.sample["image"])


def test_compose_with_every_probability_zero_only_crops() -> None:
    cfg = _all_on(CONFIGS["defaults"])
    for section in cfg["AUGMENTOR"]:
        cfg["AUGMENTOR"][section]["P"] = 0.0
    augmentor = build_augmentor(cfg)
    assert augmentor is not None
    base = sample(augmentor.sample_size)
    applied = augmentor.apply(dict(base), Streams.seeded(0))
    assert applied.applied == ()
    _, y, x = (np.array(augmentor.sample_size) - np.array(augmentor.input_size)) // 2
    np.testing.assert_array_equal(
        applied.sample["image"][0], base["image"][0, y : y + 32, x : x + 32]
    )


def test_switches_and_old_style_sections() -> None:
    off = build_augmentor({"AUGMENTOR": {"ENABLED": False}})
    assert off is None
    few = build_augmentor(
        {
            "MODEL": {"INPUT_SIZE": [8, 32, 32]},
            "AUGMENTOR": {"ELASTIC": False, "CUTBLUR": {"ENABLED": False}},
        }
    )
    assert few is not None and "Elastic" not in few.names and "CutBlur" not in few.names
    assert few.names[-1] == "Flip"


def test_smooth_keeps_ids_and_rounds_corners() -> None:
    cfg = _all_on(CONFIGS["defaults"])
    cfg["AUGMENTOR"]["SMOOTH"] = True
    augmentor = build_augmentor(cfg)
    assert augmentor is not None and augmentor.smooth
    base = sample(augmentor.sample_size)
    out = augmentor(base, Streams.seeded(1))
    assert set(np.unique(out["label"])) <= set(np.unique(base["label"]))


def test_smooth_mask_rounds_corners_and_drops_specks() -> None:
    label = np.zeros((1, 20, 20), np.uint16)
    label[0, 4:14, 4:14] = 3
    label[0, 17, 17] = 5
    out = smooth_mask(label)
    assert out[0, 17, 17] == 0  # a one-pixel speck is smoothed away
    assert out[0, 4, 4] == 0 and out[0, 9, 9] == 3  # a corner is rounded, the inside kept
    assert set(np.unique(out)) <= {0, 3}
