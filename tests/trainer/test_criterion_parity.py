"""The full Criterion against PyTC v1.0.0's (`pytc-golden/losses/criterion/*`): several
targets, loss weights, channel splitting, in-place activations, regularisers, DeepLab's
dict output; and the channel table (`losses/split_channels.json`)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import yaml

from backend.config.targets import OptionError, target_channels
from backend.trainer.losses import build_criterion
from tests.reference import entries, entry_id, load

CASES = entries("losses", "losses/criterion/")


def _config(entry: dict[str, Any]) -> dict[str, Any]:
    """The config PyTC was given: its defaults plus the overrides (yacs literals)."""
    cfg: dict[str, Any] = {"MODEL": {}, "DATASET": {"DO_2D": False}}
    overrides = entry["inputs"]["config_overrides"]
    for key, text in zip(overrides[::2], overrides[1::2], strict=True):
        section, leaf = key.split(".")
        cfg[section][leaf] = yaml.safe_load(text)
    return cfg


def _inputs(entry: dict[str, Any]) -> tuple[Any, list[torch.Tensor], list[list[Any]]]:
    cfg, arrays = _config(entry), load(entry["file"])
    if "pred_out" in arrays.files:
        pred: Any = {k: torch.from_numpy(arrays[f"pred_{k}"]) for k in ("out", "aux")}
    else:
        pred = torch.from_numpy(arrays["pred"])
    losses = cfg["MODEL"]["LOSS_OPTION"]
    targets = [torch.from_numpy(arrays[f"target_{i}"]) for i in range(len(losses))]
    # PyTC's (B, 1) placeholder means "no weight".
    weights = [
        [
            None
            if arrays[f"weight_{i}_{j}"].shape[-1] == 1
            else torch.from_numpy(arrays[f"weight_{i}_{j}"])
            for j in range(len(row))
        ]
        for i, row in enumerate(losses)
    ]
    return pred, targets, weights


@pytest.mark.parametrize("entry", [e for e in CASES if e["status"] == "ok"], ids=entry_id)
def test_matches_pytc(entry: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    pred, targets, weights = _inputs(entry)
    total, parts = build_criterion(_config(entry))(pred, targets, weights)
    expected = entry["outputs"]
    assert float(total) == pytest.approx(
        expected["loss"], rel=0, abs=1e-5 * max(1, expected["loss"])
    )
    # PyTC returns only the last key's terms of a dict output; ours holds every key's.
    assert set(expected["terms"]) <= set(parts)
    for tag, value in expected["terms"].items():
        assert parts[tag] == pytest.approx(value, rel=0, abs=1e-5 * max(1, abs(value))), tag
    assert float(total) == pytest.approx(sum(parts.values()), rel=1e-6)


@pytest.mark.parametrize("entry", [e for e in CASES if e["status"] == "error"], ids=entry_id)
def test_refuses_at_build_what_pytc_fails_on(entry: dict[str, Any]) -> None:
    """PyTC fails mid-step; here the criterion refuses to build, with the reason."""
    with pytest.raises(ValueError, match=r"WEIGHT_OPT|TARGET_OPT"):
        build_criterion(_config(entry))


SPLIT = load("losses/split_channels.json")


# Options PyTC's split table counts but PyTC cannot train: refused here, with the reason.
REFUSED_THOUGH_COUNTED = {
    "3d": {"5-3d-1-1-1.0-0": "quantized", "7-0": "3 channels"},
    "do_2d": {
        "5-3d-1-1-1.0-0": "2D",
        "5-2d-0-0-1.0-0": "2D",
        "3-30-4-0": "3D labels only",
        "7-0": "3 channels",
    },
}


@pytest.mark.parametrize("mode", ["3d", "do_2d"])
def test_channel_counts_match_pytc(mode: str) -> None:
    """Where PyTC gives a count, ours is the same (or refused, above); where PyTC raises,
    ours refuses too. 'I' (image reconstruction) is no seg_to_targets option."""
    do_2d = mode == "do_2d"
    for option, expected in SPLIT[mode].items():
        if option.startswith("I"):
            continue
        reason = REFUSED_THOUGH_COUNTED[mode].get(option)
        if isinstance(expected, int) and reason is None:
            assert target_channels(option, do_2d) == expected, option
        else:
            with pytest.raises(OptionError, match=reason):
                target_channels(option, do_2d)
