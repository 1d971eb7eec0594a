"""Checks against the machine: folders, volumes, shapes, output folder, GPUs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from backend.config import Problem, load_config, validate
from backend.config.paths import split_names, visible_gpus
from backend.config.shapes import ShapeError, file_shape, stack_shape


def dataset(
    tmp_path: Path, image: str, label: str, extra: str = "", size: str = "[8, 32, 32]"
) -> str:
    return (
        "SYSTEM:\n  NUM_GPUS: 0\n"
        f"MODEL:\n  INPUT_SIZE: {size}\n  OUTPUT_ACT: [['sigmoid']]\n"
        f"DATASET:\n  INPUT_PATH: {tmp_path / 'data'}\n  OUTPUT_PATH: {tmp_path / 'out'}\n"
        f"  IMAGE_NAME: {image}\n  LABEL_NAME: {label}\n  PAD_SIZE: [0, 0, 0]\n" + extra
    )


def run(text: str, base_dir: Path) -> list[Problem]:
    return validate(load_config(text), base_dir=base_dir)


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.is_error]


def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    return folder


def npy(path: Path, shape: tuple[int, ...]) -> None:
    np.save(path, np.zeros(shape, dtype=np.uint8))


def test_existing_npy_volumes_pass(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    npy(folder / "im.npy", (8, 32, 32))
    npy(folder / "lb.npy", (8, 32, 32))
    assert errors(run(dataset(tmp_path, "im.npy", "lb.npy"), tmp_path)) == []


def test_missing_volume_suggests_close_names(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    npy(folder / "train_image.npy", (8, 32, 32))
    npy(folder / "train_label.npy", (8, 32, 32))
    problems = run(dataset(tmp_path, "train_imgae.npy", "train_label.npy"), tmp_path)
    (problem,) = errors(problems)
    assert problem.key == "DATASET.IMAGE_NAME" and problem.line == 9
    assert "does not exist" in problem.message
    assert problem.suggestion.startswith("did you mean 'train_image.npy'")


def test_missing_subfolder_suggests_close_folder_names(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    (folder / "images").mkdir()
    npy(folder / "images" / "im.npy", (8, 32, 32))
    npy(folder / "lb.npy", (8, 32, 32))
    (problem,) = errors(run(dataset(tmp_path, "imags/im.npy", "lb.npy"), tmp_path))
    assert problem.suggestion == "did you mean 'images'?"


def test_missing_input_folder(tmp_path: Path) -> None:
    data_dir(tmp_path)
    text = dataset(tmp_path, "im.npy", "lb.npy").replace(str(tmp_path / "data"), "dta")
    (problem,) = errors(run(text, tmp_path))
    assert problem.key == "DATASET.INPUT_PATH" and problem.suggestion == "did you mean 'data'?"
    # The volumes below it are not reported again.


def test_placeholder_input_path_says_so(tmp_path: Path) -> None:
    problems = errors(run("DATASET:\n  IMAGE_NAME: a.h5\n  LABEL_NAME: b.h5\n", tmp_path))
    (problem,) = [p for p in problems if p.key == "DATASET.INPUT_PATH"]
    assert "placeholder 'path/to/input'" in problem.message


def test_relative_input_path_resolves_from_base_dir(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    npy(folder / "im.npy", (8, 32, 32))
    npy(folder / "lb.npy", (8, 32, 32))
    text = dataset(tmp_path, "im.npy", "lb.npy").replace(str(tmp_path / "data"), "data/")
    assert errors(run(text, tmp_path)) == []


def test_at_joined_volumes_are_each_checked(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    for name in ("a", "b"):
        npy(folder / f"im_{name}.npy", (8, 32, 32))
        npy(folder / f"lb_{name}.npy", (8, 32, 32))
    text = dataset(tmp_path, "im_a.npy@im_b.npy", "lb_a.npy@lb_b.npy")
    assert errors(run(text, tmp_path)) == []
    text = dataset(tmp_path, "im_a.npy@im_c.npy", "lb_a.npy@lb_b.npy")
    (problem,) = errors(run(text, tmp_path))
    assert "'im_c.npy'" in problem.message


def test_list_of_names_and_at_lists(tmp_path: Path) -> None:
    assert split_names("a.h5@b.h5") == ["a.h5", "b.h5"]
    assert split_names(["a.h5", "b.h5@c.h5"]) == ["a.h5", "b.h5", "c.h5"]
    assert split_names(None) == []


def test_label_count_must_match_image_count(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    for name in ("a", "b"):
        npy(folder / f"{name}.npy", (8, 32, 32))
    (problem,) = errors(run(dataset(tmp_path, "a.npy@b.npy", "a.npy"), tmp_path))
    assert problem.key == "DATASET.LABEL_NAME" and "1 volume(s) for 2" in problem.message


def test_absolute_names_are_kept(tmp_path: Path) -> None:
    data_dir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    npy(elsewhere / "im.npy", (8, 32, 32))
    npy(elsewhere / "lb.npy", (8, 32, 32))
    text = dataset(tmp_path, str(elsewhere / "im.npy"), str(elsewhere / "lb.npy"))
    assert errors(run(text, tmp_path)) == []


def test_png_glob_is_a_stack(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    for sub in ("image", "label"):
        (folder / sub).mkdir()
        for z in range(8):
            Image.fromarray(np.zeros((32, 48), dtype=np.uint8)).save(folder / sub / f"{z:03d}.png")
    paths = sorted((folder / "image").glob("*.png"))
    assert stack_shape(paths) == (8, 32, 48)
    text = dataset(tmp_path, "image/*.png", "label/*.png")
    assert errors(run(text, tmp_path)) == []


def test_png_glob_without_matches(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    (folder / "image").mkdir()
    (folder / "image" / "000.tif").write_bytes(b"")
    npy(folder / "lb.npy", (8, 32, 32))
    (problem,) = errors(run(dataset(tmp_path, "image/*.png", "lb.npy"), tmp_path))
    assert problem.message == "no files match 'image/*.png'"
    assert "000.tif" in problem.suggestion


def test_image_label_shape_mismatch_npy(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    npy(folder / "im.npy", (8, 32, 32))
    npy(folder / "lb.npy", (8, 32, 30))
    (problem,) = errors(run(dataset(tmp_path, "im.npy", "lb.npy"), tmp_path))
    assert problem.key == "DATASET.LABEL_NAME"
    assert (
        problem.message == "label 'lb.npy' has shape [8, 32, 30] but image 'im.npy' has [8, 32, 32]"
    )


def test_image_label_shape_mismatch_tif_and_h5(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    tifffile.imwrite(folder / "im.tif", np.zeros((8, 32, 32), dtype=np.uint8))
    with h5py.File(folder / "lb.h5", "w") as f:
        f.create_dataset("main", data=np.zeros((9, 32, 32), dtype=np.uint16))
    assert file_shape(folder / "im.tif") == (8, 32, 32)
    assert file_shape(folder / "lb.h5") == (9, 32, 32)
    (problem,) = errors(run(dataset(tmp_path, "im.tif", "lb.h5"), tmp_path))
    assert "[9, 32, 32]" in problem.message and "[8, 32, 32]" in problem.message


def test_multichannel_image_matches_its_label(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    npy(folder / "im.npy", (2, 8, 32, 32))
    npy(folder / "lb.npy", (8, 32, 32))
    assert errors(run(dataset(tmp_path, "im.npy", "lb.npy"), tmp_path)) == []


def test_validation_volumes_are_checked_too(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    for name in ("im", "lb", "vim"):
        npy(folder / f"{name}.npy", (8, 32, 32))
    npy(folder / "vlb.npy", (4, 32, 32))
    extra = "  VAL_IMAGE_NAME: vim.npy\n  VAL_LABEL_NAME: vlb.npy\n"
    (problem,) = errors(run(dataset(tmp_path, "im.npy", "lb.npy", extra), tmp_path))
    assert problem.key == "DATASET.VAL_LABEL_NAME"


def test_patch_larger_than_volume_plus_padding(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    npy(folder / "im.npy", (4, 32, 32))
    npy(folder / "lb.npy", (4, 32, 32))
    (problem,) = errors(run(dataset(tmp_path, "im.npy", "lb.npy"), tmp_path))
    assert problem.key == "MODEL.INPUT_SIZE" and "larger than volume" in problem.message
    padded = dataset(tmp_path, "im.npy", "lb.npy").replace(
        "PAD_SIZE: [0, 0, 0]", "PAD_SIZE: [2, 0, 0]"
    )
    assert errors(run(padded, tmp_path)) == []


def test_unreadable_volume_is_reported(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    (folder / "im.npy").write_bytes(b"not numpy")
    npy(folder / "lb.npy", (8, 32, 32))
    (problem,) = errors(run(dataset(tmp_path, "im.npy", "lb.npy"), tmp_path))
    assert problem.message.startswith("cannot read volume 'im.npy'")
    with pytest.raises(ShapeError):
        file_shape(folder / "im.npy")


def test_unknown_formats_are_not_probed(tmp_path: Path) -> None:
    (tmp_path / "tiles.json").write_text("{}")
    assert file_shape(tmp_path / "tiles.json") is None


def test_output_path_under_a_file_is_not_creatable(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    npy(folder / "im.npy", (8, 32, 32))
    npy(folder / "lb.npy", (8, 32, 32))
    (tmp_path / "afile").write_text("x")
    text = dataset(tmp_path, "im.npy", "lb.npy").replace(
        str(tmp_path / "out"), str(tmp_path / "afile" / "run1")
    )
    (problem,) = errors(run(text, tmp_path))
    assert problem.key == "DATASET.OUTPUT_PATH" and "is a file" in problem.message
    text = dataset(tmp_path, "im.npy", "lb.npy").replace(
        str(tmp_path / "out"), str(tmp_path / "afile")
    )
    (problem,) = errors(run(text, tmp_path))
    assert "not a folder" in problem.message


def test_output_path_that_does_not_exist_yet_is_fine(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    npy(folder / "im.npy", (8, 32, 32))
    npy(folder / "lb.npy", (8, 32, 32))
    text = dataset(tmp_path, "im.npy", "lb.npy").replace(
        str(tmp_path / "out"), str(tmp_path / "new" / "deeper" / "run")
    )
    assert errors(run(text, tmp_path)) == []


def test_missing_pretrained_weights(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    npy(folder / "im.npy", (8, 32, 32))
    npy(folder / "lb.npy", (8, 32, 32))
    text = dataset(tmp_path, "im.npy", "lb.npy").replace(
        "MODEL:\n", "MODEL:\n  PRE_MODEL: ckpt.pth\n"
    )
    (problem,) = errors(run(text, tmp_path))
    assert problem.key == "MODEL.PRE_MODEL"


def test_gpus_beyond_the_visible_ones_warn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == 0
    problems = validate(load_config("SYSTEM:\n  NUM_GPUS: 2\n"), base_dir=tmp_path)
    (problem,) = [p for p in problems if p.key == "SYSTEM.NUM_GPUS"]
    assert problem.level == "warning" and "training uses the CPU" in problem.message


def test_paths_are_not_checked_when_asked_not_to(tmp_path: Path) -> None:
    problems = validate(load_config(dataset(tmp_path, "nope.npy", "nope.npy")), check_paths=False)
    assert errors(problems) == []


def test_hdf5_dataset_named_after_a_colon(tmp_path: Path) -> None:
    folder = data_dir(tmp_path)
    with h5py.File(folder / "vol.h5", "w") as f:
        f.create_dataset("a_raw", data=np.zeros((8, 32, 32), dtype=np.uint8))
        f.create_dataset("b_label", data=np.zeros((8, 32, 30), dtype=np.uint16))
    assert file_shape(folder / "vol.h5") == (8, 32, 32)  # the first dataset
    assert errors(run(dataset(tmp_path, "vol.h5:a_raw", "vol.h5:a_raw"), tmp_path)) == []
    (problem,) = errors(run(dataset(tmp_path, "vol.h5:a_raw", "vol.h5:b_label"), tmp_path))
    assert "[8, 32, 30]" in problem.message
    (problem,) = errors(run(dataset(tmp_path, "vol.h5:nope", "vol.h5:a_raw"), tmp_path))
    assert "no dataset 'nope'" in problem.message


def test_one_input_folder_per_volume_is_not_supported(tmp_path: Path) -> None:
    data_dir(tmp_path)
    text = dataset(tmp_path, "a.npy@b.npy", "a.npy@b.npy").replace(
        f"INPUT_PATH: {tmp_path / 'data'}", "INPUT_PATH: data@data"
    )
    (problem,) = errors(run(text, tmp_path))
    assert problem.key == "DATASET.INPUT_PATH" and "one folder per volume" in problem.message
