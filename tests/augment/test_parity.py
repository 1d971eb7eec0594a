"""backend.augment against PyTC v1.0.0's own outputs (augment/ in the golden fixtures).

Every seeded pair is replayed with PyTC's three random streams (the sample's RandomState
seeded `seed`, numpy's global RNG and Python's `random` seeded 1000 + seed). Labels and
every non-interpolated image must be equal; images that go through OpenCV's bilinear
interpolation may differ by the OpenCV version (the fixture README measures up to 1.6e-2
between OpenCV 4.11 and 5.0), so there the labels are exact and the images close.
"""

from __future__ import annotations

import random
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
    Mixup,
    MotionBlur,
    Rescale,
    Rotate,
    Streams,
    build_augmentor,
)
from tests.reference import entries, load

EXACT = 1e-6  # float32 rounding of the same arithmetic (Grayscale's power: ~2e-7)
BILINEAR = 2e-2  # OpenCV bilinear interpolation across versions (README: up to 1.6e-2)

# case -> (augmentation as PyTC's fixture call built it, image tolerance)
CASES: dict[str, tuple[Callable[[], Augmentation], float]] = {
    "Flip": (lambda: Flip(do_ztrans=0, p=1.0), EXACT),
    "Rotate_rot90": (lambda: Rotate(rot90=True, p=1.0), EXACT),
    "Rotate_any_angle": (lambda: Rotate(rot90=False, p=1.0), BILINEAR),
    "Rescale": (lambda: Rescale(p=1.0), EXACT),
    "Rescale_fix_aspect": (lambda: Rescale(fix_aspect=True, p=1.0), EXACT),
    "Elastic": (lambda: Elastic(alpha=16.0, sigma=4.0, p=1.0), BILINEAR),
    "Grayscale_mix": (lambda: Grayscale(p=1.0), EXACT),
    "Grayscale_2D": (lambda: Grayscale(p=1.0, mode="2D"), EXACT),
    "Grayscale_3D_invert": (
        lambda: Grayscale(p=1.0, mode="3D", invert=True, invert_p=1.0),
        EXACT,
    ),
    "MissingParts": (lambda: MissingParts(iterations=8, p=0.9), EXACT),
    "MissingSection": (lambda: MissingSection(num_sections=2, p=1.0), EXACT),
    "MisAlignment_translate": (
        lambda: MisAlignment(displacement=16, rotate_ratio=0.0, p=1.0),
        EXACT,
    ),
    "MisAlignment_rotate": (
        lambda: MisAlignment(displacement=16, rotate_ratio=1.0, p=1.0),
        BILINEAR,
    ),
    "MotionBlur": (lambda: MotionBlur(sections=2, kernel_size=11, p=1.0), EXACT),
    "CutBlur": (lambda: CutBlur(length_ratio=0.4, p=1.0), EXACT),
    "CutBlur_downsample_z": (lambda: CutBlur(length_ratio=0.4, downsample_z=True, p=1.0), EXACT),
    "CutNoise": (lambda: CutNoise(length_ratio=0.4, scale=0.3, p=1.0), EXACT),
}
KINDS: dict[str, Any] = {"label": "mask", "image2": "img"}


def _pytc_streams(seed: int, offset: int) -> Streams:
    return Streams(
        np.random.RandomState(seed),
        np.random.RandomState(offset + seed),
        random.Random(offset + seed),
    )


