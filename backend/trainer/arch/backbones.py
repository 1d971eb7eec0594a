"""PyTC's 3D FPN backbones (MODEL.BACKBONE): resnet, repvgg, botnet, efficientnet.

Every backbone has five stages `layer0` .. `layer4` with MODEL.FILTERS channels; stage 0
keeps the input resolution and each later stage halves it, in (y, x) only where
MODEL.ISOTROPY says the stage is anisotropic. `forward` returns the five stage outputs,
finest first, for the FPN to fuse. Module names and shapes are PyTC's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backend.trainer.blocks import (
    LayerOptions,
    ResidualBlock,
    SEResidualBlock,
    Size,
    SqueezeExcitation,
    conv_norm_act,
    make_act,
    make_norm,
)

NUM_STAGES = 5


def _conv3d(*args: Any, **kwargs: Any) -> nn.Conv3d:
    """nn.Conv3d, taking the padding mode as the config's plain string."""
    return nn.Conv3d(*args, **kwargs)


def _down(isotropic: bool) -> Size:
    return 2 if isotropic else (1, 2, 2)


class Backbone(nn.Module):
    """Five stages run in order; each stage's output is kept."""

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        feats = []
        for i in range(NUM_STAGES):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats

    def stem(self, x: Tensor) -> Tensor:
        return x


class ResNet3D(Backbone):
    """A 5x5 (or (1,5,5)) input conv, then four stages of residual blocks (first strided)."""

    blocks = {"residual": ResidualBlock, "residual_se": SEResidualBlock}

    def __init__(
        self,
        opts: LayerOptions,
        *,
        block_type: str,
        in_channels: int,
        filters: Sequence[int],
        blocks: Sequence[int],
        isotropy: Sequence[bool],
    ) -> None:
        super().__init__()
        self.block = self.blocks[block_type]
        kernel, padding = (5, 2) if isotropy[0] else ((1, 5, 5), (0, 2, 2))
        self.layer0 = conv_norm_act(in_channels, filters[0], kernel, opts, padding=padding)
        for i in range(1, 5):
            layer = self._stage(opts, filters[i - 1], filters[i], blocks[i - 1], isotropy[i])
            setattr(self, f"layer{i}", layer)

    def _stage(
        self, opts: LayerOptions, cin: int, cout: int, n: int, isotropic: bool
    ) -> nn.Sequential:
        first = self.block(cin, cout, opts, stride=_down(isotropic), isotropic=isotropic)
        rest = [self.block(cout, cout, opts, isotropic=isotropic) for _ in range(1, n)]
        return nn.Sequential(first, *rest)


class BotNet3D(ResNet3D):
    """ResNet3D whose last stage is a bottleneck-transformer stack (BoTNet).

    The stack's attention has absolute position embeddings of a fixed size, computed from
    MODEL.INPUT_SIZE: the network then only runs on patches of exactly that size whose
    layer3 map halves evenly (`botnet_fmap_size`). PyTC builds the stack with batch norm
    and replicate padding whatever MODEL.NORM_MODE / PAD_MODE say."""

    def __init__(
        self,
        opts: LayerOptions,
        *,
        block_type: str,
        in_channels: int,
        filters: Sequence[int],
        blocks: Sequence[int],
        isotropy: Sequence[bool],
        input_size: Sequence[int],
    ) -> None:
        super().__init__(
            opts,
            block_type=block_type,
            in_channels=in_channels,
            filters=filters,
            blocks=[*blocks[:3], 1],
            isotropy=isotropy,
        )
        fmap = botnet_fmap_size(input_size, isotropy)
        act = make_act(opts.act)  # one module shared by the stack, as PyTC
        self.layer4 = BottleStack(filters[3], filters[4], fmap, act)


def botnet_fmap_size(input_size: Sequence[int], isotropy: Sequence[bool]) -> list[int]:
    """The (z, y, x) size BoTNet expects at layer3's output (ceil halving, as PyTC)."""
    size = [int(s) for s in input_size]
    for iso in isotropy[1:-1]:
        size = (
            [math.ceil(s / 2) for s in size]
            if iso
            else size[:1] + [math.ceil(s / 2) for s in size[1:]]
        )
    return size


