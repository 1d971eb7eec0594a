"""Every PyTC v1.0.0 model, built from the resolved config: `build_model(cfg)`.

`build_model` dispatches on MODEL.ARCHITECTURE: the residual U-Nets are defined here, the
FPN, DeepLab, UNETR and Swin UNETR in `backend/trainer/arch/` (MONAI is imported only for
the last two). It first raises on every error of the architecture-constraint table that
validation reports (`backend/config/architectures.py`). Models emit raw logits: activations
belong to the losses (MODEL.OUTPUT_ACT) and to `losses.predict`.

U-Nets: one encoder level per entry of MODEL.FILTERS. Level 0 keeps the input resolution;
every later level halves it (strided conv, or max-pooling with MODEL.POOLING_LAYER) in
(y, x) only for an anisotropic level and in (z, y, x) for an isotropic one. The decoder
upsamples, adds the skip connection and refines with a residual block.

Layer names and shapes match PyTC's classes, so a PyTC checkpoint loads into these models
(`tests/trainer/test_models_parity.py` checks every fixture).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch.nn.functional as F
from torch import Tensor, nn

from backend.config.architectures import ARCHITECTURES as SUPPORTED_ARCHITECTURES
from backend.config.architectures import (
    DEEPLAB_BACKBONES,
    EFFICIENTNET_BLOCKS,
    FPN_BACKBONES,
    architecture_problems,
)
from backend.trainer.blocks import (
    BLOCKS,
    BLOCKS_2D,
    LayerOptions,
    NonLocalBlock,
    Size,
    conv_norm_act,
    init_orthogonal,
)

Config = Mapping[str, Any]

SUPPORTED_BLOCK_TYPES = tuple(BLOCKS)


class UNet(nn.Module):
    """Residual encoder-decoder U-Net (PyTC `UNet3D` for ndim=3, `UNet2D` for ndim=2).

    `isotropy` gives one flag per level (3D only; None makes every level isotropic);
    `io_isotropic` gives the 5x5 input/output convs a z extent (DATASET.IS_ISOTROPIC)."""

    def __init__(
        self,
        opts: LayerOptions,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        filters: Sequence[int] = (28, 36, 48, 64, 80),
        isotropy: Sequence[bool] | None = None,
        block_type: str = "residual",
        pooling: bool = False,
        io_isotropic: bool = False,
        return_feats: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.ndim, self.depth, self.pooling = opts.ndim, len(filters), pooling
        self.return_feats = list(return_feats) if return_feats is not None else None
        self.filters = list(filters)
        # 2D has no z axis, so every level is "isotropic" in the sense that matters here.
        iso = list(isotropy) if opts.ndim == 3 and isotropy is not None else [True] * self.depth
        if len(iso) != self.depth:
            raise ValueError(f"isotropy needs one flag per level ({self.depth}), got {iso}")
        block = BLOCKS[block_type]

        io_kernel, io_pad = self._kernel(io_isotropic or opts.ndim == 2, size=5)
        self.conv_in = conv_norm_act(in_channels, filters[0], io_kernel, opts, padding=io_pad)
        self.conv_out = conv_norm_act(
            filters[0],
            out_channels,
            io_kernel,
            opts,
            padding=io_pad,
            bias=True,
            norm=False,
            act=False,
        )

        self.down_layers = nn.ModuleList()
        for i in range(self.depth):
            prev = max(0, i - 1)
            kernel, pad = self._kernel(iso[i])
            stride = 1 if pooling or i == 0 else self._downsample(iso[i])
            self.down_layers.append(
                nn.Sequential(
                    self._pool(iso[i]) if pooling and i > 0 else nn.Identity(),
                    conv_norm_act(
                        filters[prev], filters[i], kernel, opts, stride=stride, padding=pad
                    ),
                    block(filters[i], filters[i], opts),
                )
            )

        # up_layers[j] takes level j+1 up to level j: a conv to fewer channels, then a block.
        self.up_layers = nn.ModuleList()
        for j in range(1, self.depth):
            kernel, pad = self._kernel(iso[j])
            self.up_layers.append(
                nn.ModuleList(
                    [
                        conv_norm_act(filters[j], filters[j - 1], kernel, opts, padding=pad),
                        block(filters[j - 1], filters[j - 1], opts),
                    ]
                )
            )
        init_orthogonal(self)

    def _kernel(self, isotropic: bool, size: int = 3) -> tuple[Size, Size]:
        if self.ndim == 2 or isotropic:
            return size, size // 2
        return (1, size, size), (0, size // 2, size // 2)

    def _downsample(self, isotropic: bool) -> Size:
        return 2 if self.ndim == 2 or isotropic else (1, 2, 2)

    def _pool(self, isotropic: bool) -> nn.Module:
        factor = self._downsample(isotropic)
        return nn.MaxPool3d(factor, factor) if self.ndim == 3 else nn.MaxPool2d(factor, factor)

    def _encode(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = self.conv_in(x)
        skips: list[Tensor] = []
        for layer in self.down_layers[:-1]:
            x = layer(x)
            skips.append(x)
        bottom: Tensor = self.down_layers[-1](x)
        return bottom, skips

    def _upsample_add(self, x: Tensor, y: Tensor) -> Tensor:
        # Strided convs map n to ceil(n/2), so corners line up (align_corners=True);
        # max-pooling floors, so it does not (PyTC's choice, kept for identical outputs).
        mode = "trilinear" if self.ndim == 3 else "bilinear"
        up = F.interpolate(x, size=y.shape[2:], mode=mode, align_corners=not self.pooling)
        return up + y

    def _bottleneck(self, x: Tensor) -> Tensor:
        return x

    def _decode_level(self, i: int, x: Tensor, skip: Tensor, bottom: Tensor) -> Tensor:
        conv, block = cast(nn.ModuleList, self.up_layers[i])
        x = self._upsample_add(conv(x), skip)
        out: Tensor = block(x)
        return out

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
        bottom, skips = self._encode(x)
        bottom = self._bottleneck(bottom)
        x = bottom
        # Stage 0 is the bottleneck, stage k the k-th decoder level (MODEL.RETURN_FEATS).
        stages = [x]
        for i in reversed(range(self.depth - 1)):
            x = self._decode_level(i, x, skips[i], bottom)
            stages.append(x)
        out: Tensor = self.conv_out(x)
        if self.return_feats is None:
            return out
        return out, {k: stages[k] for k in self.return_feats}


class UNetPlus(UNet):
    """PyTC `UNetPlus3D` / `UNetPlus2D`: a non-local block at the bottleneck, and every decoder
    level also receives the bottleneck features (1x1 conv to that level's channels, upsampled
    and added), giving each level global context. Extra layers keep PyTorch's default
    initialisation, as in PyTC (they are created after the base model is initialised).

    PyTC builds the 1x1 feature convs with its conv helper's default padding of 1 (in
    MODEL.PAD_MODE), so each adds a one-voxel border before upsampling; kept, because the
    outputs (and what a PyTC checkpoint computes) depend on it."""

    def __init__(self, opts: LayerOptions, **kwargs: Any) -> None:
        super().__init__(opts, **kwargs)
        filters = self.filters
        self.feat_layers = nn.ModuleList(
            [
                conv_norm_act(filters[-1], filters[k - 1], 1, opts, padding=1)
                for k in range(1, self.depth)
            ]
        )
        self.non_local = NonLocalBlock(filters[-1], opts)

    def _bottleneck(self, x: Tensor) -> Tensor:
        out: Tensor = self.non_local(x)
        return out

    def _decode_level(self, i: int, x: Tensor, skip: Tensor, bottom: Tensor) -> Tensor:
        conv, block = cast(nn.ModuleList, self.up_layers[i])
        x = self._upsample_add(conv(x), skip)
        x = self._upsample_add(self.feat_layers[i](bottom), x)
        out: Tensor = block(x)
        return out


def _choice(key: str, value: Any, supported: Sequence[str]) -> str:
    if value not in supported:
        raise ValueError(f"{key} {value!r} is not supported; supported: {', '.join(supported)}")
    return str(value)


def _filters(model_cfg: Config) -> list[int]:
    filters = [int(f) for f in model_cfg["FILTERS"]]
    if not filters or min(filters) < 1:
        raise ValueError(f"MODEL.FILTERS must be a non-empty list of positive ints, got {filters}")
    return filters


def _isotropy(model_cfg: Config, depth: int, ndim: int) -> list[bool]:
    isotropy = [bool(v) for v in model_cfg["ISOTROPY"]]
    if ndim == 3 and len(isotropy) != depth:
        raise ValueError(
            f"MODEL.ISOTROPY has {len(isotropy)} entries but MODEL.FILTERS has {depth}: "
            "give one True/False per U-Net level"
        )
    return isotropy


def _unet(cfg: Config, arch: str) -> nn.Module:
    model_cfg = cfg["MODEL"]
    ndim = 2 if arch.endswith("_2d") else 3
    blocks = SUPPORTED_BLOCK_TYPES if ndim == 3 else BLOCKS_2D
    block_type = _choice("MODEL.BLOCK_TYPE", model_cfg["BLOCK_TYPE"], blocks)
    opts = layer_options(cfg, ndim)
    filters = _filters(model_cfg)
    # DATASET.IS_ISOTROPIC makes every level isotropic, the I/O convs included (as PyTC).
    io_isotropic = bool(cfg.get("DATASET", {}).get("IS_ISOTROPIC", False))
    isotropy = [True] * len(filters) if io_isotropic else _isotropy(model_cfg, len(filters), ndim)
    model_cls = UNetPlus if arch.startswith("unet_plus") else UNet
    return model_cls(
        opts,
        in_channels=int(model_cfg["IN_PLANES"]),
        out_channels=int(model_cfg["OUT_PLANES"]),
        filters=filters,
        isotropy=isotropy,
        block_type=block_type,
        pooling=bool(model_cfg.get("POOLING_LAYER", False)),
        io_isotropic=io_isotropic,
        return_feats=_return_feats(model_cfg, ndim),
    )


def layer_options(cfg: Config, ndim: int) -> LayerOptions:
    """MODEL.NORM_MODE / ACT_MODE / PAD_MODE, checked, for the conv-based models."""
    model_cfg = cfg["MODEL"]
    return LayerOptions(
        ndim=ndim,
        norm=model_cfg["NORM_MODE"],
        act=model_cfg["ACT_MODE"],
        pad=model_cfg["PAD_MODE"],
    )


def _unetr(cfg: Config, arch: str) -> nn.Module:
    # MONAI is imported only when a transformer model is asked for (it takes seconds).
    from backend.trainer.arch.unetr import POS_EMBEDS, UNETR

    m = cfg["MODEL"]
    return UNETR(
        in_channels=int(m["IN_PLANES"]),
        out_channels=int(m["OUT_PLANES"]),
        img_size=[int(s) for s in m["INPUT_SIZE"]],
        feature_size=int(m["UNETR_FEATURE_SIZE"]),
        hidden_size=int(m["HIDDEN_SIZE"]),
        mlp_dim=int(m["MLP_DIM"]),
        num_heads=int(m["UNETR_NUM_HEADS"]),
        pos_embed=_choice("MODEL.POS_EMBED", m["POS_EMBED"], POS_EMBEDS),
        norm_name=str(m["NORM_NAME"]),
        is_isotropic=bool(cfg["DATASET"]["IS_ISOTROPIC"]),
        conv_block=bool(m["CONV_BLOCK"]),
        res_block=bool(m["RES_BLOCK"]),
        dropout_rate=float(m["UNETR_DROPOUT_RATE"]),
    )


def _deeplab(cfg: Config, arch: str) -> nn.Module:
    from backend.trainer.arch.deeplab import DeepLabV3

    m = cfg["MODEL"]
    return DeepLabV3(
        arch,
        _choice("MODEL.BACKBONE", m["BACKBONE"], DEEPLAB_BACKBONES),
        layer_options(cfg, 2),
        in_channels=int(m["IN_PLANES"]),
        out_channels=int(m["OUT_PLANES"]),
        aux_out=bool(m["AUX_OUT"]),
    )


def _fpn(cfg: Config, arch: str) -> nn.Module:
    from backend.trainer.arch import backbones as bb
    from backend.trainer.arch.fpn import FPN3D

    m = cfg["MODEL"]
    opts = layer_options(cfg, 3)
    name = _choice("MODEL.BACKBONE", m["BACKBONE"], FPN_BACKBONES)
    filters = _filters(m)
    if len(filters) != bb.NUM_STAGES:
        raise ValueError(f"MODEL.FILTERS must have 5 entries for fpn_3d, got {filters}")
    isotropy = [True] * 5 if cfg["DATASET"]["IS_ISOTROPIC"] else _isotropy(m, 5, 3)
    blocks = [int(b) for b in m["BLOCKS"]]
    common: dict[str, Any] = {
        "in_channels": int(m["IN_PLANES"]),
        "filters": filters,
        "isotropy": isotropy,
    }
    backbone: nn.Module
    if name == "repvgg":
        backbone = bb.RepVGG3D(opts, blocks=blocks, deploy=bool(m["DEPLOY_MODE"]), **common)
    elif name == "efficientnet":
        backbone = bb.EfficientNet3D(
            opts,
            block_type=_choice("MODEL.BLOCK_TYPE", m["BLOCK_TYPE"], EFFICIENTNET_BLOCKS),
            blocks=blocks,
            kernel_sizes=[int(k) for k in m["KERNEL_SIZES"]],
            attention=str(m["ATTENTION"]),
            **common,
        )
    else:
        block_type = _choice("MODEL.BLOCK_TYPE", m["BLOCK_TYPE"], ("residual", "residual_se"))
        if name == "botnet":
            size = [int(s) for s in m["INPUT_SIZE"]]
            backbone = bb.BotNet3D(
                opts, block_type=block_type, blocks=blocks, input_size=size, **common
            )
        else:
            backbone = bb.ResNet3D(opts, block_type=block_type, blocks=blocks, **common)
    return FPN3D(
        backbone, opts, filters=filters, isotropy=isotropy, out_channels=int(m["OUT_PLANES"])
    )


def _swinunetr(cfg: Config, arch: str) -> nn.Module:
    from backend.trainer.arch.swinunetr import DOWNSAMPLES, SwinUNETR

    m = cfg["MODEL"]
    depths = [int(d) for d in m["DEPTHS"]]
    is_isotropic = bool(cfg["DATASET"]["IS_ISOTROPIC"])
    isotropy = [True] * len(depths) if is_isotropic else [bool(v) for v in m["ISOTROPY"]]
    return SwinUNETR(
        in_channels=int(m["IN_PLANES"]),
        out_channels=int(m["OUT_PLANES"]),
        depths=depths,
        num_heads=[int(h) for h in m["SWIN_UNETR_NUM_HEADS"]],
        feature_size=int(m["SWIN_UNETR_FEATURE_SIZE"]),
        norm_name=str(m["NORM_NAME"]),
        drop_rate=float(m["SWIN_UNETR_DROPOUT_RATE"]),
        attn_drop_rate=float(m["ATTN_DROP_RATE"]),
        dropout_path_rate=float(m["DROPOUT_PATH_RATE"]),
        normalize=bool(m["NORMALIZE"]),
        use_checkpoint=bool(m["USE_CHECKPOINT"]),
        downsample=_choice("MODEL.DOWNSAMPLE", m["DOWNSAMPLE"], DOWNSAMPLES),
        use_v2=bool(m["USE_V2"]),
        is_isotropic=is_isotropic,
        isotropy=isotropy,
    )


_BUILDERS: dict[str, Callable[[Config, str], nn.Module]] = {
    "unet_3d": _unet,
    "unet_2d": _unet,
    "unet_plus_3d": _unet,
    "unet_plus_2d": _unet,
    "unetr": _unetr,
    "swinunetr": _swinunetr,
    "fpn_3d": _fpn,
    "deeplabv3a": _deeplab,
    "deeplabv3b": _deeplab,
    "deeplabv3c": _deeplab,
}


def build_model(cfg: Config) -> nn.Module:
    """The model named by MODEL.ARCHITECTURE, configured from MODEL.* (see docs/models.md).

    Raises ValueError with validation's own message for anything validation calls an error
    (`backend.config.architectures`): the trainer refuses exactly what validation refuses."""
    arch = _choice("MODEL.ARCHITECTURE", cfg["MODEL"]["ARCHITECTURE"], SUPPORTED_ARCHITECTURES)
    errors = [p for p in architecture_problems(cfg) if p.is_error]
    if errors:
        raise ValueError("; ".join(p.format().split(": error: ", 1)[-1] for p in errors))
    return _BUILDERS[arch](cfg, arch)


def training_output(result: Any) -> Tensor | dict[str, Tensor]:
    """What the losses score: the output, or DeepLab's {'out', 'aux'} dict (PyTC sums the
    losses of both); MODEL.RETURN_FEATS features are left out, as training reads none."""
    if isinstance(result, tuple):
        return cast(Tensor, result[0])
    return cast("Tensor | dict[str, Tensor]", result)


def primary_output(result: Any) -> Tensor:
    """The one prediction for metrics and previews: the output, or DeepLab's 'out'."""
    out = training_output(result)
    return out["out"] if isinstance(out, dict) else out


def _return_feats(model_cfg: Config, ndim: int) -> list[int] | None:
    """MODEL.RETURN_FEATS: stage indices whose features the 3D U-Nets also return."""
    value = model_cfg.get("RETURN_FEATS")
    if value is None or ndim == 2:
        return None
    return [int(k) for k in value]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not), as PyTC reports it."""
    return sum(p.numel() for p in model.parameters())
