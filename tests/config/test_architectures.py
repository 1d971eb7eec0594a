"""The per-architecture constraint table: each violation is reported at its key, and its
suggestion, applied, validates (the trainer refuses the same configs: tests/trainer)."""

from __future__ import annotations

import pytest
import yaml

from backend.config import load_config, validate
from backend.config.architectures import botnet_fmap_size, swin_factors
from backend.config.problems import Problem
from backend.config.schema import KEYS
from tests.config.samples import minimal

BASE_3D: list[str] = []


def check(*overrides: str) -> list[Problem]:
    return validate(load_config(minimal(), overrides=list(overrides)), check_paths=False)


def errors_at(problems: list[Problem], key: str) -> list[Problem]:
    return [p for p in problems if p.key == key and p.is_error]


def apply(overrides: list[str], suggestion: str) -> list[str]:
    """`overrides` with the suggestion ('LEAF: value') written to the key of that leaf."""
    leaf, value = suggestion.split(": ", 1)
    key = next(f"{s}.{leaf}" for s in ("MODEL", "DATASET", "SOLVER") if f"{s}.{leaf}" in KEYS)
    return [*overrides, key, repr(yaml.safe_load(value))]


# (overrides, the key the problem is reported at)
CASES: list[tuple[list[str], str]] = [
    (
        [
            "MODEL.ARCHITECTURE",
            "unet_2d",
            "DATASET.DO_2D",
            "True",
            "MODEL.INPUT_SIZE",
            "[1,64,64]",
            "MODEL.BLOCK_TYPE",
            "residual_pa",
        ],
        "MODEL.BLOCK_TYPE",
    ),
    (
        [
            "MODEL.ARCHITECTURE",
            "fpn_3d",
            "MODEL.FILTERS",
            "[8,16,32,64]",
            "MODEL.ISOTROPY",
            "[False,False,False,True,True]",
        ],
        "MODEL.FILTERS",
    ),
    (["MODEL.ARCHITECTURE", "fpn_3d", "MODEL.ISOTROPY", "[False,True]"], "MODEL.ISOTROPY"),
    (["MODEL.ARCHITECTURE", "fpn_3d", "MODEL.BACKBONE", "resnet50"], "MODEL.BACKBONE"),
    (["MODEL.ARCHITECTURE", "fpn_3d", "MODEL.BLOCK_TYPE", "inverted_res"], "MODEL.BLOCK_TYPE"),
    (["MODEL.ARCHITECTURE", "fpn_3d", "MODEL.BLOCKS", "[1,1]"], "MODEL.BLOCKS"),
    (
        [
            "MODEL.ARCHITECTURE",
            "fpn_3d",
            "MODEL.BACKBONE",
            "efficientnet",
            "MODEL.BLOCK_TYPE",
            "inverted_res",
            "MODEL.BLOCKS",
            "[1,1,1,1,1]",
            "MODEL.KERNEL_SIZES",
            "[3,7,3,3,3]",
        ],
        "MODEL.KERNEL_SIZES",
    ),
    (
        [
            "MODEL.ARCHITECTURE",
            "fpn_3d",
            "MODEL.BACKBONE",
            "efficientnet",
            "MODEL.BLOCK_TYPE",
            "inverted_res_dilated",
            "MODEL.BLOCKS",
            "[1,1,1,1,1]",
            "MODEL.FILTERS",
            "[8,12,18,20,24]",
        ],
        "MODEL.FILTERS",
    ),
    (
        [
            "MODEL.ARCHITECTURE",
            "fpn_3d",
            "MODEL.BACKBONE",
            "botnet",
            "MODEL.INPUT_SIZE",
            "[9,33,33]",
        ],
        "MODEL.INPUT_SIZE",
    ),
    (
        [
            "MODEL.ARCHITECTURE",
            "deeplabv3a",
            "DATASET.DO_2D",
            "True",
            "MODEL.INPUT_SIZE",
            "[1,65,65]",
            "MODEL.BACKBONE",
            "resnet18",
        ],
        "MODEL.BACKBONE",
    ),
    (
        [
            "MODEL.ARCHITECTURE",
            "deeplabv3b",
            "DATASET.DO_2D",
            "True",
            "MODEL.INPUT_SIZE",
            "[1,65,65]",
            "MODEL.BACKBONE",
            "resnet50",
            "SOLVER.SAMPLES_PER_BATCH",
            "1",
        ],
        "SOLVER.SAMPLES_PER_BATCH",
    ),
    (["MODEL.ARCHITECTURE", "unetr", "MODEL.INPUT_SIZE", "[8,60,64]"], "MODEL.INPUT_SIZE"),
    (
        [
            "MODEL.ARCHITECTURE",
            "unetr",
            "MODEL.INPUT_SIZE",
            "[8,64,64]",
            "MODEL.HIDDEN_SIZE",
            "50",
            "MODEL.UNETR_NUM_HEADS",
            "12",
        ],
        "MODEL.UNETR_NUM_HEADS",
    ),
    (
        ["MODEL.ARCHITECTURE", "unetr", "DATASET.DO_2D", "True", "MODEL.INPUT_SIZE", "[4,64,64]"],
        "MODEL.ARCHITECTURE",
    ),
    (["MODEL.ARCHITECTURE", "swinunetr", "MODEL.INPUT_SIZE", "[8,64,64]"], "MODEL.ISOTROPY"),
    (
        [
            "MODEL.ARCHITECTURE",
            "swinunetr",
            "MODEL.INPUT_SIZE",
            "[8,64,64]",
            "MODEL.ISOTROPY",
            "[False,True,True,True]",
            "MODEL.SWIN_UNETR_FEATURE_SIZE",
            "16",
        ],
        "MODEL.SWIN_UNETR_FEATURE_SIZE",
    ),
    (
        [
            "MODEL.ARCHITECTURE",
            "swinunetr",
            "MODEL.INPUT_SIZE",
            "[8,64,64]",
            "MODEL.ISOTROPY",
            "[False,True,True,True]",
            "MODEL.DEPTHS",
            "[2,2,2]",
        ],
        "MODEL.DEPTHS",
    ),
    (
        [
            "MODEL.ARCHITECTURE",
            "swinunetr",
            "MODEL.INPUT_SIZE",
            "[8,60,64]",
            "MODEL.ISOTROPY",
            "[False,True,True,True]",
        ],
        "MODEL.INPUT_SIZE",
    ),
    # The 32^3 isotropic Swin UNETR PyTC cannot train (a 1-voxel bottleneck).
    (
        [
            "MODEL.ARCHITECTURE",
            "swinunetr",
            "DATASET.IS_ISOTROPIC",
            "True",
            "MODEL.INPUT_SIZE",
            "[32,32,32]",
        ],
        "MODEL.INPUT_SIZE",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "key"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)]
)
def test_reported_and_the_suggestion_validates(overrides: list[str], key: str) -> None:
    found = errors_at(check(*BASE_3D, *overrides), key)
    assert len(found) == 1, [p.format() for p in check(*BASE_3D, *overrides)]
    fixed = apply(BASE_3D + overrides, found[0].suggestion)
    assert not [p.format() for p in check(*fixed) if p.is_error]


