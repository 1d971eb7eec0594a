"""Targets and weights against small arrays worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from backend.trainer.targets import (
    TargetError,
    TargetSpec,
    affinity_target,
    binary_target,
    boundary_target,
    class_balance_weight,
    make_targets,
    make_weights,
    parse_target,
)


def test_parse_target_options() -> None:
    assert parse_target("0") == TargetSpec("binary")
    assert parse_target("2") == TargetSpec("affinity")
    assert parse_target("4") == TargetSpec("boundary", 1, True)
    assert parse_target("4-1-1") == TargetSpec("boundary", 1, True)
    assert parse_target("4-2-0") == TargetSpec("boundary", 2, False)
    assert parse_target("2").channels(do_2d=False) == 3
    assert parse_target("2").channels(do_2d=True) == 2
    for bad in ("5", "4-x", "4-0-1", "4-1-2", "0-1", ""):
        with pytest.raises(TargetError, match="not supported"):
            parse_target(bad)


def test_binary_target() -> None:
    label = np.array([[[0, 3, 3], [0, 0, 7]]])
    expected = np.array([[[[0, 1, 1], [0, 0, 1]]]], np.float32)
    out = binary_target(label)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_affinity_target_3d() -> None:
    label = np.array(
        [
            [[1, 1, 2], [1, 0, 2]],
            [[1, 1, 2], [3, 3, 0]],
        ]
    )
    z, y, x = affinity_target(label)
    np.testing.assert_array_equal(z, [[[0, 0, 0], [0, 0, 0]], [[1, 1, 1], [0, 0, 0]]])
    np.testing.assert_array_equal(y, [[[0, 0, 0], [1, 0, 1]], [[0, 0, 0], [0, 0, 0]]])
    np.testing.assert_array_equal(x, [[[0, 1, 0], [0, 0, 0]], [[0, 1, 0], [0, 1, 0]]])


def test_affinity_target_2d_has_no_z_channel() -> None:
    label = np.array([[[5, 5], [5, 0]]])
    out = affinity_target(label, do_2d=True)
    assert out.shape == (2, 1, 2, 2)
    np.testing.assert_array_equal(out[0, 0], [[0, 0], [1, 0]])  # y
    np.testing.assert_array_equal(out[1, 0], [[0, 1], [0, 0]])  # x


def test_boundary_between_instances_and_background() -> None:
    label = np.array([[[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0]]])
    with_bg = boundary_target(label)[0, 0]
    np.testing.assert_array_equal(with_bg, [[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    only_instances = boundary_target(label, background=False)[0, 0]
    np.testing.assert_array_equal(only_instances, [[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]])


def test_boundary_width_and_slices_are_independent() -> None:
    label = np.zeros((2, 1, 7), int)
    label[0, 0, :4] = 1
    label[0, 0, 4:] = 2
    label[1] = 1  # one instance filling the slice: no boundary, whatever slice 0 holds
    thin = boundary_target(label, size=1)[0]
    wide = boundary_target(label, size=2)[0]
    np.testing.assert_array_equal(thin[0, 0], [0, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(wide[0, 0], [0, 0, 1, 1, 1, 1, 0])
    assert not thin[1].any() and not wide[1].any()


def test_make_targets_follows_target_opt() -> None:
    label = np.zeros((2, 4, 4), int)
    label[:, 1:3, 1:3] = 4
    targets = make_targets(label, ["0", "2", "4-1-1"])
    assert [t.shape for t in targets] == [(1, 2, 4, 4), (3, 2, 4, 4), (1, 2, 4, 4)]


def test_class_balance_weight_rare_foreground() -> None:
    target = np.zeros((1, 1, 10, 10), np.float32)
    target[..., :2, :] = 1  # 20% foreground
    weight = class_balance_weight(target)
    np.testing.assert_allclose(weight[target == 1], 4.0)  # 0.8 / 0.2
    np.testing.assert_allclose(weight[target == 0], 1.0)


def test_class_balance_weight_rare_background_and_clipping() -> None:
    mostly = np.ones((1, 10, 10), np.float32)
    mostly[0, 0, :3] = 0  # 3% background: clipped to 5%
    weight = class_balance_weight(mostly)
    np.testing.assert_allclose(weight[mostly == 0], 19.0)
    np.testing.assert_allclose(weight[mostly == 1], 1.0)
    empty = class_balance_weight(np.zeros((4, 4), np.float32))
    np.testing.assert_allclose(empty, 1.0)  # nothing of the rare class to weight


def test_make_weights_per_loss() -> None:
    target = np.zeros((1, 1, 4, 5), np.float32)
    target[..., 0, :] = 1
    weights = make_weights([target], [["1", "0"]])
    assert weights[0][1] is None
    assert weights[0][0] is not None and weights[0][0].shape == target.shape
    with pytest.raises(TargetError, match="WEIGHT_OPT '2'"):
        make_weights([target], [["2"]])
    with pytest.raises(TargetError, match="one list of weight options per target"):
        make_weights([target, target], [["1"]])
