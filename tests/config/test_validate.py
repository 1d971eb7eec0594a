"""Value checks: types, ranges, choices, and the keys that must agree with each other."""

from __future__ import annotations

from backend.config import Problem, load_config, validate
from backend.config.validate import nearest_fit
from tests.config.samples import MITO_BASE, minimal


def check(text: str, *overrides: str) -> list[Problem]:
    return validate(load_config(text, overrides=list(overrides)), check_paths=False)


def at_key(problems: list[Problem], key: str, level: str = "error") -> list[Problem]:
    return [p for p in problems if p.key == key and p.level == level]


def one(problems: list[Problem], key: str, level: str = "error") -> Problem:
    found = at_key(problems, key, level)
    assert len(found) == 1, [str(p) for p in problems]
    return found[0]


def test_minimal_config_is_valid() -> None:
    assert check(minimal()) == []


def test_defaults_alone_need_only_the_volumes() -> None:
    problems = validate(load_config(), check_paths=False)
    # And an output activation: PyTC's default WeightedBCE on raw outputs fails at step 1.
    errors = {p.key for p in problems if p.is_error}
    assert errors == {"DATASET.IMAGE_NAME", "DATASET.LABEL_NAME", "MODEL.OUTPUT_ACT"}
    assert one(problems, "MODEL.OUTPUT_ACT").suggestion == "OUTPUT_ACT: [['sigmoid']]"


def test_every_problem_is_reported_at_once() -> None:
    text = minimal(
        SOLVER="  BASE_LR: -1\n  SAMPLES_PER_BATCH: 0\n  NAME: RMSprop\n  BASE_LRR: 2\n",
        MODEL="  OUT_PLANES: 3\n  LOSS_WEIGHT: [[1.0, 2.0]]\n",
    )
    keys = {p.key for p in check(text) if p.is_error}
    assert keys >= {
        "SOLVER.BASE_LR",
        "SOLVER.SAMPLES_PER_BATCH",
        "SOLVER.NAME",
        "SOLVER.BASE_LRR",
        "MODEL.OUT_PLANES",
        "MODEL.LOSS_WEIGHT",
    }


def test_problem_has_all_fields_and_json() -> None:
    problem = one(check(minimal(SOLVER="  BASE_LR: 0\n")), "SOLVER.BASE_LR")
    assert problem.expected == "> 0"
    assert problem.file == "config" and problem.line == 10
    assert problem.to_json() == {
        "level": "error",
        "key": "SOLVER.BASE_LR",
        "message": "0.0 is out of range",
        "expected": "> 0",
        "suggestion": "the default is 0.001",
        "file": "config",
        "line": 10,
    }


def test_wrong_types() -> None:
    problems = check(
        minimal(SOLVER="  ITERATION_TOTAL: lots\n  CLIP_GRADIENTS: {ENABLED: maybe}\n"),
    )
    total = one(problems, "SOLVER.ITERATION_TOTAL")
    assert total.message == "got string 'lots'" and total.expected == "an integer"
    assert one(problems, "SOLVER.CLIP_GRADIENTS.ENABLED").expected == "true or false"
    assert one(check(minimal(MODEL="  TARGET_OPT: '0'\n")), "MODEL.TARGET_OPT").expected == (
        "a list of strings"
    )


def test_integral_floats_count_as_integers() -> None:
    problems = check(minimal(SOLVER="  ITERATION_TOTAL: 1e5\n"))
    assert at_key(problems, "SOLVER.ITERATION_TOTAL") == []
    assert (
        load_config(minimal(SOLVER="  ITERATION_TOTAL: 1e5\n")).values["SOLVER"]["ITERATION_TOTAL"]
        == 100000
    )


def test_ranges() -> None:
    cases = {
        "SOLVER.BASE_LR": ("-0.1", "> 0"),
        "SOLVER.ITERATION_TOTAL": ("0", ">= 1"),
        "SOLVER.SAMPLES_PER_BATCH": ("0", ">= 1"),
        "SYSTEM.NUM_GPUS": ("-1", ">= 0"),
        "SOLVER.WEIGHT_DECAY": ("-0.1", ">= 0"),
        "AUGMENTOR.FLIP.P": ("2", ">= 0 and <= 1"),
        "SOLVER.BETAS": ("(0.9, 1.0)", ">= 0 and < 1"),
        "MODEL.INPUT_SIZE": ("[0, 64, 64]", ">= 1"),
    }
    for key, (value, expected) in cases.items():
        assert one(check(minimal(), key, value), key).expected == expected, key
    # Advice, not limits: PyTC trains with these, so they warn.
    for key, value in (("SOLVER.MOMENTUM", "1.5"), ("SOLVER.GAMMA", "2.0")):
        assert "PyTC accepts it" in one(check(minimal(), key, value), key, "warning").message


