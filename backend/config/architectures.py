"""What each PyTC v1.0.0 architecture accepts: one table read by validation and the trainer.

`architecture_problems(model, dataset)` checks the MODEL keys an architecture reads against
each other and against the patch size: what the model builder would refuse, or what would
fail in the first forward pass (BoTNet's fixed attention map, UNETR's patch grid, Swin
UNETR's merging). Validation reports these problems (each with a suggestion that itself
passes); `backend.trainer.models.build_model` raises on the same errors, so the trainer
never refuses at start what validation passed. Torch-free: the server imports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from backend.config.problems import ERROR, WARNING, Level, Problem

UNETS_3D = ("unet_3d", "unet_plus_3d")
UNETS_2D = ("unet_2d", "unet_plus_2d")
UNETS = UNETS_3D + UNETS_2D
DEEPLABS = ("deeplabv3a", "deeplabv3b", "deeplabv3c")
ARCHITECTURES = (*UNETS, "fpn_3d", *DEEPLABS, "unetr", "swinunetr")
ARCHITECTURES_2D = (*UNETS_2D, *DEEPLABS)

UNET_BLOCKS_3D = ("residual", "residual_se", "residual_pa", "residual_se_pa")
UNET_BLOCKS_2D = ("residual", "residual_se")
RESIDUAL_BLOCKS = ("residual", "residual_se")
EFFICIENTNET_BLOCKS = ("inverted_res", "inverted_res_dilated")
BLOCK_TYPES = (*UNET_BLOCKS_3D, *EFFICIENTNET_BLOCKS)

FPN_BACKBONES = ("resnet", "repvgg", "botnet", "efficientnet")
DEEPLAB_BACKBONES = (
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
# Basic-block ResNets PyTC names but cannot build for DeepLab (no dilation, 512 channels).
DEEPLAB_UNBUILDABLE = ("resnet18", "resnet34")
# Every name PyTC accepts; the per-architecture check says which fits which model.
BACKBONES = (*FPN_BACKBONES, *DEEPLAB_BACKBONES, *DEEPLAB_UNBUILDABLE)

ACT_MODES = ("relu", "leaky_relu", "elu", "gelu", "silu", "swish", "efficient_swish", "none")
NORM_MODES = ("bn", "sync_bn", "in", "gn", "none")
PAD_MODES = ("zeros", "circular", "reflect", "replicate")
ATTENTIONS = ("squeeze_excitation", "strip_pool", "plane_pool", "none")
POS_EMBEDS = ("conv", "perceptron")
SWIN_DOWNSAMPLES = ("merging", "mergingv2")
UNETR_NORMS = ("instance", "batch")
SWIN_STAGES = 4

Values = Mapping[str, Any]
# The keys `architecture_problems` reads: it runs once each has passed its own checks.
READS = (
    "MODEL.ARCHITECTURE",
    "MODEL.BLOCK_TYPE",
    "MODEL.BACKBONE",
    "MODEL.FILTERS",
    "MODEL.ISOTROPY",
    "MODEL.BLOCKS",
    "MODEL.KERNEL_SIZES",
    "MODEL.INPUT_SIZE",
    "MODEL.HIDDEN_SIZE",
    "MODEL.UNETR_NUM_HEADS",
    "MODEL.SPATIAL_DIMS",
    "MODEL.SWIN_UNETR_FEATURE_SIZE",
    "MODEL.DEPTHS",
    "MODEL.SWIN_UNETR_NUM_HEADS",
    "MODEL.NORM_MODE",
    "DATASET.IS_ISOTROPIC",
    "SOLVER.SAMPLES_PER_BATCH",
)


def unetr_patch(is_isotropic: bool) -> tuple[int, int, int]:
    """UNETR's ViT patch: 16^3, or (4, 16, 16) for anisotropic volumes (PyTC's rule)."""
    return (16, 16, 16) if is_isotropic else (4, 16, 16)


def swin_factors(is_isotropic: bool, isotropy: Sequence[bool]) -> tuple[int, int, int]:
    """Swin UNETR's total downsampling: the (2 or (1, 2, 2)) patch embedding, then one
    2x (or in-plane) merging per stage."""
    z = (2 if is_isotropic else 1) * 2 ** sum(1 for iso in isotropy if iso)
    xy = 2 ** (1 + len(isotropy))
    return z, xy, xy


def botnet_fmap_size(input_size: Sequence[int], isotropy: Sequence[bool]) -> list[int]:
    """The (z, y, x) map BoTNet's attention is built for (layer3's output; ceil halving)."""
    size = [int(s) for s in input_size]
    for iso in isotropy[1:4]:
        first = math.ceil(size[0] / 2) if iso else size[0]
        size = [first, *(math.ceil(s / 2) for s in size[1:])]
    return size


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _multiple(size: int, factor: int) -> int:
    """The nearest multiple of `factor` that is at least `factor`."""
    return max(factor, round(size / factor) * factor)


class _Findings:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, level: Level, key: str, message: str, expected: str, suggestion: str) -> None:
        self.problems.append(Problem(level, key, message, expected, suggestion))

    def error(self, key: str, message: str, expected: str, suggestion: str) -> None:
        self.add(ERROR, key, message, expected, suggestion)


def architecture_problems(cfg: Values) -> list[Problem]:
    """Problems of the keys the chosen architecture reads (none for unknown names: the key
    check reports those). `cfg`: the resolved config tree."""
    model: Values = cfg.get("MODEL", {})
    dataset: Values = cfg.get("DATASET", {})
    arch = model.get("ARCHITECTURE")
    out = _Findings()
    if arch in UNETS:
        _unet(model, arch, out)
    elif arch == "fpn_3d":
        _fpn(model, dataset, out)
    elif arch in DEEPLABS:
        _deeplab(model, cfg.get("SOLVER", {}), out)
    elif arch == "unetr":
        _unetr(model, dataset, out)
    elif arch == "swinunetr":
        _swinunetr(model, dataset, out)
    if arch in (*UNETS_3D,) and model.get("RETURN_FEATS") is not None:
        out.add(
            WARNING,
            "MODEL.RETURN_FEATS",
            "the model also returns these feature maps, but training reads only its output",
            "null unless another tool reads the features",
            "RETURN_FEATS: null",
        )
    return out.problems


def _unet(model: Values, arch: str, out: _Findings) -> None:
    blocks = UNET_BLOCKS_3D if arch in UNETS_3D else UNET_BLOCKS_2D
    if model.get("BLOCK_TYPE") not in blocks:
        out.error(
            "MODEL.BLOCK_TYPE",
            f"{_show(model.get('BLOCK_TYPE'))} is not a block of {arch}",
            f"one of {', '.join(blocks)}",
            "BLOCK_TYPE: residual",
        )


def _isotropy(model: Values, dataset: Values, n: int) -> list[bool] | None:
    """The per-stage isotropy the model uses (all True with DATASET.IS_ISOTROPIC), or None
    when MODEL.ISOTROPY has the wrong length."""
    if dataset.get("IS_ISOTROPIC"):
        return [True] * n
    iso = [bool(v) for v in model.get("ISOTROPY") or []]
    return iso if len(iso) == n else None


def _isotropy_problem(model: Values, n: int, what: str, out: _Findings) -> None:
    iso = [bool(v) for v in model.get("ISOTROPY") or []]
    fixed = (iso + [iso[-1] if iso else True] * n)[:n]
    out.error(
        "MODEL.ISOTROPY",
        f"has {len(iso)} entries; {what} needs {n}",
        f"{n} True/False values (or DATASET.IS_ISOTROPIC: True)",
        f"ISOTROPY: {_show(fixed)}",
    )


def _fpn(model: Values, dataset: Values, out: _Findings) -> None:
    filters = list(model.get("FILTERS") or [])
    if len(filters) != 5:
        fixed = (filters + [filters[-1] if filters else 28] * 5)[:5]
        out.error(
            "MODEL.FILTERS",
            f"has {len(filters)} entries; fpn_3d's backbones have exactly 5 stages",
            "5 channel counts",
            f"FILTERS: {_show(fixed)}",
        )
    isotropy = _isotropy(model, dataset, 5)
    if isotropy is None:
        _isotropy_problem(model, 5, "fpn_3d (one per backbone stage)", out)
    backbone = model.get("BACKBONE")
    if backbone not in FPN_BACKBONES:
        out.error(
            "MODEL.BACKBONE",
            f"{_show(backbone)} is not an fpn_3d backbone",
            f"one of {', '.join(FPN_BACKBONES)}",
            "BACKBONE: resnet",
        )
        return
    need = {"resnet": 4, "repvgg": 4, "botnet": 3, "efficientnet": 5}[backbone]
    blocks = list(model.get("BLOCKS") or [])
    if len(blocks) < need:
        fixed = (blocks + [blocks[-1] if blocks else 2] * need)[:need]
        out.error(
            "MODEL.BLOCKS",
            f"has {len(blocks)} entries; the {backbone} backbone reads {need} (PyTC "
            "fails with an IndexError)",
            f"at least {need} block counts",
            f"BLOCKS: {_show(fixed)}",
        )
    block_type = model.get("BLOCK_TYPE")
    allowed = {"resnet": RESIDUAL_BLOCKS, "botnet": RESIDUAL_BLOCKS}.get(backbone)
    if backbone == "efficientnet":
        allowed = EFFICIENTNET_BLOCKS
        _efficientnet(model, filters, out)
    if allowed is not None and block_type not in allowed:
        out.error(
            "MODEL.BLOCK_TYPE",
            f"{_show(block_type)} is not a block of the {backbone} backbone",
            f"one of {', '.join(allowed)}",
            f"BLOCK_TYPE: {allowed[0]}",
        )
    if backbone == "botnet" and isotropy is not None:
        _botnet(model, isotropy, out)


def _efficientnet(model: Values, filters: list[int], out: _Findings) -> None:
    kernels = list(model.get("KERNEL_SIZES") or [])
    if len(kernels) < 5 or any(k not in (3, 5) for k in kernels[:5]):
        fixed = [k if k in (3, 5) else 3 for k in (kernels + [3] * 5)[:5]]
        out.error(
            "MODEL.KERNEL_SIZES",
            f"{_show(kernels)}: EfficientNet's depthwise convs take 5 sizes, each 3 or 5",
            "5 values, each 3 or 5",
            f"KERNEL_SIZES: {_show(fixed)}",
        )
    if model.get("BLOCK_TYPE") == "inverted_res_dilated" and any(f % 4 for f in filters):
        fixed = [max(4, round(f / 4) * 4) for f in filters]
        out.error(
            "MODEL.FILTERS",
            f"{_show(filters)}: inverted_res_dilated splits every stage's channels into 4 "
            "dilation groups",
            "channel counts divisible by 4",
            f"FILTERS: {_show(fixed)}",
        )
    attention = model.get("ATTENTION")
    if attention not in ATTENTIONS:
        out.add(
            WARNING,
            "MODEL.ATTENTION",
            f"{_show(attention)} is not an attention PyTC knows; like PyTC, the blocks use none",
            f"one of {', '.join(ATTENTIONS)}",
            "ATTENTION: none",
        )


def _botnet(model: Values, isotropy: list[bool], out: _Findings) -> None:
    size = [int(s) for s in model.get("INPUT_SIZE") or []]
    if len(size) != 3:
        return
    fmap = botnet_fmap_size(size, isotropy)
    if all(s % 2 == 0 for s in fmap):
        return
    z_factor = 2 * 2 ** sum(1 for iso in isotropy[1:4] if iso)
    fixed = [_multiple(size[0], z_factor), _multiple(size[1], 16), _multiple(size[2], 16)]
    out.error(
        "MODEL.INPUT_SIZE",
        f"{_show(size)}: BoTNet's attention stack halves the {_show(fmap)} layer3 map, "
        "which must be even on every axis",
        f"z a multiple of {z_factor}, y and x multiples of 16",
        f"INPUT_SIZE: {_show(fixed)}",
    )


def _deeplab(model: Values, solver: Values, out: _Findings) -> None:
    backbone = model.get("BACKBONE")
    if backbone not in DEEPLAB_BACKBONES:
        why = (
            "a basic-block ResNet: DeepLab needs dilation and 2048 channels (PyTC fails too)"
            if backbone in DEEPLAB_UNBUILDABLE
            else "not a DeepLab backbone"
        )
        out.error(
            "MODEL.BACKBONE",
            f"{_show(backbone)} is {why}",
            f"one of {', '.join(DEEPLAB_BACKBONES)}",
            "BACKBONE: resnet50",
        )
    batch = solver.get("SAMPLES_PER_BATCH")
    if model.get("NORM_MODE") in ("bn", "sync_bn") and batch == 1:
        out.error(
            "SOLVER.SAMPLES_PER_BATCH",
            "1: the ASPP image-pooling branch batch-normalises one value per channel, which "
            "training cannot do with a single sample",
            "at least 2 samples per batch (or MODEL.NORM_MODE gn / in / none)",
            "SAMPLES_PER_BATCH: 2",
        )
    out.add(
        WARNING,
        "MODEL.ARCHITECTURE",
        "PyTC starts DeepLab's ResNet from torchvision's ImageNet weights (a download); "
        "Trainboard downloads nothing and starts it from random initialisation",
        "",
        "",
    )


def _unetr(model: Values, dataset: Values, out: _Findings) -> None:
    size = [int(s) for s in model.get("INPUT_SIZE") or []]
    patch = unetr_patch(bool(dataset.get("IS_ISOTROPIC")))
    if len(size) == 3 and any(s % p for s, p in zip(size, patch, strict=True)):
        fixed = [_multiple(s, p) for s, p in zip(size, patch, strict=True)]
        out.error(
            "MODEL.INPUT_SIZE",
            f"{_show(size)} is not a whole number of UNETR's {_show(list(patch))} patches",
            f"per axis a multiple of {_show(list(patch))}",
            f"INPUT_SIZE: {_show(fixed)}",
        )
    hidden, heads = model.get("HIDDEN_SIZE"), model.get("UNETR_NUM_HEADS")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        divisor = max(d for d in range(1, heads + 1) if hidden % d == 0)
        out.error(
            "MODEL.UNETR_NUM_HEADS",
            f"{heads} heads do not divide HIDDEN_SIZE {hidden}",
            "a divisor of MODEL.HIDDEN_SIZE",
            f"UNETR_NUM_HEADS: {divisor}",
        )


def _swinunetr(model: Values, dataset: Values, out: _Findings) -> None:
    if model.get("SPATIAL_DIMS", 3) != 3:
        out.error(
            "MODEL.SPATIAL_DIMS",
            f"{model.get('SPATIAL_DIMS')}: Trainboard builds the 3D Swin UNETR only",
            "3",
            "SPATIAL_DIMS: 3",
        )
    feature = model.get("SWIN_UNETR_FEATURE_SIZE")
    if isinstance(feature, int) and feature % 12:
        out.error(
            "MODEL.SWIN_UNETR_FEATURE_SIZE",
            f"{feature} is not a multiple of 12 (Swin UNETR's requirement)",
            "a multiple of 12",
            f"SWIN_UNETR_FEATURE_SIZE: {_multiple(feature, 12)}",
        )
    depths = list(model.get("DEPTHS") or [])
    heads = list(model.get("SWIN_UNETR_NUM_HEADS") or [])
    for key, values, default in (
        ("MODEL.DEPTHS", depths, [2, 2, 2, 2]),
        ("MODEL.SWIN_UNETR_NUM_HEADS", heads, [3, 6, 12, 24]),
    ):
        if len(values) != SWIN_STAGES:
            out.error(
                key,
                f"has {len(values)} entries; the Swin transformer has {SWIN_STAGES} stages",
                f"{SWIN_STAGES} values",
                f"{key.split('.')[-1]}: {_show(default)}",
            )
    if isinstance(feature, int) and len(heads) == SWIN_STAGES:
        bad = [i for i, h in enumerate(heads) if h <= 0 or (feature * 2**i) % h]
        if bad:
            out.error(
                "MODEL.SWIN_UNETR_NUM_HEADS",
                f"{_show(heads)}: stage {bad[0] + 1} has {feature * 2 ** bad[0]} channels, "
                f"not divisible by {heads[bad[0]]} heads",
                "per stage a divisor of SWIN_UNETR_FEATURE_SIZE x 2^stage",
                "SWIN_UNETR_NUM_HEADS: [3, 6, 12, 24]",
            )
    isotropy = _isotropy(model, dataset, SWIN_STAGES)
    if isotropy is None:
        _isotropy_problem(model, SWIN_STAGES, "swinunetr (one per MODEL.DEPTHS stage)", out)
        return
    size = [int(s) for s in model.get("INPUT_SIZE") or []]
    if len(size) != 3:
        return
    factors = swin_factors(bool(dataset.get("IS_ISOTROPIC")), isotropy)
    bottleneck = [s // f for s, f in zip(size, factors, strict=True)]
    if any(s % f for s, f in zip(size, factors, strict=True)) or math.prod(bottleneck) < 2:
        fixed = [_multiple(s, f) for s, f in zip(size, factors, strict=True)]
        if math.prod(f // g for f, g in zip(fixed, factors, strict=True)) < 2:
            fixed[1] = 2 * factors[1]
        out.error(
            "MODEL.INPUT_SIZE",
            f"{_show(size)}: Swin UNETR downsamples by {_show(list(factors))} and needs "
            "whole, more-than-one-voxel maps at its bottleneck",
            f"per axis a multiple of {_show(list(factors))}, not all equal to it",
            f"INPUT_SIZE: {_show(fixed)}",
        )
