"""PyTC v1.0.0's target, weight, loss and regulariser options: grammar, channels, constraints.

One table for both sides: the validator reports `criterion_problems(values)` and the
trainer refuses to start on the same list (`backend.trainer.losses.build_criterion`), so
whatever the trainer would refuse is reported by validation first, with a suggestion
that itself validates. Torch- and numpy-free: the server imports it.

Grammar (fields are separated by '-'; PyTC dispatches on the first character):

    0, 0-a-b-..     binary foreground (label > 0, or label in {a, b, ..})      1 channel
    1, 1-1          synaptic polarity (3 masks) / exclusive classes (CE)        3
    2, 2-z-y-x-v1|v2  affinity to the previous voxel / long-range offsets       3 (2 in 2D)
    3-T-R-X         small-object mask                                           1
    4-S-B           instance contour, half-width S, with background B (0/1)     1
    5-M-P-Q-Z-E     instance distance transform (Q=1 quantized: 11 classes)      1
    6, 6-M-A-B      semantic signed distance transform                          1
    7               diffusion flows (dy, dx)                                    2
    9-N             semantic classes (CE)                                       N

Facts PyTC v1.0.0 cannot execute are errors here, with the form that does work:
bare '4', '5', '9', '2-..-pni', '7-..0..', '8-..' and any 3/5 target in 2D.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FAMILIES: dict[str, str] = {
    "0": "binary foreground",
    "1": "synaptic polarity",
    "2": "affinity",
    "3": "small-object mask",
    "4": "instance contour",
    "5": "instance distance transform",
    "6": "semantic distance transform",
    "7": "diffusion flows",
    "8": "dilated instance distance transform",
    "9": "semantic classes",
}
TARGETS_HELP = (
    "'0' (binary), '1' / '1-1' (synaptic polarity), '2' or '2-z-y-x-v1' (affinity), "
    "'3-T-R-X' (small objects), '4-S-B' (contour), '5-M-P-Q-Z-E' (instance distance), "
    "'6' / '6-M-A-B' (semantic distance), '7' (flows), '9-N' (semantic classes)"
)

LOSSES = (
    "WeightedMSE",
    "WeightedMAE",
    "WeightedBCE",
    "DiceLoss",
    "WeightedCE",
    "WeightedBCEWithLogitsLoss",
    "WeightedBCEFocalLoss",
    "WSDiceLoss",
)
# Keyword arguments each loss class takes (MODEL.LOSS_KWARGS_KEY / _VAL).
LOSS_KWARGS: dict[str, tuple[str, ...]] = {
    "WeightedMSE": (),
    "WeightedMAE": (),
    "WeightedBCE": ("size_average", "reduce"),
    "DiceLoss": ("reduce", "smooth", "power"),
    "WeightedCE": ("class_weight",),
    "WeightedBCEWithLogitsLoss": ("size_average", "reduce", "eps"),
    "WeightedBCEFocalLoss": ("gamma", "alpha", "eps"),
    "WSDiceLoss": ("smooth", "power", "v2", "v1"),
}
ACTIVATIONS = ("none", "sigmoid", "softmax", "tanh", "relu", "elu")
# Regulariser name -> how many targets it reads.
REGULARIZERS: dict[str, int] = {
    "Binary": 1,
    "FgContour": 2,
    "ContourDT": 2,
    "FgDT": 2,
    "Nonoverlap": 1,
}
# Losses that take logits and apply the sigmoid themselves.
_LOGIT_LOSSES = ("WeightedBCEWithLogitsLoss", "WeightedBCEFocalLoss")
# Losses that compare probabilities with a [0, 1] target.
_PROBABILITY_LOSSES = ("WeightedBCE", "DiceLoss", "WSDiceLoss")


class OptionError(ValueError):
    """An option PyTC v1.0.0 cannot execute; `example` (a form that works, with what its
    fields mean) ends the message."""

    def __init__(self, message: str, example: str | None = None) -> None:
        super().__init__(message if example is None else f"{message}: e.g. {example}")
        self.example = example


@dataclass(frozen=True, slots=True)
class TargetOption:
    """One parsed MODEL.TARGET_OPT entry.

    `channels`: output channels the Criterion gives it. `classes`: an int64 class-index
    target without channel axis (trained by WeightedCE). `signed`: values in [-1, 1]
    (distance transforms, flows), which a tanh output matches.
    """

    text: str
    family: str
    channels: int
    classes: bool = False
    signed: bool = False
    fields: tuple[str, ...] = field(default_factory=tuple)

    @property
    def what(self) -> str:
        return FAMILIES[self.family]


def _ints(option: str, fields: Sequence[str], example: str) -> list[int]:
    try:
        return [int(f) for f in fields]
    except ValueError:
        raise OptionError(f"{option!r}: the fields must be integers", example) from None


def parse_target(option: Any, do_2d: bool = False) -> TargetOption:
    """Parse one TARGET_OPT entry; OptionError when PyTC v1.0.0 cannot train it."""
    text = str(option).strip()
    head, *fields = text.split("-") if text else [""]
    parser = _PARSERS.get(head[:1])
    if parser is None or len(head) != 1:
        raise OptionError(f"{text!r} is not a PyTC target", "'0' (targets are 0-7 or 9-N)")
    return parser(text, fields, do_2d)


def _binary(text: str, fields: list[str], do_2d: bool) -> TargetOption:
    _ints(text, fields, "'0' or '0-1-2' (class ids)")
    return TargetOption(text, "0", 1, fields=tuple(fields))


def _polarity(text: str, fields: list[str], do_2d: bool) -> TargetOption:
    if not fields:
        return TargetOption(text, "1", 3)
    if len(fields) != 1 or _ints(text, fields, "'1-1'")[0] == 0:
        raise OptionError(f"{text!r}: the exclusive form is '1-1'", "'1-1'")
    return TargetOption(text, "1", 3, classes=True, fields=tuple(fields))


def _affinity(text: str, fields: list[str], do_2d: bool) -> TargetOption:
    channels = 2 if do_2d else 3
    if not fields:
        return TargetOption(text, "2", channels)
    example = "'2-1-1-1-v1' (offsets z-y-x, version v1 or v2)"
    if len(fields) != 4 or fields[3] not in ("v1", "v2"):
        raise OptionError(f"{text!r} is not a PyTC affinity: it needs 2-z-y-x-v1 or -v2", example)
    if min(_ints(text, fields[:3], example)) < 1:
        raise OptionError(f"{text!r}: affinity offsets must be at least 1", example)
    return TargetOption(text, "2", channels, fields=tuple(fields))


def _small_objects(text: str, fields: list[str], do_2d: bool) -> TargetOption:
    example = "'3-30-4-0' (size threshold, z/xy ratio, unused)"
    if len(fields) != 3:
        raise OptionError(f"{text!r}: the small-object mask needs 3-T-R-X", example)
    _, ratio, _ = _ints(text, fields, example)
    if ratio < 1:
        raise OptionError(f"{text!r}: the z/xy ratio R must be at least 1", example)
    if do_2d:
        raise OptionError(f"{text!r}: PyTC makes the small-object mask from 3D labels only", "'0'")
    return TargetOption(text, "3", 1, fields=tuple(fields))


def _contour(text: str, fields: list[str], do_2d: bool) -> TargetOption:
    example = "'4-1-1' (half-width 1, with background)"
    if len(fields) != 2:
        raise OptionError(f"{text!r}: PyTC's contour target needs 4-S-B", example)
    size, background = _ints(text, fields, example)
    if size < 0 or background not in (0, 1):
        raise OptionError(f"{text!r}: S must be >= 0 and B 0 or 1", example)
    return TargetOption(text, "4", 1, fields=tuple(fields))


def _instance_distance(text: str, fields: list[str], do_2d: bool) -> TargetOption:
    example = "'5-2d-0-0-5.0-0' (mode, padding, quantize, z resolution, erosion)"
    if len(fields) != 5:
        raise OptionError(
            f"{text!r}: PyTC v1.0.0's Criterion needs all 5 fields of 5-M-P-Q-Z-E", example
        )
    mode, padding, quantize, z_res, erosion = fields
    try:
        flags = [int(padding), int(quantize), int(erosion)]
        float(z_res)
    except ValueError:
        raise OptionError(f"{text!r}: P, Q, E are integers and Z a number", example) from None
    if mode not in ("2d", "3d") or flags[0] not in (0, 1) or flags[1] not in (0, 1):
        raise OptionError(f"{text!r}: M is 2d or 3d, P and Q are 0 or 1", example)
    if flags[2] < 0 or float(z_res) <= 0:
        raise OptionError(f"{text!r}: E must be >= 0 and Z > 0", example)
    if do_2d:
        raise OptionError(
            f"{text!r}: PyTC v1.0.0 cannot make instance distance targets in 2D (DO_2D)",
            "'6-2d-8-50' (semantic distance)",
        )
    if flags[1] == 1:
        unquantized = "-".join(["5", mode, padding, "0", z_res, erosion])
        raise OptionError(
            f"{text!r}: PyTC v1.0.0 makes the quantized target as float (B, 1, ...), "
            "which WeightedCE refuses and no other loss fits its 11 channels",
            f"'{unquantized}' with WeightedMSE and OUTPUT_ACT 'tanh'",
        )
    return TargetOption(text, "5", 1, signed=True, fields=tuple(fields))


def _semantic_distance(text: str, fields: list[str], do_2d: bool) -> TargetOption:
    if not fields:
        return TargetOption(text, "6", 1, signed=True)
    example = "'6-2d-8-50' (mode, foreground and background scales)"
    if len(fields) != 3 or fields[0] not in ("2d", "3d"):
        raise OptionError(f"{text!r}: the semantic distance needs 6-M-A-B", example)
    try:
        alphas = [float(f) for f in fields[1:]]
    except ValueError:
        raise OptionError(f"{text!r}: A and B are numbers", example) from None
    if min(alphas) <= 0:
        raise OptionError(f"{text!r}: A and B must be > 0", example)
    return TargetOption(text, "6", 1, signed=True, fields=tuple(fields))


def _flows(text: str, fields: list[str], do_2d: bool) -> TargetOption:
    if "0" in fields:
        raise OptionError(
            f"{text!r}: PyTC v1.0.0 then makes 3 channels where its Criterion reserves 2",
            "'7' and a separate '0' target",
        )
    return TargetOption(text, "7", 2, signed=True, fields=tuple(fields))


def _dilated_distance(text: str, fields: list[str], do_2d: bool) -> TargetOption:
    rest = "-".join(fields[1:])
    raise OptionError(
        f"{text!r}: PyTC v1.0.0's Criterion has no channel count for '8' targets",
        f"'{rest}' with MODEL.LABEL_DILATION" if rest.startswith("5-") else "'5-2d-0-0-5.0-0'",
    )


def _semantic(text: str, fields: list[str], do_2d: bool) -> TargetOption:
    example = "'9-2' (N = 2 classes)"
    if len(fields) != 1:
        raise OptionError(f"{text!r}: PyTC's Criterion needs the class count, 9-N", example)
    classes = _ints(text, fields, example)[0]
    if classes < 2:
        raise OptionError(f"{text!r}: semantic segmentation needs at least 2 classes", example)
    return TargetOption(text, "9", classes, classes=True, fields=tuple(fields))


_PARSERS = {
    "0": _binary,
    "1": _polarity,
    "2": _affinity,
    "3": _small_objects,
    "4": _contour,
    "5": _instance_distance,
    "6": _semantic_distance,
    "7": _flows,
    "8": _dilated_distance,
    "9": _semantic,
}


def target_channels(option: Any, do_2d: bool) -> int:
    """Output channels PyTC's Criterion gives one target (OptionError if untrainable)."""
    return parse_target(option, do_2d).channels


