"""Targets against PyTC v1.0.0's own (`pytc-golden/targets/**`), and the behaviours the
fixtures pin down worked out by hand on tiny labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from backend.trainer.supervision import Supervision
from backend.trainer.targets import (
    HOLE_SIZE,
    TargetError,
    _ball,
    affinity,
    contour,
    instance_distance,
    make_target,
    reduce_label,
    seg_to_targets,
    seg_widen_border,
)
from tests.reference import entries, entry_id, load

TARGETS = [e for e in entries("targets") if e["file"] != "targets/labels.npz"]
MADE = [e for e in TARGETS if e["status"] == "ok" and "label_ops" not in e["file"]]
REFUSED = [e for e in TARGETS if e["status"] == "error"]
EMPTY = [e for e in TARGETS if e["status"] == "returns None"]


def _label(entry: dict[str, Any]) -> np.ndarray:
    name: str = entry["inputs"]["label"].split(":")[1]
    label: np.ndarray = load("targets/labels.npz")[name]
    return label


def _make(entry: dict[str, Any]) -> list[np.ndarray | None]:
    inputs = entry["inputs"]
    return seg_to_targets(
        _label(entry), inputs["topts"], inputs.get("erosion_rates"), inputs.get("dilation_rates")
    )


@pytest.mark.parametrize("entry", MADE, ids=entry_id)
def test_matches_pytc(entry: dict[str, Any]) -> None:
    """Exact for integer / binary targets; float targets (distance transforms, flows) to
    1e-6, the README's bound for a different scipy build."""
    fixture = load(entry["file"])
    made = _make(entry)
    names = ["target"] if "target" in fixture.files else [f"target_{j}" for j in range(len(made))]
    for name, ours in zip(names, made, strict=True):
        ref = fixture[name]
        assert ours is not None
        assert (ours.shape, ours.dtype) == (ref.shape, ref.dtype), name
        if np.issubdtype(ref.dtype, np.integer) or set(np.unique(ref)) <= {0.0, 1.0}:
            np.testing.assert_array_equal(ours, ref, err_msg=name)
        else:
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("entry", REFUSED, ids=entry_id)
def test_refuses_what_pytc_cannot_make(entry: dict[str, Any]) -> None:
    with pytest.raises(TargetError):
        _make(entry)


@pytest.mark.parametrize("entry", EMPTY, ids=entry_id)
def test_dilation_zero_makes_nothing_as_pytc(entry: dict[str, Any]) -> None:
    assert _make(entry) == [None]


def test_label_ops_match_pytc() -> None:
    seg = load("targets/labels.npz")["seg3d"]
    reduced = load("targets/label_ops/reduce_label_seg3d.npz")
    for ours, name in (
        (reduce_label(seg), "reduce_label"),
        (reduce_label(seg, do_type=True), "reduce_label_do_type"),
    ):
        assert ours.dtype == reduced[name].dtype
        np.testing.assert_array_equal(ours, reduced[name])
    widened = load("targets/label_ops/seg_widen_border_seg3d_1.npz")["widened"]
    np.testing.assert_array_equal(seg_widen_border(seg, 1), widened)


# --- the three bugs of issue 13, on labels small enough to check by eye ------------------------


def test_affinity_first_plane_carries_the_foreground() -> None:
    """The first voxel along an axis has no neighbour: PyTC writes the foreground mask."""
    label = np.array([[[1, 1, 0], [2, 2, 0]]])  # (1, 2, 3)
    z, y, x = affinity(label)
    np.testing.assert_array_equal(z, [[[1, 1, 0], [1, 1, 0]]])  # the single slice: label > 0
    np.testing.assert_array_equal(y, [[[1, 1, 0], [0, 0, 0]]])  # row 0: fg; row 1: 2 != 1
    np.testing.assert_array_equal(x, [[[1, 1, 0], [1, 1, 0]]])


def test_contour_with_background_is_sobel_plus_dilation() -> None:
    """'4-1-1' on a straight vertical edge between two instances: the [1, 0, -1] difference
    marks the two columns beside it, the 3x3 dilation one more on each side: 4 px."""
    label = np.zeros((1, 8, 8), np.uint16)
    label[:, :, :4], label[:, :, 4:] = 1, 2
    out = contour(label, 1, background=True)[0, 0]
    np.testing.assert_array_equal(out[0], [0, 0, 1, 1, 1, 1, 0, 0])
    no_dilation = make_target(label, "4-0-1")
    assert no_dilation is not None and no_dilation[0, 0, 0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]


