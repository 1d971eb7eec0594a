"""Every PyTC v1.0.0 architecture validates and trains 3 iterations on the demo data.

Tiny filters and patches (single-threaded, in-process, as the child runs the loop): the
point is that validation and the trainer agree and that every model's outputs (DeepLab's
{'out', 'aux'} dict included) flow through the losses, the backward pass and validation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import tifffile
import torch
import yaml

from backend.config import load_config, validate
from backend.config.architectures import ARCHITECTURES
from backend.demo import demo_config, make_demo_dataset
from backend.execution.job import TrainJob, decode_batch
from backend.trainer.child import run
from backend.trainer.models import primary_output, training_output

Event = tuple[str, dict[str, Any], float]

SMALL_3D = {"ISOTROPY": [False, False, False, True, True], "INPUT_SIZE": [8, 32, 32]}
# (id, demo kind, MODEL overrides): every architecture, each FPN backbone and block family.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("unet_3d", "3d", {"FILTERS": [4, 8], "ISOTROPY": [False, True], "BLOCK_TYPE": "residual_pa"}),
    (
        "unet_plus_3d",
        "3d",
        {"FILTERS": [4, 8], "ISOTROPY": [False, True], "INPUT_SIZE": [8, 32, 32]},
    ),
    ("unet_2d", "2d", {"FILTERS": [4, 8], "INPUT_SIZE": [1, 32, 32]}),
    (
        "unet_plus_2d",
        "2d",
        {"FILTERS": [4, 8], "BLOCK_TYPE": "residual_se", "INPUT_SIZE": [1, 32, 32]},
    ),
    ("fpn_3d", "3d", {"FILTERS": [4] * 5, "BLOCKS": [1] * 4, **SMALL_3D}),
    ("fpn_3d", "3d", {"BACKBONE": "repvgg", "FILTERS": [4] * 5, "BLOCKS": [1] * 4, **SMALL_3D}),
    ("fpn_3d", "3d", {"BACKBONE": "botnet", "FILTERS": [4] * 5, "BLOCKS": [1] * 4, **SMALL_3D}),
    (
        "fpn_3d",
        "3d",
        {
            "BACKBONE": "efficientnet",
            "BLOCK_TYPE": "inverted_res_dilated",
            "FILTERS": [4, 4, 8, 8, 8],
            "BLOCKS": [1] * 5,
            **SMALL_3D,
        },
    ),
    # Group norm: with 2 samples, batch norm of the 1x1 ASPP image-pooling map is unstable.
    (
        "deeplabv3c",
        "2d",
        {"BACKBONE": "resnet50", "AUX_OUT": True, "NORM_MODE": "gn", "INPUT_SIZE": [1, 32, 32]},
    ),
    (
        "unetr",
        "3d",
        {
            "INPUT_SIZE": [8, 32, 32],
            "HIDDEN_SIZE": 16,
            "MLP_DIM": 32,
            "UNETR_NUM_HEADS": 2,
            "UNETR_FEATURE_SIZE": 4,
        },
    ),
    (
        "swinunetr",
        "3d",
        {
            "INPUT_SIZE": [16, 32, 32],
            "ISOTROPY": [False, True, True, True],
            "SWIN_UNETR_FEATURE_SIZE": 12,
            "DEPTHS": [1, 1, 1, 1],
            "DOWNSAMPLE": "mergingv2",
        },
    ),
]


class ListConn:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def send_bytes(self, payload: bytes) -> None:
        self.events.extend(decode_batch(payload))

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo volumes plus small validation crops (the run always validates at its end,
    and a whole 256x256 volume through ResNet-50 would dominate the test)."""
    data = make_demo_dataset(tmp_path_factory.mktemp("demo"))
    crops = {"3d": (data.train_image, data.train_label), "2d": (data.val_image, data.val_label)}
    for kind, (image, label) in crops.items():
        np.save(data.directory / f"val_{kind}_image.npy", tifffile.imread(image)[:, :64, :64])
        np.save(data.directory / f"val_{kind}_label.npy", tifffile.imread(label)[:, :64, :64])
    return data.directory


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    torch.set_num_threads(1)
    yield


def tiny_tree(demo: Path, kind: str, arch: str, model: dict[str, Any], out: Path) -> Any:
    tree = demo_config(demo, kind)
    tree["MODEL"].update({"ARCHITECTURE": arch, **model})
    tree["MODEL"]["OUTPUT_SIZE"] = tree["MODEL"]["INPUT_SIZE"]
    tree["DATASET"].update(
        {
            "OUTPUT_PATH": str(out),
            "VAL_IMAGE_NAME": f"val_{kind}_image.npy",
            "VAL_LABEL_NAME": f"val_{kind}_label.npy",
        }
    )
    # One validation, at the end: DeepLab's dict outputs reach the metrics too.
    tree["SOLVER"].update(
        {"ITERATION_TOTAL": 3, "ITERATION_SAVE": 3, "ITERATION_VAL": 3, "WARMUP_ITERS": 0}
    )
    tree["SOLVER"]["SAMPLES_PER_BATCH"] = 2
    return tree


def test_validation_and_metrics_read_the_main_output() -> None:
    # DeepLab's {'out', 'aux'}: both are scored, metrics read 'out'; RETURN_FEATS: features
    # are left out of training.
    out, aux, feat = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4), torch.ones(1, 2, 2, 2)
    assert training_output({"out": out, "aux": aux}) == {"out": out, "aux": aux}
    assert primary_output({"out": out, "aux": aux}) is out
    assert training_output((out, {0: feat})) is out and primary_output(out) is out


def test_every_architecture_has_a_case() -> None:
    assert {arch for arch, _, _ in CASES} >= set(ARCHITECTURES) - {"deeplabv3a", "deeplabv3b"}


@pytest.mark.parametrize(
    ("arch", "kind", "model"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_validates_and_trains_three_iterations(
    demo: Path, tmp_path: Path, arch: str, kind: str, model: dict[str, Any]
) -> None:
    tree = tiny_tree(demo, kind, arch, model, tmp_path / "out")
    loaded = load_config(yaml.safe_dump(tree))
    errors = [p for p in validate(loaded, check_paths=False) if p.is_error]
    assert not errors, [p.format() for p in errors]

    job = TrainJob(
        run_id="0123456789ab",
        attempt=1,
        config=loaded.values,
        output_path=str(tmp_path / "out"),
        log_path=str(tmp_path / "out" / "log"),
        seed=7,
        options={"flush_interval": 0.05, "threads": 1},
    )
    conn = ListConn()
    code = run(job, cast(Connection, conn), None)
    failures = [d for t, d, _ in conn.events if t in ("failed", "error")]
    assert code == 0, failures
    metrics = [d for t, d, _ in conn.events if t == "metric"]
    assert [m["iteration"] for m in metrics] == [1, 2, 3]
    assert all(math.isfinite(m["loss"]) for m in metrics)