@pytest.mark.parametrize(
    "overrides",
    [
        ["MODEL.ARCHITECTURE", "fpn_3d", "MODEL.FILTERS", "[8,12,16,20,24]"],
        [
            "MODEL.ARCHITECTURE",
            "fpn_3d",
            "MODEL.BACKBONE",
            "botnet",
            "MODEL.INPUT_SIZE",
            "[8,64,64]",
        ],
        [
            "MODEL.ARCHITECTURE",
            "deeplabv3c",
            "DATASET.DO_2D",
            "True",
            "MODEL.INPUT_SIZE",
            "[1,65,65]",
            "MODEL.BACKBONE",
            "resnet101",
        ],
        ["MODEL.ARCHITECTURE", "unetr", "MODEL.INPUT_SIZE", "[8,64,64]"],
        [
            "MODEL.ARCHITECTURE",
            "unetr",
            "DATASET.IS_ISOTROPIC",
            "True",
            "MODEL.INPUT_SIZE",
            "[32,32,32]",
        ],
        [
            "MODEL.ARCHITECTURE",
            "swinunetr",
            "MODEL.INPUT_SIZE",
            "[8,64,64]",
            "MODEL.ISOTROPY",
            "[False,True,True,True]",
        ],
        [
            "MODEL.ARCHITECTURE",
            "unet_3d",
            "MODEL.BLOCK_TYPE",
            "residual_se_pa",
            "MODEL.ACT_MODE",
            "swish",
        ],
    ],
)
def test_pytc_fixture_configs_validate(overrides: list[str]) -> None:
    assert not [p.format() for p in check(*BASE_3D, *overrides) if p.is_error]


def test_deeplab_says_no_imagenet_weights_are_downloaded() -> None:
    problems = check(
        *BASE_3D,
        "MODEL.ARCHITECTURE",
        "deeplabv3a",
        "DATASET.DO_2D",
        "True",
        "MODEL.INPUT_SIZE",
        "[1,65,65]",
        "MODEL.BACKBONE",
        "resnet50",
    )
    warnings = [p for p in problems if p.key == "MODEL.ARCHITECTURE" and not p.is_error]
    assert warnings and "downloads nothing" in warnings[0].message


def test_geometry_helpers() -> None:
    # PyTC's own failure: (9, 33, 33) gives a (5, 5, 5) layer3 map that cannot halve evenly.
    assert botnet_fmap_size([9, 33, 33], [False] * 3 + [True] * 2) == [5, 5, 5]
    assert botnet_fmap_size([8, 64, 64], [False] * 3 + [True] * 2) == [4, 8, 8]
    assert swin_factors(False, [False, True, True, True]) == (8, 32, 32)
    assert swin_factors(True, [True] * 4) == (32, 32, 32)
