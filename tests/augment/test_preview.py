"""Augmentation previews: the library, `trainboard augment-preview` and the REST route.

Real volumes on disk, a real subprocess for the CLI and a real uvicorn server for
POST /api/augment/preview (the contract the wizard's panel is built against).
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.augment.compose import BUILD_ORDER
from backend.augment.preview import MAX_SAMPLES, PreviewError, grid_png, preview
from backend.config.load import load_config
from tests.server.live import ROOT, LiveServer, make_settings


def write_data(folder: Path) -> None:
    """A 12 x 48 x 48 uint8 image whose bright squares are its label's objects."""
    folder.mkdir(parents=True, exist_ok=True)
    label = np.zeros((12, 48, 48), np.uint16)
    label[:, 8:20, 8:20] = 5
    label[:, 28:44, 24:40] = 9
    image = np.where(label > 0, 200, 40).astype(np.uint8)
    np.save(folder / "image.npy", image)
    np.save(folder / "label.npy", label)


CONFIG = """\
MODEL:
  INPUT_SIZE: [4, 24, 24]
  OUTPUT_SIZE: [4, 24, 24]
DATASET:
  INPUT_PATH: {path}
  IMAGE_NAME: image.npy
  LABEL_NAME: label.npy
"""


def values(text: str, *overrides: str) -> dict:  # type: ignore[type-arg]
    return load_config(text=text, overrides=list(overrides)).values


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_preview_shows_augmented_patches_with_their_labels(tmp_path: Path) -> None:
    write_data(tmp_path / "data")
    cfg = values(CONFIG.format(path="data"))
    samples = preview(cfg, tmp_path, count=3, seed=1)
    assert len(samples) == 3
    for sample in samples:
        assert sample.applied and sample.applied[-1] == "Flip"
        image, label = png(sample.image_png), png(sample.label_png)
        assert image.shape[:2] == label.shape[:2] and image.shape[0] >= 160
        assert label.ndim == 3  # colour per id
    again = preview(cfg, tmp_path, count=3, seed=1)
    assert [s.image_png for s in again] == [s.image_png for s in samples]
    other = preview(cfg, tmp_path, count=3, seed=2)
    assert [s.image_png for s in other] != [s.image_png for s in samples]


def test_preview_follows_the_settings(tmp_path: Path) -> None:
    write_data(tmp_path / "data")
    text = CONFIG.format(path="data")
    off = preview(values(text, "AUGMENTOR.ENABLED", "False"), tmp_path, count=2)
    assert all(s.applied == () for s in off)
    # Without augmentation the image is the label's mask (bright where an object is).
    for sample in off:
        grey, colours = png(sample.image_png), png(sample.label_png)
        np.testing.assert_array_equal(grey > 128, colours.max(axis=-1) > 0)
    only_flip = values(
        text,
        *[
            x
            for name in BUILD_ORDER
            if name != "FLIP"
            for x in (f"AUGMENTOR.{name}.ENABLED", "False")
        ],
    )
    assert {s.applied for s in preview(only_flip, tmp_path, count=4)} == {("Flip",)}


def test_preview_refusals_say_what_to_do(tmp_path: Path) -> None:
    write_data(tmp_path / "data")
    cfg = values(CONFIG.format(path="data"))
    with pytest.raises(PreviewError, match="count must be 1 to 8"):
        preview(cfg, tmp_path, count=MAX_SAMPLES + 1)
    with pytest.raises(PreviewError, match=r"no such file.*INPUT_PATH") as missing:
        preview(values(CONFIG.format(path="nowhere")), tmp_path)
    assert missing.value.code == "invalid_volume"
    with pytest.raises(PreviewError, match="data root") as outside:
        preview(cfg, tmp_path, confine_to=tmp_path / "elsewhere")
    assert outside.value.code == "outside_data_root"
    huge = values(CONFIG.format(path="data"), "MODEL.INPUT_SIZE", "[64, 1024, 1024]")
    with pytest.raises(PreviewError, match="too large"):
        preview(huge, tmp_path)


def test_grid_has_a_row_per_sample(tmp_path: Path) -> None:
    write_data(tmp_path / "data")
    samples = preview(values(CONFIG.format(path="data")), tmp_path, count=2)
    grid = png(grid_png(samples))
    one = png(grid_png(samples[:1]))
    assert grid.shape[0] > 1.8 * one.shape[0] and grid.shape[1] == one.shape[1]