# --- weights ---------------------------------------------------------------------------------


def weight_kind(option: Any) -> str:
    """'ratio' (1, 1-x), 'ratio-dilated' (1-1), 'unet' (2-w0-w1) or 'mask' (anything else:
    the valid mask when there is one, else no weight), as PyTC's seg_to_weight reads it."""
    text = str(option)
    if text.startswith("1"):
        return "ratio-dilated" if text == "1-1" else "ratio"
    if text.startswith("2"):
        return "unet"
    return "mask"


def unet_weights(option: Any) -> tuple[float, float]:
    """(w0, w1) of '2-w0-w1'."""
    text = str(option)
    parts = text.split("-")
    try:
        if len(parts) != 3:
            raise ValueError
        return float(parts[1]), float(parts[2])
    except ValueError:
        raise OptionError(
            f"WEIGHT_OPT {text!r}: the U-Net weight needs 2-w0-w1", "'2-10-5'"
        ) from None


# --- the whole criterion: every constraint between the keys ----------------------------------


@dataclass(frozen=True, slots=True)
class Constraint:
    """One violated constraint: the key, what is wrong, and `fix`, the whole new value of
    each key to change (dotted name -> value), which itself validates and trains."""

    key: str
    message: str
    fix: dict[str, Any] = field(default_factory=dict)
    error: bool = True
    near: tuple[str, ...] = ()  # keys the problem comes from, besides `key`

    @property
    def suggestion(self) -> str:
        return "; ".join(f"{k.rsplit('.', 1)[1]}: {_show(v)}" for k, v in self.fix.items())


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def rows(value: Any, count: int) -> list[list[Any]]:
    """A per-target, per-loss key as PyTC reads it: a list of lists (a bare row for one
    target, a bare value for every loss of a target)."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        return [[value] for _ in range(count)]
    return [list(row) if isinstance(row, list | tuple) else [row] for row in value]


def _replace(table: list[list[Any]], i: int, j: int, value: Any) -> list[list[Any]]:
    out = [list(row) for row in table]
    out[i][j] = value
    return out


def default_activation(loss: str, target: TargetOption | None) -> str:
    """The OUTPUT_ACT a loss trains with: what a suggestion fills in."""
    if loss in _PROBABILITY_LOSSES:
        return "sigmoid"
    if loss in ("WeightedMSE", "WeightedMAE") and target is not None and target.signed:
        return "tanh"
    return "none"


def fit_activation(loss: str, act: Any, target: TargetOption | None = None) -> str:
    """`act` if the loss can train with it, else the loss's default activation."""
    text = str(act)
    if text not in ACTIVATIONS or (loss == "WeightedBCE" and text not in ("sigmoid", "softmax")):
        return default_activation(loss, target)
    return text


