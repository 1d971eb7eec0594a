"""PyTC's 3D feature pyramid network (MODEL.ARCHITECTURE `fpn_3d`).

A backbone (`backbones.py`) yields five feature maps; 1x1 lateral convs bring each to
FILTERS[0] channels; from the coarsest up, the running map is trilinearly upsampled to the
next finer map's size (corners aligned), smoothed by that level's conv and added to it.
A last smoothing conv and a 5x5 output conv (bias, no norm) give the logits at the
input's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from backend.trainer.blocks import LayerOptions, conv_norm_act


class FPN3D(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        opts: LayerOptions,
        *,
        filters: Sequence[int],
        isotropy: Sequence[bool],
        out_channels: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        lat = filters[0]
        self.latlayers = nn.ModuleList([conv_norm_act(f, lat, 1, opts) for f in filters])
        self.smooth = nn.ModuleList()
        for iso in isotropy:
            kernel, pad = (3, 1) if iso else ((1, 3, 3), (0, 1, 1))
            self.smooth.append(conv_norm_act(lat, lat, kernel, opts, padding=pad))
        kernel, pad = (5, 2) if isotropy[0] else ((1, 5, 5), (0, 2, 2))
        self.conv_out = conv_norm_act(
            lat, out_channels, kernel, opts, padding=pad, bias=True, norm=False, act=False
        )

    def forward(self, x: Tensor) -> Tensor:
        feats = [lat(f) for lat, f in zip(self.latlayers, self.backbone(x), strict=True)]
        out = feats[-1]
        for i in range(len(feats) - 1, 0, -1):
            up = F.interpolate(
                out, size=feats[i - 1].shape[2:], mode="trilinear", align_corners=True
            )
            out = self.smooth[i](up) + feats[i - 1]
        result: Tensor = self.conv_out(self.smooth[0](out))
        return result
