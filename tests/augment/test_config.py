"""Every AUGMENTOR key reaches its augmentation, and none is "accepted, not used"."""

from __future__ import annotations

from typing import Any

import pytest

from backend.augment import build_augmentor
from backend.config.load import load_config
from backend.config.schema import KEYS
from backend.config.validate import validate

# key -> (value written in the config, augmentation name, attribute, expected value)
SETTINGS: list[tuple[str, str, str, str, Any]] = [
    ("AUGMENTOR.ROTATE.ROT90", "False", "Rotate", "rot90", False),
    ("AUGMENTOR.ROTATE.P", "0.3", "Rotate", "p", 0.3),
    ("AUGMENTOR.RESCALE.FIX_ASPECT", "True", "Rescale", "fix_aspect", True),
    ("AUGMENTOR.FLIP.DO_ZTRANS", "1", "Flip", "do_ztrans", 1),
    ("AUGMENTOR.FLIP.SKIP", "['label']", "Flip", "skip", ("label",)),
    ("AUGMENTOR.ELASTIC.ALPHA", "10.0", "Elastic", "alpha", 10.0),
    ("AUGMENTOR.ELASTIC.SIGMA", "3.0", "Elastic", "sigma", 3.0),
    ("AUGMENTOR.GRAYSCALE.P", "0.2", "Grayscale", "p", 0.2),
    ("AUGMENTOR.MISSINGPARTS.ITER", "12", "MissingParts", "iterations", 12),
    ("AUGMENTOR.MISSINGSECTION.NUM_SECTION", "1", "MissingSection", "num_sections", 1),
    ("AUGMENTOR.MISALIGNMENT.DISPLACEMENT", "8", "MisAlignment", "displacement", 8),
    ("AUGMENTOR.MISALIGNMENT.ROTATE_RATIO", "0.1", "MisAlignment", "rotate_ratio", 0.1),
    ("AUGMENTOR.MOTIONBLUR.SECTIONS", "3", "MotionBlur", "sections", 3),
    ("AUGMENTOR.MOTIONBLUR.KERNEL_SIZE", "7", "MotionBlur", "kernel_size", 7),
    ("AUGMENTOR.CUTBLUR.LENGTH_RATIO", "0.3", "CutBlur", "length_ratio", 0.3),
    ("AUGMENTOR.CUTBLUR.DOWN_RATIO_MIN", "3.0", "CutBlur", "down_ratio_min", 3.0),
    ("AUGMENTOR.CUTBLUR.DOWN_RATIO_MAX", "4.0", "CutBlur", "down_ratio_max", 4.0),
    ("AUGMENTOR.CUTBLUR.DOWNSAMPLE_Z", "True", "CutBlur", "downsample_z", True),
    ("AUGMENTOR.CUTNOISE.LENGTH_RATIO", "0.2", "CutNoise", "length_ratio", 0.2),
    ("AUGMENTOR.CUTNOISE.SCALE", "0.1", "CutNoise", "scale", 0.1),
]


def _augmentation(cfg: dict[str, Any], name: str) -> Any:
    augmentor = build_augmentor(cfg)
    assert augmentor is not None
    found = [t for t in [*augmentor.transforms, augmentor.flip] if t is not None and t.name == name]
    assert found, f"{name} not built"
    return found[0]


@pytest.mark.parametrize(("key", "text", "name", "attribute", "expected"), SETTINGS)
def test_each_setting_reaches_its_augmentation(
    key: str, text: str, name: str, attribute: str, expected: Any
) -> None:
    loaded = load_config(text="SYSTEM:\n  NUM_GPUS: 0\n", overrides=[key, text])
    assert getattr(_augmentation(loaded.values, name), attribute) == pytest.approx(expected)
    problems = validate(loaded, check_paths=False)
    assert [p for p in problems if p.key == key] == []  # applied: never "accepted, not used"


def test_every_augmentor_key_but_copypaste_is_applied() -> None:
    augmentor_keys = [k for k in KEYS if k.startswith("AUGMENTOR.")]
    assert augmentor_keys
    for key in augmentor_keys:
        assert KEYS[key].core is (not key.startswith("AUGMENTOR.COPYPASTE.")), key


def test_old_style_switches_and_additional_targets() -> None:
    text = (
        "AUGMENTOR:\n  ELASTIC: True\n  GRAYSCALE: False\n"
        "  ADDITIONAL_TARGETS_NAME: ['label', 'raw2']\n  ADDITIONAL_TARGETS_TYPE: ['mask', 'img']\n"
    )
    loaded = load_config(text=text)
    augmentor = build_augmentor(loaded.values)
    assert augmentor is not None
    assert "Elastic" in augmentor.names and "Grayscale" not in augmentor.names
    assert dict(augmentor.kinds) == {"label": "mask", "raw2": "img", "valid_mask": "mask"}
    warned = [p.key for p in validate(loaded, check_paths=False) if p.level == "warning"]
    assert not [k for k in warned if k.startswith("AUGMENTOR")]
