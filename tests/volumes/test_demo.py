"""The synthetic demo dataset: deterministic files, sensible labels, loadable configs."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from backend import demo
from backend.demo import DemoDataset, add_demo_parser, make_demo_dataset, synthesize_volume


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the volumes where only the files matter, not their content."""
    monkeypatch.setattr(demo, "TRAIN_SHAPE", (3, 48, 48))
    monkeypatch.setattr(demo, "VAL_SHAPE", (2, 48, 48))


def test_writes_every_file(dataset: DemoDataset) -> None:
    assert all(path.is_file() for path in dataset.files)
    assert sorted(p.name for p in dataset.directory.iterdir()) == sorted(
        p.name for p in dataset.files
    )


def test_same_seed_same_bytes(dataset: DemoDataset) -> None:
    before = {p.name: p.read_bytes() for p in dataset.files}
    make_demo_dataset(dataset.directory)  # again, in place: idempotent
    assert {p.name: p.read_bytes() for p in dataset.files} == before


@pytest.mark.usefixtures("tiny")
def test_volumes_do_not_depend_on_the_directory(tmp_path: Path) -> None:
    first = make_demo_dataset(tmp_path / "a")
    second = make_demo_dataset(tmp_path / "b")
    for a, b in zip(first.files, second.files, strict=True):
        if a.suffix == ".tif":
            assert a.read_bytes() == b.read_bytes()
        else:  # the configs name their own directory
            assert str(first.directory) in a.read_text()
            assert str(second.directory) in b.read_text()


def test_another_seed_another_volume() -> None:
    a = synthesize_volume((2, 64, 64), np.random.default_rng([0, 0]))
    b = synthesize_volume((2, 64, 64), np.random.default_rng([1, 0]))
    assert not np.array_equal(a.image, b.image)


def test_volumes_and_labels(dataset: DemoDataset) -> None:
    image = tifffile.imread(dataset.train_image)
    label = tifffile.imread(dataset.train_label)
    cells = tifffile.imread(dataset.train_cells)
    assert image.shape == label.shape == cells.shape == demo.TRAIN_SHAPE
    assert tifffile.imread(dataset.val_image).shape == demo.VAL_SHAPE
    assert tifffile.imread(dataset.val_label).shape == demo.VAL_SHAPE
    assert image.dtype == np.uint8
    assert label.dtype == np.uint16 and cells.dtype == np.uint16
    foreground = label > 0
    assert 0.05 < foreground.mean() < 0.25
    assert len(np.unique(label)) > 20  # many separate instances
    # Mitochondria are darker than the cytoplasm around them.
    assert image[foreground].mean() < image[(~foreground) & (cells > 0)].mean() - 30
    # Membranes (cell id 0) are dark too: the network must tell them apart.
    assert image[cells == 0].mean() < 110


def test_configs_are_pytc_yaml(dataset: DemoDataset) -> None:
    for path, arch, size in (
        (dataset.config_2d, "unet_2d", [1, 128, 128]),
        (dataset.config_3d, "unet_3d", [8, 64, 64]),
    ):
        config = yaml.safe_load(path.read_text())
        assert set(config) <= {"SYSTEM", "MODEL", "DATASET", "AUGMENTOR", "SOLVER", "MONITOR"}
        assert config["MODEL"]["ARCHITECTURE"] == arch
        assert config["MODEL"]["INPUT_SIZE"] == size
        assert config["MODEL"]["TARGET_OPT"] == ["0"]
        assert config["MODEL"]["LOSS_OPTION"] == [["WeightedBCEWithLogitsLoss", "DiceLoss"]]
        assert config["MODEL"]["WEIGHT_OPT"] == [["1", "0"]]
        assert config["MODEL"]["OUTPUT_ACT"] == [["none", "sigmoid"]]
        assert len(config["MODEL"]["ISOTROPY"]) == len(config["MODEL"]["FILTERS"])
        assert config["DATASET"]["DO_2D"] is (arch == "unet_2d")
        assert config["SYSTEM"]["NUM_GPUS"] == 0
        assert config["SOLVER"]["NAME"] == "Adam"
        data = config["DATASET"]
        assert Path(data["INPUT_PATH"]) == dataset.directory
        for key in ("IMAGE_NAME", "LABEL_NAME", "VAL_IMAGE_NAME", "VAL_LABEL_NAME"):
            assert (dataset.directory / data[key]).is_file()
        assert Path(data["OUTPUT_PATH"]).parent == dataset.directory / "outputs"


@pytest.mark.usefixtures("tiny")
def test_cli_hook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="trainboard")
    add_demo_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo-data", str(tmp_path / "d"), "--seed", "3"])
    assert args.seed == 3
    assert args.func(args) == 0
    assert (tmp_path / "d" / "demo_2d.yaml").is_file()
    assert "train_image.tif" in capsys.readouterr().out


def test_cli_reports_unwritable_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    parser = argparse.ArgumentParser(prog="trainboard")
    add_demo_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo-data", str(blocker / "inside")])
    assert args.func(args) == 1
    assert "cannot write" in capsys.readouterr().err
