"""Validation: every problem of a loaded config at once, each with key, line and a fix.

Order of the checks: what loading found (syntax, unknown keys, old names), each key on its
own (type, length, range, allowed values), then the keys against each other (targets and
losses, model and patch size, schedule), what Trainboard accepts but does not use, and
finally, when asked, the machine: paths, volume shapes, GPUs.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from backend.config import architectures
from backend.config.context import Checks, show
from backend.config.holdout import check_holdout
from backend.config.load import LoadedConfig
from backend.config.masks import check_valid_masks
from backend.config.paths import check_machine
from backend.config.problems import ERROR, WARNING, Problem
from backend.config.schema import (
    ADVISORY_RANGES,
    ARCHITECTURES_2D,
    INFINITE_ALLOWED,
    KEYS,
    MULTISTEP_SCHEDULERS,
    PYTC_CANNOT_RUN,
    SUPPORTED_ARCHITECTURES,
    SWITCHABLE_SECTIONS,
    UNET_ARCHITECTURES,
    WARMUP_SCHEDULERS,
    Key,
    pooling_factors,
)
from backend.config.targets import (
    criterion_problems,
    default_activation,
    default_loss,
    default_weight_option,
    fit_activation,
)
from backend.config.valuetypes import describe, leaves, matches, type_name


def validate(
    loaded: LoadedConfig, *, check_paths: bool = True, base_dir: Path | None = None
) -> list[Problem]:
    """All problems of `loaded`: those found while loading, then the checks' own.

    `check_paths` also checks this machine: input folders and volumes exist (relative
    paths from `base_dir`, default the working directory), image and label shapes agree,
    the output folder can be written, the GPUs asked for are there.
    """
    checks = Checks(loaded)
    if not loaded.complete:
        # A file could not be read: its keys are missing, and checking the rest would
        # report defaults the user never meant. Fix the file first.
        return list(loaded.problems)
    for key in KEYS.values():
        _check_key(checks, key)
    _check_targets_and_losses(checks)
    _check_model(checks)
    _check_solver(checks)
    _check_dataset(checks)
    _check_accepted_not_used(checks)
    if check_paths:
        check_holdout(checks, base_dir or Path.cwd())
        check_valid_masks(checks, base_dir or Path.cwd())
    if check_paths:
        check_machine(checks, base_dir or Path.cwd())
    return [*loaded.problems, *checks.problems]


# --- one key at a time --------------------------------------------------------------------


def _check_key(checks: Checks, key: Key) -> None:
    value = checks.value(key.name)
    count = len(checks.problems)
    if not matches(value, key.type):
        checks.report(
            ERROR,
            key.name,
            f"got {type_name(value)} {_short(value)}",
            expected=describe(key.type) + _length_words(key),
            suggestion=f"e.g. {key.leaf}: {show(key.default)}",
        )
        return
    if _check_finite(checks, key, value):
        return
    if key.length is not None and isinstance(value, list) and len(value) != key.length:
        checks.report(
            ERROR,
            key.name,
            f"has {len(value)} values, got {show(value)}",
            expected=f"{key.length} values" + (" (z, y, x)" if key.length == 3 else ""),
            suggestion=f"e.g. {key.leaf}: {show(key.default)}",
        )
    _check_range(checks, key, value)
    _check_choices(checks, key, value)
    if not any(p.is_error for p in checks.problems[count:]):
        checks.valid.add(key.name)


def _check_finite(checks: Checks, key: Key, value: Any) -> bool:
    """NaN anywhere, or an infinity where it means nothing (`1e400`, `.inf`): an error,
    before training turns it into a diverged run or a NaN input. True when reported."""
    for number in leaves(value):
        if not isinstance(number, float) or math.isfinite(number):
            continue
        if math.isinf(number) and key.name in INFINITE_ALLOWED:
            continue
        checks.report(
            ERROR,
            key.name,
            f"{number!r} is not a finite number",
            expected="a finite number" + (f" ({range_words(key)})" if range_words(key) else ""),
            suggestion=f"{key.leaf}: {show(key.default)}",
        )
        return True
    return False


def _length_words(key: Key) -> str:
    return f" of length {key.length}" if key.length is not None else ""


def _short(value: Any, limit: int = 60) -> str:
    text = show(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_range(checks: Checks, key: Key, value: Any) -> None:
    if key.minimum is None and key.maximum is None:
        return
    for number in leaves(value):
        if not isinstance(number, int | float) or isinstance(number, bool):
            continue
        if not _in_range(key, number):
            advisory = key.name in ADVISORY_RANGES  # PyTC trains with it: never refused
            checks.report(
                WARNING if advisory else ERROR,
                key.name,
                f"{number!r} is out of range"
                + (" (PyTC accepts it; training is unlikely to go well)" if advisory else ""),
                expected=range_words(key),
                suggestion=f"the default is {show(key.default)}",
            )
            return


def _in_range(key: Key, number: float) -> bool:
    if math.isnan(number):
        return False
    if key.minimum is not None:
        low_ok = number > key.minimum if key.exclusive_minimum else number >= key.minimum
        if not low_ok:
            return False
    if key.maximum is not None:
        high_ok = number < key.maximum if key.exclusive_maximum else number <= key.maximum
        if not high_ok:
            return False
    return True


def range_words(key: Key) -> str:
    low = high = ""
    if key.minimum is not None:
        low = f"{'>' if key.exclusive_minimum else '>='} {key.minimum:g}"
    if key.maximum is not None:
        high = f"{'<' if key.exclusive_maximum else '<='} {key.maximum:g}"
    return " and ".join(w for w in (low, high) if w)


def _check_choices(checks: Checks, key: Key, value: Any) -> None:
    if not key.choices:
        return
    for item in leaves(value):
        if not isinstance(item, str) or item in key.choices:
            continue
        allowed = ", ".join(key.choices)
        if (key.name, item) in PYTC_CANNOT_RUN:
            message, instead = PYTC_CANNOT_RUN[(key.name, item)]
            suggestion = f"{key.leaf}: {show(instead)}"
        elif item in key.pytc_only:
            message = f"{item!r} is a PyTC option Trainboard does not support"
            suggestion = _use(key, value, key.choices[0], "use one of the supported values, e.g.")
        else:
            message = f"{item!r} is not a valid value"
            close = difflib.get_close_matches(item, [*key.choices, *key.pytc_only], n=1)
            instead = close[0] if close and close[0] in key.choices else key.choices[0]
            suggestion = _use(key, value, instead, "did you mean" if close else "e.g.")
        checks.report(ERROR, key.name, message, expected=f"one of {allowed}", suggestion=suggestion)
        return


def _use(key: Key, value: Any, instead: str, words: str) -> str:
    """`LEAF: 'value'` for a single-valued key, which applies as it is written; inside a
    list, the value in words (the rest of the list is the user's)."""
    if isinstance(value, str):
        return f"{key.leaf}: {show(instead)}"
    return f"{words} {instead!r}" + ("?" if words == "did you mean" else "")


# --- targets, losses and output channels --------------------------------------------------


def _check_targets_and_losses(checks: Checks) -> None:
    if not checks.ok("MODEL.TARGET_OPT"):
        return
    targets: list[str] = checks.value("MODEL.TARGET_OPT")
    if not targets:
        checks.report(
            ERROR,
            "MODEL.TARGET_OPT",
            "no target",
            expected="at least one target",
            suggestion="TARGET_OPT: ['0']",
        )
        return
    _check_loss_shapes(checks, len(targets))
    _check_criterion(checks)


# Keys the constraint table reads; a key that failed its own check is left out.
_CRITERION_KEYS = (
    "MODEL.TARGET_OPT",
    "MODEL.OUT_PLANES",
    "MODEL.LOSS_OPTION",
    "MODEL.LOSS_WEIGHT",
    "MODEL.WEIGHT_OPT",
    "MODEL.OUTPUT_ACT",
    "MODEL.LOSS_KWARGS_KEY",
    "MODEL.LOSS_KWARGS_VAL",
    "MODEL.REGU_OPT",
    "MODEL.REGU_TARGET",
    "MODEL.REGU_WEIGHT",
    "MODEL.LABEL_EROSION",
    "MODEL.LABEL_DILATION",
    "DATASET.DO_2D",
    "DATASET.VALID_MASK_NAME",
)


def _check_criterion(checks: Checks) -> None:
    """Targets, weights, losses, activations and regularisers against each other: the
    table the trainer refuses to start on (backend/config/targets.py)."""
    values: dict[str, dict[str, Any]] = {"MODEL": {}, "DATASET": {}}
    for name in _CRITERION_KEYS:
        if checks.ok(name):
            section, leaf = name.split(".")
            values[section][leaf] = checks.value(name)
    for problem in criterion_problems(values):
        checks.report(
            ERROR if problem.error else WARNING,
            problem.key,
            problem.message,
            suggestion=problem.suggestion,
            near=(*problem.near, *(k for k in problem.fix if k != problem.key)),
        )


def _check_loss_shapes(checks: Checks, n_targets: int) -> None:
    """LOSS_OPTION holds one list per target; the other per-loss keys mirror its shape."""
    if not checks.ok("MODEL.LOSS_OPTION"):
        return
    losses: list[list[str]] = checks.value("MODEL.LOSS_OPTION")
    if len(losses) != n_targets or any(not inner for inner in losses):
        fixed = [
            losses[i] if i < len(losses) and losses[i] else [default_loss(None)]
            for i in range(n_targets)
        ]
        checks.report(
            ERROR,
            "MODEL.LOSS_OPTION",
            f"has {len(losses)} loss list(s) for {n_targets} target(s)"
            if len(losses) != n_targets
            else "a target has no loss",
            expected="one non-empty list of losses per target in MODEL.TARGET_OPT",
            suggestion=f"LOSS_OPTION: {show(fixed)}",
            near=("MODEL.TARGET_OPT",),
        )
        return
    fills: dict[str, Any] = {"MODEL.LOSS_WEIGHT": 1.0}
    for name in ("MODEL.LOSS_WEIGHT", "MODEL.WEIGHT_OPT", "MODEL.OUTPUT_ACT"):
        if not checks.ok(name):
            continue
        value: list[list[Any]] = checks.value(name)
        if _shape(value) == _shape(losses):
            continue
        fixed = _reshape(value, losses, fills.get(name), name)
        leaf = name.split(".")[1]
        checks.report(
            ERROR,
            name,
            f"{show(value)} does not match LOSS_OPTION {show(losses)}"
            + ("" if checks.user_set(name) else f" (the default of {leaf})"),
            expected=f"the shape of MODEL.LOSS_OPTION: {_shape_words(losses)}",
            suggestion=f"{leaf}: {show(fixed)}",
            near=("MODEL.LOSS_OPTION",),
        )


def _shape(value: list[list[Any]]) -> list[int]:
    return [len(inner) for inner in value]


def _shape_words(losses: list[list[str]]) -> str:
    return ", ".join(f"{len(inner)} for target {i + 1}" for i, inner in enumerate(losses))


def _reshape(
    value: list[list[Any]], like: list[list[str]], fill: Any, name: str = ""
) -> list[list[Any]]:
    """`value` cut or padded to the shape of `like`; WEIGHT_OPT and OUTPUT_ACT pad what the
    loss trains with (backend/config/targets.py), so the suggestion itself validates."""
    out = []
    for i, inner in enumerate(like):
        row = []
        for j, loss in enumerate(inner):
            if i < len(value) and j < len(value[i]):
                kept = value[i][j]
                row.append(fit_activation(loss, kept) if name == "MODEL.OUTPUT_ACT" else kept)
            elif fill is not None:
                row.append(fill)
            elif name == "MODEL.OUTPUT_ACT":
                row.append(default_activation(loss, None))
            else:
                row.append(default_weight_option(loss))
        out.append(row)
    return out


# --- model and patch size -----------------------------------------------------------------


def _check_model(checks: Checks) -> None:
    if not checks.ok("MODEL.ARCHITECTURE", "DATASET.DO_2D", "MODEL.INPUT_SIZE"):
        return
    arch: str = checks.value("MODEL.ARCHITECTURE")
    do_2d: bool = checks.value("DATASET.DO_2D")
    size: list[int] = checks.value("MODEL.INPUT_SIZE")
    is_2d = arch in ARCHITECTURES_2D
    if do_2d and not is_2d:
        twin = arch.replace("_3d", "_2d")
        if twin not in ARCHITECTURES_2D:  # 3D-only models: train them in 3D
            twin = ""
        checks.report(
            ERROR,
            "MODEL.ARCHITECTURE",
            f"{arch!r} is a 3D model but DATASET.DO_2D is True",
            expected=f"a 2D model ({', '.join(ARCHITECTURES_2D)}) for 2D training",
            suggestion=f"ARCHITECTURE: {twin}" if twin else "DO_2D: False",
            near=("DATASET.DO_2D",),
        )
    if is_2d and not do_2d:
        checks.report(
            ERROR,
            "DATASET.DO_2D",
            f"{arch!r} is a 2D model but DATASET.DO_2D is False",
            expected="DO_2D: True for 2D models",
            suggestion="DO_2D: True",
            near=("MODEL.ARCHITECTURE",),
        )
    if (do_2d or is_2d) and size[0] != 1:
        checks.report(
            ERROR,
            "MODEL.INPUT_SIZE",
            f"{show(size)} has z = {size[0]}; 2D training needs z = 1",
            expected="[1, y, x] for 2D training",
            suggestion=f"INPUT_SIZE: {show([1, *size[1:]])}",
            near=("DATASET.DO_2D", "MODEL.ARCHITECTURE"),
        )
    if arch in UNET_ARCHITECTURES:
        _check_isotropy(checks, is_2d)
        _check_divisible(checks, arch, size, do_2d or is_2d)
    _check_output_size(checks, size)
    if checks.ok(*architectures.READS):  # the per-architecture table (engineer a)
        for p in architectures.architecture_problems(checks.loaded.values):
            checks.report(p.level, p.key, p.message, p.expected, p.suggestion)
    if checks.ok("MODEL.MIXED_PRECESION", "SYSTEM.NUM_GPUS") and (
        checks.value("MODEL.MIXED_PRECESION") and checks.value("SYSTEM.NUM_GPUS") == 0
    ):
        checks.report(
            WARNING,
            "MODEL.MIXED_PRECESION",
            "mixed precision needs CUDA; with NUM_GPUS 0 the run trains in full precision",
            suggestion="MIXED_PRECESION: False",
        )


def _check_isotropy(checks: Checks, is_2d: bool) -> None:
    if is_2d or not checks.ok("MODEL.FILTERS", "MODEL.ISOTROPY"):
        return
    filters: list[int] = checks.value("MODEL.FILTERS")
    isotropy: list[bool] = checks.value("MODEL.ISOTROPY")
    if len(filters) == len(isotropy):
        return
    fixed = (isotropy + [isotropy[-1] if isotropy else False] * len(filters))[: len(filters)]
    checks.report(
        ERROR,
        "MODEL.ISOTROPY",
        f"has {len(isotropy)} levels but MODEL.FILTERS has {len(filters)}",
        expected="one entry per U-Net level, as many as MODEL.FILTERS",
        suggestion=f"ISOTROPY: {show(fixed)}",
        near=("MODEL.FILTERS",),
    )


def _check_output_size(checks: Checks, size: list[int]) -> None:
    # Unset, PyTC's default [8, 256, 256] means nothing: the U-Net's output is its input.
    if not checks.ok("MODEL.OUTPUT_SIZE") or not checks.user_set("MODEL.OUTPUT_SIZE"):
        return
    out = checks.value("MODEL.OUTPUT_SIZE")
    if out != size:
        checks.report(
            WARNING,
            "MODEL.OUTPUT_SIZE",
            f"{show(out)} differs from INPUT_SIZE {show(size)}; the U-Net predicts the whole "
            "input patch",
            expected="the same as MODEL.INPUT_SIZE",
            suggestion=f"OUTPUT_SIZE: {show(size)}",
        )


AXES = ("z", "y", "x")


def _check_divisible(checks: Checks, arch: str, size: list[int], two_d: bool) -> None:
    """Every encoder level halves the patch; sizes must survive that evenly.

    PyTC also trains 2^n+1 sizes (17, 257: a multiple plus one, aligned corners), so
    those pass; the trainer upsamples to the skip connection's size as PyTC does.
    """
    if arch not in SUPPORTED_ARCHITECTURES or not checks.ok("MODEL.FILTERS", "MODEL.ISOTROPY"):
        return
    filters: list[int] = checks.value("MODEL.FILTERS")
    factors = pooling_factors(arch, len(filters), checks.value("MODEL.ISOTROPY"))
    if two_d:
        factors = (1, factors[1], factors[2])
    bad = [i for i, (s, f) in enumerate(zip(size, factors, strict=True)) if not _fits(s, f)]
    if not bad:
        return
    fixed = [nearest_fit(s, f) for s, f in zip(size, factors, strict=True)]
    axes = ", ".join(f"{AXES[i]} = {size[i]} (factor {factors[i]})" for i in bad)
    checks.report(
        ERROR,
        "MODEL.INPUT_SIZE",
        f"{show(size)} cannot be halved evenly by the {len(filters)}-level {arch}: {axes}",
        expected="per axis a multiple of its factor (or a multiple plus 1), "
        f"factors {show(list(factors))}",
        suggestion=f"INPUT_SIZE: {show(fixed)}",
        near=("MODEL.FILTERS", "MODEL.ISOTROPY"),
    )


def _fits(size: int, factor: int) -> bool:
    return factor == 1 or (size >= factor and (size % factor == 0 or (size - 1) % factor == 0))


def nearest_fit(size: int, factor: int) -> int:
    """The closest plain multiple of `factor` (the lower one on ties): safe for any U-Net."""
    if _fits(size, factor):
        return size
    low = max(factor, size // factor * factor)
    high = low + factor
    return low if size - low <= high - size else high


# --- solver -------------------------------------------------------------------------------


def _check_solver(checks: Checks) -> None:
    total = checks.value("SOLVER.ITERATION_TOTAL") if checks.ok("SOLVER.ITERATION_TOTAL") else None
    scheduler = checks.value("SOLVER.LR_SCHEDULER_NAME")
    if checks.ok("SOLVER.STEPS"):
        steps: list[int] = checks.value("SOLVER.STEPS")
        if steps != sorted(steps) and scheduler in MULTISTEP_SCHEDULERS:
            # PyTC's WarmupMultiStepLR refuses milestones out of order; torch's MultiStepLR
            # counts them, so there the order changes nothing. Repeats decay twice in both.
            strict = scheduler == "WarmupMultiStepLR"
            checks.report(
                ERROR if strict else WARNING,
                "SOLVER.STEPS",
                f"{show(steps)} is not in increasing order"
                + ("" if strict else f": {scheduler} reads it as {show(sorted(steps))}"),
                expected="increasing iterations",
                suggestion=f"STEPS: {show(sorted(steps))}",
                near=("SOLVER.LR_SCHEDULER_NAME",),
            )
        elif total is not None and scheduler in MULTISTEP_SCHEDULERS:
            late = [s for s in steps if s >= total]
            if late:
                checks.report(
                    WARNING,
                    "SOLVER.STEPS",
                    f"{show(late)} at or after ITERATION_TOTAL {total}: never reached",
                    expected=f"steps below {total}",
                    near=("SOLVER.ITERATION_TOTAL",),
                )
    _check_pre_model(checks)
    if total is None:
        return
    _check_swa(checks, total)
    for name, what in (
        ("SOLVER.ITERATION_SAVE", "checkpoint"),
        ("SOLVER.ITERATION_VAL", "validation"),
    ):
        if checks.ok(name) and checks.value(name) > total:
            checks.report(
                WARNING,
                name,
                f"{checks.value(name)} is more than ITERATION_TOTAL {total}: no periodic {what}",
                expected=f"at most {total}",
                suggestion=f"{name.split('.')[1]}: {total}",
                near=("SOLVER.ITERATION_TOTAL",),
            )
    if scheduler in WARMUP_SCHEDULERS and checks.ok("SOLVER.WARMUP_ITERS"):
        warmup = checks.value("SOLVER.WARMUP_ITERS")
        if warmup >= total:
            checks.report(
                WARNING,
                "SOLVER.WARMUP_ITERS",
                f"warm-up of {warmup} iterations outlasts the {total}-iteration run",
                expected=f"less than {total}",
                suggestion=f"WARMUP_ITERS: {max(total // 10, 0)}",
            )


def _check_swa(checks: Checks, total: int) -> None:
    """SWA that never starts changes nothing: no averaging, no checkpoint_swa.pth.tar."""
    if not checks.ok("SOLVER.SWA.ENABLED", "SOLVER.SWA.START_ITER"):
        return
    start = checks.value("SOLVER.SWA.START_ITER")
    if checks.value("SOLVER.SWA.ENABLED") and start >= total:
        checks.report(
            WARNING,
            "SOLVER.SWA.START_ITER",
            f"{start} is not below ITERATION_TOTAL {total}: SWA never starts, nothing is "
            "averaged and no checkpoint_swa.pth.tar is written",
            expected=f"less than {total}",
            suggestion=f"START_ITER: {total // 2}",
            near=("SOLVER.SWA.ENABLED",),
        )


def _check_pre_model(checks: Checks) -> None:
    """PyTC resumes from MODEL.PRE_MODEL unless ITERATION_RESTART: say so, it changes training."""
    if not checks.ok("MODEL.PRE_MODEL", "SOLVER.ITERATION_RESTART"):
        return
    if checks.value("MODEL.PRE_MODEL") and not checks.value("SOLVER.ITERATION_RESTART"):
        checks.report(
            WARNING,
            "MODEL.PRE_MODEL",
            "without SOLVER.ITERATION_RESTART this checkpoint is resumed as PyTC does: its "
            "optimizer, schedule and iteration count load too, when it has them",
            expected="SOLVER.ITERATION_RESTART: True to fine-tune from the weights only",
            suggestion="ITERATION_RESTART: True",
            near=("SOLVER.ITERATION_RESTART",),
        )


# --- dataset ------------------------------------------------------------------------------


def _is_set(value: Any) -> bool:
    return value not in (None, "", [])


def _check_dataset(checks: Checks) -> None:
    for name, example in (
        ("DATASET.IMAGE_NAME", "train_image.h5"),
        ("DATASET.LABEL_NAME", "train_label.h5"),
    ):
        if checks.ok(name) and not _is_set(checks.value(name)):
            checks.report(
                ERROR,
                name,
                "is not set: training needs image and label volumes",
                expected="a volume name relative to DATASET.INPUT_PATH",
                suggestion=f"{name.split('.')[1]}: {example}",
            )
    image, label = "DATASET.VAL_IMAGE_NAME", "DATASET.VAL_LABEL_NAME"
    if checks.ok(image, label):
        has_image, has_label = _is_set(checks.value(image)), _is_set(checks.value(label))
        if has_image != has_label:
            missing, present = (label, image) if has_image else (image, label)
            checks.report(
                ERROR,
                missing,
                f"is not set but {present} is",
                expected="both validation images and labels, or neither",
                suggestion=f"set {missing} or remove {present}",
                near=(present,),
            )


# --- accepted, not used -------------------------------------------------------------------


def _switched_off(checks: Checks, key: Key) -> bool:
    """Turning off what Trainboard does not do anyway, or tuning it while off, changes nothing."""
    switch = f"{key.section}.ENABLED"
    return key.section in SWITCHABLE_SECTIONS and checks.value(switch) is False


def _check_accepted_not_used(checks: Checks) -> None:
    """Keys PyTC knows and Trainboard ignores: never an error, never silently dropped.

    Only what the user asked for and will not get is reported: a changed value, not a
    feature switched off (`ELASTIC: False`) or tuned while off.

    INFERENCE is reported once for the section: every training config carries it for
    PyTC's test mode, and ten identical warnings would bury the ones that matter.
    """
    inference: list[str] = []
    for name, source in checks.loaded.user_keys.items():
        key = KEYS[name]
        if key.core or name not in checks.valid or checks.value(name) == key.default:
            continue
        if _switched_off(checks, key):
            continue
        if name.startswith("INFERENCE."):
            inference.append(name)
            continue
        checks.problems.append(
            Problem(
                WARNING,
                name,
                "accepted, not used: Trainboard reads this PyTC key but does not apply it",
                suggestion=f"remove it, or keep it for PyTC (default {show(key.default)})",
                file=source.file,
                line=source.line,
            )
        )
    if inference:
        leaves_set = ", ".join(n.split(".", 1)[1] for n in inference)
        checks.report(
            WARNING,
            "INFERENCE",
            f"accepted, not used: Trainboard trains only; PyTC's inference keys are kept "
            f"({leaves_set})",
            near=tuple(inference),
        )
