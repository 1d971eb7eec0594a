"""Flips and rotations: identical on image and label, shape-safe, reproducible."""

from __future__ import annotations

import numpy as np

from backend.trainer.augment import (
    AugmentConfig,
    FlipRule,
    apply_flip,
    apply_rotation,
    augment,
    draw_flip,
    draw_rotation,
)


def _pair(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    image = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    return image, image.astype(np.int64) * 10


def test_config_from_sections_and_booleans() -> None:
    config = AugmentConfig.from_config(
        {"FLIP": {"ENABLED": True, "P": 0.5, "DO_ZTRANS": 1}, "ROTATE": False}
    )
    assert config == AugmentConfig(
        flip=True, flip_p=0.5, flip_ztrans=True, rotate=False, rotate_p=1.0
    )
    assert AugmentConfig.from_config({}) == AugmentConfig()


def test_flip_rule_applies_each_axis() -> None:
    image, _ = _pair((2, 3, 3))
    np.testing.assert_array_equal(apply_flip(image, FlipRule(z=True)), image[::-1])
    np.testing.assert_array_equal(apply_flip(image, FlipRule(x=True)), image[:, :, ::-1])
    np.testing.assert_array_equal(
        apply_flip(image, FlipRule(transpose_yx=True)), image.transpose(0, 2, 1)
    )


def test_transposes_only_when_the_shape_allows() -> None:
    rng = np.random.default_rng(0)
    rules = [draw_flip(rng, (4, 6, 8), ztrans=True) for _ in range(50)]
    assert not any(r.transpose_yx or r.transpose_zx for r in rules)
    rules = [draw_flip(rng, (8, 8, 8), ztrans=True) for _ in range(50)]
    assert any(r.transpose_yx for r in rules) and any(r.transpose_zx for r in rules)
    rules = [draw_flip(rng, (8, 8, 8), ztrans=False) for _ in range(50)]
    assert not any(r.transpose_zx for r in rules)


def test_rotation_keeps_non_square_shapes() -> None:
    rng = np.random.default_rng(0)
    assert {draw_rotation(rng, (1, 4, 6)) for _ in range(50)} == {0, 2}
    assert {draw_rotation(rng, (1, 6, 6)) for _ in range(50)} == {0, 1, 2, 3}
    image, _ = _pair((1, 2, 2))
    np.testing.assert_array_equal(apply_rotation(image, 1)[0], [[1, 3], [0, 2]])


def test_image_and_label_transformed_identically() -> None:
    config = AugmentConfig(flip_ztrans=True)
    for seed in range(20):
        for shape in ((4, 4, 4), (1, 6, 6), (3, 4, 6)):
            image, label = _pair(shape)
            out_image, out_label = augment(image, label, config, np.random.default_rng(seed))
            assert out_image.shape == shape
            # The label was image * 10: any difference in transform would break this.
            np.testing.assert_array_equal(out_label, out_image.astype(np.int64) * 10)
            assert out_image.flags.c_contiguous and out_label.flags.c_contiguous


def test_augment_is_deterministic_per_generator_state() -> None:
    image, label = _pair((4, 8, 8))
    config = AugmentConfig(flip_ztrans=True)
    first = augment(image, label, config, np.random.default_rng([7, 3]))
    second = augment(image, label, config, np.random.default_rng([7, 3]))
    np.testing.assert_array_equal(first[0], second[0])
    outcomes = {
        augment(image, label, config, np.random.default_rng([7, i]))[0].tobytes() for i in range(40)
    }
    assert len(outcomes) > 8  # many different transforms do occur


def test_disabled_augmentation_is_identity_and_keeps_the_stream() -> None:
    image, label = _pair((2, 4, 4))
    off = AugmentConfig(flip=False, rotate=False)
    rng_off, rng_on = np.random.default_rng(1), np.random.default_rng(1)
    out_image, out_label = augment(image, label, off, rng_off)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)
    augment(image, label, AugmentConfig(), rng_on)
    # Same draws whatever fires, so later samples do not depend on the config's P.
    assert rng_off.random() == rng_on.random()


def test_probability_zero_never_fires() -> None:
    image, label = _pair((2, 4, 4))
    config = AugmentConfig(flip_p=0.0, rotate_p=0.0)
    for seed in range(10):
        out, _ = augment(image, label, config, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, image)