def test_contour_without_background_ignores_the_background() -> None:
    """'4-S-0' marks only windows with two different non-zero ids (no int64 overflow)."""
    label = np.zeros((1, 6, 6), np.int64)
    label[0, 1:3, 1:3] = 7  # an instance alone in background: no contour
    assert not contour(label, 1, background=False).any()
    label[0, 3:5, 1:3] = 9  # a touching instance: the two rows whose 3x3 window sees both
    rows_marked = np.nonzero(contour(label, 1, background=False)[0, 0].any(axis=1))[0]
    assert rows_marked.tolist() == [2, 3]


# --- what the data pipeline calls --------------------------------------------------------------


def test_supervision_erodes_per_target_and_weighs_per_loss() -> None:
    seg = load("targets/labels.npz")["seg3d"]
    case = load("targets/erode_dilate/case2_seg3d.npz")  # ['0', '4-1-1'], erosion [1, 2]
    cfg = {
        "MODEL": {
            "TARGET_OPT": ["0", "4-1-1"],
            "LABEL_EROSION": [1, 2],
            "LOSS_OPTION": [["WeightedBCEWithLogitsLoss", "DiceLoss"], ["WeightedMSE"]],
            "WEIGHT_OPT": [["1", "0"], ["1"]],
        },
        "DATASET": {"REDUCE_LABEL": False},
    }
    targets, weights = Supervision.from_config(cfg)(seg)
    np.testing.assert_array_equal(targets[0], case["target_0"])
    np.testing.assert_array_equal(targets[1], case["target_1"])
    assert weights[0][0] is not None and weights[0][1] is None and weights[1][0] is not None


def test_supervision_squeezes_2d_and_keeps_semantic_ids() -> None:
    label = np.array([[[0, 5, 5], [3, 3, 0]]], np.uint16)  # (1, 2, 3)
    cfg: dict[str, dict[str, Any]] = {
        "MODEL": {
            "TARGET_OPT": ["9-6", "1"],
            "LOSS_OPTION": [["WeightedCE"], ["DiceLoss"]],
            "WEIGHT_OPT": [["0"], ["0"]],
        },
        "DATASET": {"DO_2D": True, "REDUCE_LABEL": True},
    }
    (semantic, polarity), _ = Supervision.from_config(cfg)(label)
    # '9' turns REDUCE_LABEL off: ids are classes, and polarity keeps 5 odd, 3 odd.
    np.testing.assert_array_equal(semantic, [[0, 5, 5], [3, 3, 0]])
    assert polarity.shape == (3, 2, 3) and polarity[1].sum() == 0
    cfg["MODEL"]["TARGET_OPT"] = ["0-2", "1"]
    cfg["MODEL"]["LOSS_OPTION"] = [["DiceLoss"], ["DiceLoss"]]
    (binary, polarity), _ = Supervision.from_config(cfg)(label)
    # Reduced: 3 -> 1, 5 -> 2 before the targets are made, as PyTC does.
    np.testing.assert_array_equal(binary[0], [[0, 1, 1], [0, 0, 0]])
    assert polarity[1].sum() == 2


# --- the instance EDT in bounding boxes equals its whole-volume definition ---------------------


def _instance_distance_whole(label: np.ndarray, erosion: int) -> np.ndarray:
    """The definition, one whole-volume pass per instance (PyTC v1.0.0's way)."""
    out = np.full(label.shape, -1.0)
    faces = ndimage.generate_binary_structure(label.ndim, 1)
    for value in np.unique(label[label > 0]):
        parts, n = ndimage.label(label == value, np.ones((3,) * label.ndim))
        for part in range(1, n + 1):
            mask = parts == part
            holes, _ = ndimage.label(~mask, faces)
            small = np.bincount(holes.ravel()) <= HOLE_SIZE
            small[0] = False
            mask = mask | small[holes]
            if erosion:
                mask = ndimage.binary_erosion(mask, _ball(erosion, label.ndim), border_value=1)
            if mask.any():
                edt = ndimage.distance_transform_edt(mask)
                out[mask] = np.maximum(out[mask], (edt / (edt.max() + 1e-6))[mask])
    return out


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    erosion=st.integers(0, 2),
    size=st.integers(3, 12),
    ndim=st.sampled_from([2, 3]),
)
def test_instance_distance_in_boxes_equals_the_whole_volume(
    seed: int, erosion: int, size: int, ndim: int
) -> None:
    """Random small labels put instances in corners, against borders and around tiny
    background pockets: the cases where a cropped box could differ."""
    rng = np.random.default_rng(seed)
    shape = (size,) * ndim
    label = rng.integers(0, 4, shape) * (rng.random(shape) < 0.8)
    np.testing.assert_allclose(
        instance_distance(label, (1.0,) * ndim, padding=False, erosion=erosion),
        _instance_distance_whole(label, erosion),
        rtol=0,
        atol=1e-12,
    )
