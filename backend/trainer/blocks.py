"""Building blocks of the PyTC U-Nets: conv-norm-act, residual, squeeze-excitation, non-local.

Module attribute names (`conv`, `projector`, `fc`, `g`, `theta`, `phi`, `W`, ...) follow
PyTorch Connectomics on purpose: a PyTC checkpoint's `state_dict` then loads into the
models built here key for key, which is what fine-tuning from `MODEL.PRE_MODEL` needs.
Every block is dimension-generic: `ndim` is 2 for (B, C, H, W) and 3 for (B, C, D, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORM_MODES = ("bn", "sync_bn", "in", "gn", "none")
ACT_MODES = ("relu", "leaky_relu", "elu", "gelu", "silu", "swish", "efficient_swish", "none")
PAD_MODES = ("zeros", "circular", "reflect", "replicate")

# An int means the same size on every axis, as torch's conv layers accept.
Size = int | tuple[int, ...]

# PyTC's group-norm group counts; see `make_norm` for channel counts they do not divide.
_GN_GROUPS = {2: 16, 3: 8}
# PyTC's squeeze-excitation reductions.
_SE_REDUCTION = {2: 16, 3: 4}


@dataclass(frozen=True)
class LayerOptions:
    """What every layer of one model shares: dimensionality and the MODEL.*_MODE keys."""

    ndim: int
    norm: str = "bn"
    act: str = "elu"
    pad: str = "replicate"

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        _check("MODEL.NORM_MODE", self.norm, NORM_MODES)
        _check("MODEL.ACT_MODE", self.act, ACT_MODES)
        _check("MODEL.PAD_MODE", self.pad, PAD_MODES)


def _check(key: str, value: str, supported: Sequence[str]) -> None:
    if value not in supported:
        raise ValueError(f"{key} {value!r} is not supported; supported: {', '.join(supported)}")


def make_norm(mode: str, channels: int, ndim: int) -> nn.Module:
    """A normalisation layer. `sync_bn` is plain batch norm: on one device they are the same
    computation, and `nn.SyncBatchNorm.convert_sync_batchnorm` converts for multi-GPU runs."""
    _check("MODEL.NORM_MODE", mode, NORM_MODES)
    if mode in ("bn", "sync_bn"):
        return nn.BatchNorm3d(channels) if ndim == 3 else nn.BatchNorm2d(channels)
    if mode == "in":
        return nn.InstanceNorm3d(channels) if ndim == 3 else nn.InstanceNorm2d(channels)
    if mode == "gn":
        # PyTC uses 8 (3D) / 16 (2D) groups and fails when they do not divide the channels;
        # the gcd is the same number whenever PyTC works and a valid one otherwise.
        return nn.GroupNorm(math.gcd(_GN_GROUPS[ndim], channels), channels)
    return nn.Identity()


# In place where PyTC is: every use follows a freshly computed tensor. PyTC's `swish` and
# its memory-saving `efficient_swish` compute x * sigmoid(x), which is torch's SiLU.
_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "elu": lambda: nn.ELU(alpha=1.0, inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(negative_slope=0.2, inplace=True),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "efficient_swish": nn.SiLU,
    "none": nn.Identity,
}


def make_act(mode: str) -> nn.Module:
    """An activation layer (`none`: the identity)."""
    _check("MODEL.ACT_MODE", mode, ACT_MODES)
    return _ACTS[mode]()


def make_conv(ndim: int) -> Callable[..., nn.Module]:
    """The conv class for `ndim`, behind one signature so callers need not branch."""
    return nn.Conv3d if ndim == 3 else nn.Conv2d


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: Size,
    opts: LayerOptions,
    *,
    stride: Size = 1,
    padding: Size = 0,
    bias: bool = False,
    norm: bool = True,
    act: bool = True,
    groups: int = 1,
    dilation: Size = 1,
) -> nn.Sequential:
    """Conv, then norm, then activation: PyTC's `conv{2,3}d_norm_act` (indices 0, 1, 2)."""
    conv = make_conv(opts.ndim)(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        padding_mode=opts.pad,
        bias=bias,
        groups=groups,
        dilation=dilation,
    )
    return nn.Sequential(
        conv,
        make_norm(opts.norm if norm else "none", out_channels, opts.ndim),
        make_act(opts.act if act else "none"),
    )


def norm_act_conv(
    in_channels: int, out_channels: int, kernel_size: Size, opts: LayerOptions, padding: Size
) -> nn.Sequential:
    """Pre-activation order: norm, activation, then conv (PyTC's `norm_act_conv3d`)."""
    conv = make_conv(opts.ndim)(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=padding,
        padding_mode=opts.pad,
        bias=False,
    )
    return nn.Sequential(make_norm(opts.norm, in_channels, opts.ndim), make_act(opts.act), conv)


def block_kernel(ndim: int, isotropic: bool = False) -> tuple[Size, Size]:
    """Kernel and padding of the convs inside a residual block.

    PyTC's U-Nets build their 3D residual blocks with (1, 3, 3) kernels at every level,
    isotropic or not (only the level's downsampling and decoder convs follow ISOTROPY); its
    FPN backbones pass the stage's isotropy (3x3x3 when isotropic)."""
    if ndim == 2 or isotropic:
        return 3, 1
    return (1, 3, 3), (0, 1, 1)