class AbsPosAttention(nn.Module):
    """Multi-head self-attention over all positions of a fixed-size map, with absolute
    (separable z + y + x) position embeddings added to the query-key logits."""

    def __init__(self, dim: int, fmap: Sequence[int], heads: int = 4, dim_head: int = 32) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = _conv3d(dim, 3 * heads * dim_head, 1, bias=False)
        self.pos_emb = AbsPosEmb(fmap, dim_head)

    def forward(self, fmap: Tensor) -> Tensor:
        b, _, d, h, w = fmap.shape
        q, k, v = (
            t.reshape(b, self.heads, -1, d * h * w).transpose(-1, -2)
            for t in self.to_qkv(fmap).chunk(3, dim=1)
        )
        q = q * self.scale
        logits = q @ k.transpose(-1, -2) + self.pos_emb(q)
        out = logits.softmax(dim=-1) @ v  # (b, heads, positions, dim_head)
        result: Tensor = out.transpose(-1, -2).reshape(b, -1, d, h, w)
        return result


class AbsPosEmb(nn.Module):
    def __init__(self, fmap: Sequence[int], dim_head: int) -> None:
        super().__init__()
        scale = dim_head**-0.5
        depth, height, width = fmap
        self.depth = nn.Parameter(torch.randn(depth, dim_head) * scale)
        self.height = nn.Parameter(torch.randn(height, dim_head) * scale)
        self.width = nn.Parameter(torch.randn(width, dim_head) * scale)

    def forward(self, q: Tensor) -> Tensor:
        emb = self.depth[:, None, None] + self.height[None, :, None] + self.width[None, None, :]
        return q @ emb.reshape(-1, emb.shape[-1]).T


class BottleBlock(nn.Module):
    """1x1 contraction, attention (then 3x3 average pooling when downsampling), 1x1
    expansion, plus a (strided 3x3) conv shortcut."""

    def __init__(
        self, cin: int, cout: int, fmap: Sequence[int], downsample: bool, act: nn.Module
    ) -> None:
        super().__init__()
        self.fmap = tuple(fmap)
        heads, dim_head, mid = 4, 32, cout // 2
        self.shortcut: nn.Module = nn.Identity()
        if cin != cout or downsample:
            k, stride, pad = (3, 2, 1) if downsample else (1, 1, 0)
            self.shortcut = nn.Sequential(
                _conv3d(
                    cin, cout, k, stride=stride, padding=pad, bias=False, padding_mode="replicate"
                ),
                nn.BatchNorm3d(cout),
                act,
            )
        self.net = nn.Sequential(
            _conv3d(cin, mid, 1, bias=False),
            nn.BatchNorm3d(mid),
            act,
            AbsPosAttention(mid, fmap, heads, dim_head),
            nn.AvgPool3d(3, stride=2, padding=1) if downsample else nn.Identity(),
            nn.BatchNorm3d(heads * dim_head),
            act,
            _conv3d(heads * dim_head, cout, 1, bias=False),
            nn.BatchNorm3d(cout),
        )
        last_norm = self.net[-1]
        assert isinstance(last_norm, nn.BatchNorm3d)
        nn.init.zeros_(last_norm.weight)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.fmap:
            raise ValueError(
                f"BoTNet's attention was built for a {list(self.fmap)} feature map but got "
                f"{list(x.shape[2:])}: MODEL.INPUT_SIZE must be the size of the patches fed"
            )
        out: Tensor = self.act(self.net(x) + self.shortcut(x))
        return out