def test_non_finite_numbers_are_errors_naming_the_key() -> None:
    for key, value in (
        ("SOLVER.BASE_LR", "1e400"),
        ("DATASET.STD", "-1e999"),
        ("SOLVER.BETAS", "[0.9, 1e400]"),
    ):
        problem = one(check(minimal(), key, value), key)
        assert "is not a finite number" in problem.message, key
    from_yaml = check(minimal(SOLVER="  BASE_LR: .inf\n  WEIGHT_DECAY: .nan\n"))
    assert one(from_yaml, "SOLVER.BASE_LR").suggestion == "BASE_LR: 0.001"
    assert "nan is not a finite number" in one(from_yaml, "SOLVER.WEIGHT_DECAY").message
    # An infinite norm is the max norm: meaningful there, and only there.
    inf_norm = check(minimal(), "SOLVER.CLIP_GRADIENTS.NORM_TYPE", "1e400")
    assert not at_key(inf_norm, "SOLVER.CLIP_GRADIENTS.NORM_TYPE")


def test_nan_is_out_of_range() -> None:
    assert at_key(check(minimal(SOLVER="  BASE_LR: .nan\n")), "SOLVER.BASE_LR")


def test_list_lengths() -> None:
    problem = one(check(minimal(), "MODEL.INPUT_SIZE", "[64, 64]"), "MODEL.INPUT_SIZE")
    assert problem.expected == "3 values (z, y, x)"
    assert at_key(check(minimal(), "SOLVER.BETAS", "[0.9]"), "SOLVER.BETAS")


def test_enum_values_list_the_allowed_ones() -> None:
    problem = one(check(minimal(), "MODEL.NORM_MODE", "batchnorm"), "MODEL.NORM_MODE")
    assert problem.expected == "one of bn, sync_bn, in, gn, none"
    problem = one(check(minimal(), "SOLVER.NAME", "adam"), "SOLVER.NAME")
    assert problem.suggestion == "NAME: 'Adam'"  # applies as written
    problem = one(check(minimal(), "MODEL.OUTPUT_ACT", "[['sigmod']]"), "MODEL.OUTPUT_ACT")
    assert "sigmoid" in problem.suggestion


def test_every_pytc_v1_architecture_is_accepted() -> None:
    # Their own constraints: tests/config/test_architectures.py.
    for arch in ("fpn_3d", "unetr", "swinunetr", "fpn"):
        assert not at_key(check(minimal(), "MODEL.ARCHITECTURE", arch), "MODEL.ARCHITECTURE")
    problem = one(check(minimal(), "MODEL.ARCHITECTURE", "unet3d"), "MODEL.ARCHITECTURE")
    assert problem.suggestion == "ARCHITECTURE: 'unet_3d'"


def test_unsupported_losses_and_schedulers() -> None:
    problem = one(check(minimal(), "MODEL.LOSS_OPTION", "[['WeightedCE']]"), "MODEL.LOSS_OPTION")
    assert "WeightedCE needs class indices" in problem.message
    assert "WeightedBCEWithLogitsLoss" in problem.suggestion


def test_swa_that_never_starts_warns() -> None:
    swa = minimal(SOLVER="  ITERATION_TOTAL: 100\n  SWA: {ENABLED: True, START_ITER: 100}\n")
    problem = one(check(swa), "SOLVER.SWA.START_ITER", "warning")
    assert "never starts" in problem.message and problem.suggestion == "START_ITER: 50"
    on_time = minimal(SOLVER="  ITERATION_TOTAL: 100\n  SWA: {ENABLED: True, START_ITER: 60}\n")
    assert not at_key(check(on_time), "SOLVER.SWA.START_ITER", "warning")


def test_every_scheduler_pytc_builds_is_accepted_and_onecycle_says_why_not() -> None:
    for name in ("MultiStepLR", "WarmupMultiStepLR", "WarmupCosineLR", "ReduceLROnPlateau"):
        assert not at_key(
            check(minimal(), "SOLVER.LR_SCHEDULER_NAME", name), "SOLVER.LR_SCHEDULER_NAME"
        )
    problems = check(minimal(), "SOLVER.LR_SCHEDULER_NAME", "OneCycle")
    problem = one(problems, "SOLVER.LR_SCHEDULER_NAME")
    assert "cannot build it" in problem.message and "SOLVER.MAX_ITER" in problem.message
    assert problem.suggestion == "LR_SCHEDULER_NAME: 'WarmupCosineLR'"


