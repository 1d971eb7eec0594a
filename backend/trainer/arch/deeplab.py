"""PyTC's 2D DeepLabV3 (MODEL.ARCHITECTURE `deeplabv3a`, `deeplabv3b`, `deeplabv3c`).

A torchvision-layout ResNet (module names `conv1`, `bn1`, `layerK.i.convJ`, ... so that
ImageNet / PyTC checkpoints load) with output stride 8 (dilated layer3 and layer4) feeds an
ASPP head (rates 12, 24, 36). The three heads differ after the ASPP: `a` is torchvision's
head, `b` upsamples the ASPP output 2x before two 3x3 convs, `c` fuses layer1's features
(DeepLabV3+ style). With MODEL.AUX_OUT an FCN head on layer3 adds an `aux` output. The
forward returns a dict `{'out': ..., 'aux': ...}`, both at the input's size.

Norm, activation and padding follow MODEL.NORM_MODE / ACT_MODE / PAD_MODE everywhere, the
backbone included (group norm: 16 groups, as PyTC's 2D layers). PyTC always asks torchvision
for ImageNet weights; nothing is downloaded here (see `build_model`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backend.trainer.blocks import LayerOptions, make_act, make_conv, make_norm

HEADS = ("deeplabv3a", "deeplabv3b", "deeplabv3c")


@dataclass(frozen=True)
class ResNetSpec:
    """Blocks per stage, groups and bottleneck base width of one torchvision ResNet."""

    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64


BACKBONES: dict[str, ResNetSpec] = {
    "resnet50": ResNetSpec((3, 4, 6, 3)),
    "resnet101": ResNetSpec((3, 4, 23, 3)),
    "resnet152": ResNetSpec((3, 8, 36, 3)),
    "resnext50_32x4d": ResNetSpec((3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": ResNetSpec((3, 4, 23, 3), groups=32, width_per_group=8),
    "wide_resnet50_2": ResNetSpec((3, 4, 6, 3), width_per_group=128),
    "wide_resnet101_2": ResNetSpec((3, 4, 23, 3), width_per_group=128),
}
# The heads assume 2048 backbone channels: only bottleneck ResNets fit (as in PyTC, where
# resnet18 / resnet34 fail).
EXPANSION = 4


def _conv(opts: LayerOptions, cin: int, cout: int, k: int, **kwargs: int) -> nn.Module:
    padding = kwargs.pop("padding", 0)
    return make_conv(2)(cin, cout, k, padding=padding, padding_mode=opts.pad, bias=False, **kwargs)


def _run(layers: nn.Sequential, x: Tensor) -> Tensor:
    for layer in layers:
        x = layer(x)
    return x


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (stride on the 3x3 conv), with PyTC's layer options."""

    def __init__(
        self,
        opts: LayerOptions,
        cin: int,
        planes: int,
        spec: ResNetSpec,
        *,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        width = int(planes * (spec.width_per_group / 64.0)) * spec.groups
        self.conv1 = _conv(opts, cin, width, 1)
        self.bn1 = make_norm(opts.norm, width, 2)
        self.conv2 = _conv(
            opts,
            width,
            width,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            groups=spec.groups,
        )
        self.bn2 = make_norm(opts.norm, width, 2)
        self.conv3 = _conv(opts, width, planes * EXPANSION, 1)
        self.bn3 = make_norm(opts.norm, planes * EXPANSION, 2)
        self.relu = make_act(opts.act)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: Tensor = self.relu(out + identity)
        return result


class ResNet(nn.Module):
    """The ResNet trunk up to layer4 (no pooling or classifier), output stride 8."""

    def __init__(self, opts: LayerOptions, in_channels: int, spec: ResNetSpec) -> None:
        super().__init__()
        self.opts, self.spec = opts, spec
        self.inplanes, self.dilation = 64, 1
        self.conv1 = _conv(opts, in_channels, 64, 7, stride=2, padding=3)
        self.bn1 = make_norm(opts.norm, 64, 2)
        self.relu = make_act(opts.act)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._layer(64, spec.layers[0])
        self.layer2 = self._layer(128, spec.layers[1], stride=2)
        self.layer3 = self._layer(256, spec.layers[2], stride=2, dilate=True)
        self.layer4 = self._layer(512, spec.layers[3], stride=2, dilate=True)

    def _layer(
        self, planes: int, blocks: int, stride: int = 1, dilate: bool = False
    ) -> nn.Sequential:
        previous = self.dilation
        if dilate:  # trade the stride for dilation, keeping the receptive field
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * EXPANSION:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                make_norm(self.opts.norm, planes * EXPANSION, 2),
            )
        layers = [
            Bottleneck(
                self.opts,
                self.inplanes,
                planes,
                self.spec,
                stride=stride,
                dilation=previous,
                downsample=downsample,
            )
        ]
        self.inplanes = planes * EXPANSION
        layers += [
            Bottleneck(self.opts, self.inplanes, planes, self.spec, dilation=self.dilation)
            for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """The stages the heads read: layer1 (low level), layer3 (aux), layer4 (out)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        mid = self.layer3(self.layer2(low))
        return {"low": low, "aux": mid, "out": self.layer4(mid)}


def _conv_norm_act(
    opts: LayerOptions, cin: int, cout: int, k: int, **kwargs: int
) -> list[nn.Module]:
    return [_conv(opts, cin, cout, k, **kwargs), make_norm(opts.norm, cout, 2), make_act(opts.act)]


class ASPPPooling(nn.Sequential):
    """Image-level features: global average, 1x1 conv, broadcast back to the map's size."""

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        y = _run(self, x)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and image pooling, projected."""

    def __init__(self, opts: LayerOptions, cin: int, rates: tuple[int, ...] = (12, 24, 36)) -> None:
        super().__init__()
        out = 256
        branches: list[nn.Module] = [nn.Sequential(*_conv_norm_act(opts, cin, out, 1))]
        branches += [
            nn.Sequential(*_conv_norm_act(opts, cin, out, 3, padding=r, dilation=r)) for r in rates
        ]
        branches.append(ASPPPooling(nn.AdaptiveAvgPool2d(1), *_conv_norm_act(opts, cin, out, 1)))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_conv_norm_act(opts, len(branches) * out, out, 1))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.project(torch.cat([conv(x) for conv in self.convs], dim=1))
        return out


class HeadA(nn.Sequential):
    """torchvision's DeepLabHead: ASPP, 3x3 conv, 1x1 classifier."""

    def __init__(self, opts: LayerOptions, cin: int, classes: int) -> None:
        super().__init__(
            ASPP(opts, cin),
            *_conv_norm_act(opts, 256, 256, 3, padding=1),
            nn.Conv2d(256, classes, 1),
        )

    def forward(self, x: Tensor, low: Tensor | None = None) -> Tensor:
        return _run(self, x)


class HeadB(nn.Module):
    """ASPP, 3x3 conv, 2x upsampling (2n-1 for odd n: corners aligned), two 3x3 convs."""

    def __init__(self, opts: LayerOptions, cin: int, classes: int) -> None:
        super().__init__()
        self.aspp = ASPP(opts, cin)
        self.conv1 = nn.Sequential(*_conv_norm_act(opts, 256, 128, 3, padding=1))
        self.conv2 = nn.Sequential(
            *_conv_norm_act(opts, 128, 128, 3, padding=1),
            make_conv(2)(128, classes, 3, padding=1, padding_mode=opts.pad),
        )

    def forward(self, x: Tensor, low: Tensor | None = None) -> Tensor:
        x = self.aspp(x)
        size = [2 * n - 1 if n % 2 else 2 * n for n in x.shape[-2:]]
        x = F.interpolate(self.conv1(x), size=size, mode="bilinear", align_corners=True)
        out: Tensor = self.conv2(x)
        return out


class HeadC(nn.Module):
    """ASPP upsampled to layer1's size and concatenated with its 32-channel projection."""

    def __init__(self, opts: LayerOptions, cin: int, classes: int) -> None:
        super().__init__()
        self.aspp = ASPP(opts, cin)
        self.conv = nn.Sequential(*_conv_norm_act(opts, 256, 32, 1))
        self.classifier = nn.Sequential(
            *_conv_norm_act(opts, 256 + 32, 256, 3, padding=1), nn.Conv2d(256, classes, 1)
        )

    def forward(self, x: Tensor, low: Tensor | None = None) -> Tensor:
        assert low is not None
        x = F.interpolate(self.aspp(x), size=low.shape[-2:], mode="bilinear", align_corners=True)
        out: Tensor = self.classifier(torch.cat([x, self.conv(low)], dim=1))
        return out


class FCNHead(nn.Sequential):
    """The auxiliary classifier on layer3: 3x3 conv to a quarter of the channels, 1x1 conv."""

    def __init__(self, opts: LayerOptions, cin: int, classes: int) -> None:
        super().__init__(
            *_conv_norm_act(opts, cin, cin // 4, 3, padding=1), nn.Conv2d(cin // 4, classes, 1)
        )


class DeepLabV3(nn.Module):
    """ResNet backbone + DeepLab head (+ optional FCN aux head); returns {'out'[, 'aux']}."""

    def __init__(
        self,
        head: str,
        backbone: str,
        opts: LayerOptions,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        aux_out: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = ResNet(opts, in_channels, BACKBONES[backbone])
        self.aux_classifier = FCNHead(opts, 1024, out_channels) if aux_out else None
        head_cls = {"deeplabv3a": HeadA, "deeplabv3b": HeadB, "deeplabv3c": HeadC}[head]
        self.classifier = head_cls(opts, 512 * EXPANSION, out_channels)
        self.uses_low_level = head == "deeplabv3c"

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        low = feats["low"] if self.uses_low_level else None
        out = self.classifier(feats["out"], low)
        result = OrderedDict(out=F.interpolate(out, size=size, mode="bilinear", align_corners=True))
        if self.aux_classifier is not None:
            aux = self.aux_classifier(feats["aux"])
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=True)
        return result
