"""The trainer's Augmenter: PyTC's augmentor on one sample, reproducible from a Generator."""

from __future__ import annotations

from typing import Any

import numpy as np

from backend.trainer.augment import Augmenter


def _sample(augmenter: Augmenter, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = augmenter.sample_size
    label = np.zeros(shape, np.uint16)
    label[:, shape[1] // 4 : shape[1] // 2, shape[2] // 4 : shape[2] // 2] = 7
    return rng.random(shape, dtype=np.float32), label


CFG: dict[str, Any] = {"MODEL": {"INPUT_SIZE": [8, 32, 32]}}


def test_sample_size_and_names_follow_the_config() -> None:
    augmenter = Augmenter.from_config(CFG, (8, 32, 32))
    assert augmenter.sample_size == (10, 90, 90)
    assert augmenter.names[0] == "Rotate" and augmenter.names[-1] == "Flip"
    off = Augmenter.from_config({"AUGMENTOR": {"ENABLED": False}}, (8, 32, 32))
    assert off.compose is None and off.sample_size == (8, 32, 32) and off.names == []


def test_same_generator_state_same_patch() -> None:
    augmenter = Augmenter.from_config(CFG, (8, 32, 32))
    image, label = _sample(augmenter)
    one = augmenter(image.copy(), label.copy(), np.random.default_rng([1, 2]))
    two = augmenter(image.copy(), label.copy(), np.random.default_rng([1, 2]))
    other = augmenter(image.copy(), label.copy(), np.random.default_rng([1, 3]))
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    assert not np.array_equal(one[0], other[0])
    assert one[0].shape == one[1].shape == (8, 32, 32)
    assert one[0].flags.c_contiguous and one[1].flags.c_contiguous


def test_disabled_augmenter_passes_the_sample_through() -> None:
    augmenter = Augmenter.from_config({"AUGMENTOR": {"ENABLED": False}}, (4, 8, 8))
    image, label = _sample(augmenter)
    out_image, out_label, out_mask = augmenter(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)
    assert out_mask is None


def test_non_square_patches_keep_their_shape() -> None:
    augmenter = Augmenter.from_config({"MODEL": {"INPUT_SIZE": [4, 16, 24]}}, (4, 16, 24))
    for seed in range(6):
        image, label = _sample(augmenter, seed)
        mask = (label > 0).astype(np.uint8)
        out_image, out_label, out_mask = augmenter(image, label, np.random.default_rng(seed), mask)
        assert out_image.shape == out_label.shape == (4, 16, 24)
        assert out_mask is not None and out_mask.shape == (4, 16, 24)
        # The valid mask moves with the label (both `mask` kind, nearest neighbour).
        np.testing.assert_array_equal(out_mask > 0, out_label > 0)