def test_targets_pytc_cannot_train() -> None:
    cases = (("5", "all 5 fields"), ("9", "class count"), ("8-2-5-2d-0-0-1.0-0", "'8'"))
    for target, words in cases:
        problems = check(minimal(), "MODEL.TARGET_OPT", f"['{target}']")
        problem = one(problems, "MODEL.TARGET_OPT")
        assert words in problem.message and problem.suggestion.startswith("TARGET_OPT: ['")
        assert at_key(problems, "MODEL.OUT_PLANES") == []  # no follow-up noise
    assert at_key(check(minimal(), "MODEL.TARGET_OPT", "['2-1-1']"), "MODEL.TARGET_OPT")
    assert at_key(check(minimal(), "MODEL.TARGET_OPT", "['4-1']"), "MODEL.TARGET_OPT")
    assert at_key(check(minimal(), "MODEL.TARGET_OPT", "['x']"), "MODEL.TARGET_OPT")


def test_out_planes_must_match_the_targets() -> None:
    problems = check(
        minimal(
            MODEL="  TARGET_OPT: ['0', '2']\n"
            "  LOSS_OPTION: [['WeightedBCE'], ['WeightedBCE']]\n"
            "  LOSS_WEIGHT: [[1.0], [1.0]]\n"
            "  WEIGHT_OPT: [['1'], ['1']]\n"
            "  OUTPUT_ACT: [['sigmoid'], ['sigmoid']]\n"
        )
    )
    problem = one(problems, "MODEL.OUT_PLANES")
    assert "need 4 channels (1 for '0' + 3 for '2')" in problem.message
    assert problem.suggestion == "OUT_PLANES: 4"
    assert problem.line == 6  # OUT_PLANES is a default: located at TARGET_OPT
    assert [p for p in problems if p.is_error] == [problem]


def test_affinity_has_two_channels_in_2d() -> None:
    text = minimal(
        MODEL="  ARCHITECTURE: unet_2d\n  TARGET_OPT: ['2']\n  OUT_PLANES: 3\n",
        DATASET="  DO_2D: True\n",
    )
    problems = check(text, "MODEL.INPUT_SIZE", "[1, 64, 64]")
    assert one(problems, "MODEL.OUT_PLANES").suggestion == "OUT_PLANES: 2"


def test_loss_weight_shape_must_match_loss_option() -> None:
    problems = check(
        minimal(
            MODEL="  LOSS_OPTION: [['WeightedBCE', 'DiceLoss']]\n"
            "  LOSS_WEIGHT: [[1.0]]\n"
            "  WEIGHT_OPT: [['1', '0']]\n"
            "  OUTPUT_ACT: [['none', 'none']]\n"
        )
    )
    problem = one(problems, "MODEL.LOSS_WEIGHT")
    assert problem.suggestion == "LOSS_WEIGHT: [[1.0, 1.0]]"
    assert problem.expected == "the shape of MODEL.LOSS_OPTION: 2 for target 1"
    assert problem.line == 7


def test_default_per_loss_keys_that_no_longer_fit_are_named_as_defaults() -> None:
    problems = check(
        minimal(MODEL="  LOSS_OPTION: [['WeightedBCE', 'DiceLoss']]\n  LOSS_WEIGHT: [[1.0, 1.0]]\n")
    )
    weight_opt = one(problems, "MODEL.WEIGHT_OPT")
    assert "the default of WEIGHT_OPT" in weight_opt.message
    assert weight_opt.suggestion == "WEIGHT_OPT: [['1', '0']]"  # no class weights for Dice
    # Padded with what the loss trains with (Dice: probabilities), so the fix validates.
    assert one(problems, "MODEL.OUTPUT_ACT").suggestion == "OUTPUT_ACT: [['sigmoid', 'sigmoid']]"


def test_loss_option_needs_one_list_per_target() -> None:
    problems = check(minimal(), "MODEL.TARGET_OPT", "['0', '4-1-1']", "MODEL.OUT_PLANES", "2")
    problem = one(problems, "MODEL.LOSS_OPTION")
    assert problem.message == "has 1 loss list(s) for 2 target(s)"
    assert problem.suggestion == "LOSS_OPTION: [['WeightedBCE'], ['WeightedBCEWithLogitsLoss']]"


def test_flat_per_loss_list_is_a_type_error() -> None:
    problem = one(check(minimal(MODEL="  WEIGHT_OPT: ['1']\n")), "MODEL.WEIGHT_OPT")
    assert problem.expected == "a list of lists of strings"


