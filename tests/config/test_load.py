"""Loading: real PyTC configs as they are, merges, overrides, quirks, and where things are."""

from __future__ import annotations

from pathlib import Path

from backend.config import LoadedConfig, load_config, validate
from backend.config.schema import KEYS, defaults
from tests.config.samples import LUCCHI_OLD, MITO_BASE, MITO_OVERLAY, minimal


def errors(loaded: LoadedConfig, check_paths: bool = False) -> list[str]:
    return [str(p) for p in validate(loaded, check_paths=check_paths) if p.is_error]


def only(loaded: LoadedConfig, key: str, level: str = "error") -> list[str]:
    return [
        p.message for p in validate(loaded, check_paths=False) if p.key == key and p.level == level
    ]


def test_realistic_full_config_loads_as_is() -> None:
    loaded = load_config(MITO_BASE)
    assert loaded.complete
    assert errors(loaded) == []
    v = loaded.values
    assert v["MODEL"]["TARGET_OPT"] == ["0", "4-2-1"]
    assert v["MODEL"]["LOSS_WEIGHT"] == [[1.0, 1.0], [1.0, 0.5]]
    assert v["SOLVER"]["NAME"] == "AdamW"
    assert v["SOLVER"]["CLIP_GRADIENTS"] == {
        "ENABLED": True,
        "CLIP_TYPE": "norm",
        "CLIP_VALUE": 1.0,
        "NORM_TYPE": 2.0,
    }


def test_every_default_is_filled_in() -> None:
    loaded = load_config(minimal())
    tree = defaults()
    for name in KEYS:
        assert name.split(".")[0] in loaded.values
    assert set(loaded.values) == set(tree)
    assert loaded.values["SOLVER"]["STEPS"] == [30000, 35000]  # PyTC's tuple default, as a list
    assert loaded.values["SOLVER"]["BETAS"] == [0.9, 0.999]
    assert loaded.values["DATASET"]["REJECT_SAMPLING"]["P"] == 0.95
    assert loaded.values["AUGMENTOR"]["COPYPASTE"]["ENABLED"] is False


def test_no_input_at_all_gives_the_defaults() -> None:
    loaded = load_config()
    assert loaded.values == defaults()
    assert loaded.problems == [] and loaded.user_keys == {}


def test_overlay_merges_over_base_key_by_key() -> None:
    loaded = load_config(MITO_OVERLAY, base_text=MITO_BASE)
    assert errors(loaded) == []
    v = loaded.values
    assert v["MODEL"]["ARCHITECTURE"] == "unet_plus_3d"  # from the overlay
    assert v["MODEL"]["BLOCK_TYPE"] == "residual_se"  # from the base, same section
    assert v["MODEL"]["FILTERS"] == [32, 64, 96, 128, 160]
    assert v["SOLVER"]["BASE_LR"] == 0.02 and v["SOLVER"]["NAME"] == "AdamW"
    assert v["SOLVER"]["STEPS"] == [60000, 90000]
    assert v["DATASET"]["OUTPUT_PATH"] == "outputs/MitoEM_R_plus"
    assert v["DATASET"]["IMAGE_NAME"] == "im_train.h5"
    # Each key remembers the file and line that set it last.
    assert (loaded.user_keys["SOLVER.BASE_LR"].file, loaded.user_keys["SOLVER.BASE_LR"].line) == (
        "config",
        4,
    )
    assert loaded.user_keys["MODEL.BLOCK_TYPE"].file == "base"


