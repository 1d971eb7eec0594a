"""All 55 configs PyTorch Connectomics v1.0.0 publishes, validated as PyTC users load them.

Read from `shared/reference/pytc-configs-v1.0.0/` (never copied), each overlay over its base
(`SOURCE.md`: an `X-Base*.yaml` is the base of the files of its folder named `X-...`), paths
aside (the data is not here). Only the configs that are wrong in themselves are refused,
each for its reason; every other one validates without an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.config import load_config, validate
from tests.reference import reference_dir

CONFIGS = reference_dir("pytc-configs-v1.0.0")  # missing: fails loudly, naming the path

# Config -> {key: words of the reason}. Wrong in themselves, in PyTC too:
RAW_BCE = {"MODEL.OUTPUT_ACT": "WeightedBCE takes probabilities"}
REFUSED: dict[str, dict[str, str]] = {
    # yacs refuses a string where the default is a list ("Type mismatch"), and PyTC's
    # Criterion cannot split a bare '5' target (it needs the '5-...' form).
    "Distance-Transform-Quantized.yaml": {
        "MODEL.OUTPUT_ACT": "got string 'none'",
        "MODEL.TARGET_OPT": "'5'",
    },
    # Bases for overlays: alone they train PyTC's default loss, WeightedBCE, on raw outputs
    # (OUTPUT_ACT 'none'), which torch's binary_cross_entropy refuses at the first iteration.
    **{
        name: RAW_BCE
        for name in (
            "CREMI/CREMI-Base.yaml",
            "CREMI/CREMI-Base_multiGPU.yaml",
            "JWR15/synapse/JWR15-Synapse-Base.yaml",
            "MitoEM/MitoEM-R-Base.yaml",
            "NucMM/NucMM-Mouse-Base.yaml",
            "NucMM/NucMM-Zebrafish-Base.yaml",
            "Scutoid/Scutoid-Base.yaml",
        )
    },
    # ... and this one names no label volume either.
    "misc/SingleCell/SingleCell-UNet3D-Base.yaml": {
        **RAW_BCE,
        "DATASET.LABEL_NAME": "is not set",
    },
    # Its second target's LOSS_KWARGS row is empty where PyTC indexes one entry per loss
    # (IndexError building the Criterion).
    "misc/SingleCell/SingleCell-UNet3D-MultiSeg.yaml": {
        "MODEL.LOSS_KWARGS_KEY": "one entry per loss"
    },
    # Overlays that set no loss over a base that sets none: the same default loss.
    "CREMI/CREMI-Foreground-FPN-RepVGG.yaml": RAW_BCE,
    "CREMI/CREMI-Foreground-FPN-ResNet.yaml": RAW_BCE,
    # PyTC's efficientnet FPN reads 5 block counts; the base keeps the default 4 (IndexError).
    "SNEMI/SNEMI-Affinity-EffNet.yaml": {"MODEL.BLOCKS": "the efficientnet backbone reads 5"},
}


def published() -> list[Path]:
    return sorted(CONFIGS.rglob("*.yaml"))


def base_of(path: Path) -> Path | None:
    if "-Base" in path.stem:
        return None
    for base in sorted(path.parent.glob("*-Base.yaml")):
        if path.stem.startswith(base.stem[: base.stem.index("-Base")] + "-"):
            return base
    return None


def test_there_are_55() -> None:
    assert len(published()) == 55
    bases = {base for base in map(base_of, published()) if base is not None}
    assert len(bases) == 10  # every overlay found the base it was written for


@pytest.mark.parametrize("name", [str(p.relative_to(CONFIGS)) for p in published()])
def test_published_config(name: str) -> None:
    path = CONFIGS / name
    loaded = load_config(path=path, base_path=base_of(path))
    errors = [p for p in validate(loaded, check_paths=False) if p.is_error]
    expected = REFUSED.get(name, {})
    assert {p.key for p in errors} == set(expected), [p.format() for p in errors]
    for problem in errors:
        assert expected[problem.key] in problem.message, problem.format()
        assert problem.suggestion, f"a refusal says what to do: {problem.format()}"