# --- CLI ----------------------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backend", "augment-preview", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_cli_writes_the_grid(tmp_path: Path) -> None:
    write_data(tmp_path / "data")
    base = tmp_path / "base.yaml"
    base.write_text(CONFIG.format(path="data"))
    overlay = tmp_path / "run.yaml"
    overlay.write_text("AUGMENTOR:\n  ELASTIC: False\n")
    out = tmp_path / "grid.png"
    done = cli(
        str(overlay),
        "--base",
        str(base),
        "--out",
        str(out),
        "--count",
        "2",
        "AUGMENTOR.CUTNOISE.P",
        "1.0",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == f"wrote {out}" and len(lines) == 3
    assert all("CutNoise" in line and "Elastic" not in line for line in lines[:2])
    assert png(out.read_bytes()).ndim == 3


def test_cli_refuses_a_bad_config_and_a_missing_out(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("AUGMENTOR:\n  ELASTIC:\n    P: 2.0\n")
    done = cli(str(bad), "--out", str(tmp_path / "g.png"), cwd=tmp_path)
    assert done.returncode == 1
    assert "AUGMENTOR.ELASTIC.P" in done.stderr and not (tmp_path / "g.png").exists()
    done = cli(str(bad), cwd=tmp_path)
    assert done.returncode == 2 and "--out" in done.stderr


# --- REST ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("preview")
    settings = make_settings(tmp)
    write_data(settings.data_root / "vols")
    live = LiveServer(settings).start()
    yield live
    live.stop()


def decode(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return png(base64.b64decode(url[len(prefix) :]))


def test_route_answers_the_contract(server: LiveServer) -> None:
    text = CONFIG.format(path="vols")
    status, body, _ = server.request(
        "POST",
        "/api/augment/preview",
        {"config": text, "overrides": ["AUGMENTOR.ROTATE.ROT90", "False"], "count": 3, "seed": 4},
    )
    assert status == 200, body
    assert len(body["samples"]) == 3
    for sample in body["samples"]:
        assert set(sample) == {"image", "label", "applied"}
        assert decode(sample["image"]).shape[:2] == decode(sample["label"]).shape[:2]
        assert "Rotate" in sample["applied"]  # P 1.0 by default
    status, again, _ = server.request(
        "POST",
        "/api/augment/preview",
        {"config": text, "overrides": ["AUGMENTOR.ROTATE.ROT90", "False"], "count": 3, "seed": 4},
    )
    assert again == body
    status, default, _ = server.request("POST", "/api/augment/preview", {"config": text})
    assert status == 200 and len(default["samples"]) == 4


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"config": "MODEL:\n  INPUT_SIZE: [4, 24]\n"}, 422, "invalid_config"),
        ({"config": CONFIG.format(path="vols"), "count": 9}, 400, "bad_request"),
        ({"config": CONFIG.format(path="vols"), "count": 0}, 400, "bad_request"),
        ({"config": CONFIG.format(path="vols"), "seed": -1}, 400, "bad_request"),
        ({"config": CONFIG.format(path="vols"), "count": True}, 400, "bad_request"),
        ({"config": CONFIG.format(path="vols"), "colour": 1}, 400, "bad_request"),
        ({"count": 2}, 400, "bad_request"),
        ({"config": CONFIG.format(path="/etc")}, 403, "outside_data_root"),
        ({"config": CONFIG.format(path="missing")}, 422, "invalid_volume"),
        (
            {
                "config": CONFIG.format(path="vols"),
                "overrides": ["MODEL.INPUT_SIZE", "[8,4096,4096]"],
            },
            422,
            "invalid_config",
        ),
    ],
)
def test_route_refusals(server: LiveServer, body: dict, status: int, code: str) -> None:  # type: ignore[type-arg]
    got, answer, _ = server.request("POST", "/api/augment/preview", body)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert answer["error"]["message"]


def test_route_needs_the_token(server: LiveServer) -> None:
    body = {"config": CONFIG.format(path="vols")}
    status, answer, _ = server.request("POST", "/api/augment/preview", body, token=None)
    assert status == 401 and answer["error"]["code"] == "unauthorized"


def test_the_api_bounds_count_as_the_preview_does() -> None:
    from backend import api

    assert api.MAX_PREVIEW_COUNT == MAX_SAMPLES