class BottleStack(nn.Module):
    """Three bottleneck-transformer blocks; the first downsamples by 2 on every axis."""

    def __init__(self, cin: int, cout: int, fmap: Sequence[int], act: nn.Module) -> None:
        super().__init__()
        half = [s // 2 for s in fmap]
        self.net = nn.Sequential(
            BottleBlock(cin, cout, fmap, True, act),
            BottleBlock(cout, cout, half, False, act),
            BottleBlock(cout, cout, half, False, act),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


class RepVGGBlock(nn.Module):
    """RepVGG: 3x3 conv-BN + 1x1 conv-BN (+ BN identity) branches, summed, activated.

    `deploy` builds the single re-parameterised conv (with bias) that the three branches
    fold into; `fuse()` computes its kernel and bias from a training-mode block."""

    def __init__(
        self,
        cin: int,
        cout: int,
        opts: LayerOptions,
        *,
        stride: Size,
        isotropic: bool,
        deploy: bool,
    ) -> None:
        super().__init__()
        self.isotropic = isotropic
        kernel, padding = (3, 1) if isotropic else ((1, 3, 3), (0, 1, 1))
        self.act = make_act(opts.act)
        if deploy:
            self.rbr_reparam = _conv3d(
                cin,
                cout,
                kernel,
                stride=stride,
                padding=padding,
                padding_mode=opts.pad,
            )
            return
        self.rbr_identity = nn.BatchNorm3d(cin) if cin == cout and stride == 1 else None
        self.rbr_dense = self._conv_bn(cin, cout, kernel, stride, padding, opts.pad)
        self.rbr_1x1 = self._conv_bn(cin, cout, 1, stride, 0, "zeros")

    @staticmethod
    def _conv_bn(cin: int, cout: int, k: Size, stride: Size, pad: Size, mode: str) -> nn.Sequential:
        seq = nn.Sequential()
        seq.add_module(
            "conv",
            _conv3d(cin, cout, k, stride=stride, padding=pad, padding_mode=mode, bias=False),
        )
        seq.add_module("bn", nn.BatchNorm3d(cout))
        return seq

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "rbr_reparam"):
            out: Tensor = self.act(self.rbr_reparam(x))
            return out
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        out = self.act(y)
        return out

    def fuse(self) -> tuple[Tensor, Tensor]:
        """The deploy-mode kernel and bias equal to this block's three branches (eval mode)."""
        k3, b3 = _fold_bn(cast(nn.Conv3d, self.rbr_dense.conv).weight, self.rbr_dense.bn)
        k1, b1 = _fold_bn(cast(nn.Conv3d, self.rbr_1x1.conv).weight, self.rbr_1x1.bn)
        pad = [1, 1, 1, 1, 1, 1] if self.isotropic else [1, 1, 1, 1, 0, 0]
        kernel, bias = k3 + F.pad(k1, pad), b3 + b1
        if self.rbr_identity is not None:
            eye = torch.zeros_like(k3)
            centre = (1, 1, 1) if self.isotropic else (0, 1, 1)
            for c in range(eye.shape[0]):
                eye[(c, c, *centre)] = 1.0
            ki, bi = _fold_bn(eye, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias


def _fold_bn(kernel: Tensor, bn: Any) -> tuple[Tensor, Tensor]:
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return kernel * scale.reshape(-1, 1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepVGG3D(Backbone):
    """Five RepVGG stages (stage 0: one block at full resolution). Batch norm always."""

    def __init__(
        self,
        opts: LayerOptions,
        *,
        in_channels: int,
        filters: Sequence[int],
        blocks: Sequence[int],
        isotropy: Sequence[bool],
        deploy: bool,
    ) -> None:
        super().__init__()
        chans = [in_channels, *filters]
        counts = [1, *blocks[:4]]
        for i in range(NUM_STAGES):
            stride: Size = 1 if i == 0 else _down(isotropy[i])
            layers = [
                RepVGGBlock(
                    chans[i] if j == 0 else chans[i + 1],
                    chans[i + 1],
                    opts,
                    stride=stride if j == 0 else 1,
                    isotropic=isotropy[i],
                    deploy=deploy,
                )
                for j in range(counts[i])
            ]
            setattr(self, f"layer{i}", nn.Sequential(*layers))


class InvertedResidual(nn.Module):
    """MobileNetV2 / EfficientNet block: 1x1 conv, depthwise kxk conv (dilated groups in
    the `dilated` variant), attention, 1x1 conv, plus a shortcut (average-pooled and
    projected when the block downsamples or changes channels)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        opts: LayerOptions,
        *,
        kernel: int,
        stride: Size,
        isotropic: bool,
        attention: str,
        dilated: bool,
    ) -> None:
        super().__init__()
        mid = cin  # PyTC's expansion factor is 1
        self.dilated = dilated
        if dilated:
            self.DWConv = nn.ModuleList(
                [_depthwise(mid // 4, kernel, stride, isotropic, opts.pad, d) for d in (1, 2, 4, 8)]
            )
            self.layers1_a = nn.Sequential(
                _conv3d(cin, mid, 1, bias=False), make_norm(opts.norm, mid, 3), make_act(opts.act)
            )
            self.layers1_b = nn.Sequential(make_norm(opts.norm, mid, 3), make_act(opts.act))
            dw_stride = cast(tuple[int, int, int], self.DWConv[0].stride)
        else:
            dw = _depthwise(mid, kernel, stride, isotropic, opts.pad, 1)
            dw_stride = cast(tuple[int, int, int], dw.stride)
            self.layers1 = nn.Sequential(
                _conv3d(cin, mid, 1, bias=False),
                make_norm(opts.norm, mid, 3),
                make_act(opts.act),
                dw,
                make_norm(opts.norm, mid, 3),
                make_act(opts.act),
            )
        self.layers2 = nn.Sequential(
            _conv3d(mid, cout, 1, bias=False), make_norm(opts.norm, cout, 3)
        )
        self.attention = make_attention(attention, mid, opts)
        self.projector: nn.Module = nn.Identity()
        if tuple(dw_stride) != (1, 1, 1):
            self.projector = nn.Sequential(
                nn.AvgPool3d(dw_stride, dw_stride),
                conv_norm_act(cin, cout, 1, opts, act=False),
            )
        elif cin != cout:
            self.projector = conv_norm_act(cin, cout, 1, opts, act=False)

    def _branch(self, x: Tensor) -> Tensor:
        if not self.dilated:
            out: Tensor = self.layers1(x)
            return out
        x = self.layers1_a(x)
        parts = torch.split(x, x.shape[1] // 4, dim=1)
        mixed: Tensor = self.layers1_b(
            torch.cat([conv(p) for conv, p in zip(self.DWConv, parts, strict=True)], dim=1)
        )
        return mixed

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers2(self.attention(self._branch(x)))
        # An odd axis that the stride shrinks is padded by one voxel on each side first,
        # so that the 2x average pooling of the shortcut lands on the branch's size.
        pad: list[int] = []
        for axis in (4, 3, 2):
            grow = out.shape[axis] != x.shape[axis] and x.shape[axis] % 2 == 1
            pad += [1, 1] if grow else [0, 0]
        identity = F.pad(x, pad, mode="replicate") if any(pad) else x
        result: Tensor = out + self.projector(identity)
        return result


def _depthwise(
    channels: int, kernel: int, stride: Size, isotropic: bool, pad_mode: str, dilation: int
) -> nn.Conv3d:
    padding = (kernel - 1) * dilation // 2
    if isotropic:
        return _conv3d(
            channels,
            channels,
            kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=channels,
            bias=False,
            padding_mode=pad_mode,
        )
    s = stride if isinstance(stride, int) else stride[-1]
    return _conv3d(
        channels,
        channels,
        (1, kernel, kernel),
        stride=(1, s, s),
        padding=(0, padding, padding),
        dilation=(1, dilation, dilation),
        groups=channels,
        bias=False,
        padding_mode=pad_mode,
    )


def make_attention(name: str, channels: int, opts: LayerOptions) -> nn.Module:
    """MODEL.ATTENTION of the EfficientNet blocks: squeeze-excitation (reduction 8, ReLU),
    strip or plane pooling; any other name is none, as in PyTC."""
    if name == "squeeze_excitation":
        return SqueezeExcitation(channels, opts, reduction=8, act="relu")
    if name in PoolingAttention.PLANS:
        return PoolingAttention(name, channels)
    return nn.Identity()


class PoolingAttention(nn.Module):
    """Strip pooling (averages along lines: z, y, x) or plane pooling (over planes: zy, yx,
    xz); each pooled map gets a conv to a quarter of the channels, the three ReLU'd maps are
    summed, a 1x1 conv and a sigmoid give the gate."""

    # per branch: (pooled output size, conv kernel), in PyTC's registration order
    PLANS: dict[str, dict[str, tuple[tuple[int | None, ...], tuple[int, int, int]]]] = {
        "strip_pool": {
            "z": ((None, 1, 1), (3, 1, 1)),
            "y": ((1, None, 1), (1, 3, 1)),
            "x": ((1, 1, None), (1, 1, 3)),
        },
        "plane_pool": {
            "zy": ((None, None, 1), (3, 3, 1)),
            "yx": ((1, None, None), (1, 3, 3)),
            "xz": ((None, 1, None), (3, 1, 3)),
        },
    }

    def __init__(self, name: str, channels: int) -> None:
        super().__init__()
        plan = self.PLANS[name]
        self.axes = list(plan)
        mid = channels // 4
        for axis, (pooled, _) in plan.items():
            setattr(self, f"pool_{axis}", nn.AdaptiveAvgPool3d(pooled))
        for axis, (_, kernel) in plan.items():
            pad = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
            setattr(self, f"conv_{axis}", nn.Conv3d(channels, mid, kernel, padding=pad))
        self.relu = nn.ReLU(inplace=True)
        self.conv1x1x1 = nn.Conv3d(mid, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        fusion = sum(
            # ReLU before broadcasting: the same values, and in place on the small map
            self.relu(getattr(self, f"conv_{a}")(getattr(self, f"pool_{a}")(x))).expand(
                -1, -1, *size
            )
            for a in self.axes
        )
        gate: Tensor = self.conv1x1x1(fusion).sigmoid()
        return x * gate


class DilatedStem(nn.Module):
    """Four 3x3x3 convs with dilations 1, 2, 4, 8, each giving a quarter of the channels."""

    def __init__(self, cin: int, cout: int, pad_mode: str) -> None:
        super().__init__()
        self.conv = nn.ModuleList(
            [
                _conv3d(cin, cout // 4, 3, padding=d, dilation=d, bias=False, padding_mode=pad_mode)
                for d in (1, 2, 4, 8)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([conv(x) for conv in self.conv], dim=1)


class EfficientNet3D(Backbone):
    """A 3x3x3 stem, then five stages of inverted-residual blocks (MODEL.KERNEL_SIZES);
    stage strides 1, 2, 2, (1, 2, 2), 2."""

    strides: tuple[Size, ...] = (1, 2, 2, (1, 2, 2), 2)

    def __init__(
        self,
        opts: LayerOptions,
        *,
        block_type: str,
        in_channels: int,
        filters: Sequence[int],
        blocks: Sequence[int],
        kernel_sizes: Sequence[int],
        isotropy: Sequence[bool],
        attention: str,
    ) -> None:
        super().__init__()
        dilated = block_type == "inverted_res_dilated"
        self.conv1: nn.Module
        if dilated:
            self.conv1 = DilatedStem(in_channels, filters[0], opts.pad)
        else:
            self.conv1 = _conv3d(
                in_channels,
                filters[0],
                3,
                padding=1,
                bias=False,
                padding_mode=opts.pad,
            )
        self.bn1 = make_norm(opts.norm, filters[0], 3)
        self.relu = make_act(opts.act)
        chans = [filters[0], *filters]
        for i in range(NUM_STAGES):
            layers = [
                InvertedResidual(
                    chans[i] if j == 0 else chans[i + 1],
                    chans[i + 1],
                    opts,
                    kernel=int(kernel_sizes[i]),
                    stride=self.strides[i] if j == 0 else 1,
                    isotropic=isotropy[i],
                    attention=attention,
                    dilated=dilated,
                )
                for j in range(blocks[i])
            ]
            setattr(self, f"layer{i}", nn.Sequential(*layers))

    def stem(self, x: Tensor) -> Tensor:
        out: Tensor = self.relu(self.bn1(self.conv1(x)))
        return out