class ResidualBlock(nn.Module):
    """Two convs and an identity (or 1x1 projection) shortcut, then the activation.

    `stride` downsamples in the first conv and the projection (FPN backbones)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        opts: LayerOptions,
        *,
        stride: Size = 1,
        isotropic: bool = False,
    ) -> None:
        super().__init__()
        kernel, padding = block_kernel(opts.ndim, isotropic)
        self.conv: nn.Module = nn.Sequential(
            conv_norm_act(in_channels, channels, kernel, opts, stride=stride, padding=padding),
            conv_norm_act(channels, channels, kernel, opts, padding=padding, act=False),
        )
        self.projector: nn.Module = nn.Identity()
        if in_channels != channels or stride != 1:
            self.projector = conv_norm_act(in_channels, channels, 1, opts, stride=stride, act=False)
        self.act = make_act(opts.act)

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.conv(x) + self.projector(x)
        out: Tensor = self.act(y)
        return out


class SqueezeExcitation(nn.Module):
    """Channel attention: global average pool, bottleneck MLP, sigmoid gate.

    The reduction is PyTC's per dimension (16 in 2D, 4 in 3D) unless given; the hidden
    activation is MODEL.ACT_MODE unless given (PyTC's EfficientNet uses ReLU)."""

    def __init__(
        self,
        channels: int,
        opts: LayerOptions,
        reduction: int | None = None,
        act: str | None = None,
    ) -> None:
        super().__init__()
        # As PyTC: fewer channels than the reduction give zero hidden units (a constant gate).
        hidden = channels // (reduction or _SE_REDUCTION[opts.ndim])
        self.avg_pool = nn.AdaptiveAvgPool3d(1) if opts.ndim == 3 else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            make_act(act or opts.act),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        gate: Tensor = self.fc(self.avg_pool(x).view(b, c))
        return x * gate.view(b, c, *([1] * (x.dim() - 2)))


class SEResidualBlock(ResidualBlock):
    """PyTC's `residual_se`: the residual branch ends in squeeze-excitation."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        opts: LayerOptions,
        *,
        stride: Size = 1,
        isotropic: bool = False,
    ) -> None:
        super().__init__(in_channels, channels, opts, stride=stride, isotropic=isotropic)
        self.conv = nn.Sequential(self.conv, SqueezeExcitation(channels, opts))


class PreActResidualBlock(nn.Module):
    """PyTC's `residual_pa` (3D): two norm-act-conv units plus the shortcut, no final act."""

    def __init__(self, in_channels: int, channels: int, opts: LayerOptions) -> None:
        super().__init__()
        kernel, padding = block_kernel(opts.ndim)
        self.conv: nn.Module = nn.Sequential(
            norm_act_conv(in_channels, channels, kernel, opts, padding),
            norm_act_conv(channels, channels, kernel, opts, padding),
        )
        self.projector: nn.Module = nn.Identity()
        if in_channels != channels:
            self.projector = conv_norm_act(in_channels, channels, 1, opts, act=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x) + self.projector(x)
        return out


class SEPreActResidualBlock(PreActResidualBlock):
    """PyTC's `residual_se_pa`: the pre-activation branch ends in squeeze-excitation."""

    def __init__(self, in_channels: int, channels: int, opts: LayerOptions) -> None:
        super().__init__(in_channels, channels, opts)
        self.conv = nn.Sequential(self.conv, SqueezeExcitation(channels, opts))


BLOCKS: dict[str, type[nn.Module]] = {
    "residual": ResidualBlock,
    "residual_se": SEResidualBlock,
    "residual_pa": PreActResidualBlock,
    "residual_se_pa": SEPreActResidualBlock,
}
# The pre-activation blocks exist in PyTC's 3D U-Nets only.
BLOCKS_2D = ("residual", "residual_se")


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian self-attention over all positions, added back as a residual.

    UNetPlus applies it once at the bottleneck, where the map is smallest (attention is
    quadratic in the number of positions)."""

    def __init__(self, channels: int, opts: LayerOptions) -> None:
        super().__init__()
        conv = make_conv(opts.ndim)
        self.inter_channels = max(1, channels // 2)
        # Registered in PyTC's order (g, W, theta, phi): it fixes the parameter order.
        self.g = conv(channels, self.inter_channels, kernel_size=1)
        self.W = nn.Sequential(
            conv(self.inter_channels, channels, kernel_size=1),
            make_norm(opts.norm, channels, opts.ndim),
        )
        self.theta = conv(channels, self.inter_channels, kernel_size=1)
        self.phi = conv(channels, self.inter_channels, kernel_size=1)
        # Start as the identity so the pretrained U-Net path is undisturbed; zero the
        # norm's scale when it has one, otherwise the projection itself.
        for name in ("weight", "bias"):
            param = getattr(self.W[1], name, None)
            if param is None:
                param = getattr(self.W[0], name)
            nn.init.zeros_(param)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        g_x = self.g(x).view(b, self.inter_channels, -1).transpose(1, 2)
        theta_x = self.theta(x).view(b, self.inter_channels, -1).transpose(1, 2)
        phi_x = self.phi(x).view(b, self.inter_channels, -1)
        attention = F.softmax(torch.matmul(theta_x, phi_x), dim=-1)
        y = torch.matmul(attention, g_x).transpose(1, 2).reshape(b, self.inter_channels, -1)
        y = y.view(b, self.inter_channels, *x.shape[2:])
        out: Tensor = self.W(y) + x
        return out


def init_orthogonal(module: nn.Module) -> None:
    """PyTC's default initialisation: orthogonal weights for every conv and linear layer."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d | nn.Linear):
            nn.init.orthogonal_(m.weight)