def test_logits_loss_with_sigmoid_warns() -> None:
    text = minimal(
        MODEL="  LOSS_OPTION: [['WeightedBCEWithLogitsLoss']]\n  OUTPUT_ACT: [['sigmoid']]\n"
    )
    warnings = at_key(check(text), "MODEL.OUTPUT_ACT", "warning")
    assert any("applies it twice" in p.message for p in warnings)


def test_2d_training_needs_z_of_one() -> None:
    text = minimal(MODEL="  ARCHITECTURE: unet_2d\n", DATASET="  DO_2D: True\n")
    problem = one(check(text), "MODEL.INPUT_SIZE")
    assert problem.suggestion == "INPUT_SIZE: [1, 64, 64]"
    problems = check(text, "MODEL.INPUT_SIZE", "[1, 64, 64]", "MODEL.OUTPUT_SIZE", "[1, 64, 64]")
    assert [p for p in problems if p.is_error] == []


def test_2d_flag_and_architecture_must_agree() -> None:
    problem = one(
        check(minimal(DATASET="  DO_2D: True\n"), "MODEL.INPUT_SIZE", "[1, 64, 64]"),
        "MODEL.ARCHITECTURE",
    )
    assert problem.suggestion == "ARCHITECTURE: unet_2d"
    problem = one(check(minimal(MODEL="  ARCHITECTURE: unet_plus_2d\n")), "DATASET.DO_2D")
    assert problem.suggestion == "DO_2D: True"


def test_patch_sizes_must_be_divisible_by_the_pooling_factors() -> None:
    # 5 levels: y and x are halved 4 times (16), z twice (the two isotropic levels: 4).
    problems = check(
        minimal(), "MODEL.INPUT_SIZE", "[10, 250, 256]", "MODEL.OUTPUT_SIZE", "[10, 250, 256]"
    )
    problem = one(problems, "MODEL.INPUT_SIZE")
    assert "y = 250 (factor 16)" in problem.message and "z = 10 (factor 4)" in problem.message
    assert problem.suggestion == "INPUT_SIZE: [8, 256, 256]"
    # PyTC's 2^n+1 sizes pass, as do plain multiples.
    assert at_key(check(MITO_BASE), "MODEL.INPUT_SIZE") == []
    fewer = check(
        minimal(),
        "MODEL.FILTERS",
        "[16, 32, 64]",
        "MODEL.ISOTROPY",
        "[False, False, False]",
        "MODEL.INPUT_SIZE",
        "[3, 36, 36]",
        "MODEL.OUTPUT_SIZE",
        "[3, 36, 36]",
    )
    assert at_key(fewer, "MODEL.INPUT_SIZE") == []


def test_nearest_fit() -> None:
    assert nearest_fit(250, 16) == 256
    assert nearest_fit(256, 16) == 256
    assert nearest_fit(257, 16) == 257
    assert nearest_fit(5, 16) == 16
    assert nearest_fit(130, 16) == 128
    assert nearest_fit(10, 4) == 8


def test_filters_and_isotropy_lengths_must_match() -> None:
    problem = one(check(minimal(), "MODEL.FILTERS", "[16, 32, 64, 128]"), "MODEL.ISOTROPY")
    assert problem.suggestion == "ISOTROPY: [False, False, False, True]"


def test_output_size_differing_from_input_size_warns() -> None:
    problem = one(
        check(minimal(), "MODEL.OUTPUT_SIZE", "[8, 32, 32]"), "MODEL.OUTPUT_SIZE", "warning"
    )
    assert problem.suggestion == "OUTPUT_SIZE: [8, 64, 64]"


def test_steps_out_of_order() -> None:
    warmup = "  LR_SCHEDULER_NAME: WarmupMultiStepLR\n  STEPS: (35000, 30000)\n"
    problem = one(check(minimal(SOLVER=warmup)), "SOLVER.STEPS")  # PyTC refuses them
    assert problem.suggestion == "STEPS: [30000, 35000]"
    plain = one(check(minimal(SOLVER="  STEPS: (35000, 30000)\n")), "SOLVER.STEPS", "warning")
    assert "MultiStepLR reads it as [30000, 35000]" in plain.message  # torch counts them
    repeated = check(minimal(SOLVER=warmup.replace("(35000, 30000)", "(30000, 30000)")))
    assert not at_key(repeated, "SOLVER.STEPS"), "a repeated step decays twice, as in PyTC"
    cosine = "  LR_SCHEDULER_NAME: WarmupCosineLR\n  STEPS: (35000, 30000)\n"
    assert not [p for p in check(minimal(SOLVER=cosine)) if p.key == "SOLVER.STEPS"]


