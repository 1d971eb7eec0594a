"""Pixel weights against PyTC v1.0.0's own (`pytc-golden/weights/*`), and by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from backend.trainer.weights import balance, seg_to_weight, unet_border
from tests.reference import entries, entry_id, load

WEIGHTS = entries("weights")


def _inputs(entry: dict[str, Any]) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    fixture = load(entry["file"])
    mask = fixture["mask"] if "mask" in fixture.files else None
    seg = fixture["seg"] if "seg" in fixture.files else None
    return fixture, mask, seg


@pytest.mark.parametrize("entry", [e for e in WEIGHTS if e["status"] == "ok"], ids=entry_id)
def test_matches_pytc(entry: dict[str, Any]) -> None:
    fixture, mask, seg = _inputs(entry)
    made = seg_to_weight(fixture["target"], entry["inputs"]["wopts"], mask, seg)
    for j, ours in enumerate(made):
        ref = fixture[f"weight_{j}"]
        if ref.shape == (1,):  # PyTC's "no weight" placeholder
            assert ours is None
            continue
        assert ours is not None and (ours.shape, ours.dtype) == (ref.shape, ref.dtype)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("entry", [e for e in WEIGHTS if e["status"] == "error"], ids=entry_id)
def test_refuses_what_pytc_cannot_make(entry: dict[str, Any]) -> None:
    fixture, mask, seg = _inputs(entry)
    with pytest.raises(ValueError, match="3D labels"):
        seg_to_weight(fixture["target"], entry["inputs"]["wopts"], mask, seg)


def test_balance_weighs_the_rare_class() -> None:
    target = np.zeros((1, 1, 4, 5), np.float32)
    target[..., 0, :2] = 1  # 2 of 20 foreground: share 0.1, factor 0.9 / 0.1 = 9
    weight = balance(target)
    assert weight[target == 1].tolist() == pytest.approx([9.0, 9.0])
    assert set(weight[target == 0].tolist()) == {1.0}
    # Mostly foreground (affinities): the background is the rare class.
    np.testing.assert_allclose(balance(1 - target), 1 + 8 * target)


def test_unet_border_is_high_between_two_instances() -> None:
    seg = np.zeros((1, 1, 9), np.uint16)
    seg[0, 0, :3], seg[0, 0, 6:] = 1, 2
    weight = unet_border(seg, w0=10.0, w1=5.0)[0, 0, 0]
    assert weight[:3].tolist() == [5.0] * 3 and weight[6:].tolist() == [5.0] * 3
    gap = 10 * np.exp(-((np.array([1.0, 2.0, 1.0]) + np.array([3.0, 2.0, 3.0])) ** 2) / 50)
    np.testing.assert_allclose(weight[3:6], np.clip(gap, 1, 10), rtol=1e-6)