def default_weight_option(loss: str) -> str:
    """The WEIGHT_OPT a suggestion fills in: class balance for the BCE losses and MAE."""
    return "0" if loss in ("DiceLoss", "WSDiceLoss", "WeightedCE", "WeightedMSE") else "1"


def default_loss(target: TargetOption | None) -> str:
    """The loss a suggestion gives a target."""
    if target is not None and target.classes:
        return "WeightedCE"
    if target is not None and target.signed:
        return "WeightedMSE"
    return "WeightedBCEWithLogitsLoss"


# Working forms of options PyTC cannot train, by family.
_REPLACEMENTS = {
    "0": "0",
    "1": "1-1",
    "2": "2",
    "3": "3-30-4-0",
    "4": "4-1-1",
    "5": "5-2d-0-0-5.0-0",
    "6": "6",
    "7": "7",
    "9": "9-2",
}


def _replacement(option: str, do_2d: bool) -> str:
    text = option.strip()
    if text.startswith("8-"):
        rest = "-".join(text.split("-")[2:])
        try:
            parse_target(rest, do_2d)
            return rest
        except OptionError:
            pass
    if text.startswith("5-") and len(text.split("-")) == 6:
        unquantized = text.split("-")
        unquantized[3] = "0"
        candidate = "-".join(unquantized)
        try:
            parse_target(candidate, do_2d)
            return candidate
        except OptionError:
            pass
    replacement = _REPLACEMENTS.get(text[:1], "0")
    try:
        parse_target(replacement, do_2d)
    except OptionError:
        replacement = "6-2d-8-50" if text[:1] in "58" else "0"
    return replacement