def test_intervals_longer_than_the_run_warn() -> None:
    problems = check(
        minimal(
            SOLVER="  ITERATION_TOTAL: 1000\n  ITERATION_SAVE: 5000\n"
            "  ITERATION_VAL: 2000\n  STEPS: (500, 800)\n"
        )
    )
    assert one(problems, "SOLVER.ITERATION_SAVE", "warning").suggestion == "ITERATION_SAVE: 1000"
    assert one(problems, "SOLVER.ITERATION_VAL", "warning")
    assert [p for p in problems if p.is_error] == []
    late = check(
        minimal(SOLVER="  ITERATION_TOTAL: 1000\n  ITERATION_SAVE: 100\n  ITERATION_VAL: 100\n")
    )
    assert one(late, "SOLVER.STEPS", "warning")  # default steps 30000, 35000 never come


def test_training_needs_images_and_labels() -> None:
    problems = check("DATASET:\n  IMAGE_NAME: im.h5\n")
    assert one(problems, "DATASET.LABEL_NAME").suggestion == "LABEL_NAME: train_label.h5"
    problems = check(minimal(DATASET="  VAL_IMAGE_NAME: val.h5\n"))
    assert one(problems, "DATASET.VAL_LABEL_NAME").line == 9


def test_accepted_not_used_warns_only_when_changed() -> None:
    text = minimal(
        MODEL="  EMBEDDING: 2\n  HEAD_DEPTH: 1\n",
        DATASET="  REJECT_SAMPLING:\n    NUM_TRIAL: 5\n",
        AUGMENTOR="  ELASTIC: {ENABLED: True, P: 0.5}\n  COPYPASTE: {ENABLED: True}\n",
    )
    problems = check(text)
    warned = {p.key for p in problems if p.level == "warning"}
    assert warned == {
        "MODEL.EMBEDDING",
        "DATASET.REJECT_SAMPLING.NUM_TRIAL",
        "AUGMENTOR.COPYPASTE.ENABLED",  # ELASTIC is applied: no warning
    }
    problem = one(problems, "MODEL.EMBEDDING", "warning")
    assert problem.message.startswith("accepted, not used")
    assert problem.line == 6
    assert [p for p in problems if p.is_error] == []


def test_core_keys_never_warn_as_unused() -> None:
    text = minimal(
        SOLVER="  BASE_LR: 0.1\n  NAME: Adam\n  ITERATION_STEP: 2\n",
        MODEL="  NORM_MODE: gn\n  BLOCK_TYPE: residual_se\n",
        AUGMENTOR="  FLIP: False\n",
    )
    assert check(text) == []


def test_inference_section_warns_once() -> None:
    problems = check(MITO_BASE)
    (problem,) = [p for p in problems if p.key.startswith("INFERENCE")]
    assert problem.key == "INFERENCE" and problem.level == "warning"
    assert "STRIDE" in problem.message


def test_mixed_precision_without_gpu_warns() -> None:
    assert one(
        check(minimal(MODEL="  MIXED_PRECESION: True\n")), "MODEL.MIXED_PRECESION", "warning"
    )


def test_validate_reports_load_problems_first() -> None:
    problems = check(minimal(SOLVER="  BASE_LRR: 1\n  GAMMA: -1\n"))
    assert [p.key for p in problems] == ["SOLVER.BASE_LRR", "SOLVER.GAMMA"]


def test_unset_output_size_does_not_warn() -> None:
    text = (
        "DATASET:\n  IMAGE_NAME: a.h5\n  LABEL_NAME: b.h5\n"
        "MODEL:\n  INPUT_SIZE: [8, 64, 64]\n  OUTPUT_ACT: [['sigmoid']]\n"
    )
    assert check(text) == []


def test_pytc_blocks_and_activations_are_accepted() -> None:
    assert not at_key(check(minimal(), "MODEL.BLOCK_TYPE", "residual_pa"), "MODEL.BLOCK_TYPE")
    assert not at_key(check(minimal(), "MODEL.ACT_MODE", "gelu"), "MODEL.ACT_MODE")
    assert at_key(check(minimal(), "MODEL.BLOCK_TYPE", "bottleneck"), "MODEL.BLOCK_TYPE")


def test_switching_off_what_trainboard_does_not_do_is_silent() -> None:
    text = minimal(
        AUGMENTOR="  ELASTIC: False\n  CUTBLUR: {ENABLED: False, P: 0.1}\n",
        SOLVER="  SWA:\n    ENABLED: False\n    START_ITER: 10\n",
    )
    assert check(text) == []
    problems = check(minimal(AUGMENTOR="  COPYPASTE: True\n"))
    assert one(problems, "AUGMENTOR.COPYPASTE.ENABLED", "warning")