def test_base_and_config_from_files_are_labelled_by_path(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    overlay = tmp_path / "overlay.yaml"
    base.write_text(MITO_BASE)
    overlay.write_text(MITO_OVERLAY + "MONITOR:\n  LOG_OPTS: [1, 1, 0]\n")
    loaded = load_config(path=overlay, base_path=base)
    assert loaded.user_keys["MODEL.FILTERS"].file == str(base)
    typo = next(p for p in loaded.problems if p.key == "MONITOR.LOG_OPTS")
    assert (typo.file, typo.line) == (str(overlay), 10)
    assert typo.suggestion == "did you mean MONITOR.LOG_OPT?"


def test_tuple_strings_and_yaml11_string_floats_are_literal_evaluated() -> None:
    loaded = load_config(
        minimal(SOLVER="  STEPS: (1000, 2000)\n  BASE_LR: 1e-03\n  BETAS: '(0.8, 0.99)'\n")
    )
    assert loaded.values["SOLVER"]["STEPS"] == [1000, 2000]
    assert loaded.values["SOLVER"]["BASE_LR"] == 0.001
    assert isinstance(loaded.values["SOLVER"]["BASE_LR"], float)
    assert loaded.values["SOLVER"]["BETAS"] == [0.8, 0.99]
    assert errors(loaded) == []


def test_string_keys_are_not_literal_evaluated() -> None:
    loaded = load_config(minimal(INFERENCE="  OUTPUT_NAME: '123'\n"))
    assert loaded.values["INFERENCE"]["OUTPUT_NAME"] == "123"


def test_string_literals_are_decoded_as_yacs_does() -> None:
    text = minimal(
        SOLVER="  NAME: \"'Adam'\"\n  LR_SCHEDULER_NAME: \"'ReduceLROnPlateau'\"\n",
        MODEL="  TARGET_OPT: \"['0', '4-1-1']\"\n",
    )
    loaded = load_config(text)
    assert loaded.get("SOLVER.NAME") == "Adam"
    assert loaded.get("SOLVER.LR_SCHEDULER_NAME") == "ReduceLROnPlateau"
    assert loaded.get("MODEL.TARGET_OPT") == ["0", "4-1-1"]
    overridden = load_config(text, overrides=["SOLVER.NAME", "'AdamW'", "DATASET.PAD_MODE", "edge"])
    assert overridden.get("SOLVER.NAME") == "AdamW" and overridden.get("DATASET.PAD_MODE") == "edge"


def test_ints_where_floats_or_strings_are_meant_are_converted() -> None:
    loaded = load_config(minimal(MODEL="  LOSS_WEIGHT: [[1]]\n  TARGET_OPT: [0]\n"))
    assert loaded.values["MODEL"]["LOSS_WEIGHT"] == [[1.0]]
    assert isinstance(loaded.values["MODEL"]["LOSS_WEIGHT"][0][0], float)
    assert loaded.values["MODEL"]["TARGET_OPT"] == ["0"]
    assert errors(loaded) == []


def test_bare_boolean_augmentations_become_sections() -> None:
    loaded = load_config(LUCCHI_OLD)
    aug = loaded.values["AUGMENTOR"]
    assert aug["ROTATE"] == {"ENABLED": True, "P": 1.0, "SKIP": [], "ROT90": True}
    assert aug["FLIP"]["ENABLED"] is True and aug["FLIP"]["P"] == 1.0
    assert loaded.user_keys["AUGMENTOR.ROTATE.ENABLED"].line == 23


def test_bare_boolean_in_overlay_switches_a_section_of_the_base() -> None:
    base = minimal(AUGMENTOR="  ROTATE: {ENABLED: True, P: 0.5}\n")
    loaded = load_config("AUGMENTOR:\n  ROTATE: False\n", base_text=base)
    assert loaded.values["AUGMENTOR"]["ROTATE"]["ENABLED"] is False
    assert loaded.values["AUGMENTOR"]["ROTATE"]["P"] == 0.5  # the base's P survives


def test_section_augmentation_and_bare_boolean_mean_the_same() -> None:
    a = load_config(minimal(AUGMENTOR="  FLIP: False\n"))
    b = load_config(minimal(AUGMENTOR="  FLIP:\n    ENABLED: False\n"))
    assert a.values == b.values


def test_old_architecture_names_are_mapped_with_a_warning() -> None:
    loaded = load_config(LUCCHI_OLD)
    assert loaded.values["MODEL"]["ARCHITECTURE"] == "unet_3d"
    (warning,) = [p for p in loaded.problems if p.key == "MODEL.ARCHITECTURE"]
    assert warning.level == "warning" and warning.line == 6
    assert "unet_residual_3d" in warning.message and "unet_3d" in warning.suggestion
    for old, new in (("unet_super", "unet_plus_3d"), ("unet_residual_2d", "unet_2d")):
        text = minimal(MODEL=f"  ARCHITECTURE: {old}\n")
        assert load_config(text).values["MODEL"]["ARCHITECTURE"] == new


def test_real_old_style_config_has_no_errors() -> None:
    assert errors(load_config(LUCCHI_OLD)) == []


def test_overrides_are_key_value_pairs_literal_evaluated() -> None:
    loaded = load_config(
        MITO_BASE,
        overrides=[
            "SOLVER.BASE_LR",
            "0.05",
            "SOLVER.STEPS",
            "(10, 20)",
            "MODEL.ARCHITECTURE",
            "unet_plus_3d",
            "AUGMENTOR.ROTATE",
            "False",
            "DATASET.IMAGE_NAME",
            "a.h5@b.h5",
        ],
    )
    v = loaded.values
    assert v["SOLVER"]["BASE_LR"] == 0.05
    assert v["SOLVER"]["STEPS"] == [10, 20]
    assert v["MODEL"]["ARCHITECTURE"] == "unet_plus_3d"
    assert v["AUGMENTOR"]["ROTATE"]["ENABLED"] is False
    assert v["DATASET"]["IMAGE_NAME"] == "a.h5@b.h5"
    assert loaded.user_keys["SOLVER.BASE_LR"].file == "override"
    assert loaded.user_keys["SOLVER.BASE_LR"].line is None


def test_overrides_win_over_config_and_base() -> None:
    loaded = load_config(MITO_OVERLAY, base_text=MITO_BASE, overrides=["SOLVER.BASE_LR", "1e-4"])
    assert loaded.values["SOLVER"]["BASE_LR"] == 0.0001


def test_override_problems() -> None:
    loaded = load_config(minimal(), overrides=["SOLVER.BASE_LRR", "0.1", "SOLVER.GAMMA"])
    by_key = {p.key: p for p in loaded.problems}
    assert by_key["SOLVER.BASE_LRR"].file == "override"
    assert "SOLVER.BASE_LR" in by_key["SOLVER.BASE_LRR"].suggestion
    assert by_key["SOLVER.GAMMA"].expected == "KEY VALUE pairs"


def test_unknown_key_suggests_the_closest_names() -> None:
    loaded = load_config(minimal(SOLVER="  BASE_LRR: 0.1\n  ITERATION_TOTL: 5\n"))
    problems = {p.key: p for p in loaded.problems}
    assert problems["SOLVER.BASE_LRR"].level == "error"
    assert problems["SOLVER.BASE_LRR"].message == "non-existent config key"
    assert problems["SOLVER.BASE_LRR"].suggestion == "did you mean SOLVER.BASE_LR?"
    assert "SOLVER.ITERATION_TOTAL" in problems["SOLVER.ITERATION_TOTL"].suggestion
    # Everything else still loaded.
    assert loaded.values["DATASET"]["IMAGE_NAME"] == "im.npy"


def test_key_in_the_wrong_section_suggests_the_right_one() -> None:
    loaded = load_config(minimal(MODEL="  BASE_LR: 0.1\n"))
    (problem,) = [p for p in loaded.problems if p.key == "MODEL.BASE_LR"]
    assert "SOLVER.BASE_LR" in problem.suggestion


def test_unknown_section_is_reported_once() -> None:
    loaded = load_config("SOLVERS:\n  BASE_LR: 0.1\n  GAMMA: 0.5\n")
    assert [(p.key, p.line) for p in loaded.problems] == [("SOLVERS", 1)]
    assert "SOLVER" in loaded.problems[0].suggestion


def test_yaml_line_numbers_are_those_of_the_keys() -> None:
    text = MITO_BASE
    loaded = load_config(text)
    lines = text.splitlines()
    for key in ("MODEL.TARGET_OPT", "SOLVER.BASE_LR", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE"):
        line = loaded.user_keys[key].line
        assert line is not None
        assert lines[line - 1].strip().startswith(key.rsplit(".", 1)[1] + ":")


def test_yaml_syntax_error_is_a_problem_with_its_line() -> None:
    text = "MODEL:\n  INPUT_SIZE: [8, 64, 64\nSOLVER:\n  BASE_LR: 0.1\n"
    loaded = load_config(text)
    (problem,) = loaded.problems
    assert problem.level == "error" and problem.file == "config"
    assert problem.message.startswith("YAML syntax error")
    assert problem.line in (2, 3)
    assert not loaded.complete
    # A file that could not be parsed stops the value checks: no cascade of defaults.
    assert validate(loaded, check_paths=False) == loaded.problems


def test_tab_indentation_is_a_syntax_problem() -> None:
    loaded = load_config("MODEL:\n\tIN_PLANES: 1\n")
    assert loaded.problems[0].line == 2


def test_unsafe_yaml_tag_is_rejected_not_executed() -> None:
    text = "MODEL:\n  ARCHITECTURE: !!python/object/apply:os.system ['echo pwned']\n"
    loaded = load_config(text)
    (problem,) = loaded.problems
    assert problem.level == "error" and problem.line == 2
    assert "!!python/object/apply:os.system" in problem.message
    assert "not allowed" in problem.message
    assert not loaded.complete


def test_non_mapping_top_level_is_a_problem() -> None:
    for text in ("- MODEL\n- SOLVER\n", "just a string\n", "42\n"):
        loaded = load_config(text)
        (problem,) = loaded.problems
        assert problem.level == "error" and "not a mapping" in problem.message


def test_scalar_where_a_section_belongs_is_a_problem() -> None:
    loaded = load_config("SOLVER: 5\nDATASET:\n  REJECT_SAMPLING: fast\n")
    keys = {p.key for p in loaded.problems}
    assert keys == {"SOLVER", "DATASET.REJECT_SAMPLING"}


def test_empty_sections_and_empty_files_set_nothing() -> None:
    assert load_config("").values == defaults()
    assert load_config("# only a comment\n").problems == []
    loaded = load_config("SOLVER:\nMODEL:\n  IN_PLANES: 1\n")
    assert loaded.problems == []
    assert set(loaded.user_keys) == {"MODEL.IN_PLANES"}


def test_duplicate_keys_warn() -> None:
    loaded = load_config("SOLVER:\n  BASE_LR: 0.1\n  BASE_LR: 0.2\n")
    (problem,) = loaded.problems
    assert (problem.level, problem.key, problem.line) == ("warning", "SOLVER.BASE_LR", 3)
    assert loaded.values["SOLVER"]["BASE_LR"] == 0.2


def test_missing_file_is_a_problem(tmp_path: Path) -> None:
    loaded = load_config(path=tmp_path / "nope.yaml")
    (problem,) = loaded.problems
    assert problem.file == str(tmp_path / "nope.yaml")
    assert "cannot read" in problem.message
    assert not loaded.complete


def test_to_yaml_round_trips() -> None:
    loaded = load_config(MITO_OVERLAY, base_text=MITO_BASE, overrides=["SOLVER.BASE_LR", "1e-5"])
    text = loaded.to_yaml()
    again = load_config(text)
    assert again.values == loaded.values
    assert [p for p in again.problems if p.is_error] == []
    assert "INPUT_SIZE: [17, 225, 225]" in text  # lists inline, as PyTC configs are written
    assert "TARGET_OPT: ['0', 4-2-1]" in text


def test_diff_from_defaults() -> None:
    loaded = load_config(minimal(SOLVER="  BASE_LR: 0.01\n  GAMMA: 0.1\n"))
    diff = loaded.diff_from_defaults()
    assert diff["SOLVER.BASE_LR"] == 0.01
    assert "SOLVER.GAMMA" not in diff  # set, but to the default
    assert diff["DATASET.IMAGE_NAME"] == "im.npy"


def test_alias_bombs_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    loaded = load_config("\n".join(lines) + "\nMODEL:\n  FILTERS: *a7\n")
    (problem,) = loaded.problems
    assert "aliases" in problem.message and not loaded.complete


def test_anchors_and_aliases_of_normal_size_work() -> None:
    text = "MODEL:\n  INPUT_SIZE: &size [8, 64, 64]\n  OUTPUT_SIZE: *size\n"
    loaded = load_config(text)
    assert loaded.problems == []
    assert loaded.values["MODEL"]["OUTPUT_SIZE"] == [8, 64, 64]


def test_deep_nesting_is_a_problem_not_a_crash() -> None:
    loaded = load_config("MODEL:\n  FILTERS: " + "[" * 600 + "]" * 600 + "\n")
    assert loaded.problems and loaded.problems[0].level == "error"


def test_section_override_as_a_mapping() -> None:
    loaded = load_config(minimal(), overrides=["AUGMENTOR.ROTATE", "{'P': 0.5, 'ENABLED': False}"])
    assert loaded.values["AUGMENTOR"]["ROTATE"]["P"] == 0.5
    assert loaded.values["AUGMENTOR"]["ROTATE"]["ENABLED"] is False