def criterion_problems(values: Mapping[str, Any]) -> list[Constraint]:
    """Every constraint of the resolved config `values` (nested MODEL / DATASET dicts) that
    PyTC v1.0.0's targets, weights, Criterion and regularisers would break. Keys missing
    from `values` are not checked."""
    model, dataset = values.get("MODEL", {}), values.get("DATASET", {})
    do_2d = bool(dataset.get("DO_2D", False))
    options = [str(o) for o in model.get("TARGET_OPT") or []]
    if not options:
        return [Constraint("MODEL.TARGET_OPT", "no target", {"MODEL.TARGET_OPT": ["0"]})]
    problems: list[Constraint] = []
    targets: list[TargetOption | None] = []
    for i, option in enumerate(options):
        try:
            targets.append(parse_target(option, do_2d))
        except OptionError as exc:
            fixed = [*options[:i], _replacement(option, do_2d), *options[i + 1 :]]
            problems.append(Constraint("MODEL.TARGET_OPT", str(exc), {"MODEL.TARGET_OPT": fixed}))
            targets.append(None)
    if all(t is not None for t in targets) and model.get("OUT_PLANES") is not None:
        problems += _out_planes(model, [t for t in targets if t is not None])
    problems += _rates(model, len(options))
    losses = rows(model.get("LOSS_OPTION"), len(options))
    if len(losses) != len(options) or not all(losses):
        return problems  # the shape check of validate.py reports it, with a fix
    problems += _losses(model, dataset, targets, losses)
    problems += _loss_kwargs(model, targets, losses)
    problems += _regularizers(model, targets, do_2d)
    return problems