def test_every_seeded_pair_has_a_case() -> None:
    files = {e["file"] for e in entries("augment", "augment/pairs/")}
    assert files == {f"augment/pairs/{name}.npz" for name in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_seeded_pair_matches_pytc(case: str) -> None:
    make, tolerance = CASES[case]
    pair = load(f"augment/pairs/{case}.npz")
    (entry,) = [e for e in entries("augment", f"augment/pairs/{case}.npz")]
    compared = 0
    for seed in range(3):
        if f"seed{seed}_image" not in pair.files:
            # PyTC raised for this seed (CutBlur with DOWNSAMPLE_Z on a short cuboid);
            # Trainboard keeps one voxel instead and must not raise.
            assert "Error" in entry["per_seed"][f"seed{seed}"]
            augmentation = make()
            augmentation.kinds = KINDS
            sample = {k: np.array(pair[k]) for k in ("image", "label", "image2")}
            out = augmentation(sample, _pytc_streams(seed, 1000))
            assert out["image"].shape == pair["image"].shape
            continue
        augmentation = make()
        augmentation.kinds = KINDS
        sample = {k: np.array(pair[k]) for k in ("image", "label", "image2")}
        out = augmentation(sample, _pytc_streams(seed, 1000))
        np.testing.assert_array_equal(out["label"], pair[f"seed{seed}_label"])
        assert out["label"].dtype == pair[f"seed{seed}_label"].dtype
        np.testing.assert_allclose(out["image"], pair[f"seed{seed}_image"], rtol=0, atol=tolerance)
        if f"seed{seed}_image2" in pair.files:
            np.testing.assert_allclose(
                out["image2"], pair[f"seed{seed}_image2"], rtol=0, atol=tolerance
            )
        compared += 1
    assert compared >= 1


def test_flip_rules_are_exact() -> None:
    rules = load("augment/flip_rules.npz")
    checked = 0
    for key in rules.files:
        if "_rule" not in key:
            continue  # an input volume
        name, _, digits = key.rpartition("_rule")
        rule = np.array([int(d) for d in digits])
        source = rules["cube" if name == "cube_ztrans" else name]
        ztrans = 1 if name == "cube_ztrans" else 0
        np.testing.assert_array_equal(Flip.flip_and_swap(source, rule, ztrans), rules[key])
        checked += 1
    assert checked == 16 + 16 + 32


def test_default_compose_matches_pytc() -> None:
    data = load("augment/compose_default_8x32x32.npz")
    augmentor = build_augmentor({"MODEL": {"INPUT_SIZE": [8, 32, 32]}})
    assert augmentor is not None
    assert augmentor.sample_size == tuple(data["image"].shape) == (10, 90, 90)
    for seed in range(3):
        streams = _pytc_streams(seed, 2000)
        # The first draw is Compose's: one number per augmentation of the list.
        np.testing.assert_array_equal(
            np.random.RandomState(seed).rand(len(augmentor.transforms)), data[f"seed{seed}_ran"]
        )
        out = augmentor(
            {"image": np.array(data["image"]), "label": np.array(data["label"])}, streams
        )
        np.testing.assert_array_equal(out["label"], data[f"seed{seed}_label"])
        np.testing.assert_allclose(out["image"], data[f"seed{seed}_image"], rtol=0, atol=BILINEAR)


def test_compose_layout_matches_pytc_table() -> None:
    table = load("augment/augmentors.json")
    for name, layout in table["compose"].items():
        overrides = layout["config_overrides"]
        cfg: dict[str, Any] = {"MODEL": {"INPUT_SIZE": [8, 256, 256]}}
        for key, value in zip(overrides[::2], overrides[1::2], strict=True):
            node = cfg
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = eval(value)  # the table writes Python literals: True, [8,64,64]
        augmentor = build_augmentor(cfg)
        if "augmentor" in layout:  # AUGMENTOR.ENABLED False: no augmentor at all
            assert layout["augmentor"] is None and augmentor is None, name
            continue
        assert augmentor is not None
        expected = [n for n in layout["transforms_list_after_build (Flip removed)"]]
        applied = [t.name for t in augmentor.transforms]
        if "CopyPasteAugmentor" in expected:
            expected.remove("CopyPasteAugmentor")  # not applied here (docs/data.md)
        assert applied == expected, name
        assert {t.name: t.p for t in augmentor.transforms} == {
            k: v for k, v in layout["p"].items() if k in applied
        }
        assert augmentor.flip is not None and augmentor.flip.p == layout["p"]["Flip"]
        if "CopyPasteAugmentor" not in layout["transforms_list_after_build (Flip removed)"]:
            assert list(augmentor.sample_size) == layout["sample_size"], name
        for t in augmentor.transforms:
            params = layout["sample_params"][t.name]
            assert list(t.ratio) == params["ratio"] and list(t.add) == params["add"], t.name


def test_config_defaults_match_pytc() -> None:
    from backend.config.schema import KEYS

    table = load("augment/augmentors.json")
    for entry in table["augmentors"]:
        section = entry["config_section"]
        for leaf, value in entry["config_defaults"].items():
            assert KEYS[f"{section}.{leaf}"].default == value, f"{section}.{leaf}"
    assert KEYS["AUGMENTOR.SMOOTH"].default is table["AUGMENTOR.SMOOTH"]
    assert KEYS["AUGMENTOR.ENABLED"].default is table["AUGMENTOR.ENABLED"]


def test_mixup_matches_pytc() -> None:
    data = load("augment/mixup.npz")
    out = Mixup(0.7, 0.9, num_aug=2)(data["volume"], random.Random(0))
    np.testing.assert_array_equal(out, data["output"])