def _out_planes(model: Mapping[str, Any], targets: list[TargetOption]) -> list[Constraint]:
    expected = sum(t.channels for t in targets)
    if model.get("OUT_PLANES") == expected:
        return []
    parts = " + ".join(f"{t.channels} for {t.text!r}" for t in targets)
    return [
        Constraint(
            "MODEL.OUT_PLANES",
            f"is {model.get('OUT_PLANES')}, but the targets need {expected} channels ({parts})",
            {"MODEL.OUT_PLANES": expected},
            near=("MODEL.TARGET_OPT",),
        )
    ]


def _rates(model: Mapping[str, Any], count: int) -> list[Constraint]:
    out = []
    for key in ("LABEL_EROSION", "LABEL_DILATION"):
        rate = model.get(key)
        if isinstance(rate, list) and len(rate) < count:
            padded = rate + [rate[-1] if rate else 0] * (count - len(rate))
            out.append(
                Constraint(
                    f"MODEL.{key}",
                    f"has {len(rate)} rates for {count} targets: give one per target "
                    "or a single number",
                    {f"MODEL.{key}": padded},
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class _Tables:
    losses: list[list[Any]]
    acts: list[list[Any]]
    weights: list[list[Any]]
    has_mask: bool
    do_2d: bool


def _losses(
    model: Mapping[str, Any],
    dataset: Mapping[str, Any],
    targets: list[TargetOption | None],
    losses: list[list[Any]],
) -> list[Constraint]:
    shape = [len(row) for row in losses]
    tables = _Tables(
        losses=[[str(n) for n in row] for row in losses],
        acts=_shaped(rows(model.get("OUTPUT_ACT"), len(losses)), shape),
        weights=_shaped(rows(model.get("WEIGHT_OPT"), len(losses)), shape),
        has_mask=bool(dataset.get("VALID_MASK_NAME")),
        do_2d=bool(dataset.get("DO_2D", False)),
    )
    out: list[Constraint] = []
    for i, target in enumerate(targets):
        for j in range(len(losses[i])):
            out += _loss_fits(tables, target, i, j)
    return out


def _shaped(table: list[list[Any]], shape: list[int]) -> list[list[Any]]:
    # A table not shaped like LOSS_OPTION is reported (with its fix) by validate.py's shape
    # check; its entries are not checked against the losses until it fits.
    return table if [len(row) for row in table] == shape else []


def _at(table: list[list[Any]], i: int, j: int) -> Any:
    return table[i][j] if i < len(table) and j < len(table[i]) else None


def _loss_fits(tables: _Tables, target: TargetOption | None, i: int, j: int) -> list[Constraint]:
    name, where = tables.losses[i][j], f"[{i}][{j}]"
    act, weight = _at(tables.acts, i, j), _at(tables.weights, i, j)
    if name not in LOSSES or (target is not None and target.classes != (name == "WeightedCE")):
        good = default_loss(target)
        fix: dict[str, Any] = {"MODEL.LOSS_OPTION": _replace(tables.losses, i, j, good)}
        if act is not None:
            fix["MODEL.OUTPUT_ACT"] = _replace(tables.acts, i, j, default_activation(good, target))
        text = target.text if target is not None else ""
        if name not in LOSSES:
            message = f"{where} {name!r} is not a PyTC loss (one of {', '.join(LOSSES)})"
        elif name == "WeightedCE":
            message = f"{where} WeightedCE needs class indices ('1-1', '9-N'), not {text!r}"
        else:
            message = f"{where} {name}: {text!r} holds class indices, only WeightedCE takes them"
        return [Constraint("MODEL.LOSS_OPTION", message, fix)]
    out = _activation_fits(tables, target, i, j)
    # '0' and unknown options weigh by the valid mask (DATASET.VALID_MASK_NAME), if any.
    needs_weight = weight is not None and weight_kind(weight) == "mask" and not tables.has_mask
    if name == "WeightedMAE" and needs_weight:
        out.append(
            Constraint(
                "MODEL.WEIGHT_OPT",
                f"{where}: WeightedMAE multiplies by its weight and PyTC fails without one",
                {"MODEL.WEIGHT_OPT": _replace(tables.weights, i, j, "1")},
            )
        )
    dilated = weight is not None and weight_kind(weight) == "ratio-dilated"
    if dilated and target is not None and target.classes and tables.do_2d:
        # A (y, x) class target: PyTC's dilation asserts 3 or 4 dims.
        out.append(
            Constraint(
                "MODEL.WEIGHT_OPT",
                f"{where}: '1-1' dilates a target with a channel axis; {target.text!r} in 2D "
                "has none",
                {"MODEL.WEIGHT_OPT": _replace(tables.weights, i, j, "1")},
            )
        )
    if weight is not None and weight_kind(weight) == "unet":
        try:
            unet_weights(weight)
            if tables.do_2d:
                raise OptionError(
                    f"WEIGHT_OPT {weight!r}: PyTC makes the U-Net weight from 3D labels only"
                )
        except OptionError as exc:
            good = "1" if tables.do_2d else "2-10-5"
            fix = {"MODEL.WEIGHT_OPT": _replace(tables.weights, i, j, good)}
            out.append(Constraint("MODEL.WEIGHT_OPT", f"{where}: {exc}", fix))
    return out


def _activation_fits(
    tables: _Tables, target: TargetOption | None, i: int, j: int
) -> list[Constraint]:
    name, act, where = tables.losses[i][j], _at(tables.acts, i, j), f"[{i}][{j}]"
    if act is None:
        return []
    act = str(act)
    if act not in ACTIVATIONS:
        good = default_activation(name, target)
        message = f"{where} {act!r} is not a PyTC activation (one of {', '.join(ACTIVATIONS)})"
    elif name == "WeightedBCE" and act not in ("sigmoid", "softmax"):
        good, message = "sigmoid", f"{where} is {act!r}, but WeightedBCE takes probabilities"
    elif name in _LOGIT_LOSSES and act == "sigmoid":
        fix = {"MODEL.OUTPUT_ACT": _replace(tables.acts, i, j, "none")}
        message = f"{where}: {name} applies the sigmoid itself; 'sigmoid' applies it twice"
        return [Constraint("MODEL.OUTPUT_ACT", message, fix, error=False)]
    else:
        return []
    return [
        Constraint(
            "MODEL.OUTPUT_ACT", message, {"MODEL.OUTPUT_ACT": _replace(tables.acts, i, j, good)}
        )
    ]


def _kwargs_table(value: Any, losses: list[list[Any]]) -> list[list[Any]]:
    """`value` reshaped like LOSS_OPTION: its entries where present, else []."""
    table = value if isinstance(value, list) else []
    return [
        [
            table[i][j]
            if i < len(table) and isinstance(table[i], list) and j < len(table[i])
            else []
            for j in range(len(row))
        ]
        for i, row in enumerate(losses)
    ]


def _loss_kwargs(
    model: Mapping[str, Any], targets: list[TargetOption | None], losses: list[list[Any]]
) -> list[Constraint]:
    keys, vals = model.get("LOSS_KWARGS_KEY"), model.get("LOSS_KWARGS_VAL")
    if keys is None:
        return []
    fixed_keys, fixed_vals = _kwargs_table(keys, losses), _kwargs_table(vals, losses)
    if fixed_keys != keys or fixed_vals != vals:
        return [
            Constraint(
                "MODEL.LOSS_KWARGS_KEY",
                "LOSS_KWARGS_KEY and LOSS_KWARGS_VAL need one entry per loss of every target "
                f"(shaped like LOSS_OPTION, {[len(r) for r in losses]}); PyTC fails otherwise",
                {"MODEL.LOSS_KWARGS_KEY": fixed_keys, "MODEL.LOSS_KWARGS_VAL": fixed_vals},
            )
        ]
    out: list[Constraint] = []
    for i, row in enumerate(keys):
        for j, names in enumerate(row):
            problem = _kwargs_problem(
                str(losses[i][j]), list(names or []), vals[i][j] or [], targets[i]
            )
            if problem is not None:
                fix = {
                    "MODEL.LOSS_KWARGS_KEY": _replace(keys, i, j, []),
                    "MODEL.LOSS_KWARGS_VAL": _replace(vals, i, j, []),
                }
                out.append(Constraint("MODEL.LOSS_KWARGS_KEY", f"[{i}][{j}] {problem}", fix))
    return out


def _kwargs_problem(
    loss: str, names: list[Any], values: list[Any], target: TargetOption | None
) -> str | None:
    allowed = LOSS_KWARGS.get(loss, ())
    bad = [n for n in names if n not in allowed]
    if bad or len(names) != len(values):
        return (
            f"{loss} takes {list(allowed) or 'no arguments'}; got {names} with {len(values)} values"
        )
    weight = dict(zip(names, values, strict=True)).get("class_weight")
    if target is not None and weight is not None and len(weight) != target.channels:
        return (
            f"class_weight has {len(weight)} values for the {target.channels} classes "
            f"of {target.text!r}"
        )
    return None


def _regularizers(
    model: Mapping[str, Any], targets: list[TargetOption | None], do_2d: bool
) -> list[Constraint]:
    names = model.get("REGU_OPT")
    if names is None:
        return []
    picks = list(model.get("REGU_TARGET") or [])
    weights = list(model.get("REGU_WEIGHT") or [])
    names = list(names)
    if len(picks) != len(names) or len(weights) != len(names):
        n = min(len(names), len(picks), len(weights))
        return [
            Constraint(
                "MODEL.REGU_OPT",
                f"REGU_OPT ({len(names)}), REGU_TARGET ({len(picks)}) and REGU_WEIGHT "
                f"({len(weights)}) need one entry per regulariser",
                _regu_fix(names[:n], picks[:n], weights[:n]),
            )
        ]
    out: list[Constraint] = []
    for k, (name, pick) in enumerate(zip(names, picks, strict=True)):
        problem = _regularizer_problem(str(name), pick, targets, do_2d)
        if problem is not None:
            keep = [m for m in range(len(names)) if m != k]
            fix = _regu_fix(
                [names[m] for m in keep], [picks[m] for m in keep], [weights[m] for m in keep]
            )
            key = "MODEL.REGU_OPT" if str(name) not in REGULARIZERS else "MODEL.REGU_TARGET"
            out.append(Constraint(key, f"[{k}] {problem}", fix))
    return out


def _regu_fix(names: list[Any], picks: list[Any], weights: list[Any]) -> dict[str, Any]:
    if not names:
        return {"MODEL.REGU_OPT": None, "MODEL.REGU_TARGET": None, "MODEL.REGU_WEIGHT": None}
    return {"MODEL.REGU_OPT": names, "MODEL.REGU_TARGET": picks, "MODEL.REGU_WEIGHT": weights}


def _regularizer_problem(
    name: str, pick: Any, targets: list[TargetOption | None], do_2d: bool
) -> str | None:
    if name not in REGULARIZERS:
        return f"{name!r} is not a PyTC regulariser (one of {', '.join(REGULARIZERS)})"
    arity = REGULARIZERS[name]
    indices = pick if isinstance(pick, list) else [pick]
    if len(indices) != arity or not all(
        isinstance(i, int) and 0 <= i < len(targets) for i in indices
    ):
        return f"{name} reads {arity} target(s), given as indices into TARGET_OPT; got {pick!r}"
    chosen = [targets[i] for i in indices]
    if any(t is None for t in chosen):
        return None
    channels = [t.channels for t in chosen if t is not None]
    if name == "Nonoverlap" and channels[0] < 3:
        return f"{name} reads channels 0, 1, 2 of one target (synaptic polarity '1')"
    if name == "FgContour" and (channels != [1, 1] or do_2d):
        return f"{name} compares two 1-channel 3D targets (foreground '0', contour '4-S-B')"
    if arity == 2 and channels[0] != channels[1]:
        return f"{name} needs two targets with the same number of channels"
    return None
